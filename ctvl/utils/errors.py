"""Per-item error log shared by every ctvl batch job.

A batch job (preprocessing, prediction, ...) never stops on one bad input: it records the
failure as a row ``case_id,file,stage,reason`` in an ``errors.csv`` and goes on. Rows are
appended and flushed one at a time, so a killed job keeps every row written so far.

Entry points: :class:`ErrorLog` (write) and :func:`load_errors` (read).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "errors.csv")
    >>> log = ErrorLog(path)
    >>> log.add("case_1", "/data/case_1.nii.gz", "load", "truncated file\\nEOF")
    >>> load_errors(path).iloc[0].tolist()
    ['case_1', '/data/case_1.nii.gz', 'load', 'truncated file EOF']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

ERROR_COLUMNS = ("case_id", "file", "stage", "reason")
MAX_REASON_CHARS = 500


class ErrorLog:
    """Append-only ``errors.csv`` writer (one row per failed item).

    Args:
        path: CSV file to write; its folder is created.
        mode: "w" starts a fresh log (the errors of this run only), "a" appends to an existing one.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w"):
        if mode not in ("w", "a"):
            raise ValueError(f"`mode` must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        if mode == "w" or not self.path.exists() or self.path.stat().st_size == 0:
            self._write_row(ERROR_COLUMNS, "w")

    def add(self, case_id: str, file: str, stage: str, reason: str) -> None:
        """Record one failure; newlines in ``reason`` are collapsed and long reasons truncated."""
        reason = " ".join(str(reason).split())
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        self._write_row((str(case_id), str(file), str(stage), reason), "a")
        self.count += 1

    def _write_row(self, row, mode: str) -> None:
        # One write per row in append mode: a killed job leaves whole rows only.
        with open(self.path, mode, newline="") as fh:
            csv.writer(fh).writerow(row)


def load_errors(path: str | os.PathLike) -> pd.DataFrame:
    """Read an ``errors.csv`` (all columns as strings); a missing file gives an empty frame."""
    if not Path(path).exists():
        return pd.DataFrame(columns=list(ERROR_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)
