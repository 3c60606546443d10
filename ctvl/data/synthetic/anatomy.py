"""Reference anatomy of the synthetic chest: tissue labels, lobes, organ shapes and skeleton levels.

Anatomy is laid out in a *reference frame* (mm, RAS, origin at the FOV centre) for a 320 mm field
of view (``REF_FOV_MM``); :mod:`ctvl.data.synthetic.phantom` scales it to a grid and draws it, and
:mod:`ctvl.data.synthetic.findings` places a case's lesions in it. Shapes are ellipsoids
``(centre, semi-axes)`` and capsules ``(a, b, radius)``; :class:`Label` holds the tissue labels of the
label map, :func:`lobe_of` splits a lung into lobes along its fissures.

    >>> int(lobe_of("right", 0.0, 0.5)) == Label.RUL
    True
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

REF_FOV_MM = 320.0
"""Field of view (mm) the reference anatomy is laid out for; smaller FOVs shrink the anatomy."""

LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")


class Label(IntEnum):
    """Tissue labels of the label map (:func:`~ctvl.data.synthetic.phantom.make_label_map`)."""

    AIR, FAT, SOFT_TISSUE, MEDIASTINAL_FAT, ABDOMEN = 0, 1, 2, 3, 4
    RUL, RML, RLL, LUL, LLL = 5, 6, 7, 8, 9
    AIRWAY, ESOPHAGUS, HEART, BLOOD_POOL, VESSEL = 10, 11, 12, 13, 14
    CORTICAL_BONE, VERTEBRA, DISC, SPINAL_CANAL, LIVER, ADRENAL = 15, 16, 17, 18, 19, 20
    TUMOUR, NODE, EFFUSION, PLEURAL_THICKENING, LIVER_MET, ADRENAL_MET = 30, 31, 32, 33, 34, 35
    BONE_LYTIC, BONE_SCLEROTIC, FRACTURE, OSTEOPHYTE, VESSEL_INVASION = 36, 37, 38, 39, 40


LOBE_LABELS = dict(zip(LOBES, (Label.RUL, Label.RML, Label.RLL, Label.LUL, Label.LLL)))
LUNG_LABELS = tuple(LOBE_LABELS.values())
BONE_LABELS = (Label.CORTICAL_BONE, Label.VERTEBRA, Label.DISC)


def lobe_of(side: str, v, w):
    """Lobe from lung-normalised (v: posterior->anterior, w: inferior->superior) coordinates.

    The oblique fissure runs from posterior-superior to anterior-inferior; the horizontal fissure
    (right only) splits the upper from the middle lobe.
    """
    lower = w < -0.25 - 0.6 * v
    if side == "right":
        return np.where(lower, Label.RLL, np.where(w >= 0.15, Label.RUL, Label.RML))
    return np.where(lower, Label.LLL, Label.LUL)


# Reference anatomy (mm): ellipsoids (centre, semi-axes) and capsules (a, b, radius).
LUNG = {"right": ((70.0, -5.0, 20.0), (58.0, 78.0, 115.0)),
         "left": ((-68.0, -5.0, 15.0), (54.0, 76.0, 112.0))}
CAGE = (125.0, 85.0, -2.0)  # inner rib-cage ellipse: semi x, semi y, centre y
HILUM = {"right": ((45.0, -15.0, 22.0), (20.0, 24.0, 30.0)),
          "left": ((-47.0, -15.0, 25.0), (20.0, 24.0, 30.0))}
HEART = ((-15.0, 28.0, -45.0), (60.0, 50.0, 48.0))
LIVER = ((55.0, 25.0, -150.0), (100.0, 85.0, 75.0))
ADRENAL = {"right": (28.0, -58.0, -130.0), "left": (-42.0, -50.0, -128.0)}
PERIADRENAL_FAT = (18.0, 24.0, 28.0)
"""Semi-axes (mm) of the retroperitoneal fat around each adrenal: on CT an adrenal mass stands out
against fat, not against solid organs."""
AIRWAYS = (((0, -25, 170), (0, -25, 45), 9.0), ((0, -25, 45), (38, -25, 18), 6.5),
           ((0, -25, 45), (-45, -28, 15), 6.0))
VESSEL_TREE = {
    "aorta": (((10, 30, -15), (12, 32, 65), 14.0), ((12, 32, 65), (-18, 0, 82), 13.0),
              ((-18, 0, 82), (-28, -50, 68), 12.0), ((-28, -50, 68), (-24, -48, -170), 12.0)),
    "pulmonary artery": (((-8, 42, -5), (-12, 20, 30), 13.0), ((-12, 20, 30), (45, -12, 25), 10.0),
                         ((-12, 20, 30), (-50, -8, 35), 10.0)),
    "superior vena cava": (((32, 18, 170), (32, 18, 5), 9.0),),
}
# Segment (capsule) of each vessel that a finding involves: (a, b, radius).
VESSEL_SITE = {"superior vena cava": ((32, 18, 40), (32, 18, 95), 9.0),
               "pulmonary artery": ((-9, 36, 2), (-12, 20, 30), 13.0),
               "aorta": ((-27, -50, 60), (-26, -49, 10), 12.0)}
# Spine: centre y and vertebral-body radius (mm); vertebral levels: height (mm) and top of T1 (z, mm);
# ribs drop RIB_SLOPE mm in z per mm towards anterior.
SPINE_Y, VERT_R, LEVEL_MM, LEVEL_TOP, RIB_SLOPE = -62.0, 17.0, 24.0, 150.0, 0.45
