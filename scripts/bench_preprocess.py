"""Benchmark: ctvl's CT preprocessing vs Merlin's published MONAI pipeline, side by side on the same files.

Writes ``--n`` synthetic CT-RATE-shaped volumes (default 512 x 512 x ~300 voxels at 0.7 x 0.7 x 1 mm,
int16 HU in gzip NIfTI, stored LPS like DICOM-derived CT, body/fat/lungs/spine/table structure with
15 HU noise) to a temporary folder, then times per file, rotating which goes first:

* ctvl: ``ctvl.data.transforms.load_and_preprocess`` (integer NIfTI read straight from its stored values
  + the fast path);
* ctvl via io: ``preprocess_volume(io.load_volume(path))``, the route DICOM and float inputs take
  (float32 HU, reoriented copy);
* reference: ``build_merlin_reference_transforms()`` (LoadImaged -> ... -> CenterSpatialCropd, Merlin's code).

All count file loading; the ratio printed is ctvl / reference. Peak memory is the resident set size above the level just before each call,
sampled every 2 ms from ``/proc/self/statm`` by a thread (it sees NumPy and torch allocations alike;
tracemalloc would miss torch's).

Usage::

    python scripts/bench_preprocess.py                  # 3 volumes, full size (a few minutes on 2 cores)
    python scripts/bench_preprocess.py --n 5 --shape 512 512 320
    python scripts/bench_preprocess.py --quick          # tiny volumes, seconds (used by the test suite)

Exit status 1 if the outputs differ by more than 1e-3 anywhere.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ctvl.data.synthetic.ctrate_like import write_volumes

TOLERANCE = 1e-3
QUICK_SHAPE = (64, 64, 40)
QUICK_ROI = (32, 32, 24)


class PeakRSS:
    """Context manager: peak resident memory above the entry level, in MiB (sampled every 2 ms)."""

    def __enter__(self):
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: no sampling
            return 0

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())


CTVL, VIA_IO, REFERENCE = "ctvl load_and_preprocess", "ctvl io.load_volume+fast", "Merlin MONAI reference"


def run(args) -> int:
    import torch

    from ctvl.config import PreprocessConfig
    from ctvl.data.io import load_volume
    from ctvl.data.transforms import build_merlin_reference_transforms, load_and_preprocess, preprocess_volume

    roi = QUICK_ROI if args.quick else (224, 224, 160)
    cfg = PreprocessConfig(roi_size=roi, spacing=(1.5, 1.5, 3.0))
    reference = build_merlin_reference_transforms(roi_size=roi, spacing=cfg.spacing)
    methods = {
        CTVL: lambda p: load_and_preprocess(p, cfg),
        VIA_IO: lambda p: preprocess_volume(load_volume(p), cfg),  # the route of DICOM and float inputs
        REFERENCE: lambda p: reference({"image": str(p)})["image"].numpy(),
    }
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        t0 = time.perf_counter()
        paths = write_volumes(Path(tmp), args.n, args.shape, args.spacing, rng)
        (Path(tmp) / "warm").mkdir()
        warm = write_volumes(Path(tmp) / "warm", 1, (24, 24, 16), args.spacing, rng)
        written_s = time.perf_counter() - t0
        for fn in methods.values():  # imports, MONAI lazy initialisation
            fn(warm[0])
        times, peaks, max_diff = time_methods(methods, paths)
        mb = np.mean([p.stat().st_size for p in paths]) / 2**20
    shape, spacing = "x".join(map(str, args.shape)), "x".join(f"{s:g}" for s in args.spacing)
    print(
        f"{args.n} volume(s) {shape} (z +-7%) @ {spacing} mm, int16 .nii.gz, "
        f"mean {mb:.1f} MiB on disk (written in {written_s:.0f} s); roi {roi}"
    )
    print_table(times, peaks, max_diff, torch.get_num_threads())
    return 0 if max_diff <= TOLERANCE else 1


def time_methods(methods: dict, paths: list[Path]) -> tuple[dict, dict, float]:
    """Run every method on every file (order rotated per file against drift in machine load).

    Returns:
        ``(seconds, peak_mib, max_diff)``: per-method lists over files, and the largest absolute
        difference of any method's output from the reference's.
    """
    names = list(methods)
    times, peaks, max_diff = {n: [] for n in names}, {n: [] for n in names}, 0.0
    for i, path in enumerate(paths):
        outs = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:
            with PeakRSS() as mem:
                t = time.perf_counter()
                outs[name] = methods[name](path)
                times[name].append(time.perf_counter() - t)
            peaks[name].append(mem.mib)
        for name, out in outs.items():
            if out.shape != outs[REFERENCE].shape:
                raise SystemExit(f"{path.name}: {name} output shape {out.shape} != {outs[REFERENCE].shape}")
            max_diff = max(max_diff, float(np.abs(out - outs[REFERENCE]).max()))
    return times, peaks, max_diff


def print_table(times: dict, peaks: dict, max_diff: float, threads: int) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPUs {os.cpu_count()}, torch threads {threads}, 1-min load average at the end {load:.2f}")
    print(f"{'method':<28}{'s/volume':>10}{'volumes/s':>11}{'peak RSS MiB':>14}")
    for name in times:
        s = float(np.mean(times[name]))
        print(f"{name:<28}{s:>10.3f}{1 / s:>11.3f}{max(peaks[name]):>14.0f}")
    ratio = np.mean(times[REFERENCE]) / np.mean(times[CTVL])
    print(f"throughput ratio ctvl/reference: {ratio:.2f}x (goal >= 2x)")
    print(f"max abs difference from the reference: {max_diff:.3g} (goal <= {TOLERANCE:g})")
    print("peak RSS: resident memory above the level before each call, sampled every 2 ms; max over volumes")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3, help="number of volumes (default 3)")
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300), help="x y z voxels (z is jittered)")
    p.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 1.0), help="x y z mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=f"volumes {QUICK_SHAPE}, roi {QUICK_ROI}: seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.shape = min(args.n, 2), QUICK_SHAPE
    if args.n < 1 or min(args.shape) < 2 or min(args.spacing) <= 0:
        p.error("--n must be >= 1, --shape values >= 2 and --spacing values > 0")
    return args


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
