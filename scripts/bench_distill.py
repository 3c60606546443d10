"""Distillation table: the student against its teacher and the usual baselines, same splits, several seeds.

For each data set x variant (teacher/encoding) x seed, ``ctvl.workflows.distill.run_distill`` runs with
``configs/distill/tiny.yaml`` (tiny random-init Llama student) on a fresh seeded 80/20 split; the
baselines (CoxPH, DeepSurv, DeepHit, RSF) are scored on the same split in the same run. Writes one
Markdown table (mean +- SD over seeds) and a paired comparison (student - teacher Harrell C per seed),
plus every run's folder (metrics.json, t-SNE figure).

    python scripts/bench_distill.py --out runs/bench_distill                    # 3 data sets x 5 seeds
    python scripts/bench_distill.py --datasets gbsg2 --seeds 2 --variants coxph/percentile ensemble/percentile
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ctvl.config import (
    DecoderConfig,
    DistillConfig,
    DistillRunConfig,
    LoRAConfig,
    TabularConfig,
    TrainConfig,
    load_config,
)
from ctvl.workflows.distill import run_distill

ROOT = Path(__file__).resolve().parents[1]


def load_tiny() -> tuple[DistillConfig, DecoderConfig, LoRAConfig, TrainConfig]:
    run = load_config(DistillRunConfig, ROOT / "configs" / "distill" / "tiny.yaml")
    return run.distill, run.decoder, run.lora, run.train


def row_values(m: dict) -> dict[str, float]:
    s = m["scores"]
    values = {"student C": s["student"]["c_index"], "student Uno": s["student"]["uno_c"],
              "student IBS": s["student"]["ibs"], "greedy C": s["student_greedy"]["c_index"],
              "teacher C": s["teacher"]["c_index"], "teacher Uno": s["teacher"]["uno_c"],
              "teacher IBS": s["teacher"]["ibs"], "Spearman": m["fidelity"]["spearman_student_teacher"],
              "parse fail": m["fidelity"]["parse_failures"],
              "kNN R2 trained": m["hidden_states"]["knn_r2_trained"],
              "kNN R2 untrained": m["hidden_states"]["knn_r2_untrained"],
              "smooth trained": m["hidden_states"]["smoothness_trained"],
              "smooth untrained": m["hidden_states"]["smoothness_untrained"],
              "minutes": m["seconds"] / 60}
    for name in ("coxph", "deepsurv", "deephit", "rsf"):
        if name in s:
            values[f"{name} C"] = s[name]["c_index"]
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_distill"))
    p.add_argument("--datasets", nargs="+", default=["gbsg2", "whas500", "aids"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=["coxph/percentile"],
                   help="teacher/encoding pairs, e.g. coxph/percentile coxph/log_hazard ensemble/percentile")
    args = p.parse_args()
    distill, decoder, lora, train = load_tiny()
    results: dict[tuple[str, str], list[dict]] = {}
    for dataset in args.datasets:
        for variant in args.variants:
            teacher, encoding = variant.split("/")
            for seed in range(args.seeds):
                out = args.out / dataset / variant.replace("/", "_") / f"seed{seed}"
                if (out / "metrics.json").is_file():
                    m = json.loads((out / "metrics.json").read_text())
                else:
                    t0 = time.perf_counter()
                    m = run_distill(TabularConfig(dataset=dataset), replace(distill, teacher=teacher, encoding=encoding,
                                                                            seed=seed),
                                    decoder, lora, train, out, progress=False)
                    print(f"{dataset} {variant} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
                results.setdefault((dataset, variant), []).append(row_values(m))
    lines = [f"Command: `python scripts/bench_distill.py --out {args.out} --datasets {' '.join(args.datasets)} "
             f"--seeds {args.seeds} --variants {' '.join(args.variants)}`", ""]
    columns = list(next(iter(results.values()))[0])
    lines += ["| data set | variant | n | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    for (dataset, variant), rows in results.items():
        cells = []
        for c in columns:
            v = np.array([r.get(c, np.nan) for r in rows], dtype=float)
            cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1) if len(v) > 1 else 0:.3f}")
        lines.append(f"| {dataset} | {variant} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Paired per seed: student C - teacher C (mean ± SD, seeds where the student is within 0.01)", ""]
    for (dataset, variant), rows in results.items():
        d = np.array([r["student C"] - r["teacher C"] for r in rows])
        lines.append(f"- {dataset} {variant}: {d.mean():+.4f} ± {d.std(ddof=1) if d.size > 1 else 0:.4f}; "
                     f"{int((np.abs(d) <= 0.01).sum())}/{d.size} within 0.01")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
