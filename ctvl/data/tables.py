"""Per-case tables on disk: CSV or Parquet, read one way everywhere and written atomically.

Manifests, clinical tables, label tables and prediction files are all keyed by ``case_id``. Read
from CSV, pandas would turn ids such as ``007`` into the integer 7; :func:`read_table` reads the id
columns as strings (from CSV and Parquet alike) and names the file in every error.
:func:`read_table_rows` also says where each row is in the file, for per-row error messages: the
CSV line it starts on (the header is line 1; a quoted field holding line breaks moves the next rows
down), or ``data row N`` (1-based) for Parquet.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cases.csv"
    >>> _ = path.write_text('case_id,age,note\\n007,64,"two\\nlines"\\n12,71,\\n')
    >>> read_table(path).loc[0, "case_id"]
    '007'
    >>> read_table_rows(path)[1]
    ['line 2', 'line 4']
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Optional

import pandas as pd

from ctvl.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = (".csv", *PARQUET_SUFFIXES)
ID_COLUMNS = ("case_id", "image")
"""Columns always read as strings (when present)."""


def table_format(path: str | os.PathLike, kind: str = "table") -> str:
    """``"csv"`` or ``"parquet"`` from the suffix; ``ValueError`` naming the file for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ValueError(f"{path}: a {kind} must end in .csv, .parquet or .pq")


def read_table(path: str | os.PathLike, kind: str = "table", fmt: str | None = None) -> pd.DataFrame:
    """Read a ``.csv`` / ``.parquet`` / ``.pq`` table; ``case_id`` and ``image`` come back as ``str``.

    Args:
        path: the file.
        kind: what the table is ("manifest", "clinical table", ...), for the error messages.
        fmt: ``"csv"`` or ``"parquet"`` for a file whose suffix does not say (e.g. a per-rank shard).

    Raises:
        ValueError: the file does not exist, has another suffix or cannot be parsed as a table; the
            message names it.
    """
    path = Path(path)
    fmt = fmt or table_format(path, kind)
    if not path.is_file():
        raise ValueError(f"{kind} {str(path)!r} does not exist")
    try:
        if fmt == "csv":
            return pd.read_csv(path, dtype=dict.fromkeys(ID_COLUMNS, str))
        df = pd.read_parquet(path)
    except (ValueError, OSError) as exc:  # pandas/pyarrow parser errors are ValueErrors
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read this {kind} as a {fmt} table: {reason}") from exc
    for column in (c for c in ID_COLUMNS if c in df.columns):
        df[column] = df[column].where(df[column].isna(), df[column].astype(str))  # ids as str, NaN kept
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike, kind: str = "table", fmt: str | None = None,
                **kwargs) -> Path:
    """Write ``df`` to a ``.csv`` / ``.parquet`` / ``.pq`` file atomically (``ctvl.utils.atomic``).

    Args:
        df: the table; written without its index unless ``index=True`` is passed.
        path: the file; its folder is created.
        kind, fmt: as in :func:`read_table`.
        kwargs: passed to ``DataFrame.to_csv`` / ``to_parquet``.
    """
    path = Path(path)
    fmt = fmt or table_format(path, kind)
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, **kwargs)
        else:
            df.to_parquet(tmp, **kwargs)
    return path


def read_table_rows(
    path: str | os.PathLike, kind: str = "table", fmt: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """:func:`read_table`, plus where each row is in the file, for messages about single rows.

    Returns:
        ``(df, locations)``: ``locations[i]`` is ``"line N"`` for CSV (the line the row starts on; the
        header is line 1) and ``"data row N"`` (1-based) for Parquet, or for a CSV whose records the
        line count cannot match to pandas' rows.
    """
    fmt = fmt or table_format(path, kind)
    df = read_table(path, kind, fmt)
    if fmt == "csv":
        lines = csv_record_lines(path)
        if lines is not None and len(lines) == len(df):
            return df, [f"line {n}" for n in lines]
        logger.warning("%s: cannot match the file's lines to its %d rows; rows are numbered as data rows",
                       path, len(df))
    return df, data_row_labels(len(df))


def data_row_labels(n: int) -> list[str]:
    """``["data row 1", ..., "data row n"]``: where rows are when there are no file lines to point at."""
    return [f"data row {i}" for i in range(1, n + 1)]


def csv_record_lines(path: str | os.PathLike) -> Optional[list[int]]:
    """The line (1-based; the header is line 1) each data record of a CSV file starts on.

    Records are split with the :mod:`csv` module, so a quoted field holding line breaks (a report) spans
    several lines. Blank and whitespace-only lines are skipped, as ``pandas.read_csv`` skips them. None
    when the file cannot be split this way.
    """
    starts, header_seen = [], False
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            while True:
                start = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    return starts
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if header_seen:
                    starts.append(start)
                header_seen = True
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
