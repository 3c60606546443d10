"""Per-case tables on disk: CSV or Parquet, read one way everywhere.

Manifests, clinical tables, label tables and prediction files are all keyed by ``case_id``. Read
from CSV, pandas would turn ids such as ``007`` into the integer 7; :func:`read_table` reads the id
columns as strings (from CSV and Parquet alike) and names the file in every error.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cases.csv"
    >>> _ = path.write_text("case_id,age\\n007,64\\n")
    >>> read_table(path).loc[0, "case_id"]
    '007'
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

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
        ValueError: the file does not exist or has another suffix; the message names it.
    """
    path = Path(path)
    fmt = fmt or table_format(path, kind)
    if not path.is_file():
        raise ValueError(f"{kind} {str(path)!r} does not exist")
    if fmt == "csv":
        return pd.read_csv(path, dtype=dict.fromkeys(ID_COLUMNS, str))
    df = pd.read_parquet(path)
    for column in (c for c in ID_COLUMNS if c in df.columns):
        df[column] = df[column].where(df[column].isna(), df[column].astype(str))  # ids as str, NaN kept
    return df
