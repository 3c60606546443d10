"""Synthetic chest-CT cohort: determinism, file layout, anatomy where the report says, survival truth."""

import dataclasses
import hashlib
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from ctvl.config import SyntheticCohortConfig
from ctvl.data.synthetic import load_findings, make_case_volume, make_cohort, oracle_c_index, write_cohort
from ctvl.data.synthetic.anatomy import LOBE_LABELS, LOBES, Label
from ctvl.data.synthetic.findings import NODE_STATIONS, Findings, LymphNode, compute_stage, compute_tnm
from ctvl.data.synthetic.phantom import make_label_map, make_volume

FINE = dict(shape=(128, 128, 128), spacing=(2.5, 2.5, 2.5))  # 320 mm FOV, fine enough to measure sizes
SMALL = SyntheticCohortConfig(n_cases=6, shape=(24, 24, 24), spacing=(13.5, 13.5, 13.5), seed=3)


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(SyntheticCohortConfig(n_cases=400, seed=1))


def _clean(f: Findings) -> Findings:
    """The same patient with every finding removed (anatomy only)."""
    return dataclasses.replace(f, tumour_lobe=None, nodes=(), effusion_side=None, effusion_size=None,
                               pleural_thickening_side=None, liver_mets=(), adrenal_met_side=None,
                               vessel_involved=None, bone_lesion_type=None, fracture_site=None,
                               degenerative_levels=())


def _lobes_of(side: str) -> list:
    return [LOBE_LABELS[lobe] for lobe in LOBES if lobe.startswith(side)]


