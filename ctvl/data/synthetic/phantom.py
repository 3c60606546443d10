"""Chest phantom of the synthetic cohort: the tissue label map of a case and its HU volume.

The reference anatomy (:mod:`ctvl.data.synthetic.anatomy`, mm for a 320 mm field of view) is scaled
by ``min(1, FOV / 320 mm)`` per axis (and the patient's ``body_scale`` in x, y), so any grid holds a
whole chest; lesion sizes are physical mm. :func:`make_label_map` paints tissue :class:`Label` values
(body wall, fat, lobes, mediastinum, heart, great vessels, airways, spine, ribs, liver dome, adrenals,
then the case's findings); :func:`make_volume` turns them into Hounsfield units with tissue texture
and noise. What a case holds is decided in :mod:`ctvl.data.synthetic.findings`
(:class:`~ctvl.data.synthetic.findings.Findings`); this module only draws it.

Example:
    >>> from ctvl.data.synthetic.findings import make_findings
    >>> f = make_findings(np.random.default_rng(0))
    >>> make_volume(f, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0)).shape
    (32, 32, 32)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctvl.data.synthetic.anatomy import (
    ADRENAL,
    AIRWAYS,
    BONE_LABELS,
    CAGE,
    HEART,
    HILUM,
    LEVEL_MM,
    LEVEL_TOP,
    LIVER,
    LOBE_LABELS,
    LUNG,
    LUNG_LABELS,
    PERIADRENAL_FAT,
    REF_FOV_MM,
    RIB_SLOPE,
    SPINE_Y,
    VERT_R,
    VESSEL_SITE,
    VESSEL_TREE,
    Label,
    lobe_of,
)
from ctvl.data.synthetic.findings import Findings

# label: (HU without contrast, HU with contrast, texture amplitude)
_HU = {Label.AIR: (-1000, -1000, 0), Label.FAT: (-100, -100, 6), Label.SOFT_TISSUE: (45, 55, 6),
       Label.MEDIASTINAL_FAT: (-90, -90, 8), Label.ABDOMEN: (35, 60, 8), Label.AIRWAY: (-990, -990, 0),
       Label.ESOPHAGUS: (40, 50, 4), Label.HEART: (45, 90, 4), Label.BLOOD_POOL: (40, 170, 4),
       Label.VESSEL: (40, 180, 4), Label.CORTICAL_BONE: (750, 750, 40), Label.VERTEBRA: (280, 280, 30),
       Label.DISC: (80, 80, 6), Label.SPINAL_CANAL: (30, 30, 3), Label.LIVER: (58, 100, 4),
       Label.ADRENAL: (25, 45, 4), Label.TUMOUR: (38, 60, 8), Label.NODE: (40, 55, 5),
       Label.EFFUSION: (15, 15, 2), Label.PLEURAL_THICKENING: (45, 65, 5), Label.LIVER_MET: (20, 40, 4),
       Label.ADRENAL_MET: (32, 55, 6), Label.BONE_LYTIC: (30, 45, 6), Label.BONE_SCLEROTIC: (1100, 1100, 40),
       Label.FRACTURE: (50, 60, 5), Label.OSTEOPHYTE: (750, 750, 30), Label.VESSEL_INVASION: (42, 65, 6)}
_HU.update({lab: (-860, -860, 28) for lab in LUNG_LABELS})


def _build_lut() -> np.ndarray:
    """(contrast, [HU, texture amplitude], label) lookup table, float32."""
    lut = np.zeros((2, 2, 256), np.float32)
    for lab, (plain, contrast, amplitude) in _HU.items():
        lut[:, 0, lab], lut[:, 1, lab] = (plain, contrast), amplitude
    return lut


_LUT = _build_lut()
NOISE_SD_HU = 10.0
"""Standard deviation of the white (quantum) noise added to every voxel."""


class _Grid:
    """Voxel centres of a (x, y, z) grid in reference-frame mm, as open (broadcastable) axes."""

    def __init__(self, shape, spacing, body_scale: float = 1.0):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, float)
        fov = np.asarray(self.shape) * self.spacing
        self.scale = np.minimum(1.0, fov / REF_FOV_MM) * np.array([body_scale, body_scale, 1.0])
        self.axes = [((np.arange(n) - (n - 1) / 2) * sp / sc).astype(np.float32)
                     for n, sp, sc in zip(self.shape, self.spacing, self.scale)]

    def open(self, sl=(slice(None),) * 3):
        x, y, z = (a[s] for a, s in zip(self.axes, sl))
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def window(self, lo, hi) -> tuple[slice, slice, slice]:
        """Index slices covering the reference-frame box [lo, hi] (clipped to the grid)."""
        to_index = lambda p, n, k: p * self.scale[k] / self.spacing[k] + (n - 1) / 2  # noqa: E731
        return tuple(slice(int(np.clip(np.floor(to_index(lo[k], n, k)), 0, n)),
                           int(np.clip(np.ceil(to_index(hi[k], n, k)) + 1, 0, n)))
                     for k, n in enumerate(self.shape))


def _ellipsoid(grid: _Grid, center, semi, physical: bool = False, rot=None):
    """Window and mask of an ellipsoid; ``semi`` in physical mm if ``physical`` else reference mm."""
    c, semi = np.asarray(center, float), np.asarray(semi, float)
    scale = grid.scale if physical else np.ones(3)
    reach = (semi.max() if rot is not None else semi) / scale
    sl = grid.window(c - reach, c + reach)
    d = [(a - ck) * sk for a, ck, sk in zip(grid.open(sl), c, scale)]
    if rot is not None:  # coordinates along the ellipsoid's own axes (columns of rot)
        d = [rot[0, j] * d[0] + rot[1, j] * d[1] + rot[2, j] * d[2] for j in range(3)]
    return sl, (d[0] / semi[0]) ** 2 + (d[1] / semi[1]) ** 2 + (d[2] / semi[2]) ** 2 <= 1.0


def _capsule(grid: _Grid, a, b, radius: float):
    """Window and mask of the points within ``radius`` (reference mm) of segment ab."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    sl = grid.window(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
    x, y, z = grid.open(sl)
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / (ab @ ab), 0.0, 1.0)
    dist2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    return sl, dist2 <= radius**2


