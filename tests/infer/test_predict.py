"""run_predict: manifests and folders, bad input, resume, atomic output, shards, DeepHit survival columns."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctvl.infer import predict as predict_module
from ctvl.infer.predict import load_predictions, merge_shards, run_predict
from ctvl.utils.errors import load_errors

from ..conftest import TINY_PREPROCESS
from .conftest import write_subset

QIDS = ["tumor", "lymph_nodes", "pleura", "metastases", "vessels", "skeleton"]


@pytest.fixture(scope="module")
def manifest_predictions(cohort, cox_model, template, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "predictions.csv"
    summary = run_predict(cox_model, cohort.manifest, out, clinical_template=str(template), workers=0,
                          batch_size=8, progress=False, save_embeddings=True)
    return summary, load_predictions(out)


def test_manifest_gives_one_row_per_case_with_the_mean_risk(manifest_predictions, cohort):
    summary, df = manifest_predictions
    manifest = pd.read_csv(cohort.manifest, dtype={"case_id": str})
    assert summary.ok and summary.exit_code == 0 and summary.n_predicted == len(manifest)
    assert list(df.columns) == ["case_id", "risk", *[f"risk_{q}" for q in QIDS], "has_context"]
    assert sorted(df["case_id"]) == sorted(manifest["case_id"]) and df["has_context"].all()
    np.testing.assert_allclose(df["risk"], df[[f"risk_{q}" for q in QIDS]].mean(axis=1), rtol=1e-12)
    assert df["risk"].std() > 0
    z = np.load(summary.embeddings_path)  # rows aligned with the output rows
    assert z.shape[0] == len(df) and np.isfinite(z).all()
    assert list(load_errors(summary.errors_path)["case_id"]) == []


def test_nifti_folder_with_a_corrupt_file_and_duplicate_ids(cohort, cox_model, manifest_predictions,
                                                            tmp_path):
    _, reference = manifest_predictions
    manifest = pd.read_csv(cohort.manifest, dtype={"case_id": str}).head(3)
    folder = tmp_path / "volumes"
    folder.mkdir()
    for cid, rel in zip(manifest["case_id"], manifest["image"]):
        shutil.copy(cohort.manifest.parent / rel, folder / f"{cid}.nii.gz")
    first = nib.load(cohort.manifest.parent / manifest["image"][0])  # the same case again, uncompressed
    duplicate = folder / f"{manifest['case_id'][0]}.nii"
    nib.save(nib.Nifti1Image(np.asarray(first.dataobj), first.affine), duplicate)
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out.parquet"
    summary = run_predict(cox_model, folder, out, workers=0, progress=False, allow_missing_context=True)
    df = load_predictions(out)
    errors = load_errors(tmp_path / "errors.csv")
    assert summary.exit_code == 1 and summary.n_failed == 2 and summary.n_predicted == 3
    assert sorted(errors["case_id"]) == sorted(["broken", manifest["case_id"][0]])
    assert errors.set_index("case_id").loc["broken", "file"].endswith("broken.nii.gz")
    assert sorted(df["case_id"]) == sorted(manifest["case_id"]) and not df["has_context"].any()
    no_context = reference.set_index("case_id").loc[df["case_id"], "risk"].to_numpy()
    assert not np.allclose(df["risk"], no_context)  # the clinical sentence changes the risk


def test_dicom_series_folders(cox_model, tmp_dicom_series, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("series_a", "series_b"):
        tmp_dicom_series(rng.integers(-1000, 400, size=(24, 24, 10)), name=f"dicom/{name}")
    out = tmp_path / "dicom.csv"
    summary = run_predict(cox_model, tmp_path / "dicom", out, workers=0, progress=False,
                          allow_missing_context=True)
    assert summary.ok and sorted(load_predictions(out)["case_id"]) == ["series_a", "series_b"]


def test_empty_folder_and_duplicate_manifest_rows(cohort, cox_model, template, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no volumes found"):
        run_predict(cox_model, tmp_path / "empty", tmp_path / "x.csv", progress=False)
    path, manifest = write_subset(cohort, tmp_path, 3)
    pd.concat([manifest, manifest.head(1)]).to_csv(path, index=False)
    clinical = manifest.drop(columns=["image"]).iloc[1:]  # the first case has no clinical data
    summary = run_predict(cox_model, path, tmp_path / "dup.csv", clinical=clinical,
                          clinical_template=str(template), workers=0, progress=False,
                          allow_missing_context=True)
    df = load_predictions(tmp_path / "dup.csv").set_index("case_id")
    assert summary.exit_code == 1 and summary.n_failed == 1 and summary.n_no_context == 1 and len(df) == 3
    errors = load_errors(tmp_path / "errors.csv")
    assert list(errors["case_id"]) == [manifest["case_id"][0]] and "duplicate" in errors["reason"][0]
    assert df.loc[manifest["case_id"], "has_context"].tolist() == [False, True, True]


def test_killed_write_leaves_a_complete_file_and_resume_skips_finished_cases(
        cohort, cox_model, manifest_predictions, template, tmp_path, monkeypatch):
    path, manifest = write_subset(cohort, tmp_path, 6)
    out = tmp_path / "resume.csv"
    real_replace, calls = predict_module.os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed while writing")
        real_replace(src, dst)

    monkeypatch.setattr(predict_module.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_predict(cox_model, path, out, clinical_template=str(template), batch_size=2, flush_every=2,
                    workers=0, progress=False)
    monkeypatch.setattr(predict_module.os, "replace", real_replace)
    first = load_predictions(out)  # the file on disk is the last complete chunk
    assert len(first) == 2
    import ctvl.data.transforms as transforms

    loaded, real_load = [], transforms.load_and_preprocess
    monkeypatch.setattr(transforms, "load_and_preprocess",
                        lambda p, cfg: loaded.append(p) or real_load(p, cfg))
    summary = run_predict(cox_model, path, out, clinical_template=str(template), workers=0, progress=False)
    assert summary.n_skipped == 2 and summary.n_predicted == 4 and len(loaded) == 4
    final = load_predictions(out).set_index("case_id")
    expected = manifest_predictions[1].set_index("case_id").loc[final.index]
    np.testing.assert_allclose(final["risk"], expected["risk"], atol=1e-6)
    again = run_predict(cox_model, path, out, clinical_template=str(template), workers=0, progress=False)
    assert again.n_skipped == 6 and again.n_predicted == 0
    with pytest.raises(ValueError, match="other questions"):  # never mix two question sets in one file
        run_predict(cox_model, path, out, questions=[("tumor", "Is there a tumor?")], workers=0, progress=False)


def test_shards_merge_to_the_single_process_output(cohort, cox_model, manifest_predictions, template,
                                                   tmp_path):
    summary, single = manifest_predictions
    path, manifest = write_subset(cohort, tmp_path, 6)
    out = tmp_path / "sharded.csv"
    for rank in (0, 1):  # rank 1 loads its volumes in DataLoader worker processes
        run_predict(cox_model, path, out, clinical_template=str(template), shard=(rank, 2),
                    workers=2 if rank else 0, batch_size=2, progress=False, save_embeddings=True)
    assert not out.exists() and (tmp_path / "sharded.csv.rank1").exists()
    merge_shards(out, 2)
    merged = load_predictions(out)
    rows = single["case_id"].isin(manifest["case_id"]).to_numpy()
    assert list(merged["case_id"]) == list(single.loc[rows, "case_id"])
    np.testing.assert_allclose(merged.drop(columns="case_id").to_numpy(float),
                               single.loc[rows].drop(columns="case_id").to_numpy(float), atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "sharded.z_surv.npy"),
                               np.load(summary.embeddings_path)[rows], atol=1e-6)
    assert not list(tmp_path.glob("*.parts"))  # the latents' work folders are gone after the merge


def test_finished_run_leaves_no_work_folder_and_a_resume_keeps_its_latents(cohort, cox_model,
                                                                          manifest_predictions, tmp_path):
    summary, single = manifest_predictions
    path, manifest = write_subset(cohort, tmp_path, 5)
    out = tmp_path / "pred.csv"
    pd.read_csv(path).head(3).to_csv(tmp_path / "first.csv", index=False)
    run_predict(cox_model, tmp_path / "first.csv", out, workers=0, progress=False, save_embeddings=True)
    assert (tmp_path / "pred.z_surv.npy").is_file() and not list(tmp_path.glob("*.parts"))
    again = run_predict(cox_model, path, out, workers=0, progress=False, save_embeddings=True)
    assert again.n_skipped == 3 and again.n_predicted == 2 and not list(tmp_path.glob("*.parts"))
    rows = single["case_id"].isin(manifest["case_id"]).to_numpy()
    assert list(load_predictions(out)["case_id"]) == list(single.loc[rows, "case_id"])
    np.testing.assert_allclose(np.load(again.embeddings_path), np.load(summary.embeddings_path)[rows],
                               atol=1e-6)


def test_deephit_writes_survival_probabilities(cohort, deephit_model, tmp_path):
    path, _ = write_subset(cohort, tmp_path, 4)
    out = tmp_path / "dh.csv"
    run_predict(deephit_model, path, out, preprocess_cfg=TINY_PREPROCESS, workers=0, progress=False)
    df = load_predictions(out)
    cuts = json.loads((deephit_model / "time_bins.json").read_text())["cuts"]
    assert [c for c in df.columns if c.startswith("surv_")] == [f"surv_{c:.10g}" for c in cuts]
    surv = df[[f"surv_{c:.10g}" for c in cuts]].to_numpy()
    assert surv.shape == (4, len(cuts)) and ((surv >= 0) & (surv <= 1)).all()
    assert (np.diff(surv, axis=1) <= 1e-7).all() and surv.std() > 0
    run_predict(deephit_model, path, tmp_path / "h.csv", preprocess_cfg=TINY_PREPROCESS, horizons=[-1.0, 1e9],
                workers=0, progress=False)
    h = load_predictions(tmp_path / "h.csv")
    np.testing.assert_allclose(h["surv_-1"], 1.0)  # before the first cut nothing has happened
    np.testing.assert_allclose(h["surv_1000000000"], surv[:, -1], atol=1e-7)  # held after the last cut


@pytest.mark.distributed
def test_torchrun_two_ranks_merge_into_one_file(cohort, cox_model, manifest_predictions, template, tmp_path):
    """`torchrun -m ctvl.cli predict`: each rank takes every second case, rank 0 merges the shards."""
    import os
    import socket
    import subprocess
    import sys

    _, single = manifest_predictions
    path, manifest = write_subset(cohort, tmp_path, 6)
    out = tmp_path / "launched.csv"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "ctvl.cli", "predict", "--model", str(cox_model), "--inputs", str(path), "--out", str(out),
           "--clinical_template", str(template), "--workers", "0"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = load_predictions(out)
    rows = single["case_id"].isin(manifest["case_id"]).to_numpy()
    assert list(merged["case_id"]) == list(single.loc[rows, "case_id"])
    np.testing.assert_allclose(merged["risk"].to_numpy(float), single.loc[rows, "risk"].to_numpy(float), atol=1e-6)
