"""Treatment-effect benchmark (paper 004): factorised vs S-/T-learner, IPW on/off, on simulations with known
truth and on randomised trials shipped offline (ACTG320 ``tx``, GBSG2 ``horTh``) against lifelines' Cox model.

    python scripts/bench_treatment.py --out runs/bench_treatment            # every part, ~25 min on 2 cores
    python scripts/bench_treatment.py --out runs/bench_treatment --parts grid --seeds 5 --fractions 0.1

Parts (each writes ``<out>/<part>.json`` and prints its table):

- ``grid``: n x treated fraction x effect (constant / time_varying / subgroups), confounded (1.0 log-odds per
  unit), 40 % censoring; each model x IPW over ``--seeds`` seeds: RMSE of the log-HR(t, x) at the interval
  midpoints against the truth (all patients), bias of the average log-HR, test Harrell C and IBS; and the
  factorised model's RMSE as a ratio of the S- and T-learners' (goal at treated fraction 0.1: <= 0.5, <= 0.7).
- ``ipw``: confounding 2.0, constant effect: bias of the average log-HR with and without IPW, and the share
  of seeds whose bootstrap 95 % interval (``--bootstrap`` refits) covers the truth.
- ``subgroups``: the subgroup extension (K = 3) on the subgroup simulation: adjusted Rand index of the hard
  assignment against the latent subgroups.
- ``real``: ACTG320 (treatment ``tx``, AIDS endpoint) and GBSG2 (``horTh``): the factorised model's average
  HR with a bootstrap interval, without and with IPW, against lifelines' Cox model of the treatment (weighted,
  ``robust=True``, under IPW) and the covariate-adjusted Cox model.
"""

from __future__ import annotations

import argparse
import json
import time as _time
from pathlib import Path

import numpy as np

from ctvl.config import TreatmentConfig
from ctvl.survival.baselines import evaluation_times, score_predictions
from ctvl.survival.simulate_treatment import latent_subgroup, make_treatment_cohort, true_log_hr
from ctvl.survival.treatment import average_log_hr, bootstrap_marginal_log_hr, estimate_treatment_effect

MODELS = ("factorised", "s_learner", "t_learner")


def _cohort(n, fraction, effect, seed, confounding=1.0):
    table, _, _ = make_treatment_cohort(n=n, treated_fraction=fraction, confounding=confounding, effect=effect,
                                        censoring_rate=0.4, seed=seed)
    X = table[[c for c in table.columns if c.startswith("x")]].to_numpy()
    return X, table["treatment"].to_numpy(), table["time"].to_numpy(), table["event"].to_numpy().astype(bool)


def _split(n, seed):
    rows = np.random.default_rng(seed).permutation(n)
    return np.sort(rows[: int(0.8 * n)]), np.sort(rows[int(0.8 * n):])


def _score(est, X, a, time, event, effect, train, test) -> dict:
    model = est.model
    g = model.log_hazard_ratio(X)
    truth = true_log_hr(X, model.midpoints, effect)
    times = evaluation_times(time[test], time[train])
    scores = score_predictions((event[train], time[train]), (event[test], time[test]),
                               model.risk(X[test], a[test]), model.survival(X[test], a[test], times), times)
    return {"rmse": float(np.sqrt(np.mean((g - truth) ** 2))),
            "avg_bias": average_log_hr(g, model.event_share_) - average_log_hr(truth, model.event_share_),
            "c_index": scores["c_index"], "ibs": scores["ibs"]}


