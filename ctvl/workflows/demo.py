"""``ctvl demo`` / ``make demo``: the main job end to end on the built-in synthetic cohort.

Steps (outputs under ``out``):

1. ``cohort/``      synthetic chest-CT cohort (CT-RATE layout + survival manifest, known truth)
2. ``cache/images`` Merlin preprocessing (tiny sizes) of every volume
3. ``encoder/``     the tiny encoder, phenotype-trained on the train split's findings and saved in
                    Merlin's checkpoint layout: it stands in for Merlin's CT-pretrained weights, which
                    are loaded the same way (``--encoder`` gives one instead, e.g. pre-trained on a
                    separate cohort with ``ctvl pretrain-encoder``)
4. ``cache/features`` frozen-encoder feature cache (``ctvl encode``)
5. ``vqa/``         question-answer pairs from the reports (rule back-end) + extraction accuracy
6. ``runs/stage1``  VQA pre-training; ``runs/stage2`` joint survival fine-tuning
7. a summary: oracle C-index, model C-index, clinical-only CoxPH C-index on the validation split

The same data preparation serves the tests (:func:`prepare_demo_data` with smaller sizes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ctvl.config import (
    DataConfig,
    PreprocessConfig,
    RunConfig,
    SyntheticCohortConfig,
    VisionConfig,
    load_config,
)

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ENCODER_EPOCHS = 20
"""Phenotype pre-training epochs of the demo's tiny encoder (``ctvl demo --encoder_epochs``)."""


@dataclass
class DemoData:
    """Paths of a prepared cohort, as a training run's ``DataConfig`` needs them."""

    root: Path
    manifest: Path
    findings_csv: Path
    image_cache: Path
    feature_cache: Path
    vqa: Path
    encoder_checkpoint: Path
    vqa_accuracy: float

    def data_config(self, **overrides) -> DataConfig:
        return DataConfig(manifest=str(self.manifest), vqa=str(self.vqa), image_cache=str(self.image_cache),
                          feature_cache=str(self.feature_cache), **overrides)


def pretrain_demo_encoder(vision: VisionConfig, image_cache: Path, findings, path: Path, *,
                          epochs: int, seed: int = 0, progress: bool = True) -> Path:
    """The demo's stand-in for Merlin's weights: the tiny encoder, phenotype-trained on the train split.

    Merlin's encoder learnt from EHR phenotypes and reports; here the labels are the synthetic cohort's
    findings (``findings.csv`` or a DataFrame with its columns; rows of the train split only, so
    validation stays unseen). ``epochs=0`` keeps the random init.
    """
    from ctvl.models.vision3d import build_image_encoder
    from ctvl.train.encoder_pretrain import run_pretrain_encoder, save_merlin_checkpoint

    vision = replace(vision, checkpoint=None)
    if epochs > 0:
        return run_pretrain_encoder(findings, image_cache, path, vision, split="train", epochs=epochs,
                                    holdout=0.0, seed=seed, progress=progress)[0]
    torch.manual_seed(seed)
    return save_merlin_checkpoint(build_image_encoder(replace(vision, frozen=False)), path)


def prepare_demo_data(out: Path, cohort: SyntheticCohortConfig, preprocess: PreprocessConfig,
                      vision: VisionConfig, *, workers: int = 2, encoder_epochs: int = 0,
                      encoder: Optional[Path] = None, progress: bool = True) -> DemoData:
    """Steps 1-5 of the module docstring; every step resumes when its outputs exist.

    ``encoder``: a Merlin-layout checkpoint of ``vision``'s architecture to use instead of step 3.
    """
    from ctvl.data.preprocess import run_preprocess
    from ctvl.data.synthetic import write_cohort
    from ctvl.infer.encode import run_encode
    from ctvl.models.vision3d import build_image_encoder
    from ctvl.vqa.build import run_build_vqa
    from ctvl.vqa.config import VQAConfig
    from ctvl.vqa.evaluate import run_evaluate_vqa

    out = Path(out)
    cohort_dir = out / "cohort"
    if not (cohort_dir / "manifest.csv").exists():
        write_cohort(cohort, cohort_dir)
    manifest = cohort_dir / "manifest.csv"
    summary = run_preprocess(manifest, out / "cache" / "images", preprocess, workers=workers, progress=progress)
    if summary.n_failed:
        raise RuntimeError(f"{summary.n_failed} synthetic volumes failed to preprocess: see {summary.errors_path}")
    ckpt = Path(encoder) if encoder is not None else out / "encoder" / "merlin_tiny.pt"
    if encoder is not None and not ckpt.exists():
        raise FileNotFoundError(f"encoder checkpoint not found: {ckpt}")
    if not ckpt.exists():
        pretrain_demo_encoder(vision, out / "cache" / "images", cohort_dir / "findings.csv", ckpt,
                              epochs=encoder_epochs, progress=progress)
    encoder = build_image_encoder(replace(vision, checkpoint=str(ckpt)))
    run_encode(encoder, out / "cache" / "images", out / "cache" / "features", batch_size=8, progress=progress)
    vqa_cfg = VQAConfig(clinical_template=str(CONFIGS / "clinical" / "synthetic.yaml"))
    run_build_vqa(manifest, out / "vqa", vqa_cfg, progress=progress)
    scores = run_evaluate_vqa(out / "vqa", cohort_dir / "findings.csv")
    return DemoData(out, manifest, cohort_dir / "findings.csv", out / "cache" / "images",
                    out / "cache" / "features", out / "vqa" / "vqa_llava.jsonl", ckpt, scores.slot_accuracy)


