"""ctvl.data.transforms: the fast path equals Merlin's published MONAI pipeline; axis order, dtype, shape."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CenterSpatialCrop, SpatialPad

from ctvl.config import PreprocessConfig
from ctvl.data.io import CTVolume
from ctvl.data.transforms import (
    build_eval_transforms,
    build_merlin_reference_transforms,
    compute_pad_crop,
    load_and_preprocess,
    preprocess_volume,
)

TOL = 1e-3  # [0, 1] units, i.e. 2 HU for Merlin's window
SPACING = (1.5, 1.5, 3.0)
_WORLD_AXIS = {"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1), "I": (2, -1), "S": (2, 1)}


def make_affine(axcodes: str, spacing, rotate_deg: float = 0.0) -> np.ndarray:
    """Affine: stored axis i points along axcodes[i] with voxel size spacing[i]; optional rotation about S."""
    affine = np.zeros((4, 4))
    for i, code in enumerate(axcodes):
        world, sign = _WORLD_AXIS[code]
        affine[world, i] = sign * spacing[i]
    c, s = np.cos(np.radians(rotate_deg)), np.sin(np.radians(rotate_deg))
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    affine[:3, 3] = (12.5, -30.0, 41.0)
    affine[3, 3] = 1.0
    return affine


def make_hu(shape, seed: int = 0) -> np.ndarray:
    """int16 HU with air, soft tissue, bone blocks and noise: edges and values outside the window."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1024, np.int16)
    sx, sy, sz = (max(1, n // 6) for n in shape)
    hu[sx:-sx, sy:-sy, :] = 40
    hu[2 * sx : 3 * sx, 2 * sy : -2 * sy, sz:-sz] = 1800  # bone, clipped by the window
    hu[-3 * sx : -2 * sx, sy : 3 * sy, 2 * sz :] = -850
    return (hu + rng.integers(-60, 60, size=shape)).astype(np.int16)


def reference_output(path, roi) -> np.ndarray:
    out = build_merlin_reference_transforms(roi_size=roi, spacing=SPACING)({"image": str(path)})["image"]
    return out.numpy()


CASES = {
    # name: (stored axcodes, stored spacing mm, shape, roi, rotation about S in degrees)
    "ras-aniso": ("RAS", (0.7, 0.8, 2.5), (40, 36, 30), (32, 32, 24), 0.0),
    "lps-aniso": ("LPS", (0.7, 0.8, 2.5), (40, 36, 30), (32, 32, 24), 0.0),
    "psr-aniso": ("PSR", (0.7, 0.8, 2.5), (40, 36, 30), (32, 32, 24), 0.0),
    "ila-upsample": ("ILA", (2.0, 2.0, 1.0), (40, 36, 30), (32, 32, 24), 0.0),
    "lps-upsample": ("LPS", (2.0, 2.0, 1.0), (40, 36, 30), (32, 32, 24), 0.0),
    "lps-odd-sizes": ("LPS", (0.7, 0.8, 2.5), (41, 37, 29), (15, 33, 25), 0.0),
    "sar-odd-sizes": ("SAR", (2.0, 0.9, 1.3), (23, 37, 41), (31, 17, 9), 0.0),
    "las-oblique": ("LAS", (0.7, 0.8, 2.5), (40, 36, 30), (32, 32, 24), 10.0),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fast_path_equals_merlin_reference(case, tmp_nifti):
    axcodes, spacing, shape, roi, rotate = CASES[case]
    hu, affine = make_hu(shape), make_affine(axcodes, spacing, rotate)
    path = tmp_nifti(hu, affine, name=f"{case}.nii.gz")
    cfg = PreprocessConfig(roi_size=roi, spacing=SPACING)
    expected = reference_output(path, roi)

    from_file = load_and_preprocess(path, cfg)  # io.load_volume reorients to RAS first
    stored_affine = nib.load(path).affine  # the float32 sform as MONAI reads it (MONAI's grid depends on it)
    from_stored = preprocess_volume(CTVolume(hu, stored_affine), cfg)  # stored (non-RAS) order, int16
    assert expected.shape == from_file.shape == from_stored.shape == (1, *roi)
    assert np.abs(from_file - expected).max() <= TOL
    assert np.abs(from_stored - expected).max() <= TOL
    assert 0.0 < expected.mean() < 1.0  # the comparison covers real content, not only padding


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_fast_path_ignores_memory_layout(layout):
    hu = make_hu((40, 36, 30), seed=3).astype(np.float32)
    affine = make_affine("LPS", (0.7, 0.8, 2.5))
    cfg = PreprocessConfig(roi_size=(32, 32, 24))
    array = {"C": hu, "F": np.asfortranarray(hu), "strided": np.repeat(hu, 2, axis=1)[:, ::2]}[layout]
    expected = preprocess_volume(CTVolume(hu, affine), cfg)
    np.testing.assert_allclose(preprocess_volume(CTVolume(array, affine), cfg), expected, atol=1e-6)


@pytest.mark.parametrize("orientation", ["RAS", "LPI"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_eval_transforms_equal_reference_and_fast_path(interpolation, orientation, tmp_nifti):
    hu, affine = make_hu((40, 36, 30), seed=1), make_affine("PSR", (0.7, 0.8, 2.5))
    cfg = PreprocessConfig(roi_size=(32, 32, 24), interpolation=interpolation, orientation=orientation)
    image = MetaTensor(torch.from_numpy(hu.astype(np.float32))[None], affine=torch.as_tensor(affine))
    monai_out = build_eval_transforms(cfg)({"image": image})["image"]
    fast = preprocess_volume(CTVolume(hu, affine), cfg)
    assert monai_out.dtype == torch.float32 and tuple(monai_out.shape) == (1, 32, 32, 24)
    assert np.abs(monai_out.numpy() - fast).max() <= TOL
    if (interpolation, orientation) == ("bilinear", "RAS"):  # the config-built pipeline is Merlin's
        reference = reference_output(tmp_nifti(hu, affine), (32, 32, 24))
        assert np.abs(monai_out.numpy() - reference).max() <= 1e-6


def _marker_volume(axcodes: str):
    """-1000 HU volume (stored in ``axcodes`` order), 1000 HU block at its Right-Anterior-Superior corner."""
    shape, spacing = (24, 20, 12), (1.5, 1.5, 3.0)  # target spacing: no resampling, padding only
    ras = np.full(shape, -1000, np.int16)
    ras[-3:, -3:, -2:] = 1000
    affine = make_affine(axcodes, [spacing[_WORLD_AXIS[c][0]] for c in axcodes])
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    stored = nib.orientations.apply_orientation(ras, ornt)  # RAS -> stored order
    return np.ascontiguousarray(stored), affine


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PSR", "SLA"])
def test_axis_order_marker_lands_at_ras_corner(axcodes):
    hu, affine = _marker_volume(axcodes)
    roi = (32, 32, 16)
    cfg = PreprocessConfig(roi_size=roi)
    before = [(r - n) // 2 for r, n in zip(roi, (24, 20, 12))]  # SpatialPad puts the smaller half first
    expected = np.zeros(roi, np.float32)
    bx, by, bz = before
    expected[bx + 21 : bx + 24, by + 17 : by + 20, bz + 10 : bz + 12] = 1.0  # high-index corner
    image = MetaTensor(torch.from_numpy(hu)[None], affine=torch.as_tensor(affine))
    monai_out = build_eval_transforms(cfg)({"image": image})["image"].numpy()
    for out in (preprocess_volume(CTVolume(hu, affine), cfg), monai_out):
        assert out.dtype == np.float32 and out.shape == (1, *roi)
        np.testing.assert_allclose(out[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "n, roi", [(10, 10), (7, 10), (8, 11), (9, 12), (13, 8), (12, 7), (11, 6), (14, 9), (3, 1)]
)
def test_pad_crop_plan_matches_monai(n, roi):
    line = torch.arange(1, n + 1, dtype=torch.float32).reshape(1, n, 1, 1)  # 0 marks padding
    monai_out = CenterSpatialCrop((roi, -1, -1))(SpatialPad((roi, -1, -1))(line))[0, :, 0, 0].numpy()
    start, stop, src = compute_pad_crop(n, roi)
    ours = np.zeros(roi, np.float32)
    ours[start:stop] = np.arange(src + 1, src + 1 + stop - start)
    np.testing.assert_array_equal(ours, monai_out)


def test_sheared_affine_falls_back_to_monai():
    hu, affine = make_hu((20, 18, 16), seed=2), make_affine("RAS", (1.0, 1.2, 2.0))
    affine[0, 1] = 0.4  # shear: the voxel-to-voxel map is not diagonal
    cfg = PreprocessConfig(roi_size=(16, 16, 12))
    image = MetaTensor(torch.from_numpy(hu.astype(np.float32))[None], affine=torch.as_tensor(affine))
    expected = build_eval_transforms(cfg)({"image": image})["image"].numpy()
    np.testing.assert_allclose(preprocess_volume(CTVolume(hu, affine), cfg), expected, atol=1e-6)


def test_rejects_non_3d_array():
    with pytest.raises(ValueError, match="bad.nii.gz"):
        volume = CTVolume(np.zeros((4, 4, 4, 2), np.float32), np.eye(4), source="bad.nii.gz")
        preprocess_volume(volume, PreprocessConfig())


# name: (stored dtype, scl_slope, scl_inter, whether the file must go through io.load_volume)
NIFTI_VARIANTS = {
    "int16": (np.int16, None, None, False),
    "uint16-slope-inter": (np.uint16, 0.5, -1100.0, False),  # stored = 2 * (HU + 1100) >= 0
    "int16-negative-slope": (np.int16, -1.0, 0.0, False),
    "float32": (np.float32, None, None, True),
}


@pytest.mark.parametrize("variant", list(NIFTI_VARIANTS), ids=list(NIFTI_VARIANTS))
def test_load_and_preprocess_equals_io_then_fast_path(variant, tmp_nifti, monkeypatch):
    from ctvl.data import io

    dtype, slope, inter, needs_io = NIFTI_VARIANTS[variant]
    hu = make_hu((40, 36, 30), seed=4).astype(np.float64)
    stored = (hu - (inter or 0.0)) / (slope or 1.0)  # exact integers for these slopes
    path = tmp_nifti(stored.astype(dtype), make_affine("LPS", (0.7, 0.8, 2.5)), slope=slope, inter=inter)
    cfg = PreprocessConfig(roi_size=(32, 32, 24))
    load_volume, calls = io.load_volume, []
    expected = preprocess_volume(load_volume(path), cfg)
    monkeypatch.setattr(io, "load_volume", lambda *a, **k: calls.append(a) or load_volume(*a, **k))
    out = load_and_preprocess(path, cfg)
    assert bool(calls) == needs_io  # integer NIfTI is resampled straight from its stored values
    assert np.abs(out - expected).max() <= 1e-5
    assert np.abs(out - reference_output(path, (32, 32, 24))).max() <= TOL


@pytest.mark.parametrize("on_unit_range", ["error", "convert"])
def test_load_and_preprocess_leaves_unit_range_volumes_to_io(on_unit_range, tmp_nifti):
    from ctvl.data.io import VolumeError, load_volume

    unit = (make_hu((20, 18, 16), seed=5) + 1000.0) / 2000.0  # already windowed to [0, 1]
    path = tmp_nifti(np.clip(np.rint(unit * 100), 0, 100).astype(np.uint8), slope=0.01, inter=0.0)
    cfg = PreprocessConfig(roi_size=(16, 16, 12), on_unit_range=on_unit_range)
    if on_unit_range == "error":
        with pytest.raises(VolumeError, match="already scaled"):
            load_and_preprocess(path, cfg)
    else:
        expected = preprocess_volume(load_volume(path, on_unit_range="convert"), cfg)
        np.testing.assert_allclose(load_and_preprocess(path, cfg), expected, atol=1e-6)


def test_load_and_preprocess_reports_unreadable_file(tmp_path):
    from ctvl.data.io import VolumeError

    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VolumeError, match="broken.nii.gz"):
        load_and_preprocess(path, PreprocessConfig())
