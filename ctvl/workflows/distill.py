"""``ctvl distill``: a language model that writes a Cox teacher's risk from a patient sentence (paper 000).

Orchestration only; each step is a shared layer:

1. the table and its split: ``ctvl.data.tabular`` (a CSV/Parquet file or a bundled set; seeded,
   event-stratified), covariates encoded by ``TabularEncoder`` fitted on the training rows;
2. the teacher, fitted on the training rows only: ``ctvl.survival.teachers.Teacher``;
3. one sentence per patient: ``ctvl.data.clinical_text`` (curated template of a bundled set, a YAML
   file, or one naming every column) + the question; optional teacher-labelled extra prompts from
   perturbed training covariates (``perturb_covariates``);
4. the answer: the teacher's risk as text, ``ctvl.data.risk_text.RiskEncoding``;
5. the student, a local causal LM (ctvl's tiny Llama, or any local HF folder, LoRA optional), trained
   on the answer tokens of training prompts only: ``ctvl.train.answer_lm``;
6. reading it: the exact distribution over the candidate answers (expected value: a continuous risk)
   and greedy constrained generation, ``ctvl.models.answer_scoring``;
7. scores on the held-out rows: ``ctvl.survival.baselines.score_predictions`` for the student, the
   teacher and the baselines on the same split; hidden-state smoothness and kNN R^2 before and
   after training, ``ctvl.infer.representation``.

Outputs in ``out``: ``predictions.csv``, ``metrics.json``, ``run_config.yaml``, ``covariate_encoder.json``,
``student/`` (safetensors + tokenizer) and ``hidden_states_tsne.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time as _time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctvl.config import (
    DecoderConfig,
    DistillConfig,
    DistillRunConfig,
    LoRAConfig,
    TabularConfig,
    TrainConfig,
    save_config,
    to_dict,
)

log = logging.getLogger(__name__)

QUESTIONS = {"percentile": "Risk percentile (0-100):", "log_hazard": "Log-hazard relative to average:",
             "decile": "Risk decile:"}


def patient_texts(covariates: pd.DataFrame, cfg: DistillConfig, dataset: str) -> list[str]:
    """One prompt per row: the patient sentence (template of ``cfg`` or the data set) and the question."""
    from ctvl.data.clinical_text import (
        automatic_template,
        build_clinical_texts,
        bundled_template,
        load_clinical_template,
    )

    if cfg.template:
        template = load_clinical_template(cfg.template)
    elif dataset:
        template = bundled_template(dataset)
    else:
        template = automatic_template(covariates.columns)
    question = cfg.question or QUESTIONS[cfg.encoding]
    return [f"{s} {question}" for s in build_clinical_texts(covariates, template)]


def build_student(decoder: DecoderConfig, lora: LoRAConfig, corpus: list[str], seed: int):
    """``(model, tokenizer)``: a local HF causal LM (LoRA when ``lora.r > 0``) or ctvl's tiny random Llama
    with a BPE trained on ``corpus`` (full fine-tuning)."""
    import torch

    from ctvl.models.decoder import apply_lora, load_decoder, resize_embeddings
    from ctvl.models.tokenizer import load_tokenizer, make_tokenizer

    torch.manual_seed(seed)
    if decoder.path is None:
        tokenizer = make_tokenizer(corpus, vocab_size=decoder.tokenizer_vocab_size)
        return load_decoder(decoder, vocab_size=len(tokenizer)), tokenizer
    tokenizer = load_tokenizer(decoder.tokenizer or decoder.path, image_token=None,
                               trust_remote_code=decoder.trust_remote_code)
    model = load_decoder(decoder)
    resize_embeddings(model, len(tokenizer))
    return (apply_lora(model, lora) if lora.r > 0 else model), tokenizer


def _prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in texts]


def _spearman(a, b) -> float:
    """Spearman's rho; NaN when one side is constant (an untrained student may answer one value)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(spearmanr(a, b).statistic) if a.std() > 0 and b.std() > 0 else float("nan")


