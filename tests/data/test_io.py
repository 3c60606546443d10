"""Tests for ctvl.data.io: one RAS/HU convention for NIfTI, DICOM series and NRRD inputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ctvl.data.io import CTVolume, VolumeError, load_volume, reorient_to_ras

SHAPE = (12, 10, 8)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _affine(columns: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = columns @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# Stored-array geometries: the usual DICOM-converted LPS axial stack, RAS with a flipped z, an
# oblique (10 degree) axial stack, and a coronal stack (k points anterior) that needs a transpose.
AFFINES = {
    "axial_lps": _affine(np.diag([-1.0, -1.0, 1.0]), (0.8, 0.7, 2.5), (100.0, 120.0, -50.0)),
    "axial_z_down": _affine(np.diag([1.0, 1.0, -1.0]), (0.8, 0.7, 2.5), (-90.0, -80.0, 40.0)),
    "oblique": _affine(_rotation(10) @ np.diag([-1.0, -1.0, 1.0]), (0.8, 0.7, 2.5), (10.0, 20.0, 30.0)),
    "coronal": _affine(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]), (0.8, 0.7, 2.5), (-5.0, 6.0, 7.0)),
}


@pytest.fixture
def hu_volume() -> np.ndarray:
    """Integer HU (i, j, k) with a distinct value per voxel so any flip or transpose shows."""
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, size=SHAPE).astype(np.int16)


@pytest.mark.parametrize("geometry", sorted(AFFINES))
def test_nifti_and_dicom_series_load_identically(geometry, hu_volume, tmp_nifti, tmp_dicom_series):
    affine = AFFINES[geometry]
    nifti = load_volume(tmp_nifti(hu_volume, affine))
    dicom = load_volume(tmp_dicom_series(hu_volume, affine))
    assert nifti.array.dtype == dicom.array.dtype == np.float32
    np.testing.assert_array_equal(nifti.array, dicom.array)
    np.testing.assert_allclose(nifti.affine, dicom.affine, atol=1e-4)


@pytest.mark.parametrize("geometry", sorted(AFFINES))
def test_nifti_matches_nibabel_as_closest_canonical(geometry, hu_volume, tmp_nifti):
    path = tmp_nifti(hu_volume, AFFINES[geometry])
    ref = nib.as_closest_canonical(nib.load(path))
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.spacing == pytest.approx(ref.header.get_zooms()[:3])
    assert vol.source == str(path)


def test_reorient_to_ras_keeps_world_coordinates(hu_volume):
    """Every voxel keeps its world position: value at RAS index v equals the stored value at A^-1 A_ras v."""
    affine = AFFINES["coronal"]
    array, ras_affine = reorient_to_ras(hu_volume, affine)
    rng = np.random.default_rng(1)
    for idx in rng.integers(0, np.array(array.shape), size=(20, 3)):
        world = ras_affine @ np.r_[idx, 1.0]
        src = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
        assert array[tuple(idx)] == hu_volume[tuple(src)]


def test_nrrd_loads_like_nifti(hu_volume, tmp_nifti, tmp_path):
    affine = AFFINES["oblique"]
    image = sitk.GetImageFromArray(hu_volume.transpose(2, 1, 0))
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps @ affine[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((lps @ affine[:3, 3]).tolist())
    sitk.WriteImage(image, str(tmp_path / "vol.nrrd"))
    nrrd, nifti = load_volume(tmp_path / "vol.nrrd"), load_volume(tmp_nifti(hu_volume, affine))
    np.testing.assert_array_equal(nrrd.array, nifti.array)
    np.testing.assert_allclose(nrrd.affine, nifti.affine, atol=1e-5)


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_dicom_series):
    hu = (2 * np.random.default_rng(2).integers(0, 1200, size=SHAPE) - 1024).astype(np.int16)
    vol = load_volume(tmp_dicom_series(hu, AFFINES["axial_z_down"], slope=2.0, intercept=-1024.0))
    expected, _ = reorient_to_ras(hu.astype(np.float32), AFFINES["axial_z_down"])
    np.testing.assert_array_equal(vol.array, expected)


def test_nifti_header_scaling_is_applied(tmp_nifti):
    raw = np.random.default_rng(3).integers(0, 2000, size=SHAPE).astype(np.int16)
    vol = load_volume(tmp_nifti(raw, np.eye(4), slope=2.0, inter=-1024.0))
    np.testing.assert_array_equal(vol.array, raw * 2.0 - 1024.0)


def test_rescale_override_replaces_header_scaling(tmp_nifti):
    """CT-RATE original release: stored values + metadata slope/intercept, applied exactly once."""
    raw = np.random.default_rng(4).integers(0, 2500, size=SHAPE).astype(np.int16)
    plain = load_volume(tmp_nifti(raw, np.eye(4), name="plain.nii.gz"), rescale=(1.0, -1024.0))
    np.testing.assert_array_equal(plain.array, raw - 1024.0)
    # A header that also carries scaling must not be applied on top of the override.
    scaled_file = tmp_nifti(raw, np.eye(4), name="scaled.nii.gz", slope=2.0, inter=5.0)
    scaled = load_volume(scaled_file, rescale=(1.0, -1024.0))
    np.testing.assert_array_equal(scaled.array, raw - 1024.0)


def test_spacing_override_replaces_column_lengths(hu_volume, tmp_nifti):
    affine = AFFINES["axial_lps"]
    vol = load_volume(tmp_nifti(hu_volume, affine), spacing=(0.75, 0.75, 1.5))
    assert vol.spacing == pytest.approx((0.75, 0.75, 1.5))
    ref = load_volume(tmp_nifti(hu_volume, affine, name="ref.nii.gz"))
    np.testing.assert_array_equal(vol.array, ref.array)  # directions kept: same orientation
    np.testing.assert_allclose(np.sign(vol.affine[:3, :3]), np.sign(ref.affine[:3, :3]))


def test_dicom_rescale_override_conflicting_with_tags_is_refused(hu_volume, tmp_dicom_series):
    folder = tmp_dicom_series(hu_volume)
    with pytest.raises(VolumeError, match="RescaleSlope/Intercept tags"):
        load_volume(folder, rescale=(1.0, -1024.0))


def test_four_d_with_trailing_singleton_is_squeezed(hu_volume, tmp_nifti):
    vol = load_volume(tmp_nifti(hu_volume[..., None], np.eye(4)))
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array, hu_volume)


def test_unit_range_convert_maps_to_hu_window(tmp_nifti):
    unit = np.random.default_rng(5).random(SHAPE).astype(np.float32)
    vol = load_volume(tmp_nifti(unit, np.eye(4)), on_unit_range="convert", hu_window=(-1000.0, 1000.0))
    np.testing.assert_allclose(vol.array, -1000.0 + 2000.0 * unit, atol=1e-3)


def test_ctvolume_spacing_from_affine():
    affine = AFFINES["oblique"]
    assert CTVolume(np.zeros(SHAPE, np.float32), affine).spacing == pytest.approx((0.8, 0.7, 2.5))


def test_dicom_slices_are_ordered_by_position_not_file_name(hu_volume, tmp_dicom_series, tmp_nifti):
    folder = tmp_dicom_series(hu_volume, AFFINES["axial_lps"])
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):  # reverse and scramble the names: name order no longer follows z
        f.rename(folder / f"tmp_{(i * 5) % len(files):03d}_{len(files) - i:03d}.dcm")
    vol = load_volume(folder)
    np.testing.assert_array_equal(vol.array, load_volume(tmp_nifti(hu_volume, AFFINES["axial_lps"])).array)
