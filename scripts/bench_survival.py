"""Time ctvl's survival metrics and Cox loss against scikit-survival, lifelines, pycox and torchsurv.

One run, same data for everyone: n patients with 50 % censoring and tied times (one decimal),
continuous risks. Rows: Harrell's C, Uno's C, the integrated Brier score (100 time points) and the
Cox partial likelihood forward+backward. Each cell is the best of a few repeats (wall clock);
``ratio`` is peer time / ctvl time (> 1: ctvl is faster) and ``max |diff|`` the absolute
difference between the two values (against ctvl with ``tied_tol=0`` for the peers that only tie
exactly equal risks). A peer is skipped where it is known to need minutes or an n×n
matrix at that size (reason printed), and reported as failed where it raises.

Usage::

    python scripts/bench_survival.py            # n = 1e3, 1e4, 1e5 (a few minutes, mostly the peers)
    python scripts/bench_survival.py --quick    # n = 1e3 only (seconds)
    python scripts/bench_survival.py --sizes 1000 30000 --peers sksurv lifelines --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Callable

import numpy as np
import torch

from ctvl.survival.losses import neg_partial_log_likelihood
from ctvl.survival.metrics import harrell_c, integrated_brier_score, uno_c

PEERS = ("sksurv", "lifelines", "pycox", "torchsurv")
# scikit-survival ties risks within 1e-8 (ctvl's default); these peers only tie equal risks, so their
# values are compared with ctvl's ``tied_tol=0`` result (n = 1e5 normal risks hold ~40 pairs within 1e-8).
EXACT_TIE_PEERS = ("lifelines", "pycox", "torchsurv")
EXACT = "ctvl, tied_tol=0"
# (peer, row, smallest n to skip from): known cost, from /work/shared/ANCHORS.md and the peers' code.
SKIP = {
    ("torchsurv", "harrell_c", 100_000): "n×n mask: ~125 s and 23 GB at n=1e5",
    ("torchsurv", "uno_c", 100_000): "n×n mask: ~125 s and 23 GB at n=1e5",
    ("pycox", "ibs", 100_000): "censor_surv='km' builds an n×n matrix (74.5 GiB at n=1e5)",
}
NOTES = {
    ("pycox", "harrell_c"): "concordance_td('antolini') on a 1-column curve",
    ("pycox", "cox_loss"): "cox_ph_loss: no tie handling (pycox #27), eps=1e-7 in the log",
    ("torchsurv", "cox_loss"): "efron; with ties its mean divides by distinct event times",
    ("torchsurv", "ibs"): "BrierScore, get_ipcw weights (float32)",
    ("torchsurv", "uno_c"): "get_ipcw weights (float32)",
}


# TORCHSURV_IPCW: torchsurv's get_ipcw computes the censoring KM in float32, and with float64 times its
# weights at event times are off by up to 0.05 (n = 1e3 here); with float32 times they match 1/G to ~3e-6.
# The bench gives it float32 times, its best case.


def make_data(n: int, seed: int = 0) -> dict:
    """Tied times (one decimal), 50 % censoring, continuous risk, curves at 100 times."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time_ = np.round(rng.exponential(np.exp(-risk)) * 10, 1)
    event = rng.random(n) < 0.5
    times = np.unique(np.quantile(time_, np.linspace(0.1, 0.9, 100)))
    surv = np.exp(-np.exp(risk)[:, None] * times[None, :] / 10)
    return dict(risk=risk, time=time_, event=event, times=times, surv=surv)


def best_time(fn: Callable[[], float], budget: float = 1.0, max_repeats: int = 7) -> tuple[float, float]:
    """(best wall time, value) over repeats, stopping when ``budget`` seconds are spent."""
    best, spent, value = np.inf, 0.0, None
    for _ in range(max_repeats):
        start = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget:
            break
    return best, float(value)


# ------------------------------------------------------------------------------------- row builders
# Each returns {implementation: zero-argument callable returning the value}; "ctvl" first.


