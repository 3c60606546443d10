"""Benchmark: one stage-2 epoch on the demo cohort with and without the frozen-encoder feature cache.

Both runs use the demo's configuration (configs/train/stage2_tiny.yaml: tiny Merlin-shaped encoder,
tiny decoder, batch 32) and the same data, in one process one after the other; the only difference
is ``data.feature_cache`` (read cached encoder maps) versus encoding every volume in every step.
Times are of the training loop itself (``fit_vlm``'s samples/s), without model building or saving.
The cache's own one-off cost (``ctvl encode``) is printed too.

    python scripts/bench_feature_cache.py                 # demo cohort (400 cases)
    python scripts/bench_feature_cache.py --n-cases 40    # quick
    python scripts/bench_feature_cache.py --encoder-layers 3 8 36 3 --encoder-width 64   # Merlin-sized encoder
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ctvl.config import RunConfig, SyntheticCohortConfig, load_config
from ctvl.workflows.demo import CONFIGS, prepare_demo_data
from ctvl.train.vlm import fit_vlm


def epoch_time(cfg: RunConfig, out: Path, use_cache: bool) -> tuple[float, int]:
    """Seconds of the training loop for one epoch (model building and the final save excluded)."""
    data = cfg.data if use_cache else replace(cfg.data, feature_cache="")
    run = replace(cfg, data=data, train=replace(cfg.train, out_dir=str(out), eval_interval=0, save_interval=0,
                                                 use_deepspeed="no"))
    result = fit_vlm(run, progress=False)
    samples = result.steps * cfg.train.micro_batch_size * cfg.train.grad_accum_steps
    return samples / result.history[-1]["samples_per_s"], result.steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cases", type=int, default=None, help="cohort size (default: the demo's)")
    p.add_argument("--encoder-layers", type=int, nargs=4, default=None,
                   help="encoder blocks per stage (default: the demo's tiny 1 1 1 1; Merlin: 3 8 36 3)")
    p.add_argument("--encoder-width", type=int, default=None, help="encoder base width (Merlin: 64)")
    args = p.parse_args(argv)
    cohort = load_config(SyntheticCohortConfig, CONFIGS / "synthetic" / "demo.yaml")
    cohort = replace(cohort, n_cases=args.n_cases or cohort.n_cases)
    stage2 = load_config(RunConfig, CONFIGS / "train" / "stage2_tiny.yaml")
    vision = stage2.model.vision
    vision = replace(vision, layers=tuple(args.encoder_layers or vision.layers),
                     base_width=args.encoder_width or vision.base_width)
    stage2 = replace(stage2, model=replace(stage2.model, vision=vision))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepare_demo_data(tmp / "demo", cohort, stage2.preprocess, stage2.model.vision, workers=2,
                                 progress=False)
        n_train = int((pd.read_csv(data.manifest)["split"] == "train").sum())
        steps = max(1, n_train * 6 // stage2.train.micro_batch_size)  # six questions per case
        model = replace(stage2.model, vision=replace(stage2.model.vision, checkpoint=str(data.encoder_checkpoint)))
        cfg = replace(stage2, model=model, data=data.data_config(max_length=stage2.data.max_length),
                      train=replace(stage2.train, init_from=None, stage="survival", max_steps=steps,
                                    warmup_steps=1, log_interval=steps))
        from ctvl.infer.encode import run_encode
        from ctvl.models.vision3d import load_merlin_image_encoder

        t0 = time.perf_counter()
        run_encode(load_merlin_image_encoder(data.encoder_checkpoint, model.vision), data.image_cache,
                   tmp / "encode_timing", batch_size=8, progress=False)
        encode = time.perf_counter() - t0
        epoch_time(cfg, tmp / "warm-up", True)  # first fit in a process pays one-off initialisation
        encoded, n = epoch_time(cfg, tmp / "encoded", False)
        cached, _ = epoch_time(cfg, tmp / "cached", True)
    print(f"stage-2 epoch on {cohort.n_cases} cases ({n} steps of {stage2.train.micro_batch_size} pairs), "
          f"encoder layers {vision.layers} width {vision.base_width}, roi {stage2.preprocess.roi_size}:")
    print(f"  encoder in every step : {encoded:8.1f} s")
    print(f"  feature cache         : {cached:8.1f} s")
    print(f"  speed-up with the cache: {encoded / cached:.1f}x (one-off ctvl encode: {encode:.1f} s)")


if __name__ == "__main__":
    main()
