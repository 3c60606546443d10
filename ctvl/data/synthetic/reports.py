"""CT-RATE style radiology reports for synthetic cases (:mod:`ctvl.data.synthetic.cohort`).

``make_report(findings, rng, slice_thickness_mm)`` returns the four CT-RATE text fields
(``ClinicalInformation_EN``, ``Technique_EN``, ``Findings_EN``, ``Impressions_EN``). The text
states exactly the findings of :class:`~ctvl.data.synthetic.findings.Findings` and normal findings
otherwise. Phrasing varies (several templates per finding, synonyms, sentence order shuffled,
sizes as "23 mm" or "2.3 cm"), but stays parseable for a rule-based extractor:

- sizes are exact to 1 mm (integer mm, or cm with one decimal); in an "A x B" pair
  ("45 x 28 mm", "4.5 x 2.8 cm") the first number is the long axis;
- lobes read "right upper lobe" or "upper lobe of the right lung"; node stations use the names of
  ``NODE_STATIONS``; node sizes are short-axis diameters; effusion sizes use the words
  small/moderate/large; vessels use the names of ``VESSELS`` (the SVC may read
  "superior vena cava (SVC)"); bone sites read "T7 vertebral body" or "right 6th rib";
- each sentence of ``Findings_EN`` describes one finding (a node, an effusion, ...); normal
  statements start with "No" or say normal/unremarkable. Fillers mention "pericardial effusion",
  which is not a pleural finding.

Example:
    >>> import numpy as np
    >>> from ctvl.data.synthetic.findings import Findings
    >>> f = Findings("c", 0, tumour_lobe="left lower lobe", tumour_size_mm=23)
    >>> text = make_report(f, np.random.default_rng(0))["Findings_EN"]
    >>> "left lower lobe" in text or "lower lobe of the left lung" in text
    True
"""

from __future__ import annotations

import numpy as np

from ctvl.data.synthetic.findings import Findings

_COUNT = {1: "one", 2: "two", 3: "three", 4: "four"}
_CLINICAL = ("Lung cancer staging.", "Known lung carcinoma, staging.", "Suspected lung malignancy.",
             "Cough and weight loss; evaluation of lung mass.", "Follow-up of lung carcinoma.", "Dyspnoea.")
_NORMAL_FILLER = ("Trachea and both main bronchi are patent.", "Heart size is normal.",
                  "No pericardial effusion.", "The thyroid gland is unremarkable in the sections included.",
                  "Oesophagus is of normal calibre.", "No consolidation in either lung.")