CLINICAL_COVARIATES = ("age", "ecog", "stage", "t_stage", "n_stage", "m_stage")


def clinical_matrix(df, covariates=CLINICAL_COVARIATES):
    """``(n, k + 2)`` float covariates of a synthetic cohort table: ``covariates`` standardised, then sex
    (male = 1) and smoking (ordinal never < former < current, 0-2), encoded by the tabular layer's
    :class:`~ctvl.data.tabular.TabularEncoder` fitted on the ``train`` split (all rows without one)."""
    import pandas as pd

    from ctvl.data.synthetic.cohort import SMOKING
    from ctvl.data.tabular import TabularEncoder

    table = df[[*covariates, "sex", "smoking"]].assign(
        smoking=pd.Categorical(df["smoking"], categories=SMOKING, ordered=True))
    fit_rows = table[df["split"] == "train"] if "split" in df.columns else table
    return TabularEncoder(drop_first=True).fit(fit_rows).transform(table)


def split_cox_c_index(df, X, seed: int = 0) -> float:
    """Harrell's C on the validation split of a CoxPH fitted on the train split.

    Args:
        df: cohort table with ``split`` (train / validation), ``event`` and ``time``.
        X: ``(len(df), d)`` covariates, rows in ``df``'s order.
    """
    from ctvl.survival.baselines import fit_and_score

    train, test = (df["split"] == "train").to_numpy(), (df["split"] == "validation").to_numpy()
    y = lambda m: (df["event"][m].to_numpy().astype(bool), df["time"][m].to_numpy(float))  # noqa: E731
    return float(fit_and_score("coxph", X[train], y(train), X[test], y(test), seed=seed)["c_index"])


def clinical_cox_c_index(manifest: Path, covariates=CLINICAL_COVARIATES) -> float:
    """Harrell's C on the validation split of a CoxPH fitted on clinical covariates of the train split."""
    import pandas as pd

    df = pd.read_csv(manifest)
    return split_cox_c_index(df, clinical_matrix(df, covariates))


def predict_and_evaluate(out: Path, model_dir: Path, data: DemoData, n_generate: int = 12) -> tuple[Path, dict]:
    """Step 7: risks for every case, answers for a few validation cases, the evaluation report."""
    from ctvl.data.manifest import load_manifest
    from ctvl.infer.evaluate import run_evaluate
    from ctvl.infer.generate import run_generate
    from ctvl.infer.predict import run_predict

    predictions = out / "predict" / "predictions.csv"  # the model's own prompts (prompts.yaml), as `ctvl predict`
    run_predict(model_dir, data.manifest, predictions, save_embeddings=True)
    manifest = load_manifest(data.manifest)  # image paths made absolute
    sample = manifest[manifest["split"] == "validation"].head(n_generate)
    sample_path = out / "generate" / "cases.csv"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample.to_csv(sample_path, index=False)
    run_generate(model_dir, sample_path, out / "generate")
    metrics = run_evaluate(predictions, data.manifest, out / "evaluate", generated=out / "generate" / "answers.jsonl",
                           references=data.vqa, embeddings=predictions.with_suffix(".z_surv.npy"), split="validation")
    return predictions, metrics


def _metric(metrics: dict, name: str, fmt: str = ".3f") -> str:
    """A metric from metrics.json, found at any depth, with its CI when there is one."""
    stack = [metrics]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if name in node:
                value = node[name]
                if isinstance(value, dict) and "value" in value:
                    ci = value.get("ci")
                    text = format(value["value"], fmt)
                    return f"{text} (95% CI {format(ci[0], fmt)}-{format(ci[1], fmt)})" if ci else text
                return format(value, fmt) if isinstance(value, (int, float)) else str(value)
            stack.extend(node.values())
    return "n/a"