def run_distill(table_cfg: TabularConfig, cfg: DistillConfig, decoder: DecoderConfig, lora: LoRAConfig,
                train: TrainConfig, out: Path, progress: bool = True) -> dict:
    """The whole workflow on one table and one seed; returns (and writes) ``metrics.json``'s content."""
    from ctvl.data.risk_text import RiskEncoding
    from ctvl.data.tabular import build_encoder, build_survival_table, perturb_covariates, split_table
    from ctvl.infer.representation import embed_2d, knn_r2, risk_smoothness
    from ctvl.models.answer_scoring import (
        AnswerTrie,
        answer_token_ids,
        generate_constrained,
        last_token_states,
        score_answers,
    )
    from ctvl.survival.baselines import evaluation_times, predict_baseline, score_predictions
    from ctvl.survival.metrics import calibration_table
    from ctvl.survival.teachers import Teacher, fit_scale
    from ctvl.train.answer_lm import answer_examples, fit_answer_lm

    started = _time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = build_survival_table(table_cfg)
    split = split_table(table, table_cfg.test_fraction, seed=cfg.seed)
    tr, te = split.train, split.test
    covariates = table.covariates
    encoder = build_encoder(table_cfg).fit(covariates.iloc[tr])
    encoder.save(out / "covariate_encoder.json")
    X = encoder.transform(covariates)
    y_train, y_test = (table.event[tr], table.time[tr]), (table.event[te], table.time[te])

    teacher = Teacher(cfg.teacher, alpha=cfg.teacher_alpha, seed=cfg.seed).fit(X[tr], *y_train)
    teacher_h = teacher.predict_log_hazard(X)
    encoding = RiskEncoding(cfg.encoding).fit(teacher_h[tr])

    texts = patient_texts(covariates, cfg, table_cfg.dataset)
    extra = perturb_covariates(covariates.iloc[tr], cfg.augment, cfg.augment_scale, seed=cfg.seed)
    extra_texts = patient_texts(extra, cfg, table_cfg.dataset) if len(extra) else []
    extra_h = teacher.predict_log_hazard(encoder.transform(extra)) if len(extra) else np.zeros(0)
    train_texts = [texts[i] for i in tr] + extra_texts
    train_answers = encoding.encode(np.r_[teacher_h[tr], extra_h])
    corpus = train_texts + [f" {c}" for c in encoding.candidates] * 3  # the tiny student's BPE corpus
    model, tokenizer = build_student(decoder, lora, corpus, cfg.seed)
    candidate_ids = answer_token_ids(tokenizer, encoding.candidates)
    trie = AnswerTrie(candidate_ids, tokenizer.eos_token_id)
    answer_ids = dict(zip(encoding.candidates, candidate_ids))
    prompts = _prompt_ids(tokenizer, texts)
    pad = tokenizer.pad_token_id
    untrained_states = last_token_states(model, [prompts[i] for i in te], pad, cfg.score_batch_size)

    ids = [str(table.case_id[i]) for i in tr] + [f"augmented_{k}" for k in range(len(extra_texts))]
    examples = answer_examples(ids, [prompts[i] for i in tr] + _prompt_ids(tokenizer, extra_texts),
                               [answer_ids[a] for a in train_answers])
    steps = max(1, math.ceil(cfg.epochs * len(examples) / (train.micro_batch_size * train.grad_accum_steps)))
    train = replace(train, max_steps=steps, seed=cfg.seed, out_dir=str(out / "student_run"))
    t0 = _time.perf_counter()
    fit = fit_answer_lm(model, examples, train, pad, out_dir=out / "student_run", progress=progress)
    train_seconds = _time.perf_counter() - t0

    # Read the student: the distribution over the candidates (every row) and greedy constrained answers.
    probs, states = score_answers(model, prompts, trie, pad, cfg.score_batch_size, return_states=True)
    expected = probs @ encoding.values  # (n,) continuous, in the encoding's units
    student_scale = encoding.to_log_hazard(expected)
    b, mean_s, mean_t = fit_scale(student_scale[tr], teacher_h[tr])
    student_h = mean_t + b * (student_scale - mean_s)
    generated = generate_constrained(model, [prompts[i] for i in te], trie, pad, cfg.score_batch_size)
    generated_text = [tokenizer.decode(g, skip_special_tokens=True).strip() for g in generated]
    parsed = [encoding.parse(t) for t in generated_text]
    parse_ok = np.array([p is not None for p in parsed])
    greedy = np.array([p if p is not None else np.nan for p in parsed])

    times = evaluation_times(table.time[te], table.time[tr])
    horizon = float(np.median(table.time[tr][table.event[tr]]))
    scores = {
        "teacher": score_predictions(y_train, y_test, teacher_h[te], teacher.predict_survival(teacher_h[te], times), times),
        "student": score_predictions(y_train, y_test, student_h[te], teacher.predict_survival(student_h[te], times), times),
    }
    scores["student_greedy"] = {"c_index": float(harrell_of(greedy[parse_ok], y_test, parse_ok))}
    if cfg.survival_head_epochs > 0:
        scores["student_survival_head"] = _survival_head(decoder, lora, cfg, train, corpus, prompts, table,
                                                         tr, te, times, out, progress)
    for name in cfg.baselines:
        kw = {"alpha": cfg.teacher_alpha} if name == "coxph" else {}
        risk, surv = predict_baseline(name, X[tr], y_train, X[te], times, seed=cfg.seed, **kw)
        scores[name] = score_predictions(y_train, y_test, risk, surv, times)
    teacher_risk_te = teacher_h[te]
    metrics = {
        "data": {"source": table.source, "n_train": int(tr.size), "n_test": int(te.size),
                 "events_train": int(table.event[tr].sum()), "augmented_prompts": len(extra_texts)},
        "config": to_dict(cfg),
        "scores": scores,
        "fidelity": {"spearman_student_teacher": _spearman(student_h[te], teacher_risk_te),
                     "spearman_greedy_teacher": _spearman(greedy[parse_ok], teacher_risk_te[parse_ok])
                     if parse_ok.sum() > 2 else None,
                     "parse_failures": int((~parse_ok).sum()), "generated": int(parse_ok.size),
                     "greedy_distinct_answers": int(len(set(generated_text)))},
        "calibration": {"slope_to_teacher_scale": b,
                        "student": calibration_table(1 - teacher.predict_survival(student_h[te], [horizon])[:, 0],
                                                     *y_test, horizon),
                        "teacher": calibration_table(1 - teacher.predict_survival(teacher_h[te], [horizon])[:, 0],
                                                     *y_test, horizon)},
        "hidden_states": {
            "smoothness_trained": risk_smoothness(states[te], teacher_risk_te, cfg.knn),
            "smoothness_untrained": risk_smoothness(untrained_states, teacher_risk_te, cfg.knn),
            "knn_r2_trained": knn_r2(states[te], teacher_risk_te, cfg.knn, seed=cfg.seed),
            "knn_r2_untrained": knn_r2(untrained_states, teacher_risk_te, cfg.knn, seed=cfg.seed),
            "untrained": "pretrained weights" if decoder.path else "random init"},
        "student": {"decoder": decoder.path or "tiny random-init Llama", "steps": fit.steps,
                    "train_seconds": train_seconds, "final_loss": fit.history[-1]["loss"] if fit.history else None,
                    "parameters_trained": int(sum(p.numel() for p in model.parameters() if p.requires_grad))},
        "seconds": _time.perf_counter() - started,
    }

    split_name = np.full(len(table), "train", dtype=object)
    split_name[split.validation] = "validation"
    split_name[te] = "test"
    generated_col = np.full(len(table), "", dtype=object)
    generated_col[te] = generated_text
    ok_col = np.full(len(table), np.nan, dtype=object)
    ok_col[te] = parse_ok
    from ctvl.data.tables import write_table

    write_table(pd.DataFrame({"case_id": table.case_id, "split": split_name, "time": table.time,
                              "event": table.event.astype(int), "teacher_log_hazard": teacher_h,
                              "teacher_answer": encoding.encode(teacher_h), "student_expected": expected,
                              "student_log_hazard": student_h, "generated": generated_col, "parse_ok": ok_col}),
                out / "predictions.csv", "predictions")
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    save_config(DistillRunConfig(table_cfg, cfg, decoder, lora, train), out / "run_config.yaml")
    model.save_pretrained(out / "student")
    tokenizer.save_pretrained(out / "student")
    if cfg.tsne:
        _write_tsne(states[te], teacher_risk_te, y_test, out / "hidden_states_tsne.png", cfg.seed, embed_2d)
    log.info("distill %s: student C %.4f (teacher %.4f), Spearman %.4f, %d parse failures; %.0f s",
             table.source, scores["student"]["c_index"], scores["teacher"]["c_index"],
             metrics["fidelity"]["spearman_student_teacher"], metrics["fidelity"]["parse_failures"],
             metrics["seconds"])
    return metrics