def _pick(rng: np.random.Generator, options) -> str:
    return options[rng.integers(len(options))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _size(rng: np.random.Generator, mm: int) -> str:
    """Size as "23 mm" or "2.3 cm" (exact to 1 mm either way)."""
    return f"{mm} mm" if rng.random() < 0.6 else f"{mm / 10:.1f} cm"


def _pair(rng: np.random.Generator, long_mm: int, short_mm: int) -> str:
    """Long x short diameter, long axis first: "42 x 31 mm" or "4.2 x 3.1 cm"."""
    if rng.random() < 0.5:
        return f"{long_mm} x {short_mm} mm"
    return f"{long_mm / 10:.1f} x {short_mm / 10:.1f} cm"


def _lobe(rng: np.random.Generator, lobe: str) -> str:
    side, level, _ = lobe.split()
    return lobe if rng.random() < 0.6 else f"{level} lobe of the {side} lung"


def _tumour(rng, f: Findings) -> list[str]:
    if f.tumour_lobe is None:
        return [_pick(rng, ("No mass or nodule is seen in either lung.", "No pulmonary mass is identified.",
                            "No suspicious pulmonary nodule or mass."))]
    lobe, size = _lobe(rng, f.tumour_lobe), _size(rng, f.tumour_size_mm)
    short = max(1, round(f.tumour_size_mm * f.tumour_ratios[1]))
    return [_pick(rng, (
        f"A {size} spiculated mass is seen in the {lobe}.",
        f"There is a solid mass in the {lobe} measuring {size} in long axis, consistent with the primary "
        "tumour.",
        f"In the {lobe}, a mass with a longest diameter of {size} is noted.",
        f"Mass in the {lobe} measuring {_pair(rng, f.tumour_size_mm, short)}.",
    ))]


def _nodes(rng, f: Findings) -> list[str]:
    if not f.nodes:
        return [_pick(rng, ("No pathologically enlarged lymph nodes in the mediastinum or hila.",
                            "No mediastinal or hilar lymphadenopathy.",
                            "Mediastinal and hilar lymph nodes are not enlarged."))]
    out = []
    for node in f.nodes:
        size = _size(rng, node.short_axis_mm)
        out.append(_pick(rng, (
            f"A {node.station} lymph node measuring {size} in short axis is present.",
            f"Enlarged {node.station} lymph node with a short-axis diameter of {size}.",
            f"{_cap(node.station)} lymphadenopathy, short axis {size}.",
            f"Pathologically enlarged lymph node in the {node.station} station ({size} short axis).",
        )))
    return out


def _effusion(rng, f: Findings) -> str:
    size, side = f.effusion_size, f.effusion_side
    if side is None:
        return _pick(rng, ("No pleural effusion.", "No pleural fluid."))
    if side == "bilateral":
        return _pick(rng, (f"{_cap(size)} bilateral pleural effusions.",
                           f"There are {size} pleural effusions on both sides."))
    return _pick(rng, (f"{_cap(size)} {side} pleural effusion.",
                       f"There is a {size} {side}-sided pleural effusion.",
                       f"{_cap(size)} amount of pleural fluid on the {side}."))


def _pleura(rng, f: Findings) -> list[str]:
    if f.effusion_side is None and f.pleural_thickening_side is None:
        return [_pick(rng, ("No pleural effusion or pleural thickening.", "No pleural effusion.",
                            "Pleural spaces are clear; no effusion."))]
    side = f.pleural_thickening_side
    if side is None:
        return [_effusion(rng, f), "No pleural thickening."]
    return [_effusion(rng, f), _pick(rng, (
        f"Nodular pleural thickening along the {side} hemithorax, suspicious for pleural involvement.",
        f"{_cap(side)} pleural thickening is noted, consistent with pleural involvement."))]


def _liver(rng, f: Findings) -> str:
    if not f.liver_mets:
        return _pick(rng, ("No focal liver lesion in the sections included.",
                           "The imaged liver is unremarkable."))
    sizes = sorted((m.size_mm for m in f.liver_mets), reverse=True)
    size, count = _size(rng, sizes[0]), _COUNT[len(sizes)]
    if len(sizes) == 1:
        return f"A {size} hypodense lesion in the liver, suspicious for metastasis."
    return _pick(rng, (f"{_cap(count)} hypodense liver lesions, the largest measuring {size}, "
                       "consistent with metastases.",
                       f"There are {count} hepatic metastases; the largest is {size}."))


def _metastases(rng, f: Findings) -> list[str]:
    if f.adrenal_met_side is None:
        adrenal = _pick(rng, ("Both adrenal glands are normal.", "Adrenal glands are unremarkable."))
    else:
        side, size = f.adrenal_met_side, _size(rng, f.adrenal_met_size_mm)
        adrenal = _pick(rng, (f"{_cap(side)} adrenal nodule measuring {size}, suspicious for metastasis.",
                              f"There is a {size} mass in the {side} adrenal gland, consistent with "
                              "metastasis."))
    return [_liver(rng, f), adrenal]


def _vessels(rng, f: Findings) -> list[str]:
    if f.vessel_involved is None:
        return [_pick(rng, ("Mediastinal vascular structures are of normal calibre.",
                            "The major mediastinal vessels are patent and not involved.",
                            "No compression or invasion of the major vessels."))]
    name = f.vessel_involved
    name = "superior vena cava (SVC)" if name == "superior vena cava" and rng.random() < 0.3 else name
    if f.vessel_effect == "compression":
        return [_pick(rng, (f"The tumour compresses the {name}.",
                            f"There is compression of the {name} by tumour tissue."))]
    return [_pick(rng, (f"Tumour tissue encases the {name}.", f"The {name} is encased by the mass."))]


def _skeleton(rng, f: Findings) -> list[str]:
    if f.bone_lesion_type is None:
        out = [_pick(rng, ("No lytic or sclerotic bone lesion.", "No destructive bone lesion is seen."))]
    else:
        kind, site, size = f.bone_lesion_type, f.bone_lesion_site, _size(rng, f.bone_lesion_size_mm)
        out = [_pick(rng, (f"A {size} {kind} lesion in the {site}, suspicious for metastasis.",
                           f"{_cap(kind)} metastasis in the {site} measuring {size}."))]
    if f.degenerative_spine:
        out.append(_pick(rng, ("Degenerative changes of the thoracic spine with osteophytes.",
                               "Spondylotic changes with marginal osteophytes in the thoracic vertebrae.")))
    if f.fracture_site is None:
        out.append(_pick(rng, ("No fracture.", "No acute fracture is identified.")))
    else:
        out.append(_pick(rng, (f"Healed fracture of the {f.fracture_site}.",
                               f"Old {f.fracture_site} fracture.")))
    return out


def _impressions(rng, f: Findings) -> str:
    parts = []
    if f.tumour_lobe:
        size = _size(rng, f.tumour_size_mm)
        parts.append(f"{_cap(f.tumour_lobe)} mass ({size}) consistent with primary lung carcinoma.")
    if f.nodes:
        parts.append(f"Lymphadenopathy: {', '.join(n.station for n in f.nodes)}.")
    if f.effusion_side:
        parts.append(f"{_cap(f.effusion_size)} {f.effusion_side} pleural effusion.")
    if f.pleural_thickening_side:
        parts.append(f"{_cap(f.pleural_thickening_side)} pleural involvement.")
    names = {"liver": "hepatic", "adrenal": f"{f.adrenal_met_side} adrenal",
             "bone": f"osseous ({f.bone_lesion_site})"}
    if f.metastatic_sites:
        parts.append(f"Metastases: {', '.join(names[site] for site in f.metastatic_sites)}.")
    if f.vessel_involved:
        parts.append(f"{_cap(f.vessel_effect)} of the {f.vessel_involved}.")
    normal = ("No evidence of malignancy.", "No acute cardiopulmonary abnormality.")
    return " ".join(parts) or _pick(rng, normal)


def make_report(findings: Findings, rng: np.random.Generator,
                slice_thickness_mm: float = 5.0) -> dict[str, str]:
    """The CT-RATE text fields of one case.

    Args:
        findings: the case; the report states exactly these findings.
        rng: generator for template choice and sentence order.
        slice_thickness_mm: reported in the technique (the z spacing).

    Returns:
        dict with keys ``ClinicalInformation_EN``, ``Technique_EN``, ``Findings_EN``, ``Impressions_EN``.
    """
    parts = (_tumour, _nodes, _pleura, _metastases, _vessels, _skeleton)
    sentences = [s for part in parts for s in part(rng, findings)]
    sentences += [str(s) for s in rng.choice(_NORMAL_FILLER, size=2, replace=False)]
    order = rng.permutation(len(sentences))
    contrast = "after intravenous contrast" if findings.contrast else "without intravenous contrast"
    return {
        "ClinicalInformation_EN": _pick(rng, _CLINICAL),
        "Technique_EN": f"Axial images of the thorax were obtained {contrast} with {slice_thickness_mm:g} mm "
                        "slice thickness.",
        "Findings_EN": " ".join(sentences[i] for i in order),
        "Impressions_EN": _impressions(rng, findings),
    }