def _paint(labels: np.ndarray, window_mask, value: int, only=None, protect=()) -> None:
    """Set ``labels`` to ``value`` inside the mask (restricted to labels ``only``, never over ``protect``)."""
    sl, mask = window_mask
    sub = labels[sl]
    mask = np.broadcast_to(mask, sub.shape)
    if only is not None:
        mask = mask & np.isin(sub, only)
    if protect:
        mask = mask & ~np.isin(sub, protect)
    sub[mask] = value


def _paint_body(labels: np.ndarray, g: _Grid) -> np.ndarray:
    """Fat, body wall and thoracic cavity (z-invariant); returns the normalised cage radius, shape (x, y)."""
    x, y, z = g.open()
    x2, y2 = x[:, :, 0], y[:, :, 0]
    labels[(x2 / 150) ** 2 + (y2 / 106) ** 2 <= 1] = Label.FAT
    labels[(x2 / 140) ** 2 + (y2 / 96) ** 2 <= 1] = Label.SOFT_TISSUE
    cage = np.hypot(x2 / CAGE[0], (y2 - CAGE[2]) / CAGE[1])
    labels[cage < 1] = Label.ABDOMEN
    labels[:, :, np.searchsorted(g.axes[2], -85.0):][cage < 1] = Label.MEDIASTINAL_FAT  # z is increasing
    return cage


def _paint_lungs(labels: np.ndarray, g: _Grid, cage: np.ndarray) -> None:
    for side, (center, semi) in LUNG.items():
        sl, inside = _ellipsoid(g, center, semi)
        x, y, z = g.open(sl)
        v, w = (y - center[1]) / semi[1], (z - center[2]) / semi[2]
        mediastinum = (x / 30.0) ** 2 + ((y - 5.0) / 62.0) ** 2 <= 1
        (hx, hy, hz), (ha, hb, hc) = HILUM[side]
        hilum = ((x - hx) / ha) ** 2 + ((y - hy) / hb) ** 2 + ((z - hz) / hc) ** 2 <= 1
        mask = inside & (cage[sl[0], sl[1]][:, :, None] < 0.98) & ~mediastinum & ~hilum
        sub = labels[sl]
        sub[mask] = np.broadcast_to(lobe_of(side, v, w), sub.shape)[mask]


