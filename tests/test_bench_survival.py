"""``scripts/bench_survival.py --quick`` runs in seconds, agrees with the peers and reports their faults."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script

for peer in ("sksurv", "lifelines", "pycox", "torchsurv"):
    pytest.importorskip(peer)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    bench = load_script("bench_survival")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    returned = bench.main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(returned))
    return {(r["row"], r["impl"]): r for r in returned}


def test_every_row_and_peer_reported(quick_results):
    expected = {("harrell_c", p) for p in ("ctvl", "sksurv", "lifelines", "pycox", "torchsurv")}
    expected |= {("uno_c", p) for p in ("ctvl", "sksurv", "torchsurv")}
    expected |= {("ibs", p) for p in ("ctvl", "sksurv", "pycox", "torchsurv")}
    expected |= {("cox_loss", p) for p in ("ctvl", "pycox", "torchsurv")}
    assert set(quick_results) == expected
    assert all(r["n"] == 1000 for r in quick_results.values())


def test_values_equal_the_reference_peers(quick_results):
    for key in [("harrell_c", "sksurv"), ("harrell_c", "lifelines"), ("harrell_c", "pycox"),
                ("harrell_c", "torchsurv"), ("uno_c", "sksurv"), ("ibs", "sksurv")]:
        assert quick_results[key]["status"] == "ok", key
        assert quick_results[key]["diff"] <= 1e-9, (key, quick_results[key]["diff"])


def test_peer_faults_are_reported_not_raised(quick_results):
    pycox_ibs = quick_results[("ibs", "pycox")]["status"]
    assert pycox_ibs == "ok" or pycox_ibs.startswith("failed (")  # scipy.integrate.simps is gone (pycox #182)
    # torchsurv divides the tied-time mean by the number of distinct event times
    assert quick_results[("cox_loss", "torchsurv")]["diff"] > 1e-3


def test_large_margins_hold(quick_results):
    """Only margins of 10x or more are asserted: timings on a shared machine are noisy."""
    assert quick_results[("harrell_c", "torchsurv")]["ratio"] > 3
    assert quick_results[("harrell_c", "sksurv")]["ratio"] > 2
    assert all(r["seconds"] > 0 for r in quick_results.values() if r["status"] == "ok")
