"""Session fixtures for inference tests: a tiny cohort, a tiny model trained on it (stages 1 and 2, Cox, LoRA)
and a random-init DeepHit model saved with its time bins.

Fixtures:
    cohort: :class:`ctvl.workflows.demo.DemoData` of 30 synthetic 32^3 volumes (caches, VQA pairs, encoder checkpoint).
    cox_model: path of the stage-2 model directory (``runs/stage2/model``, ``run_config.yaml`` beside it).
    deephit_model: path of a random-init DeepHit model directory with ``time_bins.json``.
    template: the synthetic cohort's clinical-text template.
    write_subset: the first rows of the cohort's manifest as a manifest of their own (a helper).
    one_torch_thread (autouse): torch runs single-threaded inside these modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctvl.config import RunConfig, TrainConfig, replace
from ctvl.workflows.demo import CONFIGS

from ..conftest import TINY_PREPROCESS, prepare_tiny_cohort, tiny_model_config

TEMPLATE = CONFIGS / "clinical" / "synthetic.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine every op waits for descheduled
    OpenMP threads (tens of times slower); restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    return prepare_tiny_cohort(tmp_path_factory.mktemp("infer_cohort"), n_cases=30, seed=3)


def _fit(cohort, model_cfg, out_dir: Path, stage: str, **train):
    from ctvl.train.vlm import fit_vlm as fit

    base = dict(out_dir=str(out_dir), micro_batch_size=8, grad_accum_steps=1, lr=3e-3, warmup_steps=1,
                max_steps=3, log_interval=3, eval_interval=0, save_interval=0, use_deepspeed="no")
    cfg = RunConfig(model=model_cfg, data=cohort.data_config(max_length=80), preprocess=TINY_PREPROCESS,
                    train=TrainConfig(stage=stage, **{**base, **train}))
    fit(cfg, progress=False)
    return out_dir / "model"


@pytest.fixture(scope="session")
def cox_model(cohort, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("infer_runs")
    cfg = tiny_model_config(str(cohort.encoder_checkpoint), num_bins=6)
    stage1 = _fit(cohort, cfg, runs / "stage1", "vqa")
    return _fit(cohort, cfg, runs / "stage2", "survival", init_from=str(stage1), lr=1e-2)


@pytest.fixture(scope="session")
def deephit_model(cohort, cox_model, tmp_path_factory) -> Path:
    """Random-init DeepHit branch on the trained stage-2 decoder; LoRA and survival weights perturbed."""
    from ctvl.models.ctvl import CTVLModel, SurvivalBranch
    from ctvl.models.decoder import base_model
    from ctvl.survival.discretize import TimeDiscretizer

    model = CTVLModel.from_pretrained(cox_model)
    surv_cfg = replace(model.cfg.survival, head="discrete")
    torch.manual_seed(0)
    model.survival = SurvivalBranch(surv_cfg, base_model(model.decoder).config.hidden_size)
    model.cfg = replace(model.cfg, survival=surv_cfg)
    with torch.no_grad():  # perturbed weights make answers and risks depend on the prompt and image
        for name, p in model.named_parameters():
            if name.startswith("survival.") or "lora_B" in name:
                p.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("deephit") / "model"
    model.save_pretrained(out)
    manifest = pd.read_csv(cohort.manifest)
    train = manifest[manifest["split"] == "train"]
    disc = TimeDiscretizer(surv_cfg.num_bins, "quantile")
    cuts = disc.fit(train["time"].to_numpy(), train["event"].to_numpy()).cuts
    (out / "time_bins.json").write_text(json.dumps({"cuts": [float(c) for c in cuts]}))
    return out


def write_subset(cohort, folder: Path, n: int) -> tuple[Path, pd.DataFrame]:
    """The cohort's first ``n`` manifest rows, image paths made absolute, as ``folder/subset.csv``."""
    manifest = pd.read_csv(cohort.manifest, dtype={"case_id": str}).head(n)
    manifest["image"] = [str((cohort.manifest.parent / p).resolve()) for p in manifest["image"]]
    path = folder / "subset.csv"
    manifest.to_csv(path, index=False)
    return path, manifest


@pytest.fixture(scope="session")
def template() -> Path:
    return TEMPLATE
