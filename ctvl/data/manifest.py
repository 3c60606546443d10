"""Generic survival manifest: one row per CT volume, as CSV or Parquet.

Columns:
    case_id (str, required): unique id of the volume/case. Never put patient identifiers here.
    image (str, required): NIfTI/NRRD file or DICOM series folder; relative paths are resolved against
        the manifest's folder.
    report (str, optional): free-text radiology report.
    time (float, optional), event (0/1, optional): follow-up time and event indicator; both columns or
        neither, and per row both set or both empty (a case without follow-up).
    split (str, optional): e.g. "train", "validation", "test".
    any other column: clinical covariates (age, sex, stage, ...), kept as they are.

Rows are checked one by one. A bad row (empty or duplicate ``case_id``, empty ``image``, an ``image``
that is not a path, survival values out of range) is a :class:`RejectedRow` naming where it is: the
CSV line it starts on (the header is line 1; a quoted report holding line breaks counts all its
lines), or ``data row N`` (1-based) for a Parquet file or a DataFrame. Of rows sharing a case id,
the first is the case and the later ones are rejected.

* Batch jobs (``ctvl preprocess``, ``ctvl predict``) use :func:`load_manifest_rows` /
  :func:`check_manifest`: rejected rows go to ``errors.csv`` (:func:`record_rejected`, stage ``input``)
  and the other rows run.
* Training reads with :func:`load_manifest` / :func:`validate_manifest`, which raise ``ValueError`` on
  any rejected row, listing them.

Only a table that lacks a required column (or has ``time`` without ``event``) is unusable as a whole:
every entry point raises ``ValueError`` for it.

Entry points: :func:`load_manifest`, :func:`load_manifest_rows`, :func:`write_manifest`,
:func:`validate_manifest`, :func:`check_manifest`.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"case_id": ["a", "b", "a"], "image": ["/d/a.nii.gz", "/d/b", "/d/c"],
    ...                    "time": [3.5, 1.0, 2.0], "event": [1, 0, 1]})
    >>> validate_manifest(df.head(2))["event"].tolist()
    [1, 0]
    >>> rows = check_manifest(df)
    >>> rows.table["case_id"].tolist(), rows.rejected[0].location, rows.rejected[0].reason
    (['a', 'b'], 'data row 3', "duplicate case_id 'a' (first at data row 1)")
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ctvl.data.tables import data_row_labels, read_table_rows, table_format, write_table
from ctvl.utils.errors import ErrorLog

REQUIRED_COLUMNS = ("case_id", "image")
SURVIVAL_COLUMNS = ("time", "event")
INPUT_STAGE = "input"
"""``errors.csv`` stage of a rejected manifest row."""
_MAX_ROWS_SHOWN = 10


@dataclass(frozen=True)
class RejectedRow:
    """A manifest row that cannot be used.

    Attributes:
        location: ``"line 7"`` (CSV; the header is line 1) or ``"data row 3"`` (Parquet/DataFrame, 1-based).
        case_id: the row's id ("" when empty or unusable).
        image: the row's ``image`` cell as written ("" when empty).
        reason: what is wrong (several problems joined by "; ").
    """

    location: str
    case_id: str
    image: str
    reason: str


@dataclass
class ManifestRows:
    """A manifest split into its usable rows and the rejected ones.

    Attributes:
        table: the usable rows, normalised as :func:`validate_manifest` returns them (fresh RangeIndex).
        rejected: the other rows, in file order.
    """

    table: pd.DataFrame
    rejected: list[RejectedRow]


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest (``.csv``, ``.parquet``/``.pq``); ``image`` paths become absolute.

    Raises:
        ValueError: the file cannot be read as a table or lacks a required column, or any row is rejected
            (empty or duplicate case ids, non-numeric or negative times, events not in {0, 1}, ...); the
            message names the file and each row's line.
    """
    path = Path(path)
    df, locations = read_table_rows(path, "manifest")
    return validate_manifest(df, source=str(path), base_dir=path.parent, locations=locations)


