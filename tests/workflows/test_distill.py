"""ctvl distill end to end: GBSG2 with the tiny student (one seed), and any local HF causal-LM folder."""

import json

import numpy as np
import pandas as pd
import pytest

from ctvl.cli import main
from ctvl.config import (
    DecoderConfig,
    DistillConfig,
    DistillRunConfig,
    LoRAConfig,
    TabularConfig,
    TrainConfig,
    load_config,
)


@pytest.fixture(scope="module")
def gbsg2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "gbsg2"
    code = main(["--log_level", "WARNING", "distill", "--config", "configs/distill/tiny.yaml",
                 "--tabular.dataset", "gbsg2", "--distill.augment", "4", "--distill.baselines", "[coxph]",
                 "--out", str(out)])
    assert code == 0
    return out


def test_smoke_student_ranks_patients_and_every_answer_parses(gbsg2_run):
    m = json.loads((gbsg2_run / "metrics.json").read_text())
    assert m["fidelity"]["parse_failures"] == 0 and m["fidelity"]["generated"] == m["data"]["n_test"]
    assert m["scores"]["student"]["c_index"] > 0.6  # CoxPH is about 0.66 on this split
    assert m["fidelity"]["spearman_student_teacher"] > 0.8
    assert m["hidden_states"]["smoothness_trained"] > m["hidden_states"]["smoothness_untrained"]
    assert set(m["scores"]) == {"teacher", "student", "student_greedy", "coxph"}
    run = load_config(DistillRunConfig, gbsg2_run / "run_config.yaml")  # the run's config reloads as its schema
    assert run.tabular.dataset == "gbsg2" and run.distill.augment == 4 and run.train.max_steps == m["student"]["steps"]
    for name in ("predictions.csv", "run_config.yaml", "covariate_encoder.json", "student/model.safetensors",
                 "student/tokenizer.json", "hidden_states_tsne.png"):
        assert (gbsg2_run / name).is_file(), name


def test_teacher_sees_training_rows_only_and_predictions_hold_every_patient(gbsg2_run):
    from ctvl.data.tabular import TabularEncoder, load_bundled_dataset
    from ctvl.survival.baselines import fit_coxph

    preds = pd.read_csv(gbsg2_run / "predictions.csv", dtype={"generated": str})
    assert len(preds) == 686 and set(preds["split"]) == {"train", "test"}
    table = load_bundled_dataset("gbsg2")
    X = TabularEncoder.load(gbsg2_run / "covariate_encoder.json").transform(table.covariates)
    train = (preds["split"] == "train").to_numpy()
    cox = fit_coxph(X[train], table.event[train], table.time[train], alpha=0.01, ties="efron")
    np.testing.assert_allclose(preds["teacher_log_hazard"], cox.predict_log_hazard(X), rtol=1e-6, atol=1e-8)
    test = preds[~train]
    assert test["parse_ok"].astype(bool).all() and test["generated"].astype(str).str.fullmatch(r"\d{1,3}").all()
    assert preds["student_expected"].between(0, 100).all() and preds["student_expected"].nunique() > 600  # no ties


def test_any_local_causal_lm_folder_runs_unchanged_with_lora(tmp_path):
    """A random-init tiny Qwen2 saved by save_pretrained (+ a tokenizer) stands in for a real local model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ctvl.data.clinical_text import build_clinical_texts, bundled_template
    from ctvl.data.tabular import load_bundled_dataset
    from ctvl.models.tokenizer import make_tokenizer
    from ctvl.workflows.distill import run_distill

    table = load_bundled_dataset("veterans")
    corpus = list(build_clinical_texts(table.covariates, bundled_template("veterans"))) + [str(i) for i in range(101)]
    tokenizer = make_tokenizer(corpus, vocab_size=400)
    folder = tmp_path / "qwen2"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train = TrainConfig(micro_batch_size=16, grad_accum_steps=1, lr=1e-3, warmup_steps=2, log_interval=5,
                        eval_interval=0, save_interval=0, use_deepspeed="no")
    m = run_distill(TabularConfig(dataset="veterans"), DistillConfig(epochs=1, baselines=(), tsne=False),
                    DecoderConfig(path=str(folder)), LoRAConfig(r=4, alpha=8), train, tmp_path / "out", progress=False)
    assert m["fidelity"]["parse_failures"] == 0 and m["student"]["decoder"] == str(folder)
    assert m["hidden_states"]["untrained"] == "pretrained weights"
    assert (tmp_path / "out" / "student" / "adapter_model.safetensors").is_file()  # LoRA: the adapter is saved
