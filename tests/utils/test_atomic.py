"""Atomic writes: the old file or the new one, never half; a failed write leaves no temp file."""

import ast
from pathlib import Path

import pandas as pd
import pytest

from ctvl.data.tables import read_table, write_table
from ctvl.utils.atomic import atomic_open

ROOT = Path(__file__).resolve().parents[2] / "ctvl"


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "index.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["index.csv"]


def test_atomic_open_refuses_appending(tmp_path):
    with pytest.raises(ValueError, match="no 'w'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


@pytest.mark.parametrize("name", ["t.csv", "sub/t.parquet", "t.pq"])
def test_write_table_round_trips_ids_as_strings(tmp_path, name):
    df = pd.DataFrame({"case_id": ["007", "12"], "risk": [0.5, -1.0]})
    path = write_table(df, tmp_path / name)
    pd.testing.assert_frame_equal(read_table(path), df)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_table_names_a_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"t\.xlsx: a manifest must end in"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx", "manifest")


def _renames(node: ast.AST) -> bool:
    """``os.replace(a, b)`` / ``os.rename(a, b)`` or ``path.replace(b)`` / ``path.rename(b)`` (one argument)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("replace", "rename")):
        return False
    owner = node.func.value
    return (isinstance(owner, ast.Name) and owner.id == "os") or (len(node.args) == 1 and not node.keywords)


def test_only_the_atomic_helper_renames_files():
    """Every temp-file + rename write goes through ``ctvl.utils.atomic``."""
    renamers = {str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py")
                if any(_renames(node) for node in ast.walk(ast.parse(path.read_text())))}
    assert renamers == {"utils/atomic.py"}
