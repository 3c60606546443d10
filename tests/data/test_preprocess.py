"""Tests for the batch preprocessing job (ctvl.data.preprocess): cache round trip, resumption after a
SIGKILL, config-dependent keys, per-volume error logging, CT-RATE rescaling and no patient data in outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctvl.config import CTRateConfig, PreprocessConfig, replace
from ctvl.data import preprocess as pp
from ctvl.data.io import load_volume
from ctvl.data.manifest import load_manifest, write_manifest
from ctvl.data.preprocess import load_cache_index, load_cached, run_preprocess
from ctvl.data.transforms import preprocess_volume
from ctvl.utils.errors import load_errors

SHAPE = (20, 18, 12)
CFG = PreprocessConfig(spacing=(1.5, 1.5, 3.0), roi_size=(16, 16, 8))
AFFINE = np.diag([-0.9, -0.9, 2.5, 1.0])


def window_and_crop(volume, cfg: PreprocessConfig) -> np.ndarray:
    """A light stand-in for preprocess_volume (no MONAI/torch import, so spawned workers start fast):
    HU window to [0, 1], then zero-pad/crop the corner to ``cfg.roi_size``. Sleeps CTVL_TEST_DELAY s."""
    time.sleep(float(os.environ.get("CTVL_TEST_DELAY", "0")))
    lo, hi = cfg.hu_window
    rx, ry, rz = cfg.roi_size
    x = np.clip((volume.array - lo) / (hi - lo), 0.0, 1.0)[:rx, :ry, :rz]
    out = np.zeros((1, *cfg.roi_size), np.float32)
    out[0, : x.shape[0], : x.shape[1], : x.shape[2]] = x
    return out


def crash_on_case_3(volume, cfg: PreprocessConfig) -> np.ndarray:
    """Kills its worker process on case_3 (like an out-of-memory kill), else :func:`window_and_crop`."""
    if Path(volume.source).name == "case_3.nii.gz":
        os._exit(1)
    return window_and_crop(volume, cfg)


def _hu(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1200, size=SHAPE).astype(np.int16)


@pytest.fixture
def cohort(tmp_path, tmp_nifti, tmp_dicom_series) -> pd.DataFrame:
    """Five NIfTI volumes and one DICOM series folder, as a manifest frame."""
    rows = [{"case_id": f"case_{i}", "image": str(tmp_nifti(_hu(i), AFFINE, name=f"data/case_{i}.nii.gz"))}
            for i in range(5)]
    rows.append({"case_id": "case_dcm", "image": str(tmp_dicom_series(_hu(9), AFFINE, name="data/dicom_9"))})
    return pd.DataFrame(rows)


@pytest.fixture
def count_loads(monkeypatch):
    """Wrap load_volume inside the job (workers=0) and count the calls."""
    calls = []

    def counting(path, **kwargs):
        calls.append(str(path))
        return load_volume(path, **kwargs)

    monkeypatch.setattr(pp, "load_volume", counting)
    return calls


def _npy_files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / "volumes").rglob("*.npy")}


def test_round_trip_and_resume_without_loading(cohort, tmp_path, count_loads, monkeypatch):
    cache = tmp_path / "cache"
    summary = run_preprocess(cohort, cache, CFG, workers=0, progress=False)
    assert (summary.n_processed, summary.n_cached, summary.n_failed) == (6, 0, 0)
    assert len(count_loads) == 6
    index = load_cache_index(cache)
    assert sorted(index["case_id"]) == sorted(cohort["case_id"])
    assert set(index["shape"]) == {"1x16x16x8"}
    for case_id, image in zip(cohort["case_id"], cohort["image"]):
        cached = load_cached(cache, case_id, cfg=CFG)
        assert cached.dtype == np.float16 and cached.shape == (1, *CFG.roi_size)
        expected = preprocess_volume(load_volume(image), CFG).astype(np.float16)
        np.testing.assert_array_equal(cached, expected)

    # Second run: nothing loaded, nothing re-hashed (index signature unchanged), nothing rewritten.
    before = _npy_files(cache)
    monkeypatch.setattr(pp, "hash_source", lambda path: pytest.fail(f"re-hashed {path}"))
    again = run_preprocess(cohort, cache, CFG, workers=0, progress=False)
    assert (again.n_processed, again.n_cached, again.n_failed) == (0, 6, 0)
    assert len(count_loads) == 6 and _npy_files(cache) == before
    pd.testing.assert_frame_equal(load_cache_index(cache), index)


def test_worker_pool_matches_in_process_and_survives_a_dead_worker(cohort, tmp_path):
    """Spawned workers give the arrays of the in-process run; a worker killed on case_3 (as by the OOM
    killer) costs only that volume: the others in flight are re-run in isolation and succeed."""
    serial = run_preprocess(cohort, tmp_path / "serial", CFG, workers=0, progress=False,
                            transform=window_and_crop)
    pooled = run_preprocess(cohort, tmp_path / "pooled", CFG, workers=2, progress=False,
                            transform=crash_on_case_3)
    assert serial.n_processed == 6
    assert (pooled.n_processed, pooled.failed) == (5, ["case_3"])
    errors = load_errors(pooled.errors_path)
    assert errors[["case_id", "stage"]].values.tolist() == [["case_3", "worker"]]
    index = load_cache_index(tmp_path / "pooled")
    assert sorted(index["case_id"]) == sorted(set(cohort["case_id"]) - {"case_3"})
    for case_id in index["case_id"]:
        serial_arr, pooled_arr = (load_cached(tmp_path / d, case_id) for d in ("serial", "pooled"))
        np.testing.assert_array_equal(serial_arr, pooled_arr)


def test_changed_config_gives_new_keys(cohort, tmp_path, count_loads):
    cache = tmp_path / "cache"
    run_preprocess(cohort, cache, CFG, workers=0, progress=False, transform=window_and_crop)
    old_keys = set(load_cache_index(cache)["key"])
    wider = replace(CFG, hu_window=(-1200.0, 800.0))
    summary = run_preprocess(cohort, cache, wider, workers=0, progress=False, transform=window_and_crop)
    assert summary.n_processed == 6 and len(count_loads) == 12
    new_keys = set(load_cache_index(cache)["key"])
    assert not old_keys & new_keys
    assert all(k.endswith(wider.fingerprint()) for k in new_keys)
    assert len(_npy_files(cache)) == 12  # old entries stay, reusable if the old config comes back
    with pytest.raises(ValueError, match="different|re-run"):
        load_cached(cache, "case_0", cfg=CFG)
    old_entry = _old_entry(cache, old_keys, "case_0", cohort)
    assert not np.array_equal(load_cached(cache, "case_0", cfg=wider), old_entry)


def _old_entry(cache, old_keys, case_id, cohort):
    sha = pp.hash_source(cohort.set_index("case_id").loc[case_id, "image"])
    key = pp._make_key(sha, pp._key_material({}, window_and_crop), CFG.fingerprint())
    assert key in old_keys
    return np.load(cache / pp._rel_path(key))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_file_round_trip(suffix, cohort, tmp_path):
    data_dir = Path(cohort.loc[0, "image"]).parent
    survival = cohort.assign(time=[1.0, 2, 3, 4, 5, 6], event=[1, 0, 1, 0, 1, 0], age=[50, 61, 70, 45, 80, 66])
    manifest = write_manifest(survival, data_dir / f"manifest{suffix}")
    stored = pd.read_csv(manifest) if suffix == ".csv" else pd.read_parquet(manifest)
    assert stored.loc[0, "image"] == "case_0.nii.gz"  # written relative to the manifest's folder
    loaded = load_manifest(manifest)
    pd.testing.assert_frame_equal(loaded, survival, check_dtype=False)
    summary = run_preprocess(manifest, tmp_path / "cache", CFG, workers=0, progress=False,
                             transform=window_and_crop)
    assert summary.n_processed == 6


def test_errors_are_logged_and_good_volumes_cached(
    cohort, tmp_path, tmp_nifti, tmp_dicom_series, fake_patient_tags
):
    corrupt = tmp_path / "data" / "corrupt.nii.gz"
    corrupt.write_bytes(Path(cohort.loc[0, "image"]).read_bytes()[:200])
    gap = tmp_dicom_series(_hu(11), AFFINE, name="data/dicom_gap")
    (gap / "slice_004.dcm").unlink()
    bad = pd.DataFrame([
        {"case_id": "bad_corrupt", "image": str(corrupt)},
        {"case_id": "bad_missing", "image": str(tmp_path / "data" / "nope.nii.gz")},
        {"case_id": "bad_2d", "image": str(tmp_nifti(_hu(3)[:, :, 0], AFFINE, name="data/flat.nii.gz"))},
        {"case_id": "bad_gap", "image": str(gap)},
    ])
    cache = tmp_path / "cache"
    summary = run_preprocess(pd.concat([cohort, bad]), cache, CFG, workers=0, progress=False,
                             transform=window_and_crop)
    assert (summary.n_processed, summary.n_failed) == (6, 4)
    errors = load_errors(summary.errors_path).set_index("case_id")
    assert sorted(errors.index) == sorted(bad["case_id"]) == sorted(summary.failed)
    # A missing file fails at stage "load", as in ctvl predict.
    assert (errors.loc[["bad_missing", "bad_corrupt", "bad_2d", "bad_gap"], "stage"] == "load").all()
    assert "missing slices" in errors.loc["bad_gap", "reason"] and str(gap) == errors.loc["bad_gap", "file"]
    assert sorted(load_cache_index(cache)["case_id"]) == sorted(cohort["case_id"])
    text = summary.errors_path.read_text() + summary.index_path.read_text() + " ".join(_npy_files(cache))
    for value in fake_patient_tags.values():
        assert value not in text


def test_ctrate_original_release_rescaled_from_metadata(tmp_path, tmp_nifti):
    hu = _hu(21)
    fixed = tmp_nifti(hu, np.diag([0.75, 0.75, 1.5, 1.0]), name="fixed.nii.gz")
    original = tmp_nifti(hu + 1024, np.eye(4), name="original.nii.gz")
    meta = {"XYSpacing": "[0.75, 0.75]", "ZSpacing": 1.5, "RescaleSlope": 1.0, "RescaleIntercept": -1024.0}
    rows = pd.DataFrame([
        {"case_id": "train_1_a_1", "image": str(original), **meta},
        {"case_id": "train_2_a_1", "image": str(original), **meta, "ZSpacing": np.nan},
    ])
    cfg = CTRateConfig(root=str(tmp_path), release="original")
    kwargs = dict(workers=0, progress=False, transform=window_and_crop)
    summary = run_preprocess(rows, tmp_path / "cache", CFG, ctrate_cfg=cfg, **kwargs)
    assert (summary.n_processed, summary.failed) == (1, ["train_2_a_1"])
    assert load_errors(summary.errors_path).loc[0, "stage"] == "metadata"
    expected = window_and_crop(load_volume(fixed), CFG).astype(np.float16)
    np.testing.assert_array_equal(load_cached(tmp_path / "cache", "train_1_a_1"), expected)
    # The same file read as the "fixed" release is a different cache entry.
    run_preprocess(rows[:1], tmp_path / "cache", CFG, ctrate_cfg=replace(cfg, release="fixed"), **kwargs)
    assert len(_npy_files(tmp_path / "cache")) == 2


_KILLED_JOB = textwrap.dedent("""
    import importlib, sys
    from ctvl.config import PreprocessConfig
    from ctvl.data.preprocess import run_preprocess
    manifest, cache, module = sys.argv[1:]
    transform = importlib.import_module(module).window_and_crop
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 3.0), roi_size=(16, 16, 8))
    run_preprocess(manifest, cache, cfg, workers=0, progress=False, transform=transform)
""")


def test_killed_job_resumes_with_only_missing_volumes(cohort, tmp_path, count_loads):
    manifest = write_manifest(cohort, tmp_path / "manifest.csv")
    cache = tmp_path / "cache"
    env = {**os.environ, "CTVL_TEST_DELAY": "0.3", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-c", _KILLED_JOB, str(manifest), str(cache), window_and_crop.__module__]
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(_npy_files(cache)) < 2:
            assert proc.poll() is None, "job ended before it could be killed"
            assert time.monotonic() < deadline, "no cache entries appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = _npy_files(cache)
    assert 2 <= len(finished) < 6

    summary = run_preprocess(manifest, cache, CFG, workers=0, progress=False, transform=window_and_crop)
    assert len(count_loads) == 6 - len(finished)
    assert (summary.n_processed, summary.n_cached) == (6 - len(finished), len(finished))
    after = _npy_files(cache)
    assert len(after) == 6 and all(after[name] == mtime for name, mtime in finished.items())
    assert sorted(load_cache_index(cache)["case_id"]) == sorted(cohort["case_id"])
    assert not list(cache.rglob(f".*.tmp-{os.getpid()}"))
