"""Worker processes die with their parent (ctvl.utils.processes): a ``kill -9`` of ``ctvl preprocess`` or
``ctvl predict`` leaves no worker behind (before, they ran on for a minute and more, re-parented to
PID 1); a worker whose parent died before it armed the signal exits at once; the polling fallback of
platforms without ``prctl`` ends an orphan too."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import psutil
import pytest

from ctvl.config import PreprocessConfig, RunConfig, save_config
from ctvl.utils.processes import ORPHAN_EXIT_CODE

from ..conftest import tiny_model_config

N_CASES = 30
CLI = [sys.executable, "-m", "ctvl.cli", "--log_level", "WARNING"]
SMALL = PreprocessConfig(spacing=(10.0, 10.0, 10.0), roi_size=(16, 16, 16))
SMALL_ARGS = ["--preprocess.spacing", "[10,10,10]", "--preprocess.roi_size", "[16,16,16]"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """A manifest of ``N_CASES`` random 32^3 int16 NIfTI volumes at 10 mm (``image`` absolute)."""
    import nibabel as nib

    folder = tmp_path_factory.mktemp("orphan_volumes")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_CASES):
        path = folder / f"case_{i:03d}.nii.gz"
        array = rng.integers(-1000, 1000, size=(32, 32, 32)).astype(np.int16)
        nib.save(nib.Nifti1Image(array, np.diag([10.0, 10.0, 10.0, 1.0])), path)
        rows.append({"case_id": path.name.split(".")[0], "image": str(path)})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init tiny model folder with a ``run_config.yaml`` (preprocessing ``SMALL``)."""
    from ctvl.models.ctvl import build_ctvl_model
    from ctvl.models.tokenizer import make_tokenizer

    cfg = tiny_model_config(None)
    tokenizer = make_tokenizer(["a nodule in the right upper lobe"] * 20, cfg.decoder.tokenizer_vocab_size)
    out = tmp_path_factory.mktemp("orphan_model") / "model"
    build_ctvl_model(cfg, tokenizer=tokenizer).save_pretrained(out)
    save_config(RunConfig(model=cfg, preprocess=SMALL), out / "run_config.yaml")
    return out


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _workers(parent: psutil.Process) -> list[psutil.Process]:
    """The live worker processes under ``parent`` (multiprocessing's resource tracker excluded)."""
    try:
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if _alive(child) and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _kill_when_ready(cmd: list[str], ready: Callable[[list[psutil.Process]], bool], settle: float = 0.0,
                     timeout: float = 120.0) -> list[psutil.Process]:
    """Start ``cmd``; once ``ready(its workers)`` holds, wait ``settle`` s and SIGKILL it.

    Returns:
        Every process under it just before the kill (workers, multiprocessing's resource tracker).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while not ready(_workers(parent)):
            assert proc.poll() is None, f"{cmd[5]} ended (status {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, f"{cmd[5]} was not ready to be killed in {timeout} s"
            time.sleep(0.05)
        time.sleep(settle)
        children = parent.children(recursive=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return children


def _assert_gone(children: list[psutil.Process], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.1)
    left = [c for c in children if _alive(c)]
    for child in left:  # never leave them running, whatever the test says
        child.kill()
    assert not left, f"{[c.pid for c in left]} outlived their SIGKILLed parent by {within} s"


def _mapped(proc: psutil.Process, fragment: str) -> bool:
    try:
        return any(fragment in m.path for m in proc.memory_maps())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def test_killed_preprocess_leaves_no_worker(volumes, tmp_path):
    """Killed while its two spawned workers start on their first volumes (importing MONAI takes long).

    A spawned worker maps pandas once it has unpickled a task (``ctvl.data.preprocess``), which comes after
    its initialiser: the kill hits armed workers, not the start-up race (tested below).
    """
    cache = tmp_path / "cache"
    cmd = [*CLI, "preprocess", "--manifest", str(volumes), "--cache", str(cache), "--workers", "2",
           *SMALL_ARGS]
    children = _kill_when_ready(cmd, lambda workers: sum(_mapped(w, "pandas") for w in workers) >= 2)
    assert len(list(cache.rglob("*.npy"))) < N_CASES  # killed mid-job
    _assert_gone(children)


def test_killed_predict_leaves_no_worker(volumes, tiny_model, tmp_path):
    """Killed while its two DataLoader workers (forked) read volumes ahead of the model."""
    cmd = [*CLI, "predict", "--model", str(tiny_model), "--inputs", str(volumes),
           "--out", str(tmp_path / "pred.csv"), "--workers", "2", "--batch_size", "1"]
    _assert_gone(_kill_when_ready(cmd, lambda workers: len(workers) >= 2, settle=1.0))


_ORPHAN = textwrap.dedent("""
    import sys, time
    from ctvl.utils import processes
    if sys.argv[2] == "poll":  # as on a platform without prctl
        processes._set_parent_death_signal = lambda sig: False
    processes.die_with_parent(int(sys.argv[1]))
    print("armed", flush=True)
    time.sleep(60)
""")


def test_worker_whose_parent_already_died_exits_at_once():
    """The race: the parent died between the fork and ``die_with_parent`` (the pid is of a reaped process)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    res = subprocess.run([sys.executable, "-c", _ORPHAN, str(gone.pid), "prctl"], capture_output=True,
                         text=True, timeout=60)
    assert (res.returncode, res.stdout) == (ORPHAN_EXIT_CODE, "")


_MIDDLE = textwrap.dedent("""
    import subprocess, sys, time, os
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), "poll"])
    print(child.pid, flush=True)
    time.sleep(60)
""")


def test_polling_fallback_ends_an_orphan():
    middle = subprocess.Popen([sys.executable, "-c", _MIDDLE, _ORPHAN], stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(middle.stdout.readline()))
        assert middle.stdout.readline().strip() == "armed"  # printed by the worker, sharing the pipe
    finally:
        middle.send_signal(signal.SIGKILL)
        middle.wait()
    _assert_gone([worker], within=3.0)
    middle.stdout.close()
