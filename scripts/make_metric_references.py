"""Freeze reference values of the survival metrics computed by scikit-survival, lifelines and pycox.

Writes ``tests/benchmarks/metric_references.json``: a few small synthetic cohorts (inputs stored
verbatim, so the file does not depend on numpy's random streams) and what the peer libraries
return on them. ``tests/survival/test_metrics.py`` checks ctvl against this file even where the
peers are not installed.

Usage::

    python scripts/make_metric_references.py [--out tests/benchmarks/metric_references.json]
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

CASES = {  # name: (seed, n, decimals of time and risk, censoring rate)
    "ties_heavy": (0, 40, 0, 0.5),
    "ties_some": (1, 80, 1, 0.3),
    "continuous": (2, 60, 6, 0.7),
}


def make_case(seed: int, n: int, decimals: int, censoring: float) -> dict:
    """A cohort with tied times/risks, a training cohort, survival curves and evaluation times."""
    rng = np.random.default_rng(seed)
    risk = np.round(rng.normal(size=n), max(decimals, 1) - 1 if decimals else 0)
    time = np.round(rng.exponential(np.exp(-risk)) * 10, decimals)
    event = rng.random(n) >= censoring
    event[np.argmin(time)] = True
    train_time = np.round(rng.exponential(size=3 * n) * 10, decimals)
    train_time[0] = time.max() + 1.0  # every test time inside the training follow-up (sksurv needs it)
    train_event = rng.random(3 * n) >= censoring
    times = np.unique(np.quantile(time, [0.1, 0.25, 0.4, 0.55, 0.7]))
    surv = np.round(np.exp(-np.exp(risk)[:, None] * times / 10), 6)
    group = rng.integers(0, 3, n)
    return {k: v.tolist() for k, v in dict(
        time=time, event=event, risk=risk, train_time=train_time, train_event=train_event,
        times=times, surv=surv, group=group).items()}


def peer_values(c: dict) -> dict:
    """What scikit-survival, lifelines and pycox return on case ``c``."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test, multivariate_logrank_test
    from lifelines.utils import concordance_index
    from pycox.evaluation import EvalSurv
    from sksurv import metrics as sk
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    a = {k: np.asarray(v) for k, v in c.items()}
    y_train = Surv.from_arrays(a["train_event"], a["train_time"])
    y_test = Surv.from_arrays(a["event"], a["time"])
    tau = float(np.quantile(a["time"], 0.8))
    km_t, km_s, km_ci = kaplan_meier_estimator(a["event"], a["time"], conf_type="log-log")
    kmf = KaplanMeierFitter().fit(a["time"], a["event"])
    two = a["group"] == 0
    auc, mean_auc = sk.cumulative_dynamic_auc(y_train, y_test, a["risk"], a["times"])
    ev = EvalSurv(pd.DataFrame(a["surv"].T, index=a["times"]), a["time"], a["event"].astype(int))
    return {
        "harrell_sksurv": [float(x) for x in sk.concordance_index_censored(a["event"], a["time"], a["risk"])],
        "harrell_lifelines": float(concordance_index(a["time"], -a["risk"], a["event"])),
        "uno_sksurv": [float(x) for x in sk.concordance_index_ipcw(y_train, y_test, a["risk"])],
        "uno_tau": tau,
        "uno_tau_sksurv": [float(x) for x in sk.concordance_index_ipcw(y_train, y_test, a["risk"], tau=tau)],
        "brier_sksurv": sk.brier_score(y_train, y_test, a["surv"], a["times"])[1].tolist(),
        "ibs_sksurv": float(sk.integrated_brier_score(y_train, y_test, a["surv"], a["times"])),
        "auc_sksurv": auc.tolist(),
        "mean_auc_sksurv": float(mean_auc),
        "km_times_sksurv": km_t.tolist(),
        "km_surv_sksurv": km_s.tolist(),
        "km_ci_sksurv": km_ci.tolist(),
        "km_surv_lifelines": kmf.survival_function_.iloc[:, 0].loc[km_t].tolist(),
        "logrank2_lifelines": float(logrank_test(a["time"][two], a["time"][~two], a["event"][two],
                                                 a["event"][~two]).test_statistic),
        "logrank3_lifelines": float(
            multivariate_logrank_test(a["time"], a["group"], a["event"]).test_statistic),
        "antolini_pycox": float(ev.concordance_td("antolini")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("tests/benchmarks/metric_references.json"))
    args = parser.parse_args()
    cases = {}
    for name, spec in CASES.items():
        inputs = make_case(*spec)
        cases[name] = {"inputs": inputs, "expected": peer_values(inputs)}
    meta = {pkg: version(pkg) for pkg in ("scikit-survival", "lifelines", "pycox", "numpy")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"generated_with": meta, "cases": cases}, indent=1) + "\n")
    print(f"wrote {args.out} ({len(cases)} cases; {meta})")


if __name__ == "__main__":
    main()