def part_grid(args) -> dict:
    rows = []
    for n in args.n:
        for fraction in args.fractions:
            for effect in args.effects:
                for seed in range(args.seeds):
                    X, a, time, event = _cohort(n, fraction, effect, seed)
                    train, test = _split(n, seed)
                    for model in MODELS:
                        for ipw in (False, True):
                            cfg = TreatmentConfig(model=model, ipw=ipw, seed=seed)
                            est = estimate_treatment_effect(X[train], a[train], time[train], event[train], cfg)
                            rows.append({"n": n, "fraction": fraction, "effect": effect, "seed": seed,
                                         "model": model, "ipw": ipw,
                                         **_score(est, X, a, time, event, effect, train, test)})
                print(f"  grid n={n} fraction={fraction} effect={effect}: done", flush=True)
    print("\n| n | treated | effect | model | IPW | log-HR RMSE | avg bias | C | IBS |\n|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for key in sorted({(r["n"], r["fraction"], r["effect"], r["model"], r["ipw"]) for r in rows}):
        sel = [r for r in rows if (r["n"], r["fraction"], r["effect"], r["model"], r["ipw"]) == key]
        mean = {m: float(np.mean([r[m] for r in sel])) for m in ("rmse", "avg_bias", "c_index", "ibs")}
        sd = float(np.std([r["rmse"] for r in sel]))
        summary[str(key)] = mean
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {'on' if key[4] else 'off'} | {mean['rmse']:.3f} ± {sd:.3f} "
              f"| {mean['avg_bias']:+.3f} | {mean['c_index']:.3f} | {mean['ibs']:.3f} |")
    print("\nfactorised RMSE / S-learner RMSE, / T-learner RMSE, and C(factorised) - C(S) (IPW off):")
    for n in args.n:
        for fraction in args.fractions:
            for effect in args.effects:
                m = {model: summary[str((n, fraction, effect, model, False))] for model in MODELS}
                print(f"  n={n} treated={fraction} {effect:12s}: {m['factorised']['rmse'] / m['s_learner']['rmse']:.2f}, "
                      f"{m['factorised']['rmse'] / m['t_learner']['rmse']:.2f}, "
                      f"C diff {m['factorised']['c_index'] - m['s_learner']['c_index']:+.3f}")
    return {"rows": rows}


def part_ipw(args) -> dict:
    rows = []
    for seed in range(args.seeds):
        X, a, time, event = _cohort(2000, 0.5, "constant", seed, confounding=2.0)
        for ipw in (False, True):
            cfg = TreatmentConfig(model="factorised", ipw=ipw, seed=seed)
            est = estimate_treatment_effect(X, a, time, event, cfg)
            model = est.model
            truth = average_log_hr(true_log_hr(X, model.midpoints, "constant"), model.event_share_)
            estimate = average_log_hr(model.log_hazard_ratio(X), model.event_share_)
            curves = bootstrap_marginal_log_hr(X, a, time, event, cfg, model.midpoints, args.bootstrap, seed=seed)
            lo, hi = np.quantile(curves @ model.event_share_, [0.025, 0.975])
            rows.append({"seed": seed, "ipw": ipw, "estimate": estimate, "truth": truth, "lower": float(lo),
                         "upper": float(hi), "covers": bool(lo <= truth <= hi), "ess": est.effective_sample_size})
        print(f"  ipw seed {seed}: done", flush=True)
    print("\n| IPW | mean bias | mean abs bias | 95 % CI coverage | mean ESS |\n|---|---|---|---|---|")
    for ipw in (False, True):
        sel = [r for r in rows if r["ipw"] == ipw]
        bias = np.array([r["estimate"] - r["truth"] for r in sel])
        print(f"| {'on' if ipw else 'off'} | {bias.mean():+.3f} | {np.abs(bias).mean():.3f} | "
              f"{np.mean([r['covers'] for r in sel]):.2f} | {np.mean([r['ess'] for r in sel]):.0f} |")
    return {"rows": rows}


