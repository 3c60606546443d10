"""configs/train/*.yaml: every training config parses and builds its DeepSpeed config; the real-size ones
(Merlin ResNet-152 + RadLlama-7B) carry the paper's settings, the image's paths, and fit the paper's GPU.

* every config -> ``RunConfig`` (``load_config``), its DeepSpeed JSON exists, ``build_ds_config`` at world 2
  gives ``train_batch_size = micro x accum x 2``;
* the real configs: model part == ``configs/model/merlin_radllama7b*.yaml``, preprocessing == Merlin's,
  optimiser settings of the paper, paths under /data, /models, /runs, stage 2 starts from stage 1's model;
* ``scripts/memory_plan.py --quick --config <model part>`` (meta device) runs for each and estimates a peak
  under 44 GiB per GPU on 2 GPUs (RTX A6000: 48 GB, minus CUDA context and NCCL buffers);
* DeepSpeed accepts each real config's JSON with ctvl's optimizer (``deepspeed.initialize`` and one step on
  the CPU, one rank, in a subprocess). The ZeRO-Offload config is checked against DeepSpeed's ZeRO schema by
  default; its step needs DeepSpeedCPUAdam, which DeepSpeed JIT-compiles (about 4 min fresh), so it is ``slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctvl.config import CTVLConfig, PreprocessConfig, RunConfig, load_config, save_config

from .conftest import free_port, load_script

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "configs" / "train"
ALL = sorted(TRAIN.glob("*.yaml"))
REAL = {
    "stage1_merlin_radllama7b_zero2.yaml": (1, 2, "merlin_radllama7b.yaml"),
    "stage2_merlin_radllama7b_zero2.yaml": (2, 2, "merlin_radllama7b.yaml"),
    "stage2_merlin_radllama7b_zero3.yaml": (2, 3, "merlin_radllama7b.yaml"),
    "stage2_merlin_radllama7b_zero3_offload.yaml": (2, 3, "merlin_radllama7b.yaml"),
    "stage2_merlin_radllama7b_deephit_zero2.yaml": (2, 2, "merlin_radllama7b_deephit.yaml"),
}
"""file -> (training stage, ZeRO stage, model config it must equal)."""
A6000_BUDGET_GIB = 44.0


def load(name: str) -> RunConfig:
    return load_config(RunConfig, TRAIN / name)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_train_config_builds_a_deepspeed_config(path):
    from ctvl.train.engine import build_ds_config

    cfg = load_config(RunConfig, path)
    if cfg.train.deepspeed_config:
        assert (ROOT / cfg.train.deepspeed_config).is_file(), cfg.train.deepspeed_config
    ds = build_ds_config(cfg.train, world=2, base=_ds_json(cfg))
    assert ds["train_batch_size"] == cfg.train.micro_batch_size * cfg.train.grad_accum_steps * 2
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.micro_batch_size
    assert ds["zero_optimization"]["stage"] == cfg.train.zero_stage, "JSON and train.zero_stage disagree"


def _ds_json(cfg: RunConfig):
    """The referenced JSON read from the repository root (the image's WORKDIR), None without one."""
    return json.loads((ROOT / cfg.train.deepspeed_config).read_text()) if cfg.train.deepspeed_config else None


def test_real_configs_are_all_there():
    assert set(REAL) <= {p.name for p in ALL}


@pytest.mark.parametrize("name", REAL)
def test_real_config_values(name):
    from ctvl.train.engine import build_ds_config

    stage, zero, model_file = REAL[name]
    cfg = load(name)
    assert cfg.model == load_config(CTVLConfig, ROOT / "configs" / "model" / model_file)
    assert cfg.preprocess == load_config(PreprocessConfig, ROOT / "configs" / "preprocess" / "merlin.yaml")
    t = cfg.train
    assert t.stage == ("vqa" if stage == 1 else "survival")
    assert (t.micro_batch_size, t.grad_accum_steps, t.lr, t.betas) == (12, 8, 1e-6, (0.9, 0.999))
    assert (t.warmup_steps, t.precision, t.zero_stage) == (500, "auto", zero)
    assert build_ds_config(t, world=2, base=_ds_json(cfg))["train_batch_size"] == 12 * 8 * 2
    dec = cfg.model.decoder
    assert (dec.path, dec.dtype, dec.attn_implementation, dec.gradient_checkpointing) == (
        "/models/radllama-7b", "bfloat16", "sdpa", True)
    assert not dec.trust_remote_code and cfg.model.lora.r == 16
    vision = cfg.model.vision
    assert vision.layers == (3, 8, 36, 3) and vision.checkpoint.startswith("/models/merlin/")
    assert t.event_aware_sampler == (stage == 2)


@pytest.mark.parametrize("name", REAL)
def test_real_config_paths(name):
    cfg = load(name)
    d, t = cfg.data, cfg.train
    for value in (d.manifest, d.vqa, d.image_cache, d.feature_cache, t.out_dir):
        assert value.startswith(("/data/", "/runs/")), value
    assert t.out_dir.startswith("/runs/")
    for relative in (t.deepspeed_config, d.questions, d.clinical_template):
        assert not relative or (ROOT / relative).is_file(), relative  # resolved from the image's WORKDIR


def test_stage2_starts_from_stage1_and_outputs_do_not_collide():
    stage1 = load("stage1_merlin_radllama7b_zero2.yaml").train.out_dir
    stage2 = [load(n).train for n, (stage, _, _) in REAL.items() if stage == 2]
    assert all(t.init_from == f"{stage1}/model" for t in stage2)
    out_dirs = [stage1] + [t.out_dir for t in stage2]
    assert len(set(out_dirs)) == len(out_dirs), "two variants would resume each other's checkpoints"


# ------------------------------------------------------------------------------ memory plan


@pytest.fixture(scope="module")
def memory_plan():
    return load_script("memory_plan")


@pytest.mark.parametrize("name", REAL)
def test_memory_plan_runs_and_fits_the_papers_gpu(name, memory_plan, tmp_path, capsys):
    pytest.importorskip("deepspeed")  # the model-state rows come from DeepSpeed's estimators
    from ctvl.models.projector import num_image_tokens
    from ctvl.models.vision3d import compute_feature_shape

    cfg = load(name)
    model_yaml = tmp_path / "model.yaml"
    save_config(cfg.model, model_yaml)
    n_img = num_image_tokens(cfg.model.projector, compute_feature_shape(cfg.preprocess.roi_size))
    seq = n_img + cfg.data.max_length
    roi = [str(n) for n in cfg.preprocess.roi_size]
    memory_plan.main(["--quick", "--config", str(model_yaml), "--gpus", "2", "--roi", *roi,
                      "--micro-batch", str(cfg.train.micro_batch_size), "--seq-len", str(seq)])
    out = capsys.readouterr().out
    assert f"LoRA r={cfg.model.lora.r}" in out and f"{seq} tokens ({n_img} visual)" in out
    peaks = out.split("Estimated peak per GPU", 1)[1]
    row = re.search(rf"\| ZeRO-{cfg.train.zero_stage} \| ([\d.]+) GiB \| ([\d.]+) GiB \|", peaks)
    assert row, out
    no_ckpt, ckpt = map(float, row.groups())
    assert ckpt < no_ckpt
    peak = ckpt if cfg.model.decoder.gradient_checkpointing else no_ckpt
    assert peak < A6000_BUDGET_GIB, f"{name}: estimated {peak} GiB per GPU"


# ---------------------------------------------------------------------- DeepSpeed acceptance

_INIT_SCRIPT = r"""
import json, os, sys
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
import torch, deepspeed
from ctvl.config import RunConfig, load_config
from ctvl.train.engine import build_ds_config, build_optimizer
results = {}
for path in sys.argv[2:]:
    cfg = load_config(RunConfig, path)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    try:
        ds_config = build_ds_config(cfg.train, 1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg.train, ds_config),
                                          config=ds_config)
        loss = engine(torch.randn(cfg.train.micro_batch_size, 8)).pow(2).mean()
        engine.backward(loss)
        engine.step()
        results[path] = "ok"
    except Exception as err:  # reported per config
        results[path] = f"{type(err).__name__}: {err}"
print("RESULTS" + json.dumps(results))
"""


def _offloads(name: str) -> bool:
    from ctvl.train.engine import build_ds_config, offloads_optimizer

    return offloads_optimizer(build_ds_config(load(name).train, 1, base=_ds_json(load(name))))


def _deepspeed_step(names, timeout: int = 300) -> dict:
    """Run ``_INIT_SCRIPT`` on ``names`` in one subprocess: name -> "ok" or the error."""
    pytest.importorskip("deepspeed")
    paths = [str(TRAIN / n) for n in names]
    proc = subprocess.run([sys.executable, "-c", _INIT_SCRIPT, str(free_port()), *paths], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {Path(k).name: v for k, v in json.loads(line[len("RESULTS"):]).items()}


IN_MEMORY = [n for n in REAL if "offload" not in n]
OFFLOADED = [n for n in REAL if "offload" in n]


def test_offload_split_follows_the_json():
    assert OFFLOADED and all(_offloads(n) for n in OFFLOADED) and not any(_offloads(n) for n in IN_MEMORY)


@pytest.fixture(scope="module")
def deepspeed_init_results():
    return _deepspeed_step(IN_MEMORY)


@pytest.mark.parametrize("name", IN_MEMORY)
def test_deepspeed_accepts_real_config(name, deepspeed_init_results):
    assert deepspeed_init_results[name] == "ok"


@pytest.mark.parametrize("name", OFFLOADED)
def test_deepspeed_validates_offload_config(name):
    """DeepSpeed's own ZeRO schema accepts the offload settings (no op build: the full step is ``slow``)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from ctvl.train.engine import build_ds_config

    cfg = load(name)
    zero = DeepSpeedZeroConfig(**build_ds_config(cfg.train, 1, base=_ds_json(cfg))["zero_optimization"])
    assert zero.stage == cfg.train.zero_stage and zero.offload_optimizer.device == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLOADED)
def test_deepspeed_steps_offload_config(name):
    """One ZeRO-Offload step with DeepSpeedCPUAdam, whose op DeepSpeed JIT-compiles (minutes when fresh)."""
    assert _deepspeed_step([name], timeout=1800)[name] == "ok"
