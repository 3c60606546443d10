"""Survival tables: any CSV/Parquet table or a data set shipped with scikit-survival, an invertible encoder.

Entry points:

- :func:`load_survival_table` -- a ``.csv``/``.parquet``/``.pq`` file with one row per patient, a time and an
  event column -> :class:`SurvivalTable`; errors name the file, the column and the (1-based) data rows.
- :func:`load_bundled_dataset` -- GBSG2, WHAS500, ACTG320 (``aids``), FLChain or the Veterans' lung cancer
  trial from scikit-survival -> :class:`SurvivalTable`, categorical columns kept categorical.
- :class:`TabularEncoder` -- ``fit`` / ``transform`` / ``inverse_transform`` between a covariate frame and a
  float matrix, saved as plain JSON (``to_dict``/``save``), never pickled.
- :func:`split_table` -- seeded train/validation/test indices, stratified on the event.
- :func:`build_survival_table`, :func:`build_encoder` -- the same from a :class:`ctvl.config.TabularConfig`.
- :func:`load_reference_dataset` -- a bundled set as the ``(X, event, time, names)`` matrix that
  :func:`ctvl.survival.baselines.fit_and_score` takes (the reference table of ``ANCHORS.md``).

Targets follow scikit-survival: ``event`` (bool) and ``time`` (float64), kept apart from the covariates.

    >>> table = load_bundled_dataset("veterans")
    >>> len(table), int(table.event.sum()), table.kinds["Celltype"]
    (137, 128, 'categorical')
    >>> encoder = TabularEncoder().fit(table.covariates)
    >>> X = encoder.transform(table.covariates)  # 3 numeric columns, 4 + 2 + 2 one-hot columns
    >>> X.shape, encoder.feature_names_[:3]
    ((137, 11), ['Age_in_years', 'Celltype=adeno', 'Celltype=large'])
    >>> back = encoder.inverse_transform(X)
    >>> back["Celltype"].equals(table.covariates["Celltype"])
    True
    >>> bool(np.allclose(back["Age_in_years"], table.covariates["Age_in_years"]))
    True
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ctvl.config import TabularConfig
from ctvl.data.tables import read_table

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_DATASETS",
    "SurvivalTable",
    "TableSplit",
    "TabularEncoder",
    "build_encoder",
    "build_survival_table",
    "column_kind",
    "load_bundled_dataset",
    "load_reference_dataset",
    "load_survival_table",
    "perturb_covariates",
    "restore_dtype",
    "split_table",
]

BUNDLED_DATASETS = ("gbsg2", "whas500", "aids", "flchain", "veterans")
"""Names accepted by :func:`load_bundled_dataset` (``aids`` = ACTG320)."""
_LEAKS = {"flchain": ("chapter",)}  # cause of death: known only for the dead, so it gives the event away
MISSING = "<missing>"
"""Level name of missing cells in feature names (``"chapter=<missing>"``, ``"creatinine=<missing>"``)."""
_TRUE, _FALSE = {"1", "1.0", "true"}, {"0", "0.0", "false"}


@dataclass
class SurvivalTable:
    """One row per patient: covariates, right-censored targets, ids."""

    covariates: pd.DataFrame
    """(n, p) covariates with a RangeIndex; categorical columns as pandas ``category`` or text."""
    time: np.ndarray
    """(n,) float64 event or censoring times, finite and >= 0."""
    event: np.ndarray
    """(n,) bool, True where the event was observed."""
    case_id: np.ndarray
    """(n,) str patient ids (the id column, else the row number)."""
    source: str = ""
    """Where the table came from (a path or ``"scikit-survival:<name>"``)."""

    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def kinds(self) -> dict[str, str]:
        """Kind of each covariate (:func:`column_kind`): numeric, integer, binary or categorical."""
        return {c: column_kind(self.covariates[c]) for c in self.covariates.columns}

    @property
    def n_zero_times(self) -> int:
        return int(np.count_nonzero(self.time == 0))

    def subset(self, index) -> SurvivalTable:
        """The rows ``index`` (int array or bool mask) as a new table."""
        index = np.asarray(index)
        return SurvivalTable(self.covariates.iloc[index].reset_index(drop=True), self.time[index],
                             self.event[index], self.case_id[index], self.source)

    def to_structured(self) -> np.ndarray:
        """scikit-survival's structured ``y``: fields ``event`` (bool) and ``time`` (float64), shape (n,)."""
        y = np.empty(len(self), dtype=[("event", bool), ("time", np.float64)])
        y["event"], y["time"] = self.event, self.time
        return y


