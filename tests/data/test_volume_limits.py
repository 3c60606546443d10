"""Tests for the volume size checks in ctvl.data.io: a header is never trusted with an allocation.

A corrupt NIfTI header claiming far more voxels than the file holds must fail fast, with a message naming
the file and the claimed shape, and without allocating the claimed size (checked by peak RSS in a
subprocess); valid single- and multi-member ``.nii.gz`` files must read exactly as before.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ctvl.config import PreprocessConfig
from ctvl.data.io import VolumeError, load_volume
from ctvl.data.transforms import load_and_preprocess

SHAPE = (40, 36, 30)
AFFINE = np.diag([-0.8, -0.7, 2.5, 1.0])
MAX_RSS_GROWTH_MB = 200
# Fingerprints of these configs before `max_voxels` existed: caches written then must stay valid.
FROZEN_FINGERPRINTS = {
    "default": "ebd54c651084cf7a",
    "custom": "c76411d7afc80d29",
}

# Child process: read one file, report the error and the growth of its peak RSS (ru_maxrss, KiB on Linux).
_CHILD = """
import json, resource, sys
from ctvl.config import PreprocessConfig
from ctvl.data.io import load_volume
from ctvl.data.transforms import load_and_preprocess
reader, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_volume(path) if reader == "load_volume" else load_and_preprocess(path, PreprocessConfig())
    error, message = None, ""
except BaseException as exc:
    error, message = type(exc).__name__, str(exc)
grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": error, "message": message, "grow_mb": grow / 1024}))
"""


def _corrupt_nifti(path: Path, shape, n_data_bytes: int, compress: bool) -> Path:
    """A NIfTI header claiming ``shape`` int16 voxels, followed by only ``n_data_bytes`` of data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    payload = hdr.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(n_data_bytes)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def _int_volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1500, size=SHAPE).astype(np.int16)


def _save_nibabel(path: Path, array: np.ndarray, slope=None, inter=None) -> Path:
    img = nib.Nifti1Image(array, AFFINE)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def _nibabel_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """What io.load_volume returned before the size checks: nibabel's canonical float32 data."""
    img = nib.as_closest_canonical(nib.load(path))
    return img.get_fdata(dtype=np.float32), img.affine


# ------------------------------------------------------------------------- corrupt headers


@pytest.mark.parametrize("reader", ["load_volume", "load_and_preprocess"])
@pytest.mark.parametrize(
    "case, shape, compress, expect",
    [
        ("short.nii", (1024, 1024, 1024), False, "file holds only"),
        ("short.nii.gz", (1024, 1024, 1024), True, "data ends after"),
        ("huge.nii", (4096, 4096, 4096), False, "max_voxels"),
        ("huge.nii.gz", (4096, 4096, 4096), True, "max_voxels"),
    ],
)
def test_corrupt_header_fails_fast_with_bounded_memory(tmp_path, reader, case, shape, compress, expect):
    path = _corrupt_nifti(tmp_path / case, shape, 1024, compress)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, reader, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "VolumeError", out
    assert str(path) in out["message"] and str(shape) in out["message"] and "int16" in out["message"]
    assert expect in out["message"], out["message"]
    assert out["grow_mb"] < MAX_RSS_GROWTH_MB, out


@pytest.mark.parametrize("name", ["long.nii", "long.nii.gz"])
def test_header_claiming_more_slices_than_stored_is_refused(tmp_path, name):
    """A real volume whose header claims twice the slices: refused, naming actual and claimed sizes."""
    plain = _save_nibabel(tmp_path / "plain.nii", _int_volume())
    img = nib.load(plain)
    hdr = img.header.copy()
    hdr.set_data_shape(SHAPE[:2] + (2 * SHAPE[2],))
    hdr["vox_offset"] = 352  # nib.load leaves 0 in the in-memory header
    payload = hdr.binaryblock + plain.read_bytes()[348:]
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    message = str(err.value)
    assert str(path) in message and "(40, 36, 60)" in message and "int16" in message
    assert f"{len(payload) if name.endswith('.nii') else len(payload) - 352:,} bytes" in message