def _paint_skeleton(labels: np.ndarray, g: _Grid, cage: np.ndarray) -> None:
    """Vertebral bodies with discs, posterior elements, sternum and 12 sloping ribs per side."""
    x, y, z = g.open()
    x2, y2, z1 = x[:, :, 0], y[:, :, 0], g.axes[2]
    r = np.hypot(x2, y2 - SPINE_Y)
    disc = np.mod(LEVEL_TOP - z1, LEVEL_MM) > LEVEL_MM - 4
    labels[r <= VERT_R] = Label.CORTICAL_BONE
    labels[r <= VERT_R - 2.5] = Label.VERTEBRA
    labels[(r <= VERT_R)[:, :, None] & disc] = Label.DISC
    canal = np.hypot(x2, y2 + 90)
    labels[(canal <= 13) & (y2 < -84)] = Label.CORTICAL_BONE
    labels[(np.abs(x2) < 4) & (y2 < -95) & (y2 > -118)] = Label.CORTICAL_BONE
    labels[canal <= 8] = Label.SPINAL_CANAL
    sternum = (np.abs(x2) < 15) & (y2 > 84) & (y2 < 94)
    labels[:, :, np.searchsorted(z1, -40.0):np.searchsorted(z1, 120.0)][sternum] = Label.CORTICAL_BONE
    ix, iy = np.nonzero((cage >= 1.0) & (cage <= 1.07) & (y2 < 50) & (np.abs(x2) > 20))
    q = (LEVEL_TOP - z1[None, :] - RIB_SLOPE * (g.axes[1][iy][:, None] + 80.0)) / LEVEL_MM
    rib = (q >= 0) & (q < 12) & (np.mod(q, 1.0) > 0.3) & (np.mod(q, 1.0) < 0.72)
    cols = labels[ix, iy]
    cols[rib] = Label.CORTICAL_BONE
    labels[ix, iy] = cols


def _paint_organs(labels: np.ndarray, g: _Grid) -> None:
    _paint(labels, _ellipsoid(g, *HEART), Label.HEART)
    _paint(labels, _ellipsoid(g, HEART[0], np.asarray(HEART[1]) * 0.75), Label.BLOOD_POOL)
    cavity = (Label.ABDOMEN, Label.MEDIASTINAL_FAT) + LUNG_LABELS
    _paint(labels, _ellipsoid(g, *LIVER), Label.LIVER, only=cavity)
    for center in ADRENAL.values():
        _paint(labels, _ellipsoid(g, center, PERIADRENAL_FAT), Label.FAT, only=(Label.ABDOMEN,))
        _paint(labels, _ellipsoid(g, center, (5.0, 12.0, 16.0)), Label.ADRENAL)
    _paint(labels, _capsule(g, (-8, -40, 170), (-8, -40, -120), 7.0), Label.ESOPHAGUS)
    for segments in VESSEL_TREE.values():
        for a, b, radius in segments:
            _paint(labels, _capsule(g, a, b, radius), Label.VESSEL)
    for a, b, radius in AIRWAYS:
        _paint(labels, _capsule(g, a, b, radius), Label.AIRWAY)


