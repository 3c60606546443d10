"""Synthetic chest-CT cohort with known findings, known reports and a known survival truth.

No real CT can be downloaded in CI, yet a pipeline (HU handling, preprocessing, VQA extraction from
reports, survival training) needs data whose truth is known. This module decides what each case
holds: findings for the six questions of the core paper (Liu et al., arXiv 2604.18250, Fig. 2):
primary tumour, lymph nodes, pleura, metastases, major vessels, skeleton; clinical covariates and
staging; a CT-RATE style report (:mod:`ctvl.data.synthetic_reports`) and a proportional-hazards
survival time. :mod:`ctvl.data.phantom` draws the chest in Hounsfield units. Finding centres in
:class:`Findings` are reference-frame mm (see the phantom module), lesion sizes physical mm.

Survival truth (module constants ``W_IMAGE``, ``W_CLINICAL``, ``WEIBULL_*``):

.. math::
    \eta_i = w_{img}^\top f(\text{findings}_i) + \lambda_{clin}\, w_{clin}^\top g(\text{clinical}_i),
    \qquad T_i = \sigma \left(-\log U_i\; e^{-\eta_i}\right)^{1/k}

(Weibull proportional hazards by inverse-CDF sampling, Bender et al., Stat. Med. 24:1713, 2005),
with independent exponential censoring whose rate is solved so that the expected censored
fraction equals ``censoring_rate``. Both linear predictors are centred and have a population SD of
~1.5, so ``clinical_weight`` is the ratio of clinical to imaging signal.

Entry points:
    >>> from ctvl.config import SyntheticCohortConfig
    >>> df, findings = make_cohort(SyntheticCohortConfig(n_cases=4, shape=(32, 32, 32), spacing=(10, 10, 10)))
    >>> make_case_volume(SyntheticCohortConfig(shape=(32, 32, 32), spacing=(10, 10, 10)), findings[0]).dtype
    dtype('int16')

:func:`ctvl.data.synthetic_files.write_cohort` writes a cohort in the CT-RATE layout (volumes, reports,
metadata) plus a survival manifest and the ground-truth findings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctvl.config import SyntheticCohortConfig
from ctvl.data.phantom import (  # noqa: F401  (make_label_map is re-exported)
    CAGE,
    HEART,
    HILUM,
    LEVEL_MM,
    LEVEL_TOP,
    LIVER,
    LOBE_LABELS,
    LOBES,
    LUNG,
    RIB_SLOPE,
    SPINE_Y,
    Label,
    lobe_of,
    make_label_map,
    make_volume,
)

log = logging.getLogger(__name__)

LOBE_PRIOR = (0.30, 0.08, 0.20, 0.25, 0.17)
# Station -> (reference-frame anchor in mm, laterality, compartment); anchors sit beside the
# trachea/carina/hila of the phantom (ctvl.data.phantom).
NODE_STATIONS = {
    "right paratracheal": ((18.0, -22.0, 75.0), "right", "mediastinal"),
    "left paratracheal": ((-14.0, -30.0, 52.0), "left", "mediastinal"),
    "aortopulmonary window": ((-24.0, 6.0, 54.0), "left", "mediastinal"),
    "subcarinal": ((2.0, -28.0, 24.0), "midline", "mediastinal"),
    "right hilar": ((50.0, -25.0, 8.0), "right", "hilar"),
    "left hilar": ((-48.0, -20.0, 24.0), "left", "hilar"),
}
VESSELS = ("superior vena cava", "pulmonary artery", "aorta")
EFFUSION_SIZES = ("small", "moderate", "large")
SMOKING = ("never", "former", "current")

W_IMAGE = {"tumour_cm": 0.35, "n_stage": 0.47, "metastatic_sites": 1.12,
           "effusion_grade": 0.41, "vessel_involvement": 0.70, "pleural_thickening": 0.47}
"""Log-hazard per unit of each imaging feature f(findings) (see :func:`compute_image_features`)."""
W_CLINICAL = {"age_decades": 1.10, "male": 0.59, "former_smoker": 0.66, "current_smoker": 1.32, "ecog": 1.39}
"""Log-hazard per unit of each clinical feature g(clinical); multiplied by ``clinical_weight``."""
IMAGE_MEAN, CLINICAL_MEAN = 2.23, 2.30
"""Population means of the two linear predictors (Monte-Carlo, n = 10^5), subtracted to centre them."""
WEIBULL_SCALE_MONTHS, WEIBULL_SHAPE = 20.0, 1.2
"""Baseline Weibull scale sigma (months) and shape k: S_0(t) = exp(-(t / sigma)^k)."""




# ----------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class LymphNode:
    """An enlarged lymph node: station, short- and long-axis diameters (mm), centre (reference mm)."""

    station: str
    short_axis_mm: int
    long_axis_mm: int
    center: tuple[float, float, float]


@dataclass(frozen=True)
class Lesion:
    """A round metastasis: long-axis diameter (mm) and centre (reference mm)."""

    size_mm: int
    center: tuple[float, float, float]


@dataclass(frozen=True)
class Findings:
    """Ground truth of one case: what is drawn in the volume and stated in the report.

    ``None`` means absent. Centres are reference-frame mm (see module docstring); sizes are physical mm.
    :meth:`slots` flattens it to the graded VQA slots.
    """

    case_id: str
    index: int
    body_scale: float = 1.0
    contrast: bool = True
    # Q1 primary tumour: lobe, long-axis diameter, centre, (mid/long, short/long) axis ratios,
    # long-axis direction (azimuth, elevation in rad)
    tumour_lobe: str | None = None
    tumour_size_mm: int | None = None
    tumour_center: tuple[float, float, float] | None = None
    tumour_ratios: tuple[float, float] = (0.8, 0.7)
    tumour_angles: tuple[float, float] = (0.0, 0.0)
    # Q2 lymph nodes
    nodes: tuple[LymphNode, ...] = ()
    # Q3 pleura: effusion side ("right" | "left" | "bilateral") and size; thickening side
    effusion_side: str | None = None
    effusion_size: str | None = None
    pleural_thickening_side: str | None = None
    # Q4 metastases to other organs
    liver_mets: tuple[Lesion, ...] = ()
    adrenal_met_side: str | None = None
    adrenal_met_size_mm: int | None = None
    # Q5 major vessels: one of VESSELS, effect "compression" | "encasement"
    vessel_involved: str | None = None
    vessel_effect: str | None = None
    # Q6 skeleton: "lytic" | "sclerotic" lesion (site "T7 vertebral body" | "right 6th rib"),
    # degenerative spine (osteophytes at thoracic levels), rib fracture
    bone_lesion_type: str | None = None
    bone_lesion_site: str | None = None
    bone_lesion_size_mm: int | None = None
    bone_lesion_center: tuple[float, float, float] | None = None
    degenerative_spine: bool = False
    degenerative_levels: tuple[int, ...] = ()
    fracture_site: str | None = None
    fracture_center: tuple[float, float, float] | None = None

    @property
    def metastatic_sites(self) -> tuple[str, ...]:
        """Distant metastatic sites (liver, adrenal, bone): the M of TNM."""
        sites = (("liver", bool(self.liver_mets)), ("adrenal", self.adrenal_met_side is not None),
                 ("bone", self.bone_lesion_type is not None))
        return tuple(name for name, present in sites if present)

    def slots(self) -> dict:
        """Flat ground-truth slots graded by the VQA step (sizes exact in mm, lists joined by "; ")."""
        join = lambda items: "; ".join(map(str, items)) or None  # noqa: E731
        return {
            "case_id": self.case_id,
            "tumour_present": self.tumour_lobe is not None,
            "tumour_lobe": self.tumour_lobe,
            "tumour_size_mm": self.tumour_size_mm,
            "nodes_present": bool(self.nodes),
            "node_stations": join(n.station for n in self.nodes),
            "node_short_axis_mm": join(n.short_axis_mm for n in self.nodes),
            "effusion_present": self.effusion_side is not None,
            "effusion_side": self.effusion_side,
            "effusion_size": self.effusion_size,
            "pleural_thickening_present": self.pleural_thickening_side is not None,
            "pleural_thickening_side": self.pleural_thickening_side,
            "metastases_present": bool(self.metastatic_sites),
            "metastatic_sites": join(self.metastatic_sites),
            "liver_met_count": len(self.liver_mets),
            "liver_met_size_mm": max((m.size_mm for m in self.liver_mets), default=None),
            "adrenal_met_side": self.adrenal_met_side,
            "adrenal_met_size_mm": self.adrenal_met_size_mm,
            "vessel_involvement_present": self.vessel_involved is not None,
            "vessel_involved": self.vessel_involved,
            "vessel_effect": self.vessel_effect,
            "bone_lesion_present": self.bone_lesion_type is not None,
            "bone_lesion_type": self.bone_lesion_type,
            "bone_lesion_site": self.bone_lesion_site,
            "bone_lesion_size_mm": self.bone_lesion_size_mm,
            "degenerative_spine": self.degenerative_spine,
            "fracture_present": self.fracture_site is not None,
            "fracture_site": self.fracture_site,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Findings":
        """Inverse of ``dataclasses.asdict`` (as stored in ``findings.json``)."""
        d = dict(d)
        d["nodes"] = tuple(LymphNode(**{**n, "center": tuple(n["center"])}) for n in d.get("nodes", ()))
        d["liver_mets"] = tuple(Lesion(m["size_mm"], tuple(m["center"])) for m in d.get("liver_mets", ()))
        for key in ("tumour_center", "tumour_ratios", "tumour_angles", "bone_lesion_center",
                    "fracture_center", "degenerative_levels"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _normalised(point, ellipsoid) -> np.ndarray:
    center, semi = ellipsoid
    return (np.asarray(point, float) - center) / semi


def _tumour_site_ok(point, uvw, side: str, lobe: Label) -> bool:
    """Whether a reference-frame point lies well inside ``lobe`` (clear of fissures, hilum, heart, liver)."""
    x, y, _ = point
    cage = np.hypot(x / CAGE[0], (y - CAGE[2]) / CAGE[1])
    clear = [np.linalg.norm(_normalised(point, e)) for e in (HEART, LIVER, HILUM[side])]
    dv, dw = np.meshgrid([-0.1, 0.0, 0.1], [-0.1, 0.0, 0.1])
    in_lobe = np.all(lobe_of(side, uvw[1] + dv, uvw[2] + dw) == lobe)
    return bool(in_lobe and cage < 0.85 and abs(x) > 45 and min(clear) > 1.2)


def _sample_in_ellipsoid(rng, ellipsoid, accept, radius: float = 0.75, tries: int = 256):
    """First of ``tries`` uniform points in the scaled ellipsoid that satisfies ``accept(point, uvw)``."""
    center, semi = map(np.asarray, ellipsoid)
    uvw = rng.uniform(-radius, radius, size=(tries, 3))
    uvw = uvw[np.linalg.norm(uvw, axis=1) <= radius]
    for p in uvw:
        point = center + semi * p
        if accept(point, p):
            return tuple(float(round(c, 1)) for c in point)
    raise RuntimeError(f"no valid point in ellipsoid {ellipsoid} after {tries} tries")


def _sample_tumour(rng, s: float) -> dict:
    lobe = LOBES[rng.choice(len(LOBES), p=LOBE_PRIOR)]
    side = lobe.split()[0]
    want = LOBE_LABELS[lobe]
    center = _sample_in_ellipsoid(rng, LUNG[side], lambda p, uvw: _tumour_site_ok(p, uvw, side, want))
    size = int(np.clip(round(np.exp(np.log(28.0) + 0.35 * s + 0.3 * rng.standard_normal())), 8, 95))
    ratios = tuple(float(round(r, 2)) for r in np.sort(rng.uniform(0.6, 0.9, 2))[::-1])
    angles = (float(round(rng.uniform(0, np.pi), 3)), float(round(rng.uniform(-0.6, 0.6), 3)))
    return dict(tumour_lobe=lobe, tumour_size_mm=size, tumour_center=center, tumour_ratios=ratios,
                tumour_angles=angles)


def _sample_nodes(rng, s: float, side: str) -> tuple[LymphNode, ...]:
    n = min(int(rng.poisson(np.exp(-0.2 + 0.8 * s))), 4)
    names = list(NODE_STATIONS)
    weight = np.array([{side: 3.0, "midline": 2.0}.get(NODE_STATIONS[k][1], 1.0) for k in names])
    chosen = rng.choice(len(names), size=n, replace=False, p=weight / weight.sum())
    nodes = []
    for k in sorted(chosen):
        short = int(np.clip(round(12 + 5 * abs(rng.standard_normal()) + 2 * s), 10, 35))
        center = np.asarray(NODE_STATIONS[names[k]][0]) + rng.uniform(-4, 4, 3)
        nodes.append(LymphNode(names[k], short, int(round(short * rng.uniform(1.2, 1.6))),
                               tuple(float(round(c, 1)) for c in center)))
    return tuple(nodes)


def _sample_pleura(rng, s: float, side: str) -> dict:
    out = {}
    if rng.random() < _sigmoid(-1.6 + 0.9 * s):
        other = "left" if side == "right" else "right"
        out["effusion_side"] = (side, "bilateral", other)[rng.choice(3, p=(0.7, 0.15, 0.15))]
        grade = np.floor(0.8 + 0.7 * s + rng.normal(0.0, 0.7))
        out["effusion_size"] = EFFUSION_SIZES[int(np.clip(grade, 0, 2))]
    if rng.random() < _sigmoid(-2.2 + 0.7 * s):
        out["pleural_thickening_side"] = side
    return out


def _sample_liver_mets(rng, s: float) -> tuple[Lesion, ...]:
    if rng.random() >= _sigmoid(-2.4 + 1.0 * s):
        return ()
    count = 1 + int(rng.binomial(2, 0.35))

    def accept(p, uvw):
        return uvw[2] > 0.1 and p[2] > -150 and np.hypot(p[0] / CAGE[0], (p[1] - CAGE[2]) / CAGE[1]) < 0.8

    return tuple(Lesion(int(rng.integers(8, 41)), _sample_in_ellipsoid(rng, LIVER, accept, radius=0.65))
                 for _ in range(count))


def _rib_point(side: str, rib: int, y: float) -> tuple[float, float, float]:
    """Reference-frame point in the middle of rib ``rib`` (1..12) of ``side`` at antero-posterior ``y``."""
    x = CAGE[0] * np.sqrt(1.035**2 - ((y - CAGE[2]) / CAGE[1]) ** 2) * (1 if side == "right" else -1)
    z = LEVEL_TOP - LEVEL_MM * (rib - 0.49) - RIB_SLOPE * (y + 80.0)
    return (float(round(x, 1)), float(y), float(round(z, 1)))


def _sample_skeleton(rng, s: float, age: float) -> dict:
    out = {}
    if rng.random() < _sigmoid(-2.4 + 0.9 * s):
        out["bone_lesion_type"] = "lytic" if rng.random() < 0.65 else "sclerotic"
        if rng.random() < 0.6:
            level = int(rng.integers(3, 13))
            out["bone_lesion_site"] = f"T{level} vertebral body"
            out["bone_lesion_size_mm"] = int(rng.integers(8, 25))
            z = LEVEL_TOP - LEVEL_MM * (level - 1 + 0.42)
            out["bone_lesion_center"] = (float(round(rng.uniform(-3, 3), 1)), SPINE_Y, float(z))
        else:
            side, rib = ("right", "left")[rng.integers(2)], int(rng.integers(3, 11))
            out["bone_lesion_site"] = f"{side} {_ordinal(rib)} rib"
            out["bone_lesion_size_mm"] = int(rng.integers(10, 26))
            out["bone_lesion_center"] = _rib_point(side, rib, -15.0)
    if rng.random() < _sigmoid((age - 62.0) / 6.0):
        first = int(rng.integers(3, 9))
        out["degenerative_spine"], out["degenerative_levels"] = True, tuple(range(first, first + 4))
    if rng.random() < 0.07:
        side, rib = ("right", "left")[rng.integers(2)], int(rng.integers(3, 10))
        out["fracture_site"] = f"{side} {_ordinal(rib)} rib"
        out["fracture_center"] = _rib_point(side, rib, 10.0)
    return out


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def make_findings(rng: np.random.Generator, index: int = 0, age: float = 65.0, case_id: str = "") -> Findings:
    """Sample one case's findings; prevalences rise with a latent disease severity (so findings correlate).

    Args:
        rng: generator consumed by this call.
        index: case index stored in the result (selects the volume's noise stream).
        age: years; degenerative spine changes become likelier with age.
        case_id: stored as is.
    """
    s = float(rng.standard_normal())
    out: dict = {"body_scale": float(round(rng.uniform(0.9, 1.05), 2)), "contrast": bool(rng.random() < 0.7)}
    if rng.random() < 0.93:
        out.update(_sample_tumour(rng, s))
    side = (out.get("tumour_lobe") or "right").split()[0]
    out["nodes"] = _sample_nodes(rng, s, side)
    out.update(_sample_pleura(rng, s, side))
    out["liver_mets"] = _sample_liver_mets(rng, s)
    if rng.random() < _sigmoid(-2.8 + 0.9 * s):
        out["adrenal_met_side"] = ("right", "left")[rng.integers(2)]
        out["adrenal_met_size_mm"] = int(rng.integers(12, 46))
    if "tumour_lobe" in out and rng.random() < _sigmoid(-2.3 + 0.8 * s):
        out["vessel_involved"] = VESSELS[rng.integers(len(VESSELS))]
        out["vessel_effect"] = "compression" if rng.random() < 0.6 else "encasement"
    out.update(_sample_skeleton(rng, s, age))
    return Findings(case_id=case_id, index=index, **out)




def make_case_volume(cfg: SyntheticCohortConfig, findings: Findings) -> np.ndarray:
    """The exact volume :func:`ctvl.data.synthetic_files.write_cohort` writes for ``findings``.

    Its noise stream is ``(cfg.seed, findings.index, 1)``.
    """
    rng = np.random.default_rng([cfg.seed, findings.index, 1])
    return make_volume(findings, cfg.shape, cfg.spacing, rng=rng)


# ----------------------------------------------------------------------------- clinical + survival truth


def make_clinical(rng: np.random.Generator) -> dict:
    """Age (years), sex ("M" | "F"), smoking (never | former | current) and ECOG performance status (0-2)."""
    return {"age": int(np.clip(round(rng.normal(66.0, 9.0)), 35, 90)),
            "sex": "M" if rng.random() < 0.55 else "F",
            "smoking": SMOKING[rng.choice(3, p=(0.15, 0.45, 0.40))],
            "ecog": int(rng.choice(3, p=(0.4, 0.45, 0.15)))}


def compute_tnm(f: Findings) -> tuple[int, int, int]:
    """True T (0-4, from tumour size; great-vessel involvement is T4), N (0-3, from node stations
    relative to the tumour side) and M (0-1, any distant metastasis), AJCC 8th edition simplified."""
    size = f.tumour_size_mm or 0
    t = 0 if f.tumour_lobe is None else int(np.searchsorted([30, 50, 70], size, side="left")) + 1
    t = 4 if f.vessel_involved is not None else t
    side = (f.tumour_lobe or "right").split()[0]
    n = 0
    for node in f.nodes:
        _, laterality, compartment = NODE_STATIONS[node.station]
        ipsilateral = laterality in (side, "midline")
        n = max(n, 3 if not ipsilateral else (1 if compartment == "hilar" else 2))
    return t, n, int(bool(f.metastatic_sites))


def compute_stage(t: int, n: int, m: int) -> int:
    """Overall stage 1-4 from TNM (simplified AJCC 8th edition grouping)."""
    if m:
        return 4
    if n >= 2 or t == 4 or (t == 3 and n == 1):
        return 3
    return 2 if n == 1 or t == 3 else 1


def _misstage(rng: np.random.Generator, tnm: tuple[int, int, int]) -> tuple[int, int, int]:
    """Clinical staging error: T and N each off by one with p = 0.3, M flipped with p = 0.1.

    Noisy enough that stage alone does not recover the imaging signal (clinical-only Cox reaches
    C ~0.70 at ``clinical_weight=0`` where the oracle reaches ~0.80).
    """
    t, n, m = tnm
    t = int(np.clip(t + rng.choice([-1, 1]), 0, 4)) if rng.random() < 0.3 else t
    n = int(np.clip(n + rng.choice([-1, 1]), 0, 3)) if rng.random() < 0.3 else n
    return t, n, 1 - m if rng.random() < 0.1 else m


def compute_image_features(f: Findings) -> dict[str, float]:
    """f(findings): the imaging features of the true log-hazard (keys of ``W_IMAGE``)."""
    grade = 0 if f.effusion_size is None else 1 + EFFUSION_SIZES.index(f.effusion_size)
    return {"tumour_cm": (f.tumour_size_mm or 0) / 10.0, "n_stage": float(compute_tnm(f)[1]),
            "metastatic_sites": float(len(f.metastatic_sites)), "effusion_grade": float(grade),
            "vessel_involvement": float(f.vessel_involved is not None),
            "pleural_thickening": float(f.pleural_thickening_side is not None)}


def compute_clinical_features(clinical: dict) -> dict[str, float]:
    """g(clinical): the clinical features of the true log-hazard (keys of ``W_CLINICAL``)."""
    return {"age_decades": (clinical["age"] - 65.0) / 10.0, "male": float(clinical["sex"] == "M"),
            "former_smoker": float(clinical["smoking"] == "former"),
            "current_smoker": float(clinical["smoking"] == "current"), "ecog": float(clinical["ecog"])}


def compute_log_hazard(f: Findings, clinical: dict, clinical_weight: float) -> tuple[float, float]:
    r"""Centred image and clinical parts of the true log-hazard.

    .. math::
        \eta = \underbrace{w_{img}^\top f - \bar\eta_{img}}_{\text{image}}
             + \lambda_{clin} \underbrace{(w_{clin}^\top g - \bar\eta_{clin})}_{\text{clinical}}

    Returns:
        (image part, clinical part times ``clinical_weight``); their sum is ``true_log_hazard``.
    """
    image = sum(W_IMAGE[k] * v for k, v in compute_image_features(f).items()) - IMAGE_MEAN
    clin = sum(W_CLINICAL[k] * v for k, v in compute_clinical_features(clinical).items()) - CLINICAL_MEAN
    return float(image), float(clinical_weight * clin)


def compute_censoring_rate(event_times: np.ndarray, censoring_rate: float) -> float:
    r"""Rate :math:`\mu` of exponential censoring such that the expected censored fraction is the target.

    .. math::
        \frac{1}{n}\sum_i P(C_i < T_i) = \frac{1}{n}\sum_i \left(1 - e^{-\mu T_i}\right) = c

    with :math:`c` = ``censoring_rate``, solved by bisection on :math:`\log\mu` (the left side
    increases with :math:`\mu`).

    >>> mu = compute_censoring_rate(np.array([1.0, 2.0, 4.0]), 0.5)
    >>> round(float(np.mean(1 - np.exp(-mu * np.array([1.0, 2.0, 4.0])))), 6)
    0.5
    """
    if censoring_rate <= 0:
        return 0.0
    lo, hi = -30.0, 30.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(-np.expm1(-np.exp(mid) * event_times)) < censoring_rate else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def _weibull_times(log_hazard: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF Weibull PH times: S(t) = exp(-(t/sigma)^k e^eta) = U (Bender et al. 2005)."""
    return WEIBULL_SCALE_MONTHS * (-np.log(uniforms) * np.exp(-log_hazard)) ** (1.0 / WEIBULL_SHAPE)


# ----------------------------------------------------------------------------- cohort


def _case_names(n_cases: int, validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split and CT-RATE volume stem per case (``train_{k}_a_1`` / ``valid_{k}_a_1``, k from 1)."""
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"`validation_fraction` must be in [0, 1], got {validation_fraction}")
    n_val = int(round(validation_fraction * n_cases))
    is_val = np.zeros(n_cases, bool)
    is_val[np.random.default_rng([seed, 0x5EED]).permutation(n_cases)[:n_val]] = True
    splits = ["validation" if v else "train" for v in is_val]
    counts = {"train": 0, "validation": 0}
    stems = []
    for split in splits:
        counts[split] += 1
        stems.append(f"{'valid' if split == 'validation' else 'train'}_{counts[split]}_a_1")
    return splits, stems


def volume_relpath(stem: str, compress: bool = True) -> str:
    """CT-RATE relative path of a volume: ``dataset/train/train_1/train_1_a/train_1_a_1.nii.gz``."""
    prefix, k = stem.split("_")[:2]
    folder = "train" if prefix == "train" else "valid"
    return f"dataset/{folder}/{prefix}_{k}/{prefix}_{k}_a/{stem}.nii{'.gz' if compress else ''}"


def make_cohort(cfg: SyntheticCohortConfig) -> tuple[pd.DataFrame, list[Findings]]:
    """Tables of a synthetic cohort (no volumes, no files): one row per case, and its findings.

    Each case draws from its own streams ``(seed, index, k)`` (k = 0 clinical/findings/staging,
    1 volume noise, 2 survival, 4 report), so its content and latent event time do not depend on
    ``n_cases``; its name, split and censoring time do.

    Returns:
        DataFrame with ``case_id`` (= CT-RATE volume stem), ``volume_name``, ``image`` (relative path),
        ``split``, clinical covariates (``age, sex, smoking, ecog, t_stage, n_stage, m_stage, stage``),
        the four CT-RATE report fields and ``report`` (findings + impression), ``log_hazard_image``,
        ``log_hazard_clinical``, ``true_log_hazard``, ``latent_event_time``, ``time`` (months),
        ``event`` (1 = death observed); and the :class:`Findings` in the same order.
    """
    from ctvl.data.synthetic_reports import make_report

    splits, stems = _case_names(cfg.n_cases, cfg.validation_fraction, cfg.seed)
    rows, findings = [], []
    for i, (split, stem) in enumerate(zip(splits, stems)):
        rng = np.random.default_rng([cfg.seed, i, 0])
        clinical = make_clinical(rng)
        f = make_findings(rng, i, clinical["age"], case_id=stem)
        t, n, m = _misstage(rng, compute_tnm(f))
        image, clin = (round(v, 6) for v in compute_log_hazard(f, clinical, cfg.clinical_weight))
        report = make_report(f, np.random.default_rng([cfg.seed, i, 4]), slice_thickness_mm=cfg.spacing[2])
        rows.append({"case_id": stem, "volume_name": f"{stem}.nii{'.gz' if cfg.compress else ''}",
                     "image": volume_relpath(stem, cfg.compress),
                     "split": split, **clinical, "t_stage": t, "n_stage": n, "m_stage": m,
                     "stage": compute_stage(t, n, m), **report,
                     "report": f"{report['Findings_EN']} {report['Impressions_EN']}",
                     "log_hazard_image": image, "log_hazard_clinical": clin,
                     "true_log_hazard": round(image + clin, 6)})
        findings.append(f)
    df = pd.DataFrame(rows)
    _add_survival(df, cfg)
    return df, findings


def _add_survival(df: pd.DataFrame, cfg: SyntheticCohortConfig) -> None:
    """Weibull PH event times and independent exponential censoring calibrated to ``censoring_rate``."""
    draws = np.array([np.random.default_rng([cfg.seed, i, 2]).random(2) for i in range(len(df))])
    uniforms, censor_unit = 1.0 - draws[:, 0], -np.log1p(-draws[:, 1])  # U in (0, 1]; Exp(1)
    latent = _weibull_times(df["true_log_hazard"].to_numpy(), uniforms)
    mu = compute_censoring_rate(latent, cfg.censoring_rate)
    censor = censor_unit / mu if mu > 0 else np.full(len(df), np.inf)
    df["latent_event_time"] = latent
    df["time"] = np.maximum(np.round(np.minimum(latent, censor), 3), 1e-3)
    df["event"] = (latent <= censor).astype(int)


def oracle_c_index(df: pd.DataFrame, risk: str = "true_log_hazard") -> float:
    """Harrell's C of the true log-hazard: the best C-index any model can expect on this cohort.

    Uses lifelines' ``concordance_index`` (which expects predicted times, hence ``-risk``).

    Args:
        df: table with ``time``, ``event`` and the ``risk`` column (e.g. from :func:`make_cohort`).
        risk: column holding a log-hazard (higher = earlier death).
    """
    missing = {"time", "event", risk} - set(df.columns)
    if missing:
        raise ValueError(f"oracle_c_index: table lacks column(s) {sorted(missing)}")
    # TODO(#foundation): switch to ctvl.survival.metrics once it lands (same value, O(n log n)).
    try:
        from lifelines.utils import concordance_index
    except ImportError as err:  # lifelines is an optional dependency (extra "survival-refs")
        raise ImportError("oracle_c_index needs lifelines: pip install 'ctvl[survival-refs]'") from err

    return float(concordance_index(df["time"], -df[risk], df["event"]))
