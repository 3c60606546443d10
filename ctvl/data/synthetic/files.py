"""A synthetic cohort on disk, in CT-RATE's layout, plus its survival manifest and ground truth.

:func:`write_cohort` writes what :func:`ctvl.data.synthetic.cohort.make_cohort` draws: volumes as NIfTI (the
"fixed" release in HU, or the "original" release in stored values with the rescale in the metadata),
report and metadata tables, ``manifest.csv`` and the true findings; :func:`load_findings` reads the
findings back.

Example:
    >>> from ctvl.config import SyntheticCohortConfig
    >>> paths = write_cohort(SyntheticCohortConfig(n_cases=4), "cohort/")  # doctest: +SKIP
    >>> findings = load_findings(paths.findings_json)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ctvl.config import SyntheticCohortConfig, save_config
from ctvl.data.synthetic.cohort import make_case_volume, make_cohort
from ctvl.data.synthetic.findings import Findings

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("case_id", "image", "report", "Findings_EN", "Impressions_EN", "age", "sex", "smoking", "ecog",
                    "t_stage", "n_stage", "m_stage", "stage", "time", "event", "split", "true_log_hazard",
                    "log_hazard_image", "log_hazard_clinical", "latent_event_time", "volume_name")
"""Manifest columns; the report sections are kept apart too so ``ctvl build-vqa`` reads the manifest directly."""
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept", "PatientAge",
                    "PatientSex")
RAW_OFFSET = 1024
"""CT stored values = HU + 1024 (DICOM RescaleIntercept -1024, slope 1), as in the "original" release."""


@dataclass(frozen=True)
class CohortPaths:
    """Everything :func:`write_cohort` wrote; paths are absolute."""

    root: Path
    manifest: Path
    findings_json: Path
    findings_csv: Path
    train_reports: Path
    validation_reports: Path
    train_metadata: Path
    validation_metadata: Path
    config: Path


def _nifti_bytes(volume: np.ndarray, spacing, release: str, compress: bool) -> bytes:
    """NIfTI-1 file content: RAS diagonal affine (sform and qform, code 1 = scanner).

    "fixed": HU with slope 1 / intercept 0 and the true spacing. "original": stored values
    (HU + 1024) with no rescale in the header and unit spacing, so that slope/intercept and spacing
    must come from the metadata CSV (as with CT-RATE's first release).
    """
    import nibabel as nib

    if release == "fixed":  # world origin at the FOV centre, like the phantom's reference frame
        affine = np.diag([*map(float, spacing), 1.0])
        affine[:3, 3] = -(np.asarray(volume.shape) - 1) / 2 * np.asarray(spacing, float)
        data = volume
    else:
        data, affine = (volume.astype(np.int32) + RAW_OFFSET).astype(np.int16), np.eye(4)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")  # scl_slope stays NaN: no scaling in the header
    raw = img.to_bytes()
    # Level 1: noisy int16 CT compresses to ~58 % at any level, and level 1 is 3x faster than 6.
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


def _metadata(df: pd.DataFrame, spacing) -> pd.DataFrame:
    return pd.DataFrame({"VolumeName": df["volume_name"],
                         "XYSpacing": f"[{float(spacing[0])}, {float(spacing[1])}]",
                         "ZSpacing": float(spacing[2]), "RescaleSlope": 1.0,
                         "RescaleIntercept": -float(RAW_OFFSET),
                         "PatientAge": df["age"].map(lambda a: f"{int(a):03d}Y"), "PatientSex": df["sex"]})


def write_cohort(cfg: SyntheticCohortConfig, out_dir: str | Path,
                 release: Literal["fixed", "original"] = "fixed") -> CohortPaths:
    """Write volumes, reports, metadata, a survival manifest and the ground-truth findings.

    Layout under ``out_dir``::

        dataset/{train,valid}/train_1/train_1_a/train_1_a_1.nii.gz   volumes (RAS, int16)
        radiology_text_reports/{train,validation}_reports.csv         VolumeName + 4 text fields
        metadata/{train,validation}_metadata.csv                      spacing, rescale, age, sex
        manifest.csv     case_id, image (relative), report, clinical, time, event, split, true_log_hazard
        findings.json    list of Findings (dataclasses.asdict); reload with load_findings
        findings.csv     flat ground-truth slots (Findings.slots) + split
        cohort.yaml      the resolved config

    The metadata always lists the DICOM rescale (slope 1, intercept -1024), as CT-RATE does.
    ``release="fixed"``: voxels are HU and the header carries the spacing, so a reader must *not*
    apply the metadata rescale. ``release="original"``: voxels are stored values (HU + 1024) with no
    header rescale and unit spacing; the reader must apply slope/intercept and spacing from the metadata
    exactly once. Files are a deterministic function of ``(cfg, release)``.
    """
    if release not in ("fixed", "original"):
        raise ValueError(f"`release` must be 'fixed' or 'original', got {release!r}")
    root = Path(out_dir).resolve()
    df, findings = make_cohort(cfg)
    for f, rel in zip(findings, df["image"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_nifti_bytes(make_case_volume(cfg, f), cfg.spacing, release, cfg.compress))
    tables = {f"{split}_{kind}": root / folder / f"{split}_{kind}.csv" for split in ("train", "validation")
              for kind, folder in (("reports", "radiology_text_reports"), ("metadata", "metadata"))}
    paths = CohortPaths(root=root, manifest=root / "manifest.csv", findings_json=root / "findings.json",
                        findings_csv=root / "findings.csv", config=root / "cohort.yaml", **tables)
    df = df.assign(VolumeName=df["volume_name"])
    for split in ("train", "validation"):
        part = df[df["split"] == split]
        for path, table in ((getattr(paths, f"{split}_reports"), part[list(REPORT_COLUMNS)]),
                            (getattr(paths, f"{split}_metadata"), _metadata(part, cfg.spacing))):
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
    df[list(MANIFEST_COLUMNS)].to_csv(paths.manifest, index=False)
    paths.findings_json.write_text(json.dumps([dataclasses.asdict(f) for f in findings], indent=1))
    slots = pd.DataFrame([f.slots() for f in findings]).assign(split=df["split"].to_numpy())
    for col in ("tumour_size_mm", "liver_met_size_mm", "adrenal_met_size_mm", "bone_lesion_size_mm"):
        slots[col] = slots[col].astype("Int64")
    slots.to_csv(paths.findings_csv, index=False)
    save_config(cfg, paths.config)
    log.info("wrote %d synthetic cases (%s release) to %s", len(df), release, root)
    return paths


def load_findings(path: str | Path) -> list[Findings]:
    """Read ``findings.json`` written by :func:`write_cohort`."""
    return [Findings.from_dict(d) for d in json.loads(Path(path).read_text())]