def load_manifest_rows(path: str | os.PathLike) -> ManifestRows:
    """Read a manifest for a batch job: bad rows are returned as :class:`RejectedRow` (with their CSV line),
    not raised.

    Raises:
        ValueError: the file cannot be read as a table, or lacks a required column.
    """
    path = Path(path)
    df, locations = read_table_rows(path, "manifest")
    return check_manifest(df, source=str(path), base_dir=path.parent, locations=locations)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate ``df`` and write it (CSV or Parquet by suffix) atomically.

    Relative ``image`` paths are taken as relative to the manifest's folder (as :func:`load_manifest`
    reads them); paths inside that folder are written relative to it, so the folder can move.
    """
    path = Path(path)
    fmt = table_format(path, "manifest")
    df = validate_manifest(df, source=str(path), base_dir=path.parent)
    base = os.path.abspath(path.parent)
    df["image"] = [os.path.relpath(p, base) if _is_inside(p, base) else p for p in df["image"]]
    return write_table(df, path, "manifest", fmt)


def validate_manifest(
    df: pd.DataFrame, source: str = "<DataFrame>", base_dir: Optional[str | os.PathLike] = None,
    locations: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """Check a manifest frame and return a normalised copy; any rejected row raises.

    Args:
        df: the manifest rows.
        source: name used in error messages (the file).
        base_dir: folder that relative ``image`` paths are resolved against (default: the working directory).
        locations: where each row is in ``source`` (:func:`ctvl.data.tables.read_table_rows`); default
            ``data row 1``, ``data row 2``, ...

    Returns:
        Copy with a fresh RangeIndex, ``case_id``/``image`` as str (``image`` absolute), ``time`` float64 and
        ``event`` int64 (``Int64`` when some cases have no follow-up).

    Raises:
        ValueError: a required column is missing, or rows are rejected; the message lists them.
    """
    rows = check_manifest(df, source, base_dir, locations)
    if rows.rejected:
        raise ValueError(f"{source}: {describe_rejected(rows.rejected)}")
    return rows.table


def check_manifest(
    df: pd.DataFrame, source: str = "<DataFrame>", base_dir: Optional[str | os.PathLike] = None,
    locations: Optional[Sequence[str]] = None,
) -> ManifestRows:
    """Check each row of a manifest frame: the usable rows (normalised) and the rejected ones.

    Args: as :func:`validate_manifest`.

    Raises:
        ValueError: a required column is missing, or ``time``/``event`` comes without the other.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; found {list(df.columns)}")
    survival = [c for c in SURVIVAL_COLUMNS if c in df.columns]
    if len(survival) == 1:
        raise ValueError(f"{source}: `time` and `event` go together; found only `{survival[0]}`")
    df = df.reset_index(drop=True)
    where = list(locations) if locations is not None else data_row_labels(len(df))
    assert len(where) == len(df), f"{len(where)} locations for {len(df)} rows"
    ids = [_cell_text(v, "case_id", (str, numbers.Number), "text or a number") for v in df["case_id"]]
    images = [_cell_text(v, "image", (str, os.PathLike), "a path") for v in df["image"]]
    problems = [[p for p in (cid[1], img[1]) if p] for cid, img in zip(ids, images)]
    first: dict[str, int] = {}
    for i, (cid, _) in enumerate(ids):
        if cid is not None and first.setdefault(cid, i) != i:
            problems[i].append(f"duplicate case_id {cid!r} (first at {where[first[cid]]})")
    time, event = _check_survival(df, problems) if survival else (None, None)
    ok = np.array([not p for p in problems], dtype=bool)
    rejected = [RejectedRow(where[i], ids[i][0] or "", _raw(df["image"].iat[i]), "; ".join(problems[i]))
                for i in np.flatnonzero(~ok)]
    table = df.loc[ok].reset_index(drop=True)
    table.attrs = dict(df.attrs)
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.getcwd()
    table["case_id"] = [cid for (cid, _), good in zip(ids, ok) if good]
    table["image"] = [os.path.normpath(os.path.join(base, os.path.expanduser(p)))
                      for (p, _), good in zip(images, ok) if good]
    if survival:
        table["time"] = time[ok].to_numpy(dtype="float64")
        kept = event[ok].reset_index(drop=True)
        table["event"] = kept.astype("Int64") if kept.isna().any() else kept.astype(np.int64)
    return ManifestRows(table, rejected)