def _survival_head(decoder, lora, cfg: DistillConfig, train: TrainConfig, corpus, prompts, table, tr, te, times,
                   out: Path, progress: bool) -> dict:
    """The same prompts through a DeepSurv head on a fresh student's last prompt-token state (real times);
    ``corpus`` is the student's, so the tiny student's tokenizer, and so ``prompts``, are the same."""
    from ctvl.models.decoder import base_model
    from ctvl.models.prompt_survival import PromptCoxModel
    from ctvl.survival.baselines import score_predictions
    from ctvl.survival.heads import BreslowEstimator
    from ctvl.train.prompt_cox import fit_prompt_cox, predict_prompt_risk

    decoder_model, tokenizer = build_student(decoder, lora, corpus, cfg.seed)
    model = PromptCoxModel(decoder_model, base_model(decoder_model).config.hidden_size)
    steps = max(1, math.ceil(cfg.survival_head_epochs * tr.size / (train.micro_batch_size * train.grad_accum_steps)))
    tc = replace(train, max_steps=steps, out_dir=str(out / "survival_head_run"))
    t0 = _time.perf_counter()
    fit_prompt_cox(model, [str(table.case_id[i]) for i in tr], [prompts[i] for i in tr], table.event[tr],
                   table.time[tr], tc, tokenizer.pad_token_id, out_dir=out / "survival_head_run", progress=progress)
    seconds = _time.perf_counter() - t0
    risk = predict_prompt_risk(model, prompts, tokenizer.pad_token_id, cfg.score_batch_size)
    surv = BreslowEstimator().fit(risk[tr], table.event[tr], table.time[tr]).predict_survival(risk[te], times)
    scores = score_predictions((table.event[tr], table.time[tr]), (table.event[te], table.time[te]), risk[te], surv,
                               times)
    return {**scores, "train_seconds": seconds, "steps": steps}


def harrell_of(risk: np.ndarray, y_test, keep: np.ndarray) -> float:
    """Harrell's C of ``risk`` on the rows ``keep`` of the test split (greedy answers tie often)."""
    from ctvl.survival.metrics import harrell_c

    event, time = (np.asarray(a)[keep] for a in y_test)
    return harrell_c(risk, event, time).cindex if keep.sum() > 1 else float("nan")


def _write_tsne(states, risk, y_test, path: Path, seed: int, embed_2d) -> None:
    from ctvl.infer.report import plot_latent

    xy, method = embed_2d(states, "auto", seed)
    png = plot_latent(xy, risk, y_test[1], y_test[0].astype(bool), "t-SNE" if method == "tsne" else "PCA",
                      what="student hidden states", risk_label="teacher log-hazard")
    path.write_bytes(png)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x