def harrell_rows(d: dict) -> dict[str, Callable[[], float]]:
    def sksurv():
        from sksurv.metrics import concordance_index_censored
        return concordance_index_censored(d["event"], d["time"], d["risk"])[0]

    def lifelines():
        from lifelines.utils import concordance_index
        return concordance_index(d["time"], -d["risk"], d["event"])

    def pycox():
        import pandas as pd
        from pycox.evaluation import EvalSurv
        frame = pd.DataFrame(-d["risk"][None, :], index=[0.0])
        return EvalSurv(frame, d["time"], d["event"].astype(np.int64)).concordance_td("antolini")

    def torchsurv():
        from torchsurv.metrics.cindex import ConcordanceIndex
        t = _tensors(d)
        return ConcordanceIndex()(t["risk"], t["event"], t["time"]).item()

    return {"ctvl": lambda: harrell_c(d["risk"], d["event"], d["time"]).cindex, "sksurv": sksurv,
            "lifelines": lifelines, "pycox": pycox, "torchsurv": torchsurv,
            EXACT: lambda: harrell_c(d["risk"], d["event"], d["time"], tied_tol=0.0).cindex}


def uno_rows(d: dict) -> dict[str, Callable[[], float]]:
    def sksurv():
        from sksurv.metrics import concordance_index_ipcw
        from sksurv.util import Surv
        y = Surv.from_arrays(d["event"], d["time"])
        return concordance_index_ipcw(y, y, d["risk"])[0]

    def torchsurv():
        from torchsurv.metrics.cindex import ConcordanceIndex
        from torchsurv.stats.ipcw import get_ipcw
        t = _tensors(d)
        weight = get_ipcw(t["event"], t["time"].float()).double()  # see TORCHSURV_IPCW
        return ConcordanceIndex()(t["risk"], t["event"], t["time"], weight=weight).item()

    ctvl = lambda: uno_c(d["event"], d["time"], d["event"], d["time"], d["risk"]).cindex  # noqa: E731
    def exact():
        return uno_c(d["event"], d["time"], d["event"], d["time"], d["risk"], tied_tol=0.0).cindex

    return {"ctvl": ctvl, "sksurv": sksurv, "torchsurv": torchsurv, EXACT: exact}


def ibs_rows(d: dict) -> dict[str, Callable[[], float]]:
    def sksurv():
        from sksurv.metrics import integrated_brier_score as ibs
        from sksurv.util import Surv
        y = Surv.from_arrays(d["event"], d["time"])
        return ibs(y, y, d["surv"], d["times"])

    def pycox():
        import pandas as pd
        from pycox.evaluation import EvalSurv
        frame = pd.DataFrame(d["surv"].T, index=d["times"])
        ev = EvalSurv(frame, d["time"], d["event"].astype(np.int64), censor_surv="km")
        return ev.integrated_brier_score(d["times"])

    def torchsurv():
        from torchsurv.metrics.brier_score import BrierScore
        from torchsurv.stats.ipcw import get_ipcw
        t = _tensors(d)
        new_time = torch.as_tensor(d["times"])
        bs = BrierScore()
        t32 = t["time"].float()  # see TORCHSURV_IPCW
        bs(torch.as_tensor(d["surv"]), t["event"], t["time"], new_time=new_time,
           weight=get_ipcw(t["event"], t32).double(),
           weight_new_time=get_ipcw(t["event"], t32, new_time.float()).double())
        return bs.integral().item()

    def ctvl():
        return integrated_brier_score(d["event"], d["time"], d["event"], d["time"], d["surv"], d["times"])

    return {"ctvl": ctvl, "sksurv": sksurv, "pycox": pycox, "torchsurv": torchsurv}