def _sample_answers(path: Path, n: int = 3) -> list[str]:
    import json

    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    note = ("sample answers of the demo's decoder (a 2-layer, 64-wide random-init Llama trained on 320 cases; "
            "its answers are often garbled: BERTScore above; a pretrained decoder is set with --decoder.path)")
    return [note, *(f"  [{r['case_id']}] {r['question']} -> {r['answer']}" for r in rows)] if rows else []


def train_stages(data: DemoData, runs: Path, stage1: RunConfig, stage2: RunConfig) -> tuple:
    """Stage 1 then stage 2 on ``data`` with ``data.encoder_checkpoint``; outputs in ``runs/stage{1,2}``.

    A rerun resumes each stage from its checkpoint (a finished stage runs no step again).

    Returns:
        the two stages' :class:`~ctvl.train.loop.FitResult`.
    """
    from ctvl.train.vlm import fit_vlm

    vision = replace(stage1.model.vision, checkpoint=str(data.encoder_checkpoint))
    first = fit_vlm(replace(stage1, model=replace(stage1.model, vision=vision),
                        data=data.data_config(max_length=stage1.data.max_length),
                        train=replace(stage1.train, out_dir=str(runs / "stage1"))))
    second = fit_vlm(replace(stage2, model=replace(stage2.model, vision=vision),
                         data=data.data_config(max_length=stage2.data.max_length),
                         train=replace(stage2.train, out_dir=str(runs / "stage2"),
                                       init_from=str(runs / "stage1" / "model"))))
    return first, second


def run_demo(out: Path, n_cases: Optional[int] = None, workers: int = 2, encoder_epochs: int = ENCODER_EPOCHS,
             encoder: Optional[Path] = None) -> int:
    """The whole demo; prints where everything is and the headline numbers.

    ``encoder``: a tiny-architecture checkpoint (e.g. from ``ctvl pretrain-encoder``) to use instead of
    pre-training one on the train split; give a fresh ``out``, as finished stages are not rerun.
    """
    import pandas as pd

    from ctvl.data.synthetic import oracle_c_index

    cohort = load_config(SyntheticCohortConfig, CONFIGS / "synthetic" / "demo.yaml")
    cohort = replace(cohort, n_cases=n_cases or cohort.n_cases)
    stage1 = load_config(RunConfig, CONFIGS / "train" / "stage1_tiny.yaml")
    stage2 = load_config(RunConfig, CONFIGS / "train" / "stage2_tiny.yaml")
    out = Path(out).resolve()
    data = prepare_demo_data(out, cohort, stage1.preprocess, stage1.model.vision, workers=workers,
                             encoder_epochs=encoder_epochs, encoder=encoder)
    runs = out / "runs"
    train_stages(data, runs, stage1, stage2)
    _, evaluation = predict_and_evaluate(out, runs / "stage2" / "model", data)
    manifest = pd.read_csv(data.manifest)
    lm = pd.read_csv(runs / "stage1" / "metrics.csv")["lm_loss"]
    lines = [
        f"VQA extraction slot accuracy (rule back-end vs. ground truth): {data.vqa_accuracy:.3f}",
        f"stage 1 LM loss {lm.iloc[0]:.3f} -> {lm.iloc[-1]:.3f}",
        f"oracle C-index (true log-hazard, validation): {oracle_c_index(manifest[manifest['split'] == 'validation']):.3f}",
        f"model C-index (stage 2, validation, mean risk over the six questions): {_metric(evaluation, 'harrell_c')}",
        f"clinical-only CoxPH C-index (validation): {clinical_cox_c_index(data.manifest):.3f}",
        f"model Uno C {_metric(evaluation, 'uno_c')}, IBS {_metric(evaluation, 'ibs')}",
        f"KM high vs low risk (median split): log-rank p = {_metric(evaluation.get('risk_groups', {}), 'p_value', '.2e')}",
        f"BERTScore F1 of generated answers ({(evaluation.get('bertscore') or {}).get('model', 'n/a')}): "
        f"{_metric(evaluation.get('bertscore') or {}, 'f1')}",
        *_sample_answers(out / "generate" / "answers.jsonl"),
        f"report: {(out / 'evaluate' / 'report.html').resolve()}",
        f"outputs: {out.resolve()}",
    ]
    for line in lines:
        log.info("%s", line)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0
