"""scripts/bench_preprocess.py --quick runs end to end and its pipelines agree, so the script cannot rot."""

from __future__ import annotations

import re

from .conftest import load_script


def test_bench_preprocess_quick(capsys):
    status = load_script("bench_preprocess").main(["--quick", "--n", "2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert re.search(r"^ctvl load_and_preprocess\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M), out
    assert re.search(r"^Merlin MONAI reference\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M), out
    assert re.search(r"^ctvl io.load_volume\+fast\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M), out
    ratio = float(re.search(r"throughput ratio ctvl/reference: ([\d.]+)x", out).group(1))
    diff = float(re.search(r"max abs difference from the reference: ([\d.eE+-]+)", out).group(1))
    assert ratio > 0 and diff <= 1e-3, out


def test_bench_volumes_are_ct_like():
    import numpy as np

    from ctvl.data.synthetic.ctrate_like import make_ct_like_volume

    vol = make_ct_like_volume((64, 64, 40), np.random.default_rng(0))
    assert vol.dtype == np.int16 and vol.shape == (64, 64, 40)
    fractions = [np.mean(vol < -900), np.mean((vol > -900) & (vol < -500)), np.mean(vol > 500)]
    assert all(f > 0.002 for f in fractions), fractions  # air, lung and bone are all present
