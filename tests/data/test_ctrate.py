"""Tests for ctvl.data.ctrate on a tiny CT-RATE copy written in the distributed layout."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ctvl.config import CTRateConfig
from ctvl.data.ctrate import load_ctrate, load_ctrate_volume, volume_path
from ctvl.data.io import VolumeError, load_volume

SHAPE = (10, 8, 6)
SPACING = (0.75, 0.75, 1.5)
LABELS = ["Medical material", "Cardiomegaly", "Lung nodule"]
VOLUMES = {
    "train": ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_a_1.nii.gz", "train_3_a_1.nii.gz"],
    "validation": ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz"],
}
NON_CHEST = {"train": "train_3_a_1", "validation": "valid_2_a_1"}
"""The volume of each split that CT-RATE's ``metadata/no_chest_{train,valid}.txt`` lists."""


def _hu(name: str) -> np.ndarray:
    seed = sum(map(ord, name))
    return np.random.default_rng(seed).integers(-1000, 1500, size=SHAPE).astype(np.int16)


@pytest.fixture
def ctrate_root(tmp_path, tmp_nifti):
    """CT-RATE layout: original volumes (stored = HU + 1024, unit pixdim) under dataset/{train,valid},
    fixed volumes (HU, true spacing) under dataset/{train,valid}_fixed, the four CSV families and the
    non-chest lists (one with the ``.nii.gz`` suffix, one without, padded by whitespace and blank lines)."""
    root = tmp_path / "CT-RATE"
    fixed_affine = np.diag([*SPACING, 1.0])
    for split, names in VOLUMES.items():
        folder = "train" if split == "train" else "valid"
        reports, metadata, labels = [], [], []
        for i, name in enumerate(names):
            parts = name.split("_")  # train_1_a_1.nii.gz -> train_1/train_1_a/train_1_a_1.nii.gz
            rel = f"{'_'.join(parts[:2])}/{'_'.join(parts[:3])}/{name}"
            tmp_nifti(_hu(name) + 1024, np.eye(4), name=f"CT-RATE/dataset/{folder}/{rel}")
            tmp_nifti(_hu(name), fixed_affine, name=f"CT-RATE/dataset/{folder}_fixed/{rel}")
            if name != "train_2_a_1.nii.gz":  # one volume without a report
                reports.append([name, "Cough.", "Non-contrast.", f"Findings {i}.", f"Impression {i}."])
            metadata.append([name, "[0.75, 0.75]", 1.5, 1, -1024, f"0{36 + i}Y", "MF"[i % 2]])
            labels.append([name, *[(i + j) % 2 for j in range(len(LABELS))]])
        _csv(root / "radiology_text_reports" / f"{split}_reports.csv", reports,
             ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        _csv(root / "metadata" / f"{split}_metadata.csv", metadata,
             ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept", "PatientAge",
              "PatientSex"])
        _csv(root / "multi_abnormality_labels" / f"{folder}_predicted_labels.csv", labels,
             ["VolumeName", *LABELS])
    (root / "metadata" / "no_chest_train.txt").write_text(f"{NON_CHEST['train']}.nii.gz\n")
    (root / "metadata" / "no_chest_valid.txt").write_text(f"\n  {NON_CHEST['validation']}  \r\n\n")
    return root


def _csv(path, rows, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def test_load_ctrate_train_rows_and_columns(ctrate_root):
    df = load_ctrate(CTRateConfig(root=str(ctrate_root), split="train"))
    assert df["case_id"].tolist() == ["train_1_a_1", "train_1_a_2", "train_2_a_1"]
    assert all("train_fixed" in p for p in df["image"])
    assert df["patient"].tolist() == ["train_1", "train_1", "train_2"]
    assert (df["split"] == "train").all()
    assert df.loc[0, "report"] == "Findings 0.\n\nImpression 0."
    assert pd.isna(df.loc[2, "report"])  # no report row for this volume
    assert df["age"].tolist() == [36.0, 37.0, 38.0]
    assert df["sex"].tolist() == ["M", "F", "M"]
    assert df.attrs["label_columns"] == LABELS
    assert df.loc[1, LABELS].tolist() == [1, 0, 1]


def test_validation_split_reads_valid_folders(ctrate_root):
    df = load_ctrate(CTRateConfig(root=str(ctrate_root), split="validation"))
    assert df["case_id"].tolist() == ["valid_1_a_1"]
    assert df.loc[0, "Findings_EN"] == "Findings 0."
    assert df.loc[0, LABELS].tolist() == [0, 1, 0]


def test_split_folder_given_directly(ctrate_root):
    direct = load_ctrate(CTRateConfig(root=str(ctrate_root / "dataset" / "train_fixed"), split="train"))
    nested = load_ctrate(CTRateConfig(root=str(ctrate_root), split="train"))
    pd.testing.assert_frame_equal(direct, nested)


def test_original_release_rescales_once_and_matches_fixed(ctrate_root):
    fixed_cfg = CTRateConfig(root=str(ctrate_root), split="train", release="fixed")
    orig_cfg = CTRateConfig(root=str(ctrate_root), split="train", release="original")
    fixed_df, orig_df = load_ctrate(fixed_cfg), load_ctrate(orig_cfg)
    assert all("train_fixed" not in p for p in orig_df["image"])
    for (_, frow), (_, orow) in zip(fixed_df.iterrows(), orig_df.iterrows()):
        fixed = load_ctrate_volume(frow, fixed_cfg)
        orig = load_ctrate_volume(orow, orig_cfg)
        np.testing.assert_array_equal(orig.array, fixed.array)
        assert orig.spacing == pytest.approx(SPACING) and fixed.spacing == pytest.approx(SPACING)
        np.testing.assert_array_equal(fixed.array, _hu(frow["volume_name"]))


def test_fixed_release_never_applies_metadata(ctrate_root):
    """An original-release file read as "fixed" keeps its stored values and header spacing."""
    cfg = CTRateConfig(root=str(ctrate_root / "dataset" / "train"), split="train", release="fixed")
    row = load_ctrate(cfg).iloc[0]
    vol = load_ctrate_volume(row, cfg)
    np.testing.assert_array_equal(vol.array, _hu(row["volume_name"]) + 1024)
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.0))


