"""Per-item error log shared by every ctvl batch job.

A batch job (preprocessing, prediction, ...) never stops on one bad input: it records the
failure as a row ``case_id,file,stage,reason,location`` in an ``errors.csv`` and goes on. Rows are
appended and flushed one at a time, so a killed job keeps every row written so far.

``location`` says where a rejected manifest row is (``line 7`` of a CSV file, the header being
line 1, or ``data row 3`` of a Parquet file or DataFrame); it is empty for the failures of a case
(a file that cannot be read, a model error, ...). Logs written before the column existed still
read, with an empty ``location``.

Entry points: :class:`ErrorLog` (write) and :func:`load_errors` (read).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "errors.csv")
    >>> log = ErrorLog(path)
    >>> log.add("case_1", "/data/case_1.nii.gz", "load", "truncated file\\nEOF")
    >>> log.add("", "b.nii.gz", "input", "empty `case_id`", location="line 3")
    >>> rows = load_errors(path).values.tolist()
    >>> rows[0]
    ['case_1', '/data/case_1.nii.gz', 'load', 'truncated file EOF', '']
    >>> rows[1]
    ['', 'b.nii.gz', 'input', 'empty `case_id`', 'line 3']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

ERROR_COLUMNS = ("case_id", "file", "stage", "reason", "location")
MAX_REASON_CHARS = 500


class ErrorLog:
    """Append-only ``errors.csv`` writer (one row per failed item).

    Args:
        path: CSV file to write; its folder is created.
        mode: "w" starts a fresh log (the errors of this run only), "a" appends to an existing one. A log
            written before the ``location`` column existed keeps its four columns; a location then goes
            in front of the reason.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w"):
        if mode not in ("w", "a"):
            raise ValueError(f"`mode` must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.columns = ERROR_COLUMNS
        if mode == "w" or not self.path.exists() or self.path.stat().st_size == 0:
            self._write_row(ERROR_COLUMNS, "w")
        else:
            self.columns = _header(self.path)

    def add(self, case_id: str, file: str, stage: str, reason: str, location: str = "") -> None:
        """Record one failure; newlines in ``reason`` are collapsed and long reasons truncated.

        ``location``: where the item is in the job's input (``"line 7"``), for rejected manifest rows.
        """
        if location and "location" not in self.columns:
            reason = f"{location}: {reason}"
        reason = " ".join(str(reason).split())
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        row = (str(case_id), str(file), str(stage), reason, str(location))
        self._write_row(row[: len(self.columns)], "a")
        self.count += 1

    def _write_row(self, row, mode: str) -> None:
        # One write per row in append mode: a killed job leaves whole rows only.
        with open(self.path, mode, newline="") as fh:
            csv.writer(fh).writerow(row)


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="") as fh:
        header = tuple(next(csv.reader(fh), ()))
    # An older log of ours has the first columns of ERROR_COLUMNS; rows appended to it keep its width.
    return header if header == ERROR_COLUMNS[: len(header)] and len(header) >= 4 else ERROR_COLUMNS


def load_errors(path: str | os.PathLike) -> pd.DataFrame:
    """Read an ``errors.csv`` (all columns as strings, :data:`ERROR_COLUMNS` first); a missing file gives
    an empty frame, and a log written before the ``location`` column gets an empty one."""
    if not Path(path).exists():
        return pd.DataFrame(columns=list(ERROR_COLUMNS))
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ERROR_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    return df[[*ERROR_COLUMNS, *(c for c in df.columns if c not in ERROR_COLUMNS)]]
