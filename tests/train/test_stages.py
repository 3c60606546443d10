"""Which parameters move in each stage (paper section 2.3), proven by an optimiser step."""

import pytest
import torch

from ctvl.config import CTVLConfig, DecoderConfig, LoRAConfig, SurvivalConfig, TrainConfig, VisionConfig
from ctvl.data.prompts import build_example, collate_examples
from ctvl.models.ctvl import build_ctvl_model
from ctvl.models.tokenizer import make_tokenizer
from ctvl.train.engine import TorchEngine
from ctvl.train.stages import set_trainable

CORPUS = ["No pleural effusion.", "Mass in the right upper lobe measuring 23 mm.", "Is there a pleural effusion?"] * 20


def _parts(model):
    def part(name):
        if name.startswith("decoder."):
            return "lora" if "lora_" in name else "decoder_base"
        return name.split(".")[0]

    return {n: part(n) for n, _ in model.named_parameters()}


@pytest.mark.parametrize("stage, moving", [
    ("vqa", {"projector", "lora"}),
    ("survival", {"lora", "survival"}),
])
def test_only_the_stage_parts_move(stage, moving):
    torch.manual_seed(0)
    tok = make_tokenizer(CORPUS, vocab_size=300)
    cfg = CTVLConfig(vision=VisionConfig(layers=(1, 1, 1, 1), base_width=8),
                     decoder=DecoderConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64),
                     lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
                     survival=SurvivalConfig(adapter_hidden=8, adapter_dropout=0.0))
    model = build_ctvl_model(cfg, tok).train()
    counts = set_trainable(model, stage)
    assert 0 < counts["trainable"] < counts["total"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = model.vision.bn1.running_mean.clone()
    # 64 x 64 x 32 volumes -> a 2 x 2 x 2 encoder grid -> 4 visual tokens after the mean over z
    examples = [build_example(tok, "Is there a pleural effusion?", a, None, 4) for a in ("No.", "Yes, small.")] * 2
    batch = collate_examples(examples, tok.pad_token_id)
    inputs = dict(batch, image=torch.randn(4, 1, 64, 64, 32), event=torch.tensor([True, False, True, True]),
                  time=torch.tensor([3.0, 5.0, 1.0, 2.0]))
    engine = TorchEngine(model, TrainConfig(micro_batch_size=4, grad_accum_steps=1, lr=1e-2, warmup_steps=1,
                                            max_steps=2))
    for _ in range(2):  # LoRA B starts at zero: A moves only from the second step on
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
    parts = _parts(model)
    moved = {parts[n] for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved == moving
    torch.testing.assert_close(model.vision.bn1.running_mean, bn_before, rtol=0, atol=0)


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage must be"):
        set_trainable(torch.nn.Module(), "pretrain")
