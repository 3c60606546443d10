"""``ctvl demo`` / ``make demo``: the main job end to end on the built-in synthetic cohort.

Steps (outputs under ``out``):

1. ``cohort/``      synthetic chest-CT cohort (CT-RATE layout + survival manifest, known truth)
2. ``cache/images`` Merlin preprocessing (tiny sizes) of every volume
3. ``encoder/``     a random-init tiny encoder saved in Merlin's checkpoint layout (stands in for
                    Merlin's weights, which are loaded the same way)
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

import torch

from ctvl.config import (
    CTVLConfig,
    DataConfig,
    PreprocessConfig,
    RunConfig,
    SyntheticCohortConfig,
    VisionConfig,
    load_config,
)

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def save_random_merlin_checkpoint(vision: VisionConfig, path: Path, seed: int = 0) -> Path:
    """A random-init encoder written in Merlin's checkpoint layout (``encode_image.i3_resnet.*``)."""
    from ctvl.models.vision3d import MERLIN_IMAGE_PREFIX, build_image_encoder

    torch.manual_seed(seed)
    encoder = build_image_encoder(replace(vision, checkpoint=None))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({MERLIN_IMAGE_PREFIX + k: v for k, v in encoder.state_dict().items()}, path)
    return path


def prepare_demo_data(out: Path, cohort: SyntheticCohortConfig, preprocess: PreprocessConfig,
                      vision: VisionConfig, *, workers: int = 2, progress: bool = True) -> DemoData:
    """Steps 1-5 of the module docstring; every step resumes when its outputs exist."""
    from ctvl.data.preprocess import run_preprocess
    from ctvl.data.synthetic import write_cohort
    from ctvl.infer.encode import run_encode
    from ctvl.models.vision3d import load_merlin_image_encoder
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
    ckpt = out / "encoder" / "merlin_tiny.pt"
    if not ckpt.exists():
        save_random_merlin_checkpoint(vision, ckpt)
    encoder = load_merlin_image_encoder(ckpt, replace(vision, checkpoint=str(ckpt)))
    run_encode(encoder, out / "cache" / "images", out / "cache" / "features", batch_size=8, progress=progress)
    vqa_cfg = VQAConfig(clinical_template=str(CONFIGS / "clinical" / "synthetic.yaml"))
    run_build_vqa(manifest, out / "vqa", vqa_cfg, progress=progress)
    scores = run_evaluate_vqa(out / "vqa", cohort_dir / "findings.csv")
    return DemoData(out, manifest, cohort_dir / "findings.csv", out / "cache" / "images",
                    out / "cache" / "features", out / "vqa" / "vqa_llava.jsonl", ckpt, scores.slot_accuracy)


def clinical_cox_c_index(manifest: Path, covariates=("age", "ecog", "stage", "t_stage", "n_stage", "m_stage")) -> float:
    """Harrell's C on the validation split of a CoxPH fitted on clinical covariates of the train split."""
    import pandas as pd

    from ctvl.survival.baselines import fit_and_score

    df = pd.read_csv(manifest)
    df = df.assign(male=(df["sex"] == "M").astype(float),
                   smoker=df["smoking"].map({"never": 0.0, "former": 1.0, "current": 2.0}))
    cols = [*covariates, "male", "smoker"]
    train, test = df[df["split"] == "train"], df[df["split"] == "validation"]
    y = lambda d: (d["event"].to_numpy().astype(bool), d["time"].to_numpy(float))  # noqa: E731
    scores = fit_and_score("coxph", train[cols].to_numpy(float), y(train), test[cols].to_numpy(float), y(test))
    return float(scores["c_index"])


def run_demo(out: Path, n_cases: int = 200, workers: int = 2) -> int:
    """The whole demo; prints where everything is and the headline numbers."""
    from ctvl.data.synthetic import oracle_c_index
    from ctvl.train.loop import fit

    import pandas as pd

    cohort = replace(load_config(SyntheticCohortConfig, CONFIGS / "synthetic" / "demo.yaml"), n_cases=n_cases)
    stage1 = load_config(RunConfig, CONFIGS / "train" / "stage1_tiny.yaml")
    stage2 = load_config(RunConfig, CONFIGS / "train" / "stage2_tiny.yaml")
    out = Path(out)
    data = prepare_demo_data(out, cohort, stage1.preprocess, stage1.model.vision, workers=workers)
    model_cfg: CTVLConfig = replace(stage1.model, vision=replace(stage1.model.vision, checkpoint=str(data.encoder_checkpoint)))
    runs = out / "runs"
    r1 = fit(replace(stage1, model=model_cfg, data=data.data_config(max_length=stage1.data.max_length),
                     train=replace(stage1.train, out_dir=str(runs / "stage1"))))
    model_cfg2 = replace(stage2.model, vision=model_cfg.vision)
    r2 = fit(replace(stage2, model=model_cfg2, data=data.data_config(max_length=stage2.data.max_length),
                     train=replace(stage2.train, out_dir=str(runs / "stage2"), init_from=str(runs / "stage1" / "model"))))
    manifest = pd.read_csv(data.manifest)
    lines = [
        f"VQA extraction slot accuracy (rule back-end vs. ground truth): {data.vqa_accuracy:.3f}",
        f"stage 1 final LM loss {r1.history[-1]['lm_loss']:.3f} (first {r1.history[0]['lm_loss']:.3f})",
        f"oracle C-index (true log-hazard, validation): {oracle_c_index(manifest[manifest['split'] == 'validation']):.3f}",
        f"model C-index (stage 2, validation, mean risk over the questions): {r2.evals[-1]['val_c_index']:.3f}",
        f"clinical-only CoxPH C-index (validation): {clinical_cox_c_index(data.manifest):.3f}",
        f"outputs: {out.resolve()}",
    ]
    for line in lines:
        log.info("%s", line)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0
