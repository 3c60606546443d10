"""One bad manifest row never stops a batch job: ``ctvl preprocess`` and ``ctvl predict`` record each bad row
in ``errors.csv`` with the file's line number (the header is line 1; a quoted multi-line report counts all its
lines) and run the others. Only a table that cannot be read, or lacks a required column, is fatal."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ctvl import cli
from ctvl.data.manifest import check_manifest, load_manifest, load_manifest_rows
from ctvl.data.preprocess import load_cache_index, run_preprocess
from ctvl.data.tables import csv_record_lines, read_table_rows
from ctvl.infer import predict as predict_module
from ctvl.infer.inputs import ModelRun, resolve_inputs
from ctvl.infer.predict import load_predictions, run_predict
from ctvl.utils.errors import ERROR_COLUMNS, ErrorLog, load_errors

from ..conftest import TINY_PREPROCESS

AFFINE = np.diag([10.0, 10.0, 10.0, 1.0])
# Good rows: a and e. Bad rows: a duplicate id, an empty image, an empty id; f's file does not exist.
MANIFEST = """case_id,image,report
a,a.nii.gz,"first line
second line of a's report"
a,b.nii.gz,the same id again
c,,no image
,d.nii.gz,"no id, and a report
over two lines"
e,e.nii.gz,fine
f,missing.nii.gz,the file is gone
"""
BAD_ROWS = {"a,b.nii.gz": "duplicate case_id 'a' (first at line 2)", "c,,": "empty `image`",
            ",d.nii.gz": "empty `case_id`"}


def _line_of(text: str, start: str) -> str:
    """The (1-based) line of ``text`` that starts with ``start``, counted without any CSV parsing."""
    (number,) = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start)]
    return f"line {number}"


@pytest.fixture
def manifest(tmp_path, tmp_nifti):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "d", "e"):
        hu = rng.integers(-1000, 400, size=(24, 24, 12)).astype(np.int16)
        tmp_nifti(hu, AFFINE, name=f"m/{name}.nii.gz")
    path = tmp_path / "m" / "manifest.csv"
    path.write_text(MANIFEST)
    return path


def _errors(path) -> pd.DataFrame:
    return load_errors(path).sort_values(["location", "case_id"]).reset_index(drop=True)


def _expected_rejections(path) -> list[list[str]]:
    text = path.read_text()
    return sorted([_line_of(text, start), reason] for start, reason in BAD_ROWS.items())


# ------------------------------------------------------------------------------ reading


def test_csv_lines_count_quoted_line_breaks_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b'case_id,image,report\r\n\r\na,a.nii,"two\r\nlines"\r\n   \r\nb,b.nii,x\r\n,,\r\n')
    df, where = read_table_rows(path, "manifest")
    assert df["report"].tolist()[:2] == ["two\r\nlines", "x"] and len(df) == 3
    assert where == ["line 3", "line 6", "line 7"] and csv_record_lines(path) == [3, 6, 7]


def test_parquet_rows_are_data_rows_counted_from_one(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({"case_id": ["a", "a", None], "image": ["a.nii", "b.nii", "c.nii"]}).to_parquet(path)
    rows = load_manifest_rows(path)
    assert [(r.location, r.reason) for r in rows.rejected] == [
        ("data row 2", "duplicate case_id 'a' (first at data row 1)"), ("data row 3", "empty `case_id`")]
    with pytest.raises(ValueError, match=r"2 invalid row\(s\) \(data rows counted from 1\):\n  data row 2: "):
        load_manifest(path)


def test_each_row_is_checked_on_its_own():
    df = pd.DataFrame({
        "case_id": ["a", "b", ["x"], "d", "e", "f", "  "],
        "image": ["/v/a", 7, "/v/c", "/v/d", "/v/e", "/v/f", " "],
        "time": [1.0, 2.0, 3.0, "soon", -1.0, np.nan, 4.0],
        "event": [1, 0, 1, 1, 0, 1, 5],
    }, index=[10, 11, 12, 13, 14, 15, 16])
    rows = check_manifest(df)
    assert rows.table["case_id"].tolist() == ["a"] and rows.table["event"].dtype == np.int64
    assert [(r.location, r.case_id, r.image, r.reason) for r in rows.rejected] == [
        ("data row 2", "b", "7", "`image` must be a path, got int '7'"),
        ("data row 3", "", "/v/c", "`case_id` must be text or a number, got list \"['x']\""),
        ("data row 4", "d", "/v/d", "`time` must be numeric, got 'soon'"),
        ("data row 5", "e", "/v/e", "negative `time` -1"),
        ("data row 6", "f", "/v/f", "`time` and `event` must be set for both or neither"),
        ("data row 7", "", "", "empty `case_id`; empty `image`; `event` must be 0 or 1, got '5'"),
    ]


@pytest.mark.parametrize(
    "text, match",
    [("case_id,path\na,a.nii\n", r"missing required column\(s\) \['image'\]"),
     ("", r"cannot read this manifest as a csv table: EmptyDataError"),
     ("case_id,image\na,a.nii\nb,b.nii,extra,fields\n",
      r"cannot read this manifest as a csv table: ParserError")],
    ids=["missing_column", "empty_file", "ragged_row"],
)
def test_a_file_that_is_not_a_manifest_is_fatal(text, match, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(text)
    preprocess = lambda p: run_preprocess(p, tmp_path / "cache", TINY_PREPROCESS)  # noqa: E731
    for reader in (load_manifest_rows, resolve_inputs, preprocess):
        with pytest.raises(ValueError, match=match) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_rows_all_rejected_leave_no_case_but_do_not_raise(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("case_id,image\n,a.nii\nb,\n")
    resolved = resolve_inputs(path)
    assert resolved.cases.empty and [r.location for r in resolved.rejected] == ["line 2", "line 3"]
    assert [(r.case_id, r.image) for r in resolved.rejected] == [("", "a.nii"), ("b", "")]  # counted as failed


# ------------------------------------------------------------------------------ errors.csv


def test_error_log_appends_to_a_log_written_before_the_location_column(tmp_path):
    path = tmp_path / "errors.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["case_id", "file", "stage", "reason"], ["x", "x.nii", "load", "bad"]])
    ErrorLog(path, mode="a").add("", "b.nii", "input", "empty `case_id`", location="line 3")
    errors = load_errors(path)
    assert list(errors.columns) == list(ERROR_COLUMNS)
    assert errors.values.tolist() == [["x", "x.nii", "load", "bad", ""],
                                      ["", "b.nii", "input", "line 3: empty `case_id`", ""]]


# ------------------------------------------------------------------------------ the two jobs


def _stub_model_run(*_args, **_kwargs) -> ModelRun:
    model = SimpleNamespace(cfg=SimpleNamespace(survival=SimpleNamespace(head="cox")))
    return ModelRun(model, None, None, torch.device("cpu"))


def _stub_predict_batch(run, items, contexts, questions, horizons, shared_prefix):
    rows = [{"case_id": it["case_id"], "risk": 0.5, **{f"risk_{q}": 0.5 for q, _ in questions},
             "has_context": False} for it in items]
    return rows, np.zeros((len(items), 4), np.float32)


@pytest.fixture
def stub_model(monkeypatch):
    """run_predict with a stand-in model: every loaded volume gets risk 0.5 (this file tests the inputs)."""
    monkeypatch.setattr(predict_module, "load_model_run", _stub_model_run)
    monkeypatch.setattr(predict_module, "_predict_batch", _stub_predict_batch)


def test_preprocess_and_predict_record_the_same_bad_rows_at_their_file_lines(manifest, tmp_path, stub_model):
    pre = run_preprocess(manifest, tmp_path / "cache", TINY_PREPROCESS, workers=0, progress=False)
    out = tmp_path / "pred" / "predictions.csv"
    pred = run_predict("model", manifest, out, questions=["risk?"], preprocess_cfg=TINY_PREPROCESS,
                       clinical_template="", workers=0, progress=False)
    # Both finish, the good rows are done, and each failure is a failure.
    assert (pre.n_items, pre.n_processed, pre.n_failed) == (6, 2, 4)
    assert sorted(load_cache_index(pre.cache_dir)["case_id"]) == ["a", "e"]
    assert (pred.n_predicted, pred.n_failed, pred.exit_code) == (2, 4, 1)
    assert sorted(load_predictions(out)["case_id"]) == ["a", "e"]
    assert sorted(pre.failed) == sorted(pred.failed) == ["", "a", "c", "f"]
    # The same errors.csv from both, bad rows at the lines they start on in the file.
    errors = _errors(pre.errors_path)
    pd.testing.assert_frame_equal(errors, _errors(pred.errors_path))
    rejected = errors[errors["stage"] == "input"]
    assert sorted(rejected[["location", "reason"]].values.tolist()) == _expected_rejections(manifest)
    assert rejected["file"].tolist() == ["b.nii.gz", "", "d.nii.gz"]  # the image cells as written
    missing = errors[errors["case_id"] == "f"].iloc[0]
    assert missing["stage"] == "load" and missing["reason"].startswith("no such file or folder: ")
    assert missing["location"] == "" and missing["file"] == str(manifest.parent / "missing.nii.gz")


def test_a_rerun_keeps_the_cache_and_reports_the_bad_rows_again(manifest, tmp_path):
    first = run_preprocess(manifest, tmp_path / "cache", TINY_PREPROCESS, workers=0, progress=False)
    again = run_preprocess(manifest, tmp_path / "cache", TINY_PREPROCESS, workers=0, progress=False)
    assert (again.n_cached, again.n_processed, again.n_failed) == (2, 0, 4)
    pd.testing.assert_frame_equal(_errors(first.errors_path), _errors(again.errors_path))


def test_preprocess_command_goes_on_past_bad_rows(manifest, tmp_path):
    cache = tmp_path / "cache"
    argv = ["preprocess", "--manifest", str(manifest), "--cache", str(cache), "--workers", "0",
            "--preprocess.spacing", "[10, 10, 10]", "--preprocess.roi_size", "[32, 32, 32]"]
    assert cli.main(argv) == 1  # 1: some items failed (2 would be an unusable input)
    assert sorted(load_cache_index(cache)["case_id"]) == ["a", "e"]
    rejected = load_errors(cache / "errors.csv").query("stage == 'input'")
    assert sorted(rejected[["location", "reason"]].values.tolist()) == _expected_rejections(manifest)