def record_rejected(errors: ErrorLog, rejected: Sequence[RejectedRow]) -> None:
    """One ``errors.csv`` row (stage ``input``, with its location) per rejected manifest row."""
    for row in rejected:
        errors.add(row.case_id, row.image, INPUT_STAGE, row.reason, location=row.location)


def describe_rejected(rejected: Sequence[RejectedRow]) -> str:
    """``"2 invalid row(s):\\n  line 3: empty `image`\\n  line 5: ..."`` (the first few rows, one a line)."""
    lines = [f"\n  {r.location}: {r.reason}" for r in rejected[:_MAX_ROWS_SHOWN]]
    if len(rejected) > _MAX_ROWS_SHOWN:
        lines.append(f"\n  (+{len(rejected) - _MAX_ROWS_SHOWN} more)")
    counted = any(r.location.startswith("data row") for r in rejected)
    return f"{len(rejected)} invalid row(s){' (data rows counted from 1)' if counted else ''}:{''.join(lines)}"


def _cell_text(value, column: str, types: tuple, what: str) -> tuple[Optional[str], str]:
    """``(stripped text, "")`` for a usable cell, else ``(None, problem)``."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None, f"empty `{column}`"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, types):
        return None, f"`{column}` must be {what}, got {type(value).__name__} {_raw(value)!r}"
    text = (os.fspath(value) if isinstance(value, os.PathLike) else str(value)).strip()
    return (text, "") if text else (None, f"empty `{column}`")


def _raw(value) -> str:
    """A cell as text for a message (stripped; "" when empty), at most 200 characters."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    text = (os.fspath(value) if isinstance(value, os.PathLike) else str(value)).strip()
    return text if len(text) <= 200 else text[:197] + "..."


def _check_survival(df: pd.DataFrame, problems: list[list[str]]) -> tuple[pd.Series, pd.Series]:
    """Numeric ``time``/``event`` (NaN where empty or bad); each row's survival problems appended."""
    time = _numeric(df["time"])
    event = _numeric(df["event"].astype("float64") if df["event"].dtype == bool else df["event"])
    bad_time = time.isna() & df["time"].notna()
    bad_event = (event.isna() & df["event"].notna()) | (event.notna() & ~event.isin([0, 1]))
    for i in range(len(df)):
        if bad_time.iat[i]:
            problems[i].append(f"`time` must be numeric, got {_raw(df['time'].iat[i])!r}")
        elif time.iat[i] < 0:
            problems[i].append(f"negative `time` {time.iat[i]:g}")
        if bad_event.iat[i]:
            problems[i].append(f"`event` must be 0 or 1, got {_raw(df['event'].iat[i])!r}")
        if not (bad_time.iat[i] or bad_event.iat[i]) and time.isna().iat[i] != event.isna().iat[i]:
            problems[i].append("`time` and `event` must be set for both or neither")
    return time, event


def _numeric(column: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(column, errors="coerce").astype("float64")
    except (TypeError, ValueError):  # cells that are lists, dicts, ...
        return column.map(lambda v: pd.to_numeric(v, errors="coerce") if pd.api.types.is_scalar(v) else np.nan
                          ).astype("float64")


def _is_inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), folder]) == folder
    except ValueError:  # different drives
        return False