def _centroid_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Centroid in world mm, origin at the FOV centre (x: patient right, y: anterior, z: superior)."""
    idx = np.argwhere(mask).mean(axis=0)
    return (idx - (np.asarray(mask.shape) - 1) / 2) * np.asarray(spacing)


def _hash_tree(root) -> dict:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ----------------------------------------------------------------------------- determinism and files


def test_make_cohort_is_deterministic_per_seed():
    cfg = SyntheticCohortConfig(n_cases=30, seed=7)
    (df1, f1), (df2, f2) = make_cohort(cfg), make_cohort(cfg)
    pd.testing.assert_frame_equal(df1, df2)
    assert f1 == f2
    df3, _ = make_cohort(dataclasses.replace(cfg, seed=8))
    assert not df1["true_log_hazard"].equals(df3["true_log_hazard"])
    assert np.array_equal(make_case_volume(cfg, f1[0]), make_case_volume(cfg, f2[0]))


@pytest.mark.parametrize("compress", [True, False])
def test_write_cohort_is_byte_identical_across_runs(tmp_path, compress):
    cfg = dataclasses.replace(SMALL, compress=compress)
    a, b = write_cohort(cfg, tmp_path / "a").root, write_cohort(cfg, tmp_path / "b").root
    assert _hash_tree(a) == _hash_tree(b)
    suffix = ".nii.gz" if compress else ".nii"
    assert len([p for p in _hash_tree(a) if p.endswith(suffix)]) == cfg.n_cases


def test_write_cohort_ct_rate_layout_and_tables(tmp_path):
    paths = write_cohort(SMALL, tmp_path)
    manifest = pd.read_csv(paths.manifest)
    assert list(manifest.columns[:3]) == ["case_id", "image", "report"]
    needed = {"age", "sex", "smoking", "stage", "time", "event", "split", "true_log_hazard"}
    assert needed <= set(manifest.columns)
    assert (manifest["split"] == "validation").sum() == round(SMALL.n_cases * SMALL.validation_fraction)
    for row in manifest.itertuples():
        prefix, k = row.case_id.split("_")[:2]
        folder = "train" if row.split == "train" else "valid"
        assert row.image == f"dataset/{folder}/{prefix}_{k}/{prefix}_{k}_a/{row.case_id}.nii.gz"
        assert nib.load(paths.root / row.image).shape == SMALL.shape
    for split in ("train", "validation"):
        reports = pd.read_csv(getattr(paths, f"{split}_reports"))
        meta = pd.read_csv(getattr(paths, f"{split}_metadata"))
        part = manifest[manifest["split"] == split]
        assert list(reports.columns) == ["VolumeName", "ClinicalInformation_EN", "Technique_EN",
                                         "Findings_EN", "Impressions_EN"]
        assert list(reports["VolumeName"]) == [f"{c}.nii.gz" for c in part["case_id"]]
        assert list(meta.columns) == ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope",
                                      "RescaleIntercept", "PatientAge", "PatientSex"]
        assert (meta["XYSpacing"] == "[13.5, 13.5]").all() and (meta["ZSpacing"] == 13.5).all()
        assert list(meta["PatientAge"]) == [f"{a:03d}Y" for a in part["age"]]
        assert set(meta["PatientSex"]) <= {"M", "F"}
    slots = pd.read_csv(paths.findings_csv)
    assert list(slots["case_id"]) == list(manifest["case_id"])
    assert load_findings(paths.findings_json) == make_cohort(SMALL)[1]


def test_original_release_needs_metadata_rescale_exactly_once(tmp_path):
    fixed = write_cohort(SMALL, tmp_path / "fixed", release="fixed")
    original = write_cohort(SMALL, tmp_path / "original", release="original")
    meta = pd.read_csv(original.train_metadata).iloc[0]
    rel = pd.read_csv(fixed.manifest)["image"].iloc[0]
    img_fixed, img_orig = nib.load(fixed.root / rel), nib.load(original.root / rel)
    hu = np.asarray(img_fixed.dataobj)
    raw = np.asarray(img_orig.dataobj)
    assert hu.dtype == raw.dtype == np.int16
    assert np.array_equal(raw * meta["RescaleSlope"] + meta["RescaleIntercept"], hu)
    assert hu.min() == -1024 and np.isclose(img_fixed.get_fdata().min(), -1024)  # header applies no rescale
    assert np.allclose(np.diag(img_fixed.affine)[:3], SMALL.spacing)
    assert nib.aff2axcodes(img_fixed.affine) == ("R", "A", "S")
    assert np.allclose(np.diag(img_orig.affine)[:3], 1.0)  # spacing must come from the metadata
    with pytest.raises(ValueError, match="release"):
        write_cohort(SMALL, tmp_path / "bad", release="v2")


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="validation_fraction"):
        make_cohort(dataclasses.replace(SMALL, validation_fraction=1.5))
    with pytest.raises(ValueError, match="shape"):
        make_volume(Findings("c", 0), shape=(8, 8), spacing=(1, 1, 1))


# ----------------------------------------------------------------------------- anatomy


def test_volume_is_hu_int16_with_expected_tissues():
    vol = make_volume(Findings("c", 0, contrast=False), shape=(64, 64, 64), spacing=(5, 5, 5), rng=0)
    labels = make_label_map(Findings("c", 0, contrast=False), (64, 64, 64), (5, 5, 5))
    assert vol.dtype == np.int16 and vol.shape == (64, 64, 64)
    tissues = (Label.AIR, Label.FAT, Label.SOFT_TISSUE, Label.VERTEBRA, Label.CORTICAL_BONE, Label.RUL,
               Label.LLL)
    mean = {lab: vol[labels == lab].mean() for lab in tissues}
    assert mean[Label.AIR] < -990 and -120 < mean[Label.FAT] < -80 and 30 < mean[Label.SOFT_TISSUE] < 60
    assert -900 < mean[Label.RUL] < -800 and -900 < mean[Label.LLL] < -800
    assert mean[Label.CORTICAL_BONE] > 600 and mean[Label.VERTEBRA] > 200
    assert (vol[0, 0, :] < -950).all()  # air (with CT noise) outside the body
    both_lungs = [np.isin(labels, _lobes_of(side)) for side in ("right", "left")]
    assert _centroid_mm(both_lungs[0], (5, 5, 5))[0] > 40 and _centroid_mm(both_lungs[1], (5, 5, 5))[0] < -40


def test_small_field_of_view_still_holds_both_lungs():
    labels = make_label_map(Findings("c", 0), (32, 32, 32), (5.0, 5.0, 5.0))  # 160 mm FOV
    assert all((labels == lab).any() for lab in LOBE_LABELS.values())
    assert labels[0, 0, 0] == Label.AIR


@pytest.mark.parametrize("lobe", LOBES)
def test_tumour_sits_in_the_stated_lobe_with_the_stated_size(cohort, lobe):
    df, findings = cohort
    f = next(f for f in findings if f.tumour_lobe == lobe)
    labels = make_label_map(f, **FINE)
    tumour = labels == Label.TUMOUR
    centre = _centroid_mm(tumour, FINE["spacing"]) / f.body_scale
    assert np.sign(centre[0]) == (1 if lobe.startswith("right") else -1)  # RAS axis 0 points to patient right
    lung = np.isin(make_label_map(_clean(f), **FINE), _lobes_of(lobe.split()[0]))
    lung_centre = _centroid_mm(lung, FINE["spacing"]) / f.body_scale
    if "upper" in lobe:
        assert centre[2] > lung_centre[2] - 15
    if "lower" in lobe:
        assert centre[2] < lung_centre[2] + 15 and centre[1] < lung_centre[1] + 15  # basal and posterior
    idx = tuple(np.round(np.argwhere(tumour).mean(axis=0)).astype(int))
    assert make_label_map(_clean(f), **FINE)[idx] == LOBE_LABELS[lobe]
    points = np.argwhere(tumour) * np.asarray(FINE["spacing"])
    points = points[ConvexHull(points).vertices]
    feret = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max()
    assert f.tumour_size_mm - 2 * FINE["spacing"][0] <= feret <= f.tumour_size_mm + 0.01
    vol = make_volume(f, rng=0, **FINE)
    assert 20 < vol[tumour].mean() < 70  # soft-tissue tumour, not lung


@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_effusion_is_fluid_in_the_dependent_base_of_the_stated_side(side):
    f = Findings("c", 0, contrast=True, effusion_side=side, effusion_size="moderate")
    labels = make_label_map(f, **FINE)
    fluid = labels == Label.EFFUSION
    assert 10 < make_volume(f, rng=0, **FINE)[fluid].mean() < 20
    x = _centroid_mm(fluid, FINE["spacing"])[0]
    x_all = np.argwhere(fluid)[:, 0] - (FINE["shape"][0] - 1) / 2
    assert {"right": (x_all > 0).all(), "left": (x_all < 0).all(), "bilateral": abs(x) < 20}[side]
    lobes = _lobes_of("" if side == "bilateral" else side)
    lung = np.isin(make_label_map(_clean(f), **FINE), lobes)
    fc, lc = _centroid_mm(fluid, FINE["spacing"]), _centroid_mm(lung, FINE["spacing"])
    assert fc[1] < lc[1] - 20 and fc[2] < lc[2] - 20  # posterior and inferior: dependent when supine


@pytest.mark.parametrize("station", list(NODE_STATIONS))
def test_lymph_node_sits_at_its_station_outside_the_lungs(station):
    anchor, laterality, _ = NODE_STATIONS[station]
    f = Findings("c", 0, nodes=(LymphNode(station, 14, 20, anchor),))
    node = make_label_map(f, **FINE) == Label.NODE
    centre = _centroid_mm(node, FINE["spacing"])
    assert np.linalg.norm(centre - anchor) < 5
    assert {"right": centre[0] > 5, "left": centre[0] < -5, "midline": abs(centre[0]) < 10}[laterality]
    assert np.isin(make_label_map(_clean(f), **FINE)[node], list(LOBE_LABELS.values())).mean() < 0.25
    short = node.any(axis=2).sum(axis=1).max() * FINE["spacing"][0]  # widest axial extent along x
    assert abs(short - 14) <= FINE["spacing"][0]


def test_metastases_land_in_their_organs(cohort):
    _, findings = cohort
    f = next(f for f in findings if f.liver_mets)
    met = make_label_map(f, **FINE) == Label.LIVER_MET
    assert met.any() and (make_label_map(_clean(f), **FINE)[met] == Label.LIVER).all()
    assert _centroid_mm(met, FINE["spacing"])[2] < -60  # liver dome in the lower slices
    g = next(f for f in findings if f.bone_lesion_site and "vertebral" in f.bone_lesion_site)
    lesion = np.isin(make_label_map(g, **FINE), [Label.BONE_LYTIC, Label.BONE_SCLEROTIC])
    bone = (Label.VERTEBRA, Label.CORTICAL_BONE, Label.DISC)
    assert lesion.any() and np.isin(make_label_map(_clean(g), **FINE)[lesion], bone).all()
    level = int(re.match(r"T(\d+)", g.bone_lesion_site).group(1))
    assert abs(_centroid_mm(lesion, FINE["spacing"])[2] - (150 - 24 * (level - 0.58))) < 8


@pytest.mark.parametrize("side", ["right", "left"])
def test_adrenal_metastasis_stands_out_against_fat(side):
    # Retroperitoneal fat surrounds the adrenal, so a soft-tissue mass there is visible on CT.
    f = Findings("c", 0, contrast=True, adrenal_met_side=side, adrenal_met_size_mm=24)
    labels = make_label_map(f, **FINE)
    met = labels == Label.ADRENAL_MET
    ring = ndimage.binary_dilation(met, iterations=2) & ~met
    fat = ring & (labels == Label.FAT)
    assert fat.sum() > 0.5 * ring.sum()  # the rest: adrenal, liver, spine or aorta, by side
    hu = make_volume(f, **FINE, rng=0).astype(float)
    assert hu[met].mean() - hu[fat].mean() > 100


def test_vessel_compression_narrows_the_lumen():
    f = Findings("c", 0, contrast=True, tumour_lobe="right upper lobe", tumour_size_mm=30,
                 tumour_center=(80.0, 0.0, 70.0), vessel_involved="superior vena cava",
                 vessel_effect="compression")
    before = (make_label_map(_clean(f), **FINE) == Label.VESSEL).sum()
    labels = make_label_map(f, **FINE)
    assert (labels == Label.VESSEL_INVASION).any() and (labels == Label.VESSEL).sum() < before


# ----------------------------------------------------------------------------- reports


_LOBE = re.compile(r"(right|left) (upper|middle|lower) lobe|(upper|middle|lower) lobe of the (right|left)")
_SIZE = re.compile(r"(\d+(?:\.\d)?)(?: x \d+(?:\.\d)?)? (mm|cm)")  # "45 x 28 mm": the long axis comes first


def _mm(sentence: str) -> int:
    value, unit = _SIZE.search(sentence).groups()
    return round(float(value) * (10 if unit == "cm" else 1))


def _extract(text: str) -> dict:
    """A minimal rule-based extractor: the report must be parseable by something this simple."""
    out = {"tumour_lobe": None, "tumour_size_mm": None, "nodes": {}, "effusion": None, "liver": None,
           "adrenal": None}
    for s in re.split(r"(?<=\.) ", text):
        lobe = re.search(_LOBE, s)
        if "mass" in s.lower() and lobe and not s.startswith("No"):
            side, level = (lobe.group(1), lobe.group(2)) if lobe.group(1) else (lobe.group(4), lobe.group(3))
            out["tumour_lobe"], out["tumour_size_mm"] = f"{side} {level} lobe", _mm(s)
        station = next((st for st in NODE_STATIONS if st in s.lower()), None)
        if station and "lymph" in s.lower():
            out["nodes"][station] = _mm(s)
        if ("liver" in s or "hepatic" in s) and _SIZE.search(s):
            out["liver"] = _mm(s)
        adrenal = re.search(r"(right|left) adrenal", s.lower())
        if adrenal and _SIZE.search(s):
            out["adrenal"] = (adrenal.group(1), _mm(s))
        eff = re.search(r"(small|moderate|large).*?(right|left|bilateral|both sides)", s.lower())
        if ("effusion" in s or "pleural fluid" in s) and eff:
            out["effusion"] = (eff.group(2).replace("both sides", "bilateral"), eff.group(1))
    return out


def test_reports_state_exactly_the_findings(cohort):
    df, findings = cohort
    for row, f in zip(df.itertuples(), findings):
        text = row.Findings_EN
        got, slots = _extract(text), f.slots()
        assert (got["tumour_lobe"], got["tumour_size_mm"]) == (f.tumour_lobe, f.tumour_size_mm), text
        assert got["nodes"] == {n.station: n.short_axis_mm for n in f.nodes}, text
        effusion = None if f.effusion_side is None else (f.effusion_side, f.effusion_size)
        assert got["effusion"] == effusion, text
        assert got["liver"] == slots["liver_met_size_mm"], text
        assert got["adrenal"] == (f.adrenal_met_side and (f.adrenal_met_side, f.adrenal_met_size_mm)), text
        assert ("vena cava" in text or "SVC" in text) == (f.vessel_involved == "superior vena cava"), text
        bone = re.search(r"(lytic|sclerotic) (lesion|metastasis)", text.lower())
        assert (bone and bone.group(1)) == (f.bone_lesion_type if f.bone_lesion_type else None), text
    assert df["Findings_EN"].nunique() == len(df)
    assert df["Findings_EN"].str.contains(r"\d\.\d cm").any()
    assert df["Findings_EN"].str.contains(r"\d mm").any()


# ----------------------------------------------------------------------------- staging and survival


def test_tnm_follows_the_findings():
    f = Findings("c", 0, tumour_lobe="right upper lobe", tumour_size_mm=45, tumour_center=(80.0, 0.0, 70.0),
                 nodes=(LymphNode("right hilar", 12, 16, (50.0, -25.0, 8.0)),))
    assert compute_tnm(f) == (2, 1, 0) and compute_stage(*compute_tnm(f)) == 2
    f = dataclasses.replace(f, nodes=f.nodes + (LymphNode("left hilar", 11, 15, (-48.0, -20.0, 24.0)),))
    assert compute_tnm(f) == (2, 3, 0) and compute_stage(*compute_tnm(f)) == 3
    f = dataclasses.replace(f, adrenal_met_side="left", adrenal_met_size_mm=20, vessel_involved="aorta",
                            vessel_effect="encasement")
    assert compute_tnm(f) == (4, 3, 1) and compute_stage(*compute_tnm(f)) == 4


def test_log_hazard_decomposes_and_oracle_is_high(cohort):
    df, _ = cohort
    assert np.allclose(df["true_log_hazard"], df["log_hazard_image"] + df["log_hazard_clinical"])
    assert 1.2 < df["log_hazard_image"].std() < 1.8 and abs(df["log_hazard_image"].mean()) < 0.25
    assert oracle_c_index(df) > 0.75
    noise = np.random.default_rng(0).normal(size=len(df))
    assert oracle_c_index(df) > oracle_c_index(df.assign(noise=noise), "noise") + 0.2
    assert (df["time"] > 0).all() and set(df["event"]) == {0, 1}


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.6])
def test_censoring_rate_is_calibrated(rate):
    df, _ = make_cohort(SyntheticCohortConfig(n_cases=600, censoring_rate=rate, seed=2))
    assert abs((1 - df["event"].mean()) - rate) <= 0.07


def _clinical_cox_c(clinical_weight: float) -> float:
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    df, _ = make_cohort(SyntheticCohortConfig(n_cases=800, clinical_weight=clinical_weight, seed=5))
    x = pd.DataFrame({"age": df["age"], "male": df["sex"] == "M", "ecog": df["ecog"], "stage": df["stage"],
                      "current": df["smoking"] == "current", "former": df["smoking"] == "former"})
    x = x.astype(float)
    train, test = df["split"] == "train", df["split"] == "validation"
    cph = CoxPHFitter().fit(x[train].assign(time=df["time"], event=df["event"]), "time", "event")
    return concordance_index(df["time"][test], -cph.predict_partial_hazard(x[test]), df["event"][test])


def test_clinical_weight_controls_clinical_only_cox():
    c0, c1 = _clinical_cox_c(0.0), _clinical_cox_c(1.0)
    assert c1 > c0 + 0.05, (c0, c1)
    assert c0 > 0.55  # stage is a noisy summary of the image findings, so it carries some signal at weight 0


@pytest.mark.slow
def test_two_hundred_volumes_take_seconds(tmp_path):
    import time

    cfg = SyntheticCohortConfig(n_cases=200, compress=False)
    start = time.perf_counter()
    write_cohort(cfg, tmp_path)
    assert time.perf_counter() - start < 60
