"""Stage 0 on 2 gloo CPU ranks: the gathered loss and gradients equal one process on the whole batch, and a
DeepSpeed ZeRO-3 run trains and exports the encoder."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctvl.models.vision3d import load_merlin_image_encoder

from ..conftest import TINY_VISION, free_port
from .test_contrastive import make_config
from .test_distributed_train import DS_CONFIGS, _launch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                reason="open_clip not installed: pip install 'ctvl[clip]'")


# ------------------------------------------------------------------------------ 2 ranks

_RANKS_SCRIPT = r"""
import copy, json
import torch
from transformers import BertConfig, BertModel
from ctvl.config import ContrastiveConfig, VisionConfig
from ctvl.models.vision3d import build_image_encoder
from ctvl.train.clip_loss import load_clip_loss_class
from ctvl.train.contrastive import ContrastiveModel
from ctvl.train.engine import init_distributed, rank, world_size

init_distributed()
torch.manual_seed(0)  # the same model and data on both ranks
vision = VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=False)
text = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
model = ContrastiveModel(build_image_encoder(vision), text, None, ContrastiveConfig(embed_dim=8, text_frozen=False),
                         vision).eval()  # BatchNorm on running statistics: features independent of the batch
image, ids = torch.rand(8, 1, 32, 32, 32), torch.randint(1, 64, (8, 12))
mask = (torch.arange(12) < torch.randint(4, 13, (8, 1))).long()
reference = copy.deepcopy(model)
reference.clip_loss = load_clip_loss_class()(local_loss=False, gather_with_grad=True, cache_labels=True)
ref_loss = reference(image, ids, mask).loss
ref_loss.backward()
part = slice(4 * rank(), 4 * rank() + 4)
loss = model(image[part], ids[part], mask[part]).loss
loss.backward()
pairs = [(p, q) for p, q in zip(model.parameters(), reference.parameters()) if q.grad is not None]
assert len(pairs) == sum(p.grad is not None for p in model.parameters()) > 10  # BERT's pooler takes no part
for p, _ in pairs:  # what DeepSpeed and DDP do: average the gradients over the ranks
    torch.distributed.all_reduce(p.grad)
    p.grad /= world_size()
grad_diff = max((p.grad - q.grad).abs().max().item() for p, q in pairs)
grad_scale = max(q.grad.abs().max().item() for _, q in pairs)
rows = [None] * world_size()
torch.distributed.all_gather_object(rows, {"rank": rank(), "world": world_size(), "loss": loss.item(),
                                           "ref_loss": ref_loss.item(), "grad_diff": grad_diff, "grad_scale": grad_scale})
if rank() == 0:
    print("RESULT" + json.dumps(rows), flush=True)
"""


@pytest.mark.distributed
def test_two_ranks_gather_equals_one_process_on_the_whole_batch(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = next(json.loads(line[len("RESULT"):]) for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert sorted(r["rank"] for r in rows) == [0, 1] and all(r["world"] == 2 for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(r["ref_loss"], abs=1e-5)
        assert r["grad_scale"] > 1e-3 and r["grad_diff"] <= 1e-5 * r["grad_scale"], r  # float32 sums


@pytest.mark.distributed
def test_zero3_on_two_ranks_trains_and_exports_the_encoder(tiny_data, tmp_path):
    cfg = make_config(tiny_data, tmp_path / "z3", micro_batch_size=4, max_steps=3, eval_interval=3, save_interval=0,
                      use_deepspeed="yes", deepspeed_config=str(DS_CONFIGS / "zero3.json"), zero_stage=3)
    metrics = _launch(cfg, tmp_path, "stage0")
    assert list(metrics["step"]) == [1, 2, 3] and metrics["loss"].notna().all()
    # gathered, full shapes
    load_merlin_image_encoder(tmp_path / "z3" / "encoder" / "merlin_encoder.pt", TINY_VISION)
