"""K-fold cross-validation of the demo's stages 1-2 against clinical-only CoxPH on the same folds.

The demo scores one validation split of 80 cases, where a C-index has a standard error of about
0.035: two models a point or two apart are not told apart by it. This script re-runs the demo's
training on every fold of all the cohort's cases and reports, per fold and on average, the stage-2
validation C (the loop's last evaluation: Harrell's C of the mean risk over the six questions, as
``ctvl demo`` reports it) next to the clinical-only CoxPH fitted on the same training cases.

Reads a ``ctvl demo`` output folder (cohort, image cache, VQA pairs). For each fold:

1. the encoder: ``--encoder`` (one checkpoint for all folds, e.g. pre-trained on a separate cohort
   with ``ctvl pretrain-encoder``), else the demo's phenotype pre-training on the fold's training
   cases only (validation cases must not shape the encoder);
2. its feature cache, then stage 1 and stage 2 on the fold's training cases (the demo's configs);
3. the clinical-only CoxPH of the demo summary, on the same split.

Outputs go to ``<run>/cv/<name>/fold<k>/``; a finished fold is not trained again.

``--within train`` folds only the demo's training cases: its validation cases are never read, so a
stage-2 setting (a ``--stage2`` config) can be chosen on these folds and then judged once on the demo's
own split.

    python scripts/cv_demo.py --run demo_out --folds 5
    python scripts/cv_demo.py --run demo_out --folds 5 --encoder pretrain_cohort/encoder.pt
    python scripts/cv_demo.py --run demo_out --folds 5 --within train --stage2 my_stage2.yaml
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctvl.data.tables import read_table
from ctvl.workflows.demo import ENCODER_EPOCHS


def fold_manifests(manifest: pd.DataFrame, folds: int, seed: int) -> list[pd.DataFrame]:
    """``folds`` copies of ``manifest`` whose ``split`` puts one fold in "validation", the rest in "train".

    Folds are a seeded random partition of the cases, sizes differing by at most one.
    """
    fold_of = np.random.default_rng(seed).permutation(len(manifest)) % folds
    return [manifest.assign(split=np.where(fold_of == k, "validation", "train")) for k in range(folds)]


def output_name(encoder: Path | None, encoder_epochs: int, within: str, stage2: Path | None) -> str:
    """Default folder under ``<run>/cv``: its own for every encoder, case set and stage-2 config, as a
    finished fold is never trained again."""
    if encoder is not None:
        parts = [encoder.stem]
    else:
        epochs = "" if encoder_epochs == ENCODER_EPOCHS else f"_{encoder_epochs}epochs"
        parts = [f"per_fold_encoder{epochs}"]
    if within == "train":
        parts.append("within_train")
    if stage2 is not None:
        parts.append(stage2.stem)
    return "_".join(parts)


def run_fold(run: Path, out: Path, manifest: pd.DataFrame, encoder: Path | None, encoder_epochs: int,
             steps: int | None = None, stage2_config: Path | None = None) -> dict:
    """Encoder, features, stage 1 and 2 for one fold; returns its model and clinical C-indices.

    ``steps``: train each stage for this many steps (evaluating and saving at the end) instead of the
    configs' (quick checks). ``stage2_config``: a stage-2 run config instead of the demo's (its data and
    output paths are the fold's).
    """
    from ctvl.config import RunConfig, load_config
    from ctvl.workflows.demo import CONFIGS, DemoData, clinical_cox_c_index, pretrain_demo_encoder, train_stages
    from ctvl.infer.encode import run_encode
    from ctvl.models.vision3d import build_image_encoder

    stage1 = load_config(RunConfig, CONFIGS / "train" / "stage1_tiny.yaml")
    stage2 = load_config(RunConfig, stage2_config or CONFIGS / "train" / "stage2_tiny.yaml")
    if steps is not None:
        stage1, stage2 = (replace(cfg, train=replace(cfg.train, max_steps=steps, eval_interval=steps,
                                                     save_interval=steps, warmup_steps=min(steps, 2)))
                          for cfg in (stage1, stage2))
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    images = run / "cache" / "images"
    vision = replace(stage1.model.vision, checkpoint=None)
    if encoder is None:
        encoder = out / "encoder.pt"
        if not encoder.exists():
            findings = read_table(run / "cohort" / "findings.csv", "findings table").drop(columns="split")
            labels = findings.merge(manifest[["case_id", "split"]], on="case_id")
            pretrain_demo_encoder(vision, images, labels, encoder, epochs=encoder_epochs, progress=False)
    module = build_image_encoder(replace(vision, checkpoint=str(encoder)))
    run_encode(module, images, out / "features", batch_size=8, progress=False)
    data = DemoData(out, out / "manifest.csv", run / "cohort" / "findings.csv", images, out / "features",
                    run / "vqa" / "vqa_llava.jsonl", encoder, vqa_accuracy=float("nan"))
    _, second = train_stages(data, out / "runs", stage1, stage2)
    if not second.evals:
        raise RuntimeError(f"{out}: stage 2 logged no evaluation (already finished? remove the folder)")
    return {"model": second.evals[-1]["val_c_index"], "clinical": clinical_cox_c_index(out / "manifest.csv")}


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("demo_out"), help="a `ctvl demo` output folder")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the fold partition")
    p.add_argument("--encoder", type=Path, default=None,
                   help="tiny-encoder checkpoint for every fold (default: pre-train one per fold)")
    p.add_argument("--encoder_epochs", type=int, default=ENCODER_EPOCHS,
                   help="per-fold pre-training epochs (the demo's)")
    p.add_argument("--name", default=None,
                   help="output subfolder under <run>/cv (default: from the encoder, --within and --stage2)")
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default: the demo configs')")
    p.add_argument("--within", choices=("all", "train"), default="all",
                   help="fold all cases, or only the demo's training cases (its validation cases unread)")
    p.add_argument("--stage2", type=Path, default=None,
                   help="stage-2 run config to use instead of configs/train/stage2_tiny.yaml")
    args = p.parse_args(argv)

    manifest = read_table(args.run / "cohort" / "manifest.csv", "manifest")
    if args.within == "train":
        manifest = manifest[manifest["split"] == "train"].reset_index(drop=True)
    manifest["image"] = [str((args.run / "cohort" / path).resolve()) for path in manifest["image"]]
    name = args.name or output_name(args.encoder, args.encoder_epochs, args.within, args.stage2)
    rows = []
    for k, fold in enumerate(fold_manifests(manifest, args.folds, args.seed)):
        c = run_fold(args.run.resolve(), args.run.resolve() / "cv" / name / f"fold{k}", fold,
                     args.encoder.resolve() if args.encoder else None, args.encoder_epochs, args.steps,
                     args.stage2)
        rows.append({"fold": k, "n_valid": int((fold["split"] == "validation").sum()), **c})
        print(f"fold {k}: stage-2 C {c['model']:.3f}, clinical-only CoxPH C {c['clinical']:.3f}", flush=True)
    table = pd.DataFrame(rows)
    diff = table["model"] - table["clinical"]
    print(f"mean over {args.folds} folds: stage-2 C {table['model'].mean():.3f}, clinical-only CoxPH "
          f"{table['clinical'].mean():.3f}; difference {diff.mean():+.3f} (SD {diff.std():.3f}, "
          f"stage 2 ahead in {int((diff > 0).sum())} of {args.folds})")
    return table


if __name__ == "__main__":
    main()