def column_kind(series: pd.Series) -> str:
    """``"binary"`` (bool, or numbers all in {0, 1}), ``"integer"``, ``"numeric"`` or ``"categorical"``
    (pandas ``category``, text or object columns)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "binary"
    if isinstance(series.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(series.dtype):
        if pd.api.types.is_datetime64_any_dtype(series.dtype) or pd.api.types.is_timedelta64_dtype(
                series.dtype):
            raise ValueError(f"column {series.name!r}: dates and durations are not covariates "
                             f"(convert {series.dtype} to numbers first)")
        return "categorical"
    values = series.dropna().to_numpy()
    if values.size and np.isin(values, (0, 1)).all():
        return "binary"
    return "integer" if pd.api.types.is_integer_dtype(series.dtype) else "numeric"


# ------------------------------------------------------------------------------------ reading


def _rows(mask: np.ndarray, series: pd.Series, limit: int = 5) -> str:
    """'data rows 3, 7 (values 'x', -1)' for the first ``limit`` True entries of ``mask``, 1-based."""
    bad = np.flatnonzero(mask)
    shown = ", ".join(str(i + 1) for i in bad[:limit])
    values = ", ".join(repr(v) for v in series.iloc[bad[:limit]].tolist())
    more = f", ... ({bad.size} rows in all)" if bad.size > limit else ""
    return f"data row{'s' if bad.size > 1 else ''} {shown}{more} (values {values})"


def _parse_time(series: pd.Series, where: str) -> np.ndarray:
    """Float64 times; ``ValueError`` naming ``where``, the column and the rows for bad values."""
    numeric = pd.to_numeric(series, errors="coerce") if not pd.api.types.is_bool_dtype(series.dtype) else None
    if numeric is None:
        raise ValueError(f"{where}: time column {series.name!r} holds booleans, not times")
    time = np.ascontiguousarray(numeric.to_numpy(np.float64, na_value=np.nan))
    checks = [(np.isnan(time) & series.notna().to_numpy(), "non-numeric times"),
              (series.isna().to_numpy(), "missing times"), (np.isinf(time), "infinite times"),
              (time < 0, "negative times")]
    for mask, what in checks:
        if mask.any():
            raise ValueError(f"{where}: time column {series.name!r} has {what} in {_rows(mask, series)}")
    zero = int(np.count_nonzero(time == 0))
    if zero:
        logger.info("%s: %d row(s) with time 0 in %r (kept)", where, zero, series.name)
    return time


def _parse_event(series: pd.Series, where: str) -> np.ndarray:
    """Bool events from bool, 0/1 or 'True'/'False'/'0'/'1' values; ``ValueError`` naming bad rows."""
    if pd.api.types.is_bool_dtype(series.dtype) and not series.isna().any():
        return series.to_numpy(bool)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(np.float64, na_value=np.nan)
        bad, event = ~np.isin(values, (0.0, 1.0)), values == 1.0
    else:
        text = series.astype(str).str.strip().str.lower()
        bad = (series.isna() | ~text.isin(_TRUE | _FALSE)).to_numpy()
        event = text.isin(_TRUE).to_numpy()
    if bad.any():
        raise ValueError(f"{where}: event column {series.name!r} must hold 0/1 or True/False; "
                         f"found other values in {_rows(bad, series)}")
    return event


def _case_ids(df: pd.DataFrame, id_column: str | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Ids from ``id_column`` (or ``case_id`` when present), else row numbers; the columns they used."""
    column = id_column or ("case_id" if "case_id" in df.columns else None)
    if column is None:
        return np.arange(len(df)).astype(str).astype(object), []
    if column not in df.columns:
        raise ValueError(f"{where}: no id column {column!r}")
    ids = df[column]
    duplicated = ids.duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise ValueError(f"{where}: id column {column!r} repeats ids in {_rows(duplicated, ids)}")
    return ids.astype(str).to_numpy(object), [column]


