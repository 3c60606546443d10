"""CT-RATE-sized synthetic volumes (512 x 512 x ~300 at 0.7 x 0.7 x 1 mm, int16 gzip NIfTI) for benchmarks.

The chest phantoms of :mod:`ctvl.data.synthetic.phantom` carry findings and survival truth at small
sizes; these are simpler (body, fat, lungs, spine, table, 15 HU noise) but have the size, storage and
orientation (LPS, like DICOM-derived CT) of real CT-RATE files, which is what preprocessing and
inference throughput depend on. Independent of the rest of :mod:`ctvl.data.synthetic`. Used by
``scripts/bench_preprocess.py`` and ``scripts/bench_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_ct_like_volume(shape, rng: np.random.Generator) -> np.ndarray:
    """Chest-like int16 HU volume (x, y, z) in RAS: air, table, fat, soft tissue, two lungs, spine."""
    x, y, z = shape
    u = np.linspace(-1, 1, x, dtype=np.float32)[:, None]
    v = np.linspace(-1, 1, y, dtype=np.float32)[None, :]
    sl = np.full((x, y), -1000.0, np.float32)
    sl[(u / 0.85) ** 2 + (v / 0.62) ** 2 < 1] = -100.0  # subcutaneous fat
    sl[(u / 0.78) ** 2 + (v / 0.55) ** 2 < 1] = 40.0  # soft tissue
    for side in (-1, 1):
        sl[((u - side * 0.36) / 0.3) ** 2 + ((v - 0.05) / 0.42) ** 2 < 1] = -850.0  # lungs
    sl[(u / 0.08) ** 2 + ((v + 0.42) / 0.08) ** 2 < 1] = 700.0  # vertebral body
    sl[(np.abs(v + 0.8) < 0.02) & (np.abs(u) < 0.9)] = 300.0  # table (posterior, y low)
    taper = np.clip(1.15 - np.abs(np.linspace(-1, 1, z, dtype=np.float32)) ** 4, 0, 1)  # lungs thin out
    vol = np.where(sl[..., None] < -800, -1000.0 + (sl[..., None] + 1000.0) * taper, sl[..., None])
    vol = vol + rng.normal(0.0, 15.0, size=shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def write_volumes(folder: Path, n: int, shape, spacing, rng) -> list[Path]:
    """n gzip NIfTI files, stored LPS (x and y flipped), z extent jittered by up to +-7 %."""
    import nibabel as nib

    paths = []
    for i in range(n):
        z = max(2, int(round(shape[2] * rng.uniform(0.93, 1.07)))) if n > 1 else shape[2]
        ras = make_ct_like_volume((shape[0], shape[1], z), rng)
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        half = [spacing[0] * (shape[0] - 1) / 2, spacing[1] * (shape[1] - 1) / 2, spacing[2] * z / 2]
        affine[:3, 3] = [half[0], half[1], -half[2]]  # centred field of view
        img = nib.Nifti1Image(np.asfortranarray(ras[::-1, ::-1, :]), affine)
        img.header.set_data_dtype(np.int16)
        paths.append(folder / f"ct_{i:03d}.nii.gz")
        nib.save(img, paths[-1])
    return paths