def test_original_release_with_header_scaling_is_not_rescaled_twice(ctrate_root, tmp_nifti):
    cfg = CTRateConfig(root=str(ctrate_root), split="train", release="original")
    row = load_ctrate(cfg).iloc[0].copy()
    stored = _hu(row["volume_name"]) + 1024
    row["image"] = str(tmp_nifti(stored, np.eye(4), name="scaled.nii.gz", slope=1.0, inter=-1024.0))
    np.testing.assert_array_equal(load_ctrate_volume(row, cfg).array, stored - 1024)


def test_original_release_without_metadata_names_the_file(ctrate_root):
    cfg = CTRateConfig(root=str(ctrate_root), split="train", release="original")
    row = load_ctrate(cfg).iloc[0].copy()
    row["ZSpacing"] = np.nan
    with pytest.raises(VolumeError, match="ZSpacing") as info:
        load_ctrate_volume(row, cfg)
    assert row["image"] in str(info.value)


def test_volume_path_matches_the_layout(ctrate_root):
    path = volume_path(ctrate_root, "train", "train_1_a_2.nii.gz")
    assert path == ctrate_root / "dataset" / "train_fixed" / "train_1" / "train_1_a" / "train_1_a_2.nii.gz"
    assert path.is_file()
    assert volume_path(ctrate_root, "validation", "valid_1_a_1.nii.gz", release="original").is_file()
    with pytest.raises(ValueError, match="not a CT-RATE volume name"):
        volume_path(ctrate_root, "train", "patient_7.nii.gz")


def test_missing_volume_folder_is_reported(tmp_path):
    with pytest.raises(ValueError, match="no CT-RATE 'valid' volume folder"):
        load_ctrate(CTRateConfig(root=str(tmp_path), split="validation"))


def test_loaded_volume_equals_plain_load_volume(ctrate_root):
    cfg = CTRateConfig(root=str(ctrate_root), split="train")
    row = load_ctrate(cfg).iloc[1]
    np.testing.assert_array_equal(load_ctrate_volume(row, cfg).array, load_volume(row["image"]).array)


@pytest.mark.parametrize("release", ["fixed", "original"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_non_chest_volumes_are_dropped_and_counted(ctrate_root, caplog, split, release):
    caplog.set_level(logging.INFO, logger="ctvl.data.ctrate")
    df = load_ctrate(CTRateConfig(root=str(ctrate_root), split=split, release=release))
    assert NON_CHEST[split] not in set(df["case_id"])
    assert len(df) == len(VOLUMES[split]) - 1
    assert df.attrs["n_non_chest"] == 1
    assert "1 non-chest volume(s) dropped" in caplog.text


@pytest.mark.parametrize("release", ["fixed", "original"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_keep_non_chest_keeps_listed_volumes(ctrate_root, split, release):
    cfg = CTRateConfig(root=str(ctrate_root), split=split, release=release, keep_non_chest=True)
    df = load_ctrate(cfg)
    assert df["case_id"].tolist() == [n.removesuffix(".nii.gz") for n in VOLUMES[split]]
    assert df.attrs["n_non_chest"] == 0


@pytest.mark.parametrize("entry", ["train_3_a_1", "train_3_a_1.nii.gz", " train_3_a_1.nii.gz\t\r\n\n"])
def test_non_chest_entry_with_or_without_suffix(ctrate_root, entry):
    (ctrate_root / "metadata" / "no_chest_train.txt").write_text(f"train_9_a_1\n\n{entry}")
    df = load_ctrate(CTRateConfig(root=str(ctrate_root), split="train"))
    assert df["case_id"].tolist() == ["train_1_a_1", "train_1_a_2", "train_2_a_1"]
    assert df.attrs["n_non_chest"] == 1  # listed but not on disk (train_9_a_1): not counted


def test_non_chest_list_dropped_from_written_manifest(ctrate_root, tmp_path):
    from ctvl.data.manifest import load_manifest, write_manifest

    df = load_ctrate(CTRateConfig(root=str(ctrate_root), split="train"))
    manifest = load_manifest(write_manifest(df, tmp_path / "manifest.csv"))
    assert "train_3_a_1" not in set(manifest["case_id"])


def test_missing_non_chest_list_keeps_all_and_says_so_once(ctrate_root, caplog):
    (ctrate_root / "metadata" / "no_chest_train.txt").unlink()
    with caplog.at_level(logging.INFO, logger="ctvl.data.ctrate"):
        df = load_ctrate(CTRateConfig(root=str(ctrate_root), split="train"))
    assert len(df) == len(VOLUMES["train"]) and df.attrs["n_non_chest"] == 0
    assert sum("no_chest_train.txt" in r.getMessage() for r in caplog.records) == 1