def cox_loss_rows(d: dict) -> dict[str, Callable[[], float]]:
    """Forward + backward of the mean negative partial log-likelihood on float32 log-hazards."""
    t = _tensors(d)
    log_hz = torch.as_tensor(d["risk"], dtype=torch.float32)

    def run(loss_fn):
        def step():
            x = log_hz.clone().requires_grad_(True)
            loss = loss_fn(x)
            loss.backward()
            return loss.item()
        return step

    def pycox(x):
        from pycox.models.loss import cox_ph_loss
        return cox_ph_loss(x, t["time"], t["event"].float())

    def torchsurv(x):
        from torchsurv.loss.cox import neg_partial_log_likelihood as ts_loss
        return ts_loss(x, t["event"], t["time"], ties_method="efron", reduction="mean")

    return {"ctvl": run(lambda x: neg_partial_log_likelihood(x, t["event"], t["time"])),
            "pycox": run(pycox), "torchsurv": run(torchsurv)}


def _tensors(d: dict) -> dict[str, torch.Tensor]:
    return {"risk": torch.as_tensor(d["risk"]), "event": torch.as_tensor(d["event"]),
            "time": torch.as_tensor(d["time"])}


ROWS = {"harrell_c": harrell_rows, "uno_c": uno_rows, "ibs": ibs_rows, "cox_loss": cox_loss_rows}


def skip_reason(peer: str, row: str, n: int) -> str | None:
    for (p, r, n_min), reason in SKIP.items():
        if p == peer and r == row and n >= n_min:
            return reason
    return None


def warm_up(peers: tuple[str, ...]) -> None:
    """Run every implementation once on a tiny cohort (imports, numba JIT) before timing."""
    d = make_data(200, seed=1)
    for builder in ROWS.values():
        for name, fn in builder(d).items():
            if name in ("ctvl", EXACT) or name in peers:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fn()
                except Exception:  # noqa: BLE001 - reported when timed
                    pass


def bench(sizes: list[int], peers: tuple[str, ...], budget: float) -> list[dict]:
    results = []
    for n in sizes:
        d = make_data(n)
        for row, builder in ROWS.items():
            impls = builder(d)
            ctvl_s, ctvl_v = best_time(impls["ctvl"], budget)
            exact_v = float(impls[EXACT]()) if EXACT in impls else ctvl_v
            cells = [dict(row=row, n=n, impl="ctvl", seconds=ctvl_s, value=ctvl_v, status="ok")]
            for peer in (p for p in impls if p in peers):
                ref = exact_v if peer in EXACT_TIE_PEERS else ctvl_v
                cells.append(dict(row=row, n=n, impl=peer, note=NOTES.get((peer, row), ""))
                             | time_peer(impls[peer], skip_reason(peer, row, n), ctvl_s, ref, budget))
            print_rows(cells)
            results += cells
    return results


def time_peer(fn: Callable[[], float], reason: str | None, ctvl_s: float, ctvl_v: float,
              budget: float) -> dict:
    """Timing and agreement of one peer cell, or why there is none."""
    if reason:
        return dict(status=f"skipped ({reason})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, value = best_time(fn, budget)
    except Exception as err:  # noqa: BLE001 - a peer's bug is a result, not a crash
        return dict(status=f"failed ({type(err).__name__}: {str(err)[:60]})")
    return dict(seconds=seconds, value=value, ratio=seconds / ctvl_s, diff=abs(value - ctvl_v), status="ok")


def print_rows(rows: list[dict]) -> None:
    ctvl = rows[0]
    for r in rows[1:]:
        head = f"{r['row']:<9} {r['n']:>7} {ctvl['seconds']:>10.4f}  {r['impl']:<10}"
        if r["status"] != "ok":
            print(f"{head} {r['status']}")
        else:
            print(f"{head} {r['seconds']:>10.4f} {r['ratio']:>9.1f}x {r['diff']:>11.2e}  {r['note']}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="n = 1e3 only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per cell")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    sizes = [1_000] if args.quick else args.sizes
    peers = tuple(args.peers)
    warm_up(peers)
    print(f"{'metric':<9} {'n':>7} {'ctvl (s)':>10}  {'peer':<10} {'peer (s)':>10} {'ratio':>10} "
          f"{'max |diff|':>11}  note")
    results = bench(sizes, peers, 0.2 if args.quick else args.budget)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