def part_subgroups(args) -> dict:
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for seed in range(args.seeds):
        for fraction in (0.5, 0.1):
            X, a, time, event = _cohort(2000, fraction, "subgroups", seed)
            cfg = TreatmentConfig(model="factorised", subgroups=3, heterogeneity=0.0, seed=seed)
            est = estimate_treatment_effect(X, a, time, event, cfg)
            hard = est.model.subgroup_probabilities(X).argmax(1)
            effects = est.model.net.effects.detach().double().numpy().mean(1)
            rows.append({"seed": seed, "fraction": fraction, "ari": float(adjusted_rand_score(latent_subgroup(X), hard)),
                         "effects": effects.round(3).tolist(), "sizes": np.bincount(hard, minlength=3).tolist()})
            print(f"  subgroups seed {seed} fraction {fraction}: ARI {rows[-1]['ari']:.3f}, effects {rows[-1]['effects']}, "
                  f"sizes {rows[-1]['sizes']}", flush=True)
    for fraction in (0.5, 0.1):
        aris = [r["ari"] for r in rows if r["fraction"] == fraction]
        print(f"treated {fraction}: ARI {np.mean(aris):.3f} ± {np.std(aris):.3f} (true effects -1.0, 0.0, +0.6)")
    return {"rows": rows}


def part_real(args) -> dict:
    from ctvl.data.tabular import TabularEncoder, load_bundled_dataset
    from ctvl.workflows.treatment import cox_reference, split_treatment

    out = {}
    for name, column, leak in (("aids", "tx", ["txgrp"]), ("gbsg2", "horTh", [])):
        table = load_bundled_dataset(name)
        covariates, a = split_treatment(table.covariates.drop(columns=leak), column, name)  # txgrp encodes tx
        X = TabularEncoder(drop_first=True).fit_transform(covariates)
        for ipw in (False, True):
            cfg = TreatmentConfig(model="factorised", ipw=ipw, seed=0)
            est = estimate_treatment_effect(X, a, table.time, table.event, cfg)
            model = est.model
            estimate = average_log_hr(model.log_hazard_ratio(X), model.event_share_)
            curves = bootstrap_marginal_log_hr(X, a, table.time, table.event, cfg, model.midpoints, args.bootstrap)
            lo, hi = np.quantile(curves @ model.event_share_, [0.025, 0.975])
            marginal = cox_reference(a, table.time, table.event, weight=est.weight if ipw else None)
            adjusted = cox_reference(a, table.time, table.event, X=X)
            inside = marginal["lower"] <= estimate <= marginal["upper"]
            out[f"{name} ipw={ipw}"] = {"estimate": estimate, "lower": float(lo), "upper": float(hi),
                                        "cox_marginal": marginal, "cox_adjusted": adjusted, "inside_cox_ci": inside,
                                        "log_hr_by_interval": model.log_hazard_ratio(X).mean(0).round(3).tolist()}
            print(f"  {name} {column} IPW {'on ' if ipw else 'off'}: HR {np.exp(estimate):.3f} "
                  f"({np.exp(lo):.3f}-{np.exp(hi):.3f}); Cox{' weighted robust' if ipw else ''} "
                  f"{np.exp(marginal['log_hr']):.3f} ({np.exp(marginal['lower']):.3f}-{np.exp(marginal['upper']):.3f}), "
                  f"adjusted Cox {np.exp(adjusted['log_hr']):.3f} ({np.exp(adjusted['lower']):.3f}-"
                  f"{np.exp(adjusted['upper']):.3f}); inside the Cox CI: {inside}", flush=True)
    return out


PARTS = {"grid": part_grid, "ipw": part_ipw, "subgroups": part_subgroups, "real": part_real}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, nargs="+", default=[2000])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5], help="treated fractions of the grid")
    p.add_argument("--effects", nargs="+", default=["constant", "time_varying", "subgroups"], help="grid effects")
    p.add_argument("--bootstrap", type=int, default=20)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        start = _time.perf_counter()
        print(f"== {part}", flush=True)
        result = PARTS[part](args)
        name = part if part != "grid" else f"grid_{'_'.join(map(str, args.fractions))}"
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
        print(f"== {part}: {_time.perf_counter() - start:.0f} s\n", flush=True)


if __name__ == "__main__":
    main()