def _rotation(azimuth: float, elevation: float) -> np.ndarray:
    """Orthonormal frame whose first column points along (azimuth, elevation)."""
    ce = np.cos(elevation)
    d = np.array([ce * np.cos(azimuth), ce * np.sin(azimuth), np.sin(elevation)])
    e2 = np.cross(d, [0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.cross(d, [1.0, 0.0, 0.0])
    e2 /= np.linalg.norm(e2)
    return np.stack([d, e2, np.cross(d, e2)], axis=1)


def _paint_pleura(labels: np.ndarray, g: _Grid, f: Findings, cage: np.ndarray) -> None:
    """Effusion fills the dependent (posterior, inferior) hemithorax; thickening lines the chest wall."""
    # Lowest score inside the lung ellipsoid is 1.7 - sqrt(1.49) = 0.479 (posterior-basal point).
    reach = {"small": 0.479 + 0.3, "moderate": 0.479 + 0.65, "large": 0.479 + 1.2}
    for side, (center, semi) in LUNG.items():
        sl = g.window(np.asarray(center) - semi, np.asarray(center) + semi)
        sub = labels[sl]
        lung = np.isin(sub, [lab for name, lab in LOBE_LABELS.items() if name.startswith(side)])
        if f.effusion_side in (side, "bilateral"):
            _, y, z = g.open(sl)
            dependent = (y - center[1]) / semi[1] + 1 + 0.7 * ((z - center[2]) / semi[2] + 1)
            sub[lung & (dependent < reach[f.effusion_size])] = Label.EFFUSION
        if f.pleural_thickening_side == side:
            sub[lung & (cage[sl[0], sl[1]][:, :, None] > 0.9)] = Label.PLEURAL_THICKENING


def _paint_vessel_finding(labels: np.ndarray, g: _Grid, f: Findings) -> None:
    a, b, radius = VESSEL_SITE[f.vessel_involved]
    cuff = _capsule(g, a, b, radius + 10.0)
    _paint(labels, cuff, Label.VESSEL_INVASION, protect=(Label.AIRWAY,) + BONE_LABELS)
    lumen = radius * (0.35 if f.vessel_effect == "compression" else 1.0)
    _paint(labels, _capsule(g, a, b, lumen), Label.VESSEL)


def _paint_bones(labels: np.ndarray, g: _Grid, f: Findings) -> None:
    if f.bone_lesion_type is not None:
        value = Label.BONE_LYTIC if f.bone_lesion_type == "lytic" else Label.BONE_SCLEROTIC
        only = BONE_LABELS if "vertebra" in f.bone_lesion_site else None
        _paint(labels, _ellipsoid(g, f.bone_lesion_center, [f.bone_lesion_size_mm / 2] * 3, physical=True),
               value, only=only, protect=(Label.AIRWAY,))
    if f.fracture_site is not None:
        _paint(labels, _ellipsoid(g, f.fracture_center, (6.0, 6.0, 6.0), physical=True), Label.FRACTURE,
               only=(Label.CORTICAL_BONE,))
    for level in f.degenerative_levels:
        z = LEVEL_TOP - LEVEL_MM * level + 2.0
        for x in (-15.0, 15.0):
            spur = _ellipsoid(g, (x, SPINE_Y + 14.0, z), (5.0, 4.0, 4.0), physical=True)
            _paint(labels, spur, Label.OSTEOPHYTE)


def _paint_findings(labels: np.ndarray, g: _Grid, f: Findings, cage: np.ndarray) -> None:
    _paint_pleura(labels, g, f, cage)
    if f.vessel_involved is not None:
        _paint_vessel_finding(labels, g, f)
    for node in f.nodes:
        semi = (node.short_axis_mm / 2, node.short_axis_mm / 2, node.long_axis_mm / 2)
        _paint(labels, _ellipsoid(g, node.center, semi, physical=True), Label.NODE, protect=(Label.AIRWAY,))
    if f.tumour_lobe is not None:
        semi = f.tumour_size_mm / 2 * np.array([1.0, *f.tumour_ratios])
        _paint(labels, _ellipsoid(g, f.tumour_center, semi, physical=True, rot=_rotation(*f.tumour_angles)),
               Label.TUMOUR, protect=(Label.AIRWAY,) + BONE_LABELS)
    for met in f.liver_mets:
        _paint(labels, _ellipsoid(g, met.center, [met.size_mm / 2] * 3, physical=True), Label.LIVER_MET,
               only=(Label.LIVER,))
    if f.adrenal_met_side is not None:
        semi = f.adrenal_met_size_mm / 2 * np.array([0.85, 0.9, 1.0])
        _paint(labels, _ellipsoid(g, ADRENAL[f.adrenal_met_side], semi, physical=True), Label.ADRENAL_MET,
               protect=BONE_LABELS)
    _paint_bones(labels, g, f)


def make_label_map(findings: Findings, shape, spacing) -> np.ndarray:
    """Tissue labels (:class:`Label`) of one case; deterministic given the findings.

    Args:
        findings: the case.
        shape: (x, y, z) voxels.
        spacing: (x, y, z) mm.

    Returns:
        np.ndarray, uint8, shape ``shape``, RAS array axes.
    """
    g = _Grid(shape, spacing, findings.body_scale)
    labels = np.zeros(g.shape, np.uint8)
    cage = _paint_body(labels, g)
    _paint_lungs(labels, g, cage)
    _paint_organs(labels, g)
    _paint_skeleton(labels, g, cage)
    _paint_findings(labels, g, findings, cage)
    return labels


def make_volume(findings: Findings, shape=(64, 64, 64), spacing=(5.0, 5.0, 5.0), rng=0) -> np.ndarray:
    """Chest phantom in Hounsfield units with the findings drawn where :class:`Findings` says.

    HU = label value (non-contrast or contrast-enhanced) + smooth tissue texture + white noise
    (SD ``NOISE_SD_HU``); lungs are denser posteriorly (dependent density), as on supine CT.

    Args:
        findings: the case (see :func:`make_findings`).
        shape: (x, y, z) voxels.
        spacing: (x, y, z) mm.
        rng: ``np.random.Generator`` or int seed for the noise (the geometry is deterministic);
            ``None`` draws fresh OS entropy (not reproducible).

    Returns:
        np.ndarray, int16 HU clipped to [-1024, 3071], shape ``shape``, RAS array axes.
    """
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"`shape` and `spacing` need three positive values, got {shape}, {spacing}")
    rng = np.random.default_rng(rng)
    labels = make_label_map(findings, shape, spacing)
    hu, amplitude = (_LUT[0 if not findings.contrast else 1, k][labels] for k in (0, 1))
    white = rng.standard_normal(labels.shape, dtype=np.float32)
    texture = ndimage.gaussian_filter(white, 1.0, mode="wrap", truncate=2.0)  # one draw serves both (speed)
    hu += amplitude * texture * (1.0 / max(float(texture.std()), 1e-6)) + NOISE_SD_HU * white
    lung = (labels >= Label.RUL) & (labels <= Label.LLL)
    y_ref = _Grid(shape, spacing, findings.body_scale).open()[1]
    hu += np.where(lung, np.clip(-25.0 * y_ref / 80.0, -25.0, 25.0), 0.0).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
