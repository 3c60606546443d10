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

Entry points: :func:`load_manifest`, :func:`write_manifest`, :func:`validate_manifest`.
Errors name the file and the offending rows (0-based data rows: CSV line = row + 2).

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"case_id": ["a", "b"], "image": ["/d/a.nii.gz", "/d/b"],
    ...                    "time": [3.5, 1.0], "event": [1, 0]})
    >>> validate_manifest(df)["event"].tolist()
    [1, 0]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ctvl.data.tables import read_table, table_format

REQUIRED_COLUMNS = ("case_id", "image")
SURVIVAL_COLUMNS = ("time", "event")
_MAX_ROWS_SHOWN = 10


def load_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest (``.csv``, ``.parquet``/``.pq``); ``image`` paths become absolute.

    Raises:
        ValueError: missing required columns, empty or duplicate case ids, non-numeric or negative
            times, events not in {0, 1}; the message names the file and the rows.
    """
    path = Path(path)
    return validate_manifest(read_table(path, "manifest"), source=str(path), base_dir=path.parent)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def validate_manifest(
    df: pd.DataFrame, source: str = "<DataFrame>", base_dir: Optional[str | os.PathLike] = None
) -> pd.DataFrame:
    """Check a manifest frame and return a normalised copy.

    Args:
        df: the manifest rows.
        source: name used in error messages (the file).
        base_dir: folder that relative ``image`` paths are resolved against (default: the working directory).

    Returns:
        Copy with a fresh RangeIndex, ``case_id``/``image`` as str (``image`` absolute), ``time`` float64 and
        ``event`` int64 (``Int64`` when some cases have no follow-up).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; found {list(df.columns)}")
    df = df.reset_index(drop=True).copy()
    for col in REQUIRED_COLUMNS:
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            raise ValueError(f"{source}: empty `{col}` in rows {_rows(empty)}")
        df[col] = df[col].astype(str).str.strip()
    dup = df["case_id"].duplicated(keep=False)
    if dup.any():
        ids = sorted(set(df.loc[dup, "case_id"]))[:_MAX_ROWS_SHOWN]
        raise ValueError(f"{source}: duplicate case_id(s) {ids} in rows {_rows(dup)}")
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.getcwd()
    df["image"] = [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for p in df["image"]]
    return _validate_survival(df, source)


def _validate_survival(df: pd.DataFrame, source: str) -> pd.DataFrame:
    present = [c for c in SURVIVAL_COLUMNS if c in df.columns]
    if not present:
        return df
    if len(present) == 1:
        raise ValueError(f"{source}: `time` and `event` go together; found only `{present[0]}`")
    time = pd.to_numeric(df["time"], errors="coerce")
    bad = time.isna() & df["time"].notna()
    if bad.any():
        raise ValueError(f"{source}: `time` must be numeric; rows {_rows(bad)}")
    event_raw = df["event"].astype("float64") if df["event"].dtype == bool else df["event"]
    event = pd.to_numeric(event_raw, errors="coerce")
    bad = (event.isna() & df["event"].notna()) | (event.notna() & ~event.isin([0, 1]))
    if bad.any():
        raise ValueError(f"{source}: `event` must be 0 or 1; rows {_rows(bad)}")
    if (time < 0).any():
        raise ValueError(f"{source}: negative `time` in rows {_rows(time < 0)}")
    half = time.isna() != event.isna()
    if half.any():
        raise ValueError(f"{source}: `time` and `event` must be set for both or neither; rows {_rows(half)}")
    df["time"] = time.astype("float64")
    df["event"] = event.astype("Int64") if event.isna().any() else event.astype(np.int64)
    return df


def _rows(mask: pd.Series) -> str:
    rows = np.flatnonzero(np.asarray(mask)).tolist()
    more = f" (+{len(rows) - _MAX_ROWS_SHOWN} more)" if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"{rows[:_MAX_ROWS_SHOWN]}{more}"


def _is_inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), folder]) == folder
    except ValueError:  # different drives
        return False
