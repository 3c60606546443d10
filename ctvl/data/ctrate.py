"""CT-RATE as distributed on the hub: volumes, reports, metadata and abnormality labels.

Layout read (``root`` = the CT-RATE folder; its ``dataset/`` folder or a split folder also work)::

    dataset/train/train_1/train_1_a/train_1_a_1.nii.gz  (or dataset/train_fixed/...; "valid" for validation)
    radiology_text_reports/{train,validation}_reports.csv
        VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN
    metadata/{train,validation}_metadata.csv
        VolumeName, XYSpacing ("[0.75, 0.75]"), ZSpacing, RescaleSlope, RescaleIntercept,
        PatientAge ("036Y"), PatientSex
    metadata/no_chest_{train,valid}.txt
        one volume name a line (".nii.gz" optional): volumes that are not chest CTs, dropped unless
        ``CTRateConfig.keep_non_chest``; older downloads without the file keep every volume
    multi_abnormality_labels/{train,valid}_predicted_labels.csv
        VolumeName + one 0/1 column per abnormality

The CSV and list folders are looked up in ``root``, ``root/dataset`` and the two folders above ``root``.

Releases (``CTRateConfig.release``): "fixed" volumes are in HU with correct headers and are read as they
are; "original" volumes hold stored values and need RescaleSlope/Intercept and XYSpacing/ZSpacing from
the metadata, applied once by :func:`load_ctrate_volume` (``load_volume``'s ``rescale`` replaces any
header scaling, so nothing is applied twice).

Entry points: :func:`load_ctrate` (-> manifest-schema DataFrame), :func:`load_ctrate_volume`,
:func:`volume_path`.

Example:
    >>> volume_path("/data/CT-RATE", "train", "train_12_a_2.nii.gz").as_posix()
    '/data/CT-RATE/dataset/train/train_12/train_12_a/train_12_a_2.nii.gz'
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from ctvl.config import CTRateConfig
from ctvl.data.io import CTVolume, VolumeError, load_volume

logger = logging.getLogger(__name__)

SPLIT_FOLDER = {"train": "train", "validation": "valid"}
"""CT-RATE folder/label-file prefix of each split (reports and metadata use the split name itself)."""
REPORT_COLUMNS = ("ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept")
_NAME_RE = re.compile(
    r"^(?P<split>train|valid)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii(\.gz)?$"
)
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def load_ctrate(cfg: CTRateConfig) -> pd.DataFrame:
    """One row per CT-RATE volume found on disk, in the generic manifest schema plus report columns.

    Columns: ``case_id`` (volume name without suffix), ``image`` (absolute path), ``split``, ``volume_name``,
    ``patient`` (CT-RATE's anonymised patient index, e.g. "train_12", for grouped splits), ``report``
    (findings and impressions), ``age`` (years), ``sex``, the four ``*_EN`` report sections, the metadata
    columns ``XYSpacing, ZSpacing, RescaleSlope, RescaleIntercept`` and one column per abnormality label
    (their names in ``df.attrs["label_columns"]``). Missing reports/labels give empty cells and a warning.
    Volumes in CT-RATE's non-chest list are dropped unless ``cfg.keep_non_chest``; their number is in
    ``df.attrs["n_non_chest"]`` and the log line.

    Raises:
        ValueError: no volume folder for the split; with ``release="original"``, no metadata file.
    """
    if cfg.split not in SPLIT_FOLDER:
        raise ValueError(f"`ctrate.split` must be one of {sorted(SPLIT_FOLDER)}, got {cfg.split!r}")
    split_dir = find_split_dir(cfg.root, cfg.split, cfg.release)
    files = sorted(p for p in split_dir.rglob("*.nii*") if _NAME_RE.match(p.name))
    df = pd.DataFrame({"volume_name": [p.name for p in files], "image": [str(p.absolute()) for p in files]})
    df.insert(0, "case_id", [_strip_suffix(n) for n in df["volume_name"]])
    df, n_non_chest = _drop_non_chest(df, cfg)
    df["split"] = cfg.split
    df["patient"] = [n.rsplit("_", 2)[0] for n in df["case_id"]]
    df = df.merge(_read_reports(cfg), on="volume_name", how="left")
    df["report"] = [_join_report(f, i) for f, i in zip(df["Findings_EN"], df["Impressions_EN"])]
    df = df.merge(_read_metadata(cfg), on="volume_name", how="left")
    labels = _read_labels(cfg)
    df = df.merge(labels, on="volume_name", how="left")
    front = ["case_id", "image", "split", "volume_name", "patient", "report", "age", "sex"]
    df = df[front + [c for c in df.columns if c not in front]]
    df.attrs["label_columns"] = [c for c in labels.columns if c != "volume_name"]
    df.attrs["n_non_chest"] = n_non_chest
    logger.info(
        "CT-RATE %s (%s release): %d volumes under %s; %s", cfg.split, cfg.release, len(df), split_dir,
        "non-chest volumes kept (keep_non_chest)" if cfg.keep_non_chest
        else f"{n_non_chest} non-chest volume(s) dropped",
    )
    return df


def volume_path(
    root: str | os.PathLike, split: str, volume_name: str, release: str = "fixed"
) -> Path:
    """Path of ``volume_name`` ("train_1_a_1.nii.gz") in CT-RATE's nested layout under ``root``.

    The split folder is the one :func:`find_split_dir` finds; if none exists yet, ``root/dataset/<split>``.
    """
    match = _NAME_RE.match(volume_name)
    if match is None:
        raise ValueError(f"{volume_name!r} is not a CT-RATE volume name like 'train_1_a_1.nii.gz'")
    try:
        split_dir = find_split_dir(root, split, release)
    except ValueError:
        split_dir = Path(root) / "dataset" / SPLIT_FOLDER.get(split, split)
    patient = f"{match['split']}_{match['patient']}"
    return split_dir / patient / f"{patient}_{match['scan']}" / volume_name


def find_split_dir(root: str | os.PathLike, split: str, release: str = "fixed") -> Path:
    """The folder holding a split's volumes: ``root`` itself, ``root/<folder>`` or ``root/dataset/<folder>``.

    ``<folder>`` is "train"/"valid"; for ``release="fixed"`` a "train_fixed"/"valid_fixed" folder is
    preferred. The original release never reads a ``*_fixed`` folder (its volumes are already rescaled).
    """
    root = Path(root)
    folder = SPLIT_FOLDER.get(split)
    if folder is None:
        raise ValueError(f"CT-RATE split must be one of {sorted(SPLIT_FOLDER)}, got {split!r}")
    names = [f"{folder}_fixed", folder] if release == "fixed" else [folder]
    candidates = [base / n for n in names for base in (root / "dataset", root)]
    if root.name in names or any(root.glob(f"{folder}_[0-9]*")):
        candidates.insert(0, root)
    for cand in candidates:
        if cand.is_dir():
            return cand
    looked = [str(c) for c in candidates]
    raise ValueError(f"{root}: no CT-RATE '{folder}' volume folder; looked for {looked}")


def ctrate_load_kwargs(row: Mapping[str, Any], cfg: CTRateConfig) -> dict:
    """Keyword arguments of ``load_volume`` for one CT-RATE row: empty for "fixed"; for "original",
    ``rescale=(RescaleSlope, RescaleIntercept)`` and ``spacing=(XYSpacing[0], XYSpacing[1], ZSpacing)``
    along the stored axes (i, j, k), from the metadata CSV."""
    if cfg.release == "fixed":
        return {}
    if cfg.release != "original":
        raise ValueError(f"`ctrate.release` must be 'fixed' or 'original', got {cfg.release!r}")
    try:
        xy = _floats(row["XYSpacing"])
        kwargs = {
            "rescale": (float(row["RescaleSlope"]), float(row["RescaleIntercept"])),
            "spacing": (xy[0], xy[1], float(row["ZSpacing"])),
        }
        if len(xy) != 2 or not all(map(math.isfinite, kwargs["rescale"] + kwargs["spacing"])):
            raise ValueError
    except (KeyError, ValueError, TypeError, IndexError):
        values = {c: row.get(c) for c in METADATA_COLUMNS}
        raise VolumeError(
            f"{row.get('image')}: the original CT-RATE release needs {list(METADATA_COLUMNS)} from the "
            f"metadata CSV; got {values}"
        ) from None
    return kwargs


def load_ctrate_volume(row: Mapping[str, Any], cfg: CTRateConfig, **kwargs) -> CTVolume:
    """Load the volume of one :func:`load_ctrate` row (HU, RAS), rescaled only for the original release.

    Args:
        row: a row (Series or dict) with ``image`` and, for ``release="original"``, the metadata columns.
        cfg: the CT-RATE config (its ``release`` decides whether metadata rescaling applies).
        **kwargs: passed to :func:`ctvl.data.io.load_volume` (e.g. ``on_unit_range``, ``hu_window``).
    """
    return load_volume(row["image"], **ctrate_load_kwargs(row, cfg), **kwargs)


# ------------------------------------------------------------------------- CSV files


def _find_csv(root: str, folder: str, filename: str) -> Optional[Path]:
    root = Path(root)
    for base in (root, root / "dataset", root.parent, root.parent.parent):
        for cand in (base / folder / filename, base / filename):
            if cand.is_file():
                return cand
    return None


def _read_reports(cfg: CTRateConfig) -> pd.DataFrame:
    path = _find_csv(cfg.root, "radiology_text_reports", f"{cfg.split}_reports.csv")
    if path is None:
        logger.warning("%s: no radiology_text_reports/%s_reports.csv; no reports", cfg.root, cfg.split)
        return pd.DataFrame(columns=["volume_name", *REPORT_COLUMNS])
    df = _read_csv(path, ["VolumeName"])
    return df.reindex(columns=["VolumeName", *REPORT_COLUMNS]).rename(columns={"VolumeName": "volume_name"})


def _read_metadata(cfg: CTRateConfig) -> pd.DataFrame:
    path = _find_csv(cfg.root, "metadata", f"{cfg.split}_metadata.csv")
    if path is None:
        if cfg.release == "original":
            raise ValueError(
                f"{cfg.root}: the original CT-RATE release needs metadata/{cfg.split}_metadata.csv"
            )
        logger.warning("%s: no metadata/%s_metadata.csv; age/sex left empty", cfg.root, cfg.split)
        return pd.DataFrame(columns=["volume_name", "age", "sex", *METADATA_COLUMNS])
    df = _read_csv(path, ["VolumeName"])
    out = df.reindex(columns=["VolumeName", *METADATA_COLUMNS]).rename(columns={"VolumeName": "volume_name"})
    out.insert(1, "age", [_parse_age(a) for a in df.get("PatientAge", pd.Series(np.nan, index=df.index))])
    out.insert(2, "sex", df.get("PatientSex", pd.Series(np.nan, index=df.index)))
    return out


def _read_labels(cfg: CTRateConfig) -> pd.DataFrame:
    folder = SPLIT_FOLDER[cfg.split]
    path = _find_csv(cfg.root, "multi_abnormality_labels", f"{folder}_predicted_labels.csv")
    if path is None:
        logger.warning("%s: no multi_abnormality_labels/%s_predicted_labels.csv; no labels", cfg.root, folder)
        return pd.DataFrame(columns=["volume_name"])
    return _read_csv(path, ["VolumeName"]).rename(columns={"VolumeName": "volume_name"})


def _drop_non_chest(df: pd.DataFrame, cfg: CTRateConfig) -> tuple[pd.DataFrame, int]:
    """``df`` without the volumes CT-RATE lists as not chest CTs, and how many were dropped."""
    if cfg.keep_non_chest:
        return df, 0
    listed = _read_non_chest(cfg)
    drop = df["case_id"].isin(listed)
    return df[~drop].reset_index(drop=True), int(drop.sum())


def _read_non_chest(cfg: CTRateConfig) -> set[str]:
    """Case ids in ``metadata/no_chest_{train,valid}.txt`` (blank lines and whitespace ignored)."""
    filename = f"no_chest_{SPLIT_FOLDER[cfg.split]}.txt"
    path = _find_csv(cfg.root, "metadata", filename)
    if path is None:
        logger.warning("%s: no metadata/%s; no volume dropped as non-chest", cfg.root, filename)
        return set()
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return {_strip_suffix(line.strip()) for line in lines if line.strip()}


def _strip_suffix(volume_name: str) -> str:
    """"train_1_a_1.nii.gz" (or ".nii", or none) -> "train_1_a_1"."""
    return re.sub(r"\.nii(\.gz)?$", "", volume_name)


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    dup = df["VolumeName"].duplicated()
    if dup.any():
        logger.warning("%s: %d duplicated VolumeName rows; keeping the first", path, int(dup.sum()))
        df = df[~dup]
    return df


def _join_report(findings, impressions) -> Optional[str]:
    parts = [str(p).strip() for p in (findings, impressions) if isinstance(p, str) and p.strip()]
    return "\n\n".join(parts) if parts else None


def _parse_age(value) -> float:
    """DICOM age string ("036Y", "006M", "010W", "020D") -> years; anything else -> NaN."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*", str(value), flags=re.IGNORECASE)
    if match is None:
        return float("nan")
    return float(match[1]) * _AGE_UNIT_YEARS[(match[2] or "Y").upper()]


def _floats(value) -> list[float]:
    """"[0.75, 0.75]" (or a list) -> [0.75, 0.75]."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in value]
    return [float(v) for v in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", str(value))]
