"""What a synthetic chest-CT case holds: its findings, sampled per case, and the TNM stage they imply.

The findings answer the six questions of the core paper (Liu et al., arXiv 2604.18250, Fig. 2):
primary tumour, lymph nodes, pleura, metastases, major vessels, skeleton. Prevalences rise with one
latent disease severity per case, so findings correlate as they do in a real cohort. Finding centres
are reference-frame mm (:mod:`ctvl.data.synthetic.anatomy`; :mod:`ctvl.data.synthetic.phantom` draws
them), lesion sizes physical mm. :mod:`ctvl.data.synthetic.cohort` adds clinical covariates, staging
error, reports and the survival truth.

    >>> import numpy as np
    >>> f = make_findings(np.random.default_rng(0), case_id="case_0")
    >>> compute_stage(*compute_tnm(f)) in (1, 2, 3, 4)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctvl.data.synthetic.anatomy import (
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
)

LOBE_PRIOR = (0.30, 0.08, 0.20, 0.25, 0.17)
# Station -> (reference-frame anchor in mm, laterality, compartment); anchors sit beside the
# trachea/carina/hila of the reference anatomy (ctvl.data.synthetic.anatomy).
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


# ----------------------------------------------------------------------------- staging


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
