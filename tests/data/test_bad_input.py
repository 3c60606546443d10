"""Bad inputs: every unusable volume or manifest raises a ValueError naming the file and the reason
(a bad manifest row: its CSV line, the header being line 1), and patient identifiers from DICOM headers
never reach a message or a log line."""

from __future__ import annotations

import logging
import shutil
import struct

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctvl.data.io import VolumeError, load_volume
from ctvl.data.manifest import load_manifest

SHAPE = (16, 16, 12)


@pytest.fixture
def hu() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1000, size=SHAPE).astype(np.int16)


def _raises_naming(path, match, **kwargs):
    with pytest.raises(VolumeError, match=match) as info:
        load_volume(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value


# ------------------------------------------------------------------------------ NIfTI


def test_truncated_nifti_gz(hu, tmp_nifti):
    path = tmp_nifti(np.random.default_rng(1).normal(size=(64, 64, 32)) * 500, np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises_naming(path, "cannot read")


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"not a nifti file" * 100)
    _raises_naming(path, "cannot read")


def test_missing_file_and_unknown_format(tmp_path):
    _raises_naming(tmp_path / "nope.nii.gz", "no such file")
    (tmp_path / "vol.png").write_bytes(b"x")
    _raises_naming(tmp_path / "vol.png", "unsupported format")


@pytest.mark.parametrize(
    "shape, match",
    [((16, 16), "3D volume"), ((16, 16, 12, 2), "3D volume"), ((16, 16, 1), "single slice")],
    ids=["2d", "4d", "one_slice"],
)
def test_not_a_3d_volume(shape, match, tmp_nifti):
    _raises_naming(tmp_nifti(np.random.default_rng(2).normal(size=shape) * 100, np.eye(4)), match)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(bad, hu, tmp_nifti):
    array = hu.astype(np.float32)
    array[3, 4, 5] = bad
    array[1, 1, 1] = bad
    _raises_naming(tmp_nifti(array, np.eye(4)), r"2 NaN/inf voxel")


def test_zero_spacing_in_affine(hu, tmp_nifti):
    img = nib.Nifti1Image(hu, np.eye(4))
    img.header.set_sform(np.diag([0.0, 1.0, 1.0, 1.0]), code=2)
    img.header.set_qform(None, code=0)
    path = tmp_nifti(hu, np.eye(4))
    nib.save(nib.Nifti1Image(hu, None, img.header), path)
    _raises_naming(path, "zero, negative or invalid voxel spacing")


@pytest.mark.parametrize("pixdim_x", [-0.7, 0.0], ids=["negative", "zero"])
def test_bad_pixdim_when_affine_comes_from_pixdim(pixdim_x, hu, tmp_path):
    header = nib.Nifti1Header()  # no qform/sform: the affine is built from pixdim
    header.set_data_shape(hu.shape)
    header.set_data_dtype(hu.dtype)
    path = tmp_path / "pixdim.nii"
    nib.save(nib.Nifti1Image(hu, None, header), path)
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", pixdim_x)  # pixdim[1]; nibabel would "fix" it on save and on load
    path.write_bytes(bytes(data))
    _raises_naming(path, "zero or negative voxel spacing")


@pytest.mark.parametrize("spacing", [(0.75, 0.0, 1.5), (0.75, 0.75, -1.5), (np.nan, 1.0, 1.0)])
def test_bad_spacing_override(spacing, hu, tmp_nifti):
    _raises_naming(tmp_nifti(hu, np.eye(4)), "spacing override", spacing=spacing)


def test_unit_range_volume_is_refused(tmp_nifti):
    unit = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    err = _raises_naming(tmp_nifti(unit, np.eye(4)), r"already scaled to \[0, 1\]")
    assert "on_unit_range='convert'" in str(err)


def test_constant_volume_is_not_taken_for_unit_range(tmp_nifti):
    vol = load_volume(tmp_nifti(np.zeros(SHAPE, np.float32), np.eye(4)))
    assert float(vol.array.max()) == 0.0


# ------------------------------------------------------------------------------ DICOM


def test_dicom_missing_slice(hu, tmp_dicom_series):
    folder = tmp_dicom_series(hu)
    (folder / "slice_005.dcm").unlink()
    _raises_naming(folder, r"missing slices: 1 gap")


def test_dicom_duplicated_slice(hu, tmp_dicom_series):
    folder = tmp_dicom_series(hu)
    shutil.copy(folder / "slice_004.dcm", folder / "slice_004_copy.dcm")
    _raises_naming(folder, r"1 duplicated slice")


def test_dicom_empty_folder_and_single_slice(hu, tmp_dicom_series, tmp_path):
    (tmp_path / "empty").mkdir()
    _raises_naming(tmp_path / "empty", "no DICOM series")
    folder = tmp_dicom_series(hu[:, :, :1], name="one")
    _raises_naming(folder, "1 DICOM slice")


def test_patient_identifiers_never_reach_logs_or_messages(
    hu, tmp_dicom_series, fake_patient_tags, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    good = tmp_dicom_series(hu, name="good")
    gap = tmp_dicom_series(hu, name="gap")
    (gap / "slice_003.dcm").unlink()
    dup = tmp_dicom_series(hu, name="dup")
    shutil.copy(dup / "slice_002.dcm", dup / "slice_002_copy.dcm")
    vol = load_volume(good)
    texts = [repr(vol.source), repr(vars(vol).keys())]
    for folder, kwargs in [(gap, {}), (dup, {}), (good, {"rescale": (1.0, 0.0)})]:
        with pytest.raises(VolumeError) as info:
            load_volume(folder, **kwargs)
        texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    texts += list(capfd.readouterr())  # stdout/stderr, including ITK/GDCM warnings
    blob = "\n".join(texts)
    assert "duplicated" in blob and "missing slices" in blob  # the messages were captured
    for value in fake_patient_tags.values():
        assert value not in blob and value.split("^")[0] not in blob


# ---------------------------------------------------------------------------- manifest


def _write_manifest(tmp_path, rows, name="manifest.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"case_id": "a", "path": "a.nii.gz"}], r"missing required column\(s\) \['image'\]"),
        ([{"case_id": "a", "image": "a.nii.gz"}, {"case_id": "a", "image": "b.nii.gz"}],
         r"1 invalid row\(s\):\n  line 3: duplicate case_id 'a' \(first at line 2\)$"),
        ([{"case_id": "a", "image": "a.nii.gz", "time": -1.0, "event": 1}], r"line 2: negative `time` -1$"),
        ([{"case_id": "a", "image": "a.nii.gz", "time": 3.0, "event": 2}],
         r"line 2: `event` must be 0 or 1, got '2'$"),
        ([{"case_id": "a", "image": "a.nii.gz", "time": "soon", "event": 1}],
         r"line 2: `time` must be numeric, got 'soon'$"),
        ([{"case_id": "a", "image": "a.nii.gz", "time": 3.0}], r"`time` and `event` go together"),
        ([{"case_id": "a", "image": "a.nii.gz", "time": None, "event": 1}],
         r"line 2: `time` and `event` must be set for both or neither$"),
        ([{"case_id": None, "image": "a.nii.gz"}], r"line 2: empty `case_id`$"),
    ],
    ids=["missing_column", "duplicate_id", "negative_time", "bad_event", "text_time", "time_without_event",
         "half_survival", "empty_id"],
)
def test_manifest_validation(rows, match, tmp_path):
    path = _write_manifest(tmp_path, rows)
    with pytest.raises(ValueError, match=match) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