def _as_categorical(covariates: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    unknown = [c for c in columns if c not in covariates.columns]
    if unknown:
        raise ValueError(f"{where}: `categorical` names columns that are not covariates: {unknown}")
    return covariates.astype({c: "category" for c in columns}) if columns else covariates


def load_survival_table(
    path: str | os.PathLike,
    time: str = "time",
    event: str = "event",
    *,
    id_column: str | None = None,
    categorical: Sequence[str] = (),
    drop: Sequence[str] = (),
    kind: str = "survival table",
) -> SurvivalTable:
    """Read a survival table: every column but ``time``, ``event``, the id and ``drop`` is a covariate.

    Read through :func:`ctvl.data.tables.read_table` (``case_id`` as text). Times must be numeric,
    finite and >= 0; zero times are allowed (FLChain has three) and logged. Events must be 0/1 or
    True/False (also as text).

    Args:
        path: ``.csv``, ``.parquet`` or ``.pq`` file.
        time: name of the time column.
        event: name of the event column.
        id_column: column of patient ids; default ``case_id`` when present, else the row number.
        categorical: numeric columns to treat as categorical codes (text columns always are).
        drop: columns to leave out (e.g. a target leak).
        kind: what the table is, for error messages.

    Returns:
        :class:`SurvivalTable`.

    Raises:
        ValueError: missing file or column, no data rows, bad times or events; the message names the
            file, the column and the 1-based data rows.
    """
    df = read_table(path, kind)
    where = f"{kind} {str(path)!r}"
    if df.empty:
        raise ValueError(f"{where} has no data rows")
    if time == event:
        raise ValueError(f"{where}: the time and event columns must differ, both are {time!r}")
    for role, column in (("time", time), ("event", event)):
        if column not in df.columns:
            raise ValueError(f"{where}: no {role} column {column!r} (columns: {list(df.columns)})")
    unknown = [c for c in drop if c not in df.columns]
    if unknown:
        raise ValueError(f"{where}: `drop` names columns that do not exist: {unknown}")
    case_id, id_columns = _case_ids(df, id_column, where)
    covariates = df.drop(columns=[time, event, *id_columns, *drop]).reset_index(drop=True)
    return SurvivalTable(_as_categorical(covariates, categorical, where), _parse_time(df[time], where),
                         _parse_event(df[event], where), case_id, str(path))


def load_bundled_dataset(name: str, *, endpoint: str | None = None, drop_leaks: bool = True) -> SurvivalTable:
    """A data set shipped with scikit-survival (offline) as a :class:`SurvivalTable`.

    ``gbsg2`` (686 patients), ``whas500`` (500), ``aids`` (ACTG320, 1151; endpoint ``"aids"`` by default,
    ``endpoint="death"`` for death), ``flchain`` (7874; 1350 missing ``creatinine`` cells, 3 zero times)
    and ``veterans`` (137). The structured ``y`` becomes ``event``/``time``; categorical columns stay
    pandas categoricals. With ``drop_leaks``, FLChain's ``chapter`` (cause of death, known only for the
    dead: it gives the event away) is dropped. Needs the optional scikit-survival (``ctvl[survival-refs]``).
    """
    from sksurv import datasets  # a heavy import, needed only here

    loaders = {"gbsg2": datasets.load_gbsg2, "whas500": datasets.load_whas500, "aids": datasets.load_aids,
               "flchain": datasets.load_flchain, "veterans": datasets.load_veterans_lung_cancer}
    if name not in loaders:
        raise ValueError(f"unknown bundled data set {name!r}; choose from {BUNDLED_DATASETS}")
    if endpoint is not None and name != "aids":
        raise ValueError(f"`endpoint` applies to 'aids' only, not {name!r}")
    X, y = loaders[name](endpoint=endpoint) if endpoint is not None else loaders[name]()
    event_field, time_field = y.dtype.names
    where = f"scikit-survival data set {name!r}"
    time = _parse_time(pd.Series(y[time_field], name=time_field), where)
    covariates = X.drop(columns=list(_LEAKS.get(name, ())) if drop_leaks else []).reset_index(drop=True)
    return SurvivalTable(covariates, time, y[event_field].astype(bool), X.index.astype(str).to_numpy(object),
                         f"scikit-survival:{name}")


def build_survival_table(cfg: TabularConfig) -> SurvivalTable:
    """The table that ``cfg`` names: ``cfg.table`` (a file) or ``cfg.dataset`` (bundled), exactly one."""
    if bool(cfg.table) == bool(cfg.dataset):
        raise ValueError("set exactly one of `--tabular.table` (a file) and `--tabular.dataset` (bundled)")
    if cfg.dataset:
        table = load_bundled_dataset(cfg.dataset)
        drop = [c for c in cfg.drop if c in table.covariates.columns]
        covariates = _as_categorical(table.covariates.drop(columns=drop), cfg.categorical, table.source)
        return SurvivalTable(covariates, table.time, table.event, table.case_id, table.source)
    return load_survival_table(cfg.table, cfg.time, cfg.event, id_column=cfg.id_column or None,
                               categorical=cfg.categorical, drop=cfg.drop)


# ------------------------------------------------------------------------------------ encoding


def _plain(values) -> list:
    """Python scalars (JSON/YAML-safe) from category levels of any dtype."""
    return [v.item() if isinstance(v, np.generic) else v for v in pd.Index(values).tolist()]


class TabularEncoder:
    """Invertible covariate encoder: DataFrame <-> float matrix, fitted on training rows only.

    - numeric and integer columns: standardised with the training mean and (population) SD (1 where
      constant); ``inverse_transform`` rounds integer columns and restores their dtype.
    - binary columns (bool or 0/1): kept as 0/1; inverse thresholds at 0.5 and restores the dtype.
    - categorical columns: one-hot (one 0/1 column per level, the first level dropped with
      ``drop_first``) or ordinal codes 0..K-1 (unscaled). ``categorical="auto"`` codes ordered
      categoricals as ordinal and others one-hot; ``"onehot"``/``"ordinal"`` force one scheme.
      Inverse of one-hot: the level with the largest score (the dropped level scores 1 - sum of the
      others); of ordinal: the rounded, clipped code. Levels unseen at fit raise ``ValueError``.

    Missing cells (counted per column at fit in ``missing_counts``):

    - numeric, integer, binary and ordinal columns: imputed with the training median (the mode for
      binary and ordinal columns); with ``missing_indicators`` a 0/1 column ``"<name>=<missing>"``
      follows each column that had missing cells at fit, and ``inverse_transform`` puts NaN back where
      it is 1. ``impute=False`` leaves NaN in the matrix instead (for a model that imputes per
      training split, as :func:`ctvl.survival.baselines.fit_and_score` does).
    - one-hot columns: missing is its own level ``"<name>=<missing>"`` when the training column had
      missing cells (inverse gives NaN back); otherwise a missing cell at transform takes the mode.
      Missing text cells (``None``) come back as NaN.

    The fitted state is plain Python (``to_dict``/``from_dict``, ``save``/``load`` as JSON).

    Attributes (after ``fit``):
        columns_ (list[str]): the fitted covariate columns, in order.
        feature_names_ (list[str]): one name per output column.
        missing_counts (dict[str, int]): missing cells per column in the training frame.
    """

    def __init__(self, categorical: str = "auto", drop_first: bool = False, missing_indicators: bool = False,
                 impute: bool = True):
        if categorical not in ("auto", "onehot", "ordinal"):
            raise ValueError(f"`categorical` must be 'auto', 'onehot' or 'ordinal', got {categorical!r}")
        self.categorical, self.drop_first = categorical, drop_first
        self.missing_indicators, self.impute = missing_indicators, impute
        self.specs_: list[dict[str, Any]] = []
        self.missing_counts: dict[str, int] = {}

    # ---------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame) -> TabularEncoder:
        """Learn each column's kind, scale, levels and fill value from ``df`` (n, p)."""
        if len(df) == 0:
            raise ValueError("TabularEncoder.fit needs at least one row")
        if not all(isinstance(c, str) for c in df.columns):
            raise ValueError(f"TabularEncoder needs string column names, got {list(df.columns)}")
        self.missing_counts = {str(c): int(df[c].isna().sum()) for c in df.columns}
        self.specs_ = [self._fit_column(df[c]) for c in df.columns]
        return self

    def _fit_column(self, s: pd.Series) -> dict[str, Any]:
        kind, n_missing = column_kind(s), int(s.isna().sum())
        if n_missing == len(s):
            raise ValueError(f"column {s.name!r} has no observed value to fit on")
        spec: dict[str, Any] = {"name": str(s.name), "kind": kind, "dtype": str(s.dtype)}
        if kind == "categorical":
            cat = s.astype("category") if not isinstance(s.dtype, pd.CategoricalDtype) else s
            ordered = bool(cat.cat.ordered)
            ordinal = self.categorical == "ordinal" or (self.categorical == "auto" and ordered)
            encoding = "ordinal" if ordinal else "onehot"
            codes = cat.cat.codes.to_numpy()
            counts = np.bincount(codes[codes >= 0], minlength=len(cat.cat.categories))
            spec.update(categories=_plain(cat.cat.categories), ordered=ordered, encoding=encoding,
                        fill=int(counts.argmax()), missing_level=encoding == "onehot" and n_missing > 0)
        elif kind == "binary":
            values = s.dropna().to_numpy(np.float64)
            spec["fill"] = float(values.mean() > 0.5)
        else:
            values = s.to_numpy(np.float64, na_value=np.nan)
            scale = float(np.nanstd(values))
            spec.update(mean=float(np.nanmean(values)), scale=scale if scale > 0 else 1.0,
                        fill=float(np.nanmedian(values)))
        spec["indicator"] = bool(self.missing_indicators and n_missing > 0 and not spec.get("missing_level"))
        return spec

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    @property
    def columns_(self) -> list[str]:
        return [spec["name"] for spec in self.specs_]

    @property
    def feature_names_(self) -> list[str]:
        return [name for spec in self.specs_ for name in _names(spec, self.drop_first)]

    def blocks(self) -> list[tuple[str, str, int, int]]:
        """Output columns per role: ``(column name, role, start, stop)`` with role ``"numeric"`` (a standardised
        numeric or integer column), ``"binary"``, ``"onehot"`` (one block of levels), ``"ordinal"`` or
        ``"indicator"`` (a ``<name>=<missing>`` column). The matrix columns ``start:stop`` hold it."""
        self._check_fitted()
        out, start = [], 0
        for spec in self.specs_:
            width = len(_names(spec, self.drop_first)) - int(spec["indicator"])
            role = spec.get("encoding", "numeric") if spec["kind"] == "categorical" else \
                ("binary" if spec["kind"] == "binary" else "numeric")
            out.append((spec["name"], role, start, start + width))
            start += width
            if spec["indicator"]:
                out.append((spec["name"], "indicator", start, start + 1))
                start += 1
        return out

    # ---------------------------------------------------------------- transform
    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """(n, p) frame -> (n, d) float64 matrix, ``d = len(feature_names_)``; extra columns are ignored."""
        self._check_fitted()
        absent = [c for c in self.columns_ if c not in df.columns]
        if absent:
            raise ValueError(f"TabularEncoder.transform: columns {absent} are missing from the frame")
        blocks = [self._encode(spec, df[spec["name"]]) for spec in self.specs_]
        return np.column_stack(blocks) if blocks else np.empty((len(df), 0))

    def _encode(self, spec: dict, s: pd.Series) -> np.ndarray:
        if spec["kind"] == "categorical":
            return self._encode_categorical(spec, s)
        values = s.to_numpy(np.float64, na_value=np.nan) if not pd.api.types.is_bool_dtype(s.dtype) \
            else s.astype("float64").to_numpy(np.float64, na_value=np.nan)
        missing = np.isnan(values)
        if spec["kind"] == "binary":
            if not np.isin(values[~missing], (0.0, 1.0)).all():
                raise ValueError(f"column {spec['name']!r} was binary (0/1) at fit; found other values")
            out = values.copy()
        else:
            out = (values - spec["mean"]) / spec["scale"]
        if self.impute:
            fill = spec["fill"] if spec["kind"] == "binary" else (spec["fill"] - spec["mean"]) / spec["scale"]
            out[missing] = fill
        return np.column_stack([out, missing.astype(np.float64)]) if spec["indicator"] else out[:, None]

    def _encode_categorical(self, spec: dict, s: pd.Series) -> np.ndarray:
        categories = spec["categories"]
        codes = pd.Categorical(s.astype(object), categories=categories).codes.astype(np.int64)
        missing = s.isna().to_numpy()
        unseen = (codes < 0) & ~missing
        if unseen.any():
            raise ValueError(f"column {spec['name']!r} has levels unseen at fit: "
                             f"{sorted({str(v) for v in s[unseen]})} (known: {categories})")
        if spec["encoding"] == "ordinal":
            out = codes.astype(np.float64)
            out[missing] = spec["fill"] if self.impute else np.nan
            return np.column_stack([out, missing.astype(np.float64)]) if spec["indicator"] else out[:, None]
        if not spec["missing_level"]:
            codes[missing] = spec["fill"]
        onehot = np.zeros((len(s), len(categories) + 1))  # the last column: the missing level
        onehot[np.arange(len(s)), np.where(codes < 0, len(categories), codes)] = 1.0
        keep = slice(1 if self.drop_first else 0, None if spec["missing_level"] else len(categories))
        return onehot[:, keep]

    # ---------------------------------------------------------------- inverse
    def inverse_transform(self, X) -> pd.DataFrame:
        """(n, d) matrix -> frame of the fitted columns in their original dtypes, levels and order."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        widths = [len(_names(spec, self.drop_first)) for spec in self.specs_]
        if X.ndim != 2 or X.shape[1] != sum(widths):
            raise ValueError(f"inverse_transform needs shape (n, {sum(widths)}), got {X.shape}")
        bounds = np.cumsum([0, *widths])
        return pd.DataFrame({spec["name"]: self._decode(spec, X[:, a:b])
                             for spec, a, b in zip(self.specs_, bounds[:-1], bounds[1:])})

    def _decode(self, spec: dict, block: np.ndarray):
        if spec["kind"] == "categorical":
            return self._decode_categorical(spec, block)
        values = block[:, 0] if spec["kind"] == "binary" else block[:, 0] * spec["scale"] + spec["mean"]
        if spec["kind"] == "binary":
            values = np.where(np.isnan(values), np.nan, (values > 0.5).astype(np.float64))
        if spec["indicator"]:
            values = np.where(block[:, 1] > 0.5, np.nan, values)
        if spec["kind"] == "integer":
            values = np.round(values)
        return restore_dtype(pd.Series(values), spec["dtype"])

    def _decode_categorical(self, spec: dict, block: np.ndarray):
        k = len(spec["categories"])
        if spec["encoding"] == "ordinal":
            values = block[:, 0]
            codes = np.where(np.isnan(values), -1, np.clip(np.round(np.nan_to_num(values)), 0, k - 1))
            if spec["indicator"]:
                codes = np.where(block[:, 1] > 0.5, -1, codes)
        else:
            scores = np.column_stack([1.0 - block.sum(1), block]) if self.drop_first else block
            codes = scores.argmax(1)
            codes = np.where(codes >= k, -1, codes)  # the missing level
        cat = pd.Categorical.from_codes(codes.astype(np.int64), categories=spec["categories"],
                                        ordered=spec["ordered"])
        if spec["dtype"] == "category":
            return cat
        return restore_dtype(pd.Series(np.asarray(cat, dtype=object)), spec["dtype"])

    # ---------------------------------------------------------------- state
    def to_dict(self) -> dict[str, Any]:
        """The fitted encoder as plain Python (JSON/YAML-safe)."""
        self._check_fitted()
        return {"format": "ctvl.TabularEncoder", "version": 1,
                "options": {"categorical": self.categorical, "drop_first": self.drop_first,
                            "missing_indicators": self.missing_indicators, "impute": self.impute},
                "columns": [dict(spec) for spec in self.specs_], "missing_counts": dict(self.missing_counts)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TabularEncoder:
        if state.get("format") != "ctvl.TabularEncoder" or state.get("version") != 1:
            raise ValueError(f"not a ctvl.TabularEncoder version 1 state: {state.get('format')!r} "
                             f"version {state.get('version')!r}")
        encoder = cls(**state["options"])
        encoder.specs_ = [dict(spec) for spec in state["columns"]]
        encoder.missing_counts = {str(k): int(v) for k, v in state["missing_counts"].items()}
        return encoder

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TabularEncoder:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def _check_fitted(self) -> None:
        if not self.specs_:
            raise ValueError("TabularEncoder is not fitted (call fit() or load())")


def _names(spec: dict, drop_first: bool) -> list[str]:
    """Output column names of one fitted column."""
    name = spec["name"]
    if spec["kind"] == "categorical" and spec["encoding"] == "onehot":
        levels = [f"{name}={level}" for level in spec["categories"]][1 if drop_first else 0:]
        return levels + ([f"{name}={MISSING}"] if spec["missing_level"] else [])
    return [name] + ([f"{name}={MISSING}"] if spec["indicator"] else [])


def restore_dtype(values: pd.Series, dtype: str) -> pd.Series:
    """Cast decoded values back to ``dtype``; numpy integers/bools with NaN become pandas nullable dtypes."""
    if values.isna().any():
        nullable = {"b": "boolean", "i": "Int64", "u": "UInt64"}
        kind = np.dtype(dtype).kind if dtype in np.sctypeDict else ""
        dtype = nullable.get(kind, dtype)
    return values.astype(dtype)


def build_encoder(cfg: TabularConfig) -> TabularEncoder:
    """An unfitted :class:`TabularEncoder` with the options of ``cfg``."""
    return TabularEncoder(categorical=cfg.encoding, drop_first=cfg.drop_first,
                          missing_indicators=cfg.missing_indicators)


# ------------------------------------------------------------------------------------ splits


class TableSplit(NamedTuple):
    """Row indices (sorted int arrays) of each part; ``validation`` is empty without a validation part."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_table(table: SurvivalTable | np.ndarray, test_fraction: float = 0.2, seed: int = 0,
                validation_fraction: float = 0.0) -> TableSplit:
    """Seeded train/validation/test split of the rows, stratified on the event.

    Args:
        table: a :class:`SurvivalTable` or its (n,) event array.
        test_fraction: share of all rows in the test part, in [0, 1).
        seed: the same seed gives the same split.
        validation_fraction: share of all rows in the validation part (taken from the non-test rows).

    Returns:
        :class:`TableSplit` of index arrays; ``table.subset(split.train)`` gives the rows as a table.
    """
    from sklearn.model_selection import train_test_split  # heavy import, needed only here

    event = np.asarray(table.event if isinstance(table, SurvivalTable) else table, dtype=bool)
    fractions = (test_fraction, validation_fraction)
    if not (all(0 <= f < 1 for f in fractions) and sum(fractions) < 1):
        raise ValueError(f"need 0 <= test_fraction, validation_fraction and their sum < 1, "
                         f"got {test_fraction} and {validation_fraction}")
    if min(event.sum(), (~event).sum()) < 2:
        raise ValueError(f"an event-stratified split needs >= 2 events and >= 2 censorings, "
                         f"got {int(event.sum())} and {int((~event).sum())}")

    def cut(index: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        if fraction == 0:
            return index, index[:0]
        keep, out = train_test_split(index, test_size=fraction, stratify=event[index], random_state=seed)
        return keep, out

    rest, test = cut(np.arange(event.size), test_fraction)
    train, validation = cut(rest, validation_fraction / (1 - test_fraction))
    return TableSplit(np.sort(train), np.sort(validation), np.sort(test))


# ------------------------------------------------------------------------------------ baselines


def perturb_covariates(covariates: pd.DataFrame, copies: int, scale: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """``copies`` perturbed versions of every row, for teacher-labelled extra training prompts.

    Numeric columns move by ``U(-scale, scale)`` times their SD in ``covariates``, clipped to the
    column's observed range and rounded when the column holds integers; other columns (categorical,
    binary) and missing cells are kept. Rows come out copy by copy: ``copies * len(covariates)`` rows
    with a fresh RangeIndex; the same seed gives the same rows.
    """
    if copies < 0 or scale < 0:
        raise ValueError(f"need copies >= 0 and scale >= 0, got {copies} and {scale}")
    rng = np.random.default_rng(seed)
    out = pd.concat([covariates] * copies, ignore_index=True) if copies else covariates.iloc[:0].copy()
    for name in covariates.columns:
        col = covariates[name]
        if column_kind(col) not in ("numeric", "integer") or not len(out):
            continue
        values = col.to_numpy(dtype=np.float64)
        lo, hi, sd = np.nanmin(values), np.nanmax(values), np.nanstd(values)
        moved = np.tile(values, copies) + rng.uniform(-scale, scale, len(out)) * sd
        moved = np.clip(moved, lo, hi)
        finite = values[np.isfinite(values)]
        if finite.size and np.all(finite == np.round(finite)):
            moved = np.round(moved)
        out[name] = moved.astype(col.dtype) if column_kind(col) == "integer" else moved
    return out


def load_reference_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A bundled data set as ``(X, event, time, feature_names)`` for :mod:`ctvl.survival.baselines`.

    Categorical columns one-hot encoded with the first level dropped, numeric columns standardised on
    the whole set (a no-op for ``fit_and_score``, which re-standardises on the training split);
    missing numeric cells stay NaN so that ``fit_and_score`` imputes the training median. FLChain's
    ``chapter`` (a target leak) is dropped.

    Returns:
        ``X`` (n, d) float64, ``event`` (n,) bool, ``time`` (n,) float64, column names.
    """
    table = load_bundled_dataset(name)
    encoder = TabularEncoder(categorical="onehot", drop_first=True, impute=False)
    return encoder.fit_transform(table.covariates), table.event, table.time, encoder.feature_names_