# ----------------------------------------------------------------------- configurable limit


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_voxel_limit_is_configurable(tmp_path, name):
    path = _save_nibabel(tmp_path / name, _int_volume())
    n_voxels = int(np.prod(SHAPE))
    assert load_volume(path, max_voxels=n_voxels).shape == SHAPE  # the limit itself is allowed
    over_limit = rf"{path.name}.*\(40, 36, 30\).*over the limit of {n_voxels - 1:,} voxels"
    with pytest.raises(VolumeError, match=over_limit):
        load_volume(path, max_voxels=n_voxels - 1)
    cfg = PreprocessConfig(roi_size=(16, 16, 16), max_voxels=1000)
    with pytest.raises(VolumeError, match="max_voxels"):
        load_and_preprocess(path, cfg)  # the fast path for integer NIfTI honours the limit too
    assert load_and_preprocess(path, PreprocessConfig(roi_size=(16, 16, 16))).shape == (1, 16, 16, 16)


def test_voxel_limit_applies_to_dicom_series(tmp_dicom_series):
    folder = tmp_dicom_series(_int_volume()[:, :, :6])
    assert load_volume(folder).shape[2] == 6
    with pytest.raises(VolumeError, match=r"dicom.*\(40, 36, 6\).*over the limit of 1,000 voxels"):
        load_volume(folder, max_voxels=1000)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_voxel_limit_applies_to_itk_files(tmp_path, suffix):
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_int_volume().transpose(2, 1, 0)), str(path))
    assert load_volume(path).shape == SHAPE
    with pytest.raises(VolumeError, match=rf"vol\{suffix}.*\(40, 36, 30\).*over the limit of 1,000 voxels"):
        load_volume(path, max_voxels=1000)


def test_max_voxels_is_validated_and_not_fingerprinted():
    with pytest.raises(ValueError, match="max_voxels"):
        PreprocessConfig(max_voxels=0)
    custom = dict(spacing=(1.0, 1.0, 1.0), cache_dtype="float32")
    assert PreprocessConfig().fingerprint() == FROZEN_FINGERPRINTS["default"]
    assert PreprocessConfig(max_voxels=10).fingerprint() == FROZEN_FINGERPRINTS["default"]
    assert PreprocessConfig(**custom, max_voxels=10**12).fingerprint() == FROZEN_FINGERPRINTS["custom"]


# ----------------------------------------------------------------------- valid files unchanged


@pytest.mark.parametrize(
    "dtype, slope, inter", [("int16", None, None), ("int16", 2.0, -1024.0), ("uint8", 8.0, -1000.0),
                            ("float32", None, None)]
)
def test_nibabel_gz_reads_as_before(tmp_path, dtype, slope, inter):
    array = _int_volume() if dtype != "uint8" else (_int_volume() % 250).astype(np.uint8)
    path = _save_nibabel(tmp_path / "vol.nii.gz", array.astype(dtype), slope, inter)
    vol = load_volume(path)
    ref, ref_affine = _nibabel_reference(path)
    assert vol.array.dtype == np.float32 and np.array_equal(vol.array, ref)
    np.testing.assert_allclose(vol.affine, ref_affine)
    raw = load_volume(path, rescale=(1.0, -24.0))  # stored values, header scaling replaced
    img = nib.load(path)
    ornt = nib.orientations.io_orientation(img.affine)
    stored = nib.orientations.apply_orientation(np.asarray(img.dataobj.get_unscaled(), np.float32), ornt)
    assert np.array_equal(raw.array, stored - np.float32(24.0))


def test_simpleitk_gz_reads_as_before(tmp_path):
    image = sitk.GetImageFromArray(_int_volume().transpose(2, 1, 0))
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = tmp_path / "itk.nii.gz"
    sitk.WriteImage(image, str(path))
    vol = load_volume(path)
    ref, ref_affine = _nibabel_reference(path)
    assert np.array_equal(vol.array, ref)
    np.testing.assert_allclose(vol.affine, ref_affine)
    assert np.array_equal(np.sort(vol.array, axis=None), np.sort(_int_volume().astype(np.float32), axis=None))


def test_multi_member_gzip_reads_like_plain_file(tmp_path):
    plain = _save_nibabel(tmp_path / "plain.nii", _int_volume(), 2.0, -1024.0)
    data = plain.read_bytes()
    cuts = [0, 100, 348 + 4 + 5000, len(data) // 2, len(data)]  # members split the header and the voxels
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(b"".join(gzip.compress(data[a:b]) for a, b in zip(cuts, cuts[1:])))
    assert gzip.decompress(path.read_bytes()) == data
    vol, ref = load_volume(path), load_volume(plain)
    assert np.array_equal(vol.array, ref.array) and np.array_equal(vol.affine, ref.affine)
    cfg = PreprocessConfig(roi_size=(16, 16, 16))
    assert np.array_equal(load_and_preprocess(path, cfg), load_and_preprocess(plain, cfg))
