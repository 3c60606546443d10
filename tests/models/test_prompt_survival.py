"""DeepSurv on a language model's last prompt-token state, trained in ctvl's loop on real times."""

import numpy as np
import torch

from ctvl.config import DecoderConfig, TrainConfig
from ctvl.models.decoder import build_tiny_decoder
from ctvl.models.prompt_survival import PromptCoxModel
from ctvl.survival.losses import neg_partial_log_likelihood
from ctvl.train.prompt_cox import collate_prompts, fit_prompt_cox, predict_prompt_risk

PAD = 3


def _model(seed=0):
    torch.manual_seed(seed)
    decoder = build_tiny_decoder(DecoderConfig(hidden_size=32, num_heads=2, intermediate_size=64), vocab_size=20)
    return PromptCoxModel(decoder, 32, hidden=(16,), dropout=0.0)


def test_risk_reads_the_last_real_token_and_the_loss_is_the_cox_loss():
    model = _model().eval()
    items = [{"case_id": "a", "input_ids": [1, 5, 6, 7], "event": True, "time": 2.0},
             {"case_id": "b", "input_ids": [1, 8], "event": False, "time": 5.0},
             {"case_id": "c", "input_ids": [1, 9, 10], "event": True, "time": 1.0}]
    inputs, meta = collate_prompts(items, PAD)
    out = model(**inputs)
    alone = torch.stack([model(torch.tensor([it["input_ids"]]), torch.ones(1, len(it["input_ids"]), dtype=torch.long)).risk[0]
                         for it in items])
    torch.testing.assert_close(out.risk, alone)  # right padding does not change a prompt's risk
    torch.testing.assert_close(out.loss, neg_partial_log_likelihood(out.risk, inputs["event"], inputs["time"]))
    assert meta["case_id"] == ["a", "b", "c"]


def test_training_learns_a_token_that_marks_high_risk():
    rng = np.random.default_rng(0)
    marker = rng.random(128) < 0.5  # token 11 = high risk, token 12 = low risk
    prompts = [[1, 11 if m else 12, int(t)] for m, t in zip(marker, rng.integers(13, 19, 128))]
    time = rng.exponential(np.where(marker, 1.0, 4.0))
    event = rng.random(128) < 0.8
    model = _model(1)
    tc = TrainConfig(micro_batch_size=32, grad_accum_steps=1, lr=3e-3, warmup_steps=0, lr_schedule="constant",
                     max_steps=60, log_interval=20, eval_interval=0, save_interval=0, use_deepspeed="no", seed=0)
    fit = fit_prompt_cox(model, [str(i) for i in range(128)], prompts, event, time, tc, PAD, progress=False)
    risk = predict_prompt_risk(model, prompts, PAD)
    assert risk[marker].mean() > risk[~marker].mean() + 0.5
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]
