"""Grade extracted answers against known findings (the synthetic cohort's ground truth).

Answers are free text from either back-end, so grading parses each answer back into the slots of
:meth:`ctvl.data.synthetic.findings.Findings.slots` (``findings.csv``) and compares slot by slot: presence,
location (lobe / station / side / vessel / bone site), type, and sizes within ``size_tol_mm``
(1 mm). A slot whose truth is absent is correct only when the answer does not claim one, so
hallucinated findings count as errors. Negated clauses ("No pleural effusion", "... was not
observed") never assert a finding.

Entry points:
    parse_answer(question_id, text) -> dict[slot, value]
    evaluate_extraction(pairs, findings_truth, size_tol_mm=1.0) -> ExtractionScores
    run_evaluate_vqa(out_dir, findings_csv) -> ExtractionScores (also written as CSV next to the build)

Example:
    >>> parse_answer("tumor", "A 2.5 x 1.8 cm spiculated mass in the upper lobe of the right lung.")
    {'tumour_present': True, 'tumour_lobe': 'right upper lobe', 'tumour_size_mm': 25.0}
    >>> parse_answer("pleura", "No pleural effusion-thickening was detected.")["effusion_present"]
    False
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ctvl.vqa.answer import is_not_mentioned
from ctvl.vqa.extract_rules import split_sentences

logger = logging.getLogger(__name__)

QUESTION_SLOTS: dict[str, tuple[str, ...]] = {
    "tumor": ("tumour_present", "tumour_lobe", "tumour_size_mm"),
    "lymph_nodes": ("nodes_present", "node_stations", "node_short_axis_mm"),
    "pleura": (
        "effusion_present",
        "effusion_side",
        "effusion_size",
        "pleural_thickening_present",
        "pleural_thickening_side",
    ),
    "metastases": (
        "metastases_present",
        "metastatic_sites",
        "liver_met_size_mm",
        "adrenal_met_side",
        "adrenal_met_size_mm",
    ),
    "vessels": ("vessel_involvement_present", "vessel_involved", "vessel_effect"),
    "skeleton": (
        "bone_lesion_present",
        "bone_lesion_type",
        "bone_lesion_site",
        "bone_lesion_size_mm",
        "degenerative_spine",
        "fracture_present",
        "fracture_site",
    ),
}
"""Graded slots of each of the six questions (names of ``Findings.slots()``)."""

STATIONS = (
    "right paratracheal",
    "left paratracheal",
    "aortopulmonary window",
    "subcarinal",
    "right hilar",
    "left hilar",
)
_STATION_ALIASES = {
    r"\bap window\b|\baorto-?pulmonary\b": "aortopulmonary window",
    r"\bsub-?carinal\b": "subcarinal",
}
VESSEL_NAMES = {
    "superior vena cava": r"superior vena cava|\bsvc\b",
    "pulmonary artery": r"pulmonary (artery|arteries|trunk)|\bpa\b",
    "aorta": r"\baort(a|ic)\b",
}
_NEG = re.compile(
    r"\b(no|not|without|absent|absence|negative|neither|nor|free of|unremarkable|none)\b|n't\b", re.I
)
_CLAUSE = re.compile(
    r",\s*(?:but|while|whereas|however)\b|;\s*|\s+(?:but|whereas|however)\s+|,\s+(?=no\b)", re.I
)
_SIZE = re.compile(
    r"(\d+(?:[.,]\d+)?)(?:\s*(?:x|×|\*|by)\s*(\d+(?:[.,]\d+)?))?(?:\s*(?:x|×|\*|by)\s*(\d+(?:[.,]\d+)?))?"
    r"\s*-?\s*(mm|millimet(?:er|re)s?|cm|centimet(?:er|re)s?)\b",
    re.I,
)


def clauses(text: str) -> list[tuple[str, bool, str]]:
    """``[(clause, negated, sentence)]`` over the sentences of ``text``."""
    out = []
    for sentence in split_sentences(text or ""):
        for clause in _CLAUSE.split(sentence):
            if clause and clause.strip():
                out.append((clause.strip(), bool(_NEG.search(clause)), sentence))
    return out


def sizes_mm(text: str) -> list[list[float]]:
    """Every size in ``text`` as a list of dimensions in mm ("2.5 x 1.8 cm" -> [25.0, 18.0])."""
    out = []
    for m in _SIZE.finditer(text):
        factor = 10.0 if m.group(4).lower().startswith("c") else 1.0
        out.append([round(float(g.replace(",", ".")) * factor, 2) for g in m.groups()[:3] if g])
    return out


def _positive(text: str, pattern: str, sentences: bool = False) -> list[str]:
    """Non-negated clauses matching ``pattern`` (or, with ``sentences``, the sentences holding them)."""
    hits = [(c, s) for c, neg, s in clauses(text) if not neg and re.search(pattern, c, re.I)]
    return list(dict.fromkeys(s for _, s in hits)) if sentences else [c for c, _ in hits]


def _side(text: str) -> Optional[str]:
    t = text.lower()
    if re.search(r"\b(bilateral(ly)?|both)\b", t) or ("right" in t and "left" in t):
        return "bilateral"
    return "right" if "right" in t else "left" if "left" in t else None


def find_lobe(text: str) -> Optional[str]:
    """Lobe named in ``text`` ("upper lobe of the right lung", "right lung upper lobe", "RUL", "lingula")."""
    t = text.lower()
    abbrev = {
        "rul": "right upper lobe",
        "rml": "right middle lobe",
        "rll": "right lower lobe",
        "lul": "left upper lobe",
        "lll": "left lower lobe",
    }
    m = re.search(r"\b(rul|rml|rll|lul|lll)\b", t)
    if m:
        return abbrev[m.group(1)]
    if "lingula" in t:
        return "left upper lobe"
    m = re.search(r"\b(right|left)\b[\w\s]{0,12}?\b(upper|middle|lower)\s+lobe", t) or re.search(
        r"\b(upper|middle|lower)\s+lobe\s+of\s+the\s+(right|left)\b", t
    )
    if not m:
        return None
    a, b = m.groups()
    side, level = (a, b) if a in ("right", "left") else (b, a)
    return f"{side} {level} lobe"


def _first_size(clauses_: Iterable[str], pick=max) -> Optional[float]:
    for c in clauses_:
        found = sizes_mm(c)
        if found:
            return pick(found[0])
    return None


def _parse_tumor(text: str) -> dict:
    hits = _positive(text, r"\b(mass|tumou?r|neoplasm|carcinoma|malignan\w*|lesion|nodule)\b")
    return {
        "tumour_present": bool(hits),
        "tumour_lobe": next((find_lobe(c) for c in hits if find_lobe(c)), None),
        "tumour_size_mm": _first_size(hits),
    }


def _stations(clause: str) -> list[tuple[int, str]]:
    t = clause.lower()
    found = [(m.start(), s) for s in STATIONS for m in re.finditer(re.escape(s), t)]
    for pattern, name in _STATION_ALIASES.items():
        found += [(m.start(), name) for m in re.finditer(pattern, t) if name not in {s for _, s in found}]
    return sorted(found)


def _parse_nodes(text: str) -> dict:
    hits = _positive(text, r"\b(lymph|nodes?|lymphadenopathy|adenopathy)\b")
    pairs: dict[str, float] = {}
    for c in hits:
        stations = _stations(c)
        sizes = [(m.start(), m) for m in _SIZE.finditer(c)]
        for pos, station in stations:
            after = [m for p, m in sizes if p >= pos] or [m for _, m in sizes]
            if after and station not in pairs:
                dims = sizes_mm(after[0].group(0))[0]
                short = re.search(r"short[- ]axis", c[after[0].start() : after[0].end() + 20], re.I)
                pairs[station] = dims[0] if short or len(dims) == 1 else min(dims)
            pairs.setdefault(station, None)
    stations = sorted(pairs)
    return {
        "nodes_present": bool(hits),
        "node_stations": "; ".join(stations) or None,
        "node_short_axis_mm": "; ".join(_fmt(pairs[s]) for s in stations) or None,
    }


def _fmt(v) -> str:
    return "?" if v is None else f"{float(v):g}"


def _parse_pleura(text: str) -> dict:
    eff = _positive(text, r"(?<!pericardial )\beffusions?\b|\bhydrothorax\b|\bpleural fluid\b")
    thick = _positive(text, r"\bpleural\b.*\bthicken\w*|\bthicken\w*.*\bpleura")
    size = next(
        (m.group(1).lower() for c in eff for m in [re.search(r"\b(small|moderate|large)\b", c, re.I)] if m),
        None,
    )
    return {
        "effusion_present": bool(eff),
        "effusion_side": _side(" ".join(eff)) if eff else None,
        "effusion_size": size,
        "pleural_thickening_present": bool(thick),
        "pleural_thickening_side": _side(" ".join(thick)) if thick else None,
    }


_LESION = r"(lesions?|mass(es)?|nodules?|metasta\w*|deposits?)"


def _parse_metastases(text: str) -> dict:
    liver = _positive(text, rf"\b(liver|hepatic)\b.*\b{_LESION}|\b{_LESION}.*\b(liver|hepatic)\b")
    adrenal = _positive(text, rf"\badrenal\b.*\b{_LESION}|\b{_LESION}.*\badrenal\b")
    bone = _positive(
        text,
        r"\b(bone|bony|osseous|skelet\w*|vertebra\w*|ribs?|sternum|spine)\b.*\b(metasta\w*|lytic|sclerotic|blastic)"
        r"|\b(metasta\w*|lytic|sclerotic|blastic)\b.*\b(bone|bony|osseous|skelet\w*|vertebra\w*|ribs?|sternum|spine)\b",
    )
    sites = [name for name, hits in (("liver", liver), ("adrenal", adrenal), ("bone", bone)) if hits]
    liver_sizes = [max(d) for c in liver for d in sizes_mm(c)] or [
        max(d) for c in _positive(text, r"\b(liver|hepatic)\b", sentences=True) for d in sizes_mm(c)
    ]
    return {
        "metastases_present": bool(sites),
        "metastatic_sites": "; ".join(sites) or None,
        "liver_met_size_mm": max(liver_sizes, default=None),
        "adrenal_met_side": _side(" ".join(adrenal)) if adrenal else None,
        "adrenal_met_size_mm": _first_size(adrenal),
    }


def _parse_vessels(text: str) -> dict:
    any_vessel = "|".join(VESSEL_NAMES.values())
    hits = _positive(
        text,
        rf"({any_vessel}).*\b(compress\w*|encas\w*|invad\w*|invasion|involv\w*|narrow\w*|abut\w*)"
        rf"|\b(compress\w*|encas\w*|invad\w*|invasion|involv\w*|narrow\w*|abut\w*).*({any_vessel})",
    )
    joined = " ".join(hits)
    vessel = next((name for name, p in VESSEL_NAMES.items() if re.search(p, joined, re.I)), None)
    effect = (
        "compression"
        if re.search(r"compress|narrow", joined, re.I)
        else ("encasement" if re.search(r"encas", joined, re.I) else None)
    )
    return {"vessel_involvement_present": bool(hits), "vessel_involved": vessel, "vessel_effect": effect}


def _bone_site(text: str) -> Optional[str]:
    m = re.search(r"\b(T|Th)\s?(\d{1,2})\b", text)
    if m and re.search(r"vertebra", text, re.I):
        return f"T{int(m.group(2))} vertebral body"
    m = re.search(r"\b(right|left)\s+(\d{1,2})(?:st|nd|rd|th)\s+rib\b", text, re.I)
    return f"{m.group(1).lower()} {m.group(2)}{_ordinal_suffix(int(m.group(2)))} rib" if m else None


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _parse_skeleton(text: str) -> dict:
    lesion = _positive(text, r"\b(lytic|sclerotic|blastic|osteolytic|osteoblastic)\b")
    degen = _positive(text, r"\bdegenerative|\bosteophyt|\bspondylo")
    fracture = _positive(text, r"\bfractur")
    kind = None
    if lesion:
        kind = "sclerotic" if re.search(r"sclerotic|blastic", lesion[0], re.I) else "lytic"
    return {
        "bone_lesion_present": bool(lesion),
        "bone_lesion_type": kind,
        "bone_lesion_site": next((s for c in lesion if (s := _bone_site(c))), None),
        "bone_lesion_size_mm": _first_size(lesion),
        "degenerative_spine": bool(degen),
        "fracture_present": bool(fracture),
        "fracture_site": next((s for c in fracture if (s := _bone_site(c))), None),
    }


_PARSERS = {
    "tumor": _parse_tumor,
    "lymph_nodes": _parse_nodes,
    "pleura": _parse_pleura,
    "metastases": _parse_metastases,
    "vessels": _parse_vessels,
    "skeleton": _parse_skeleton,
}


def parse_answer(question_id: str, text: str) -> dict[str, Any]:
    """Slots asserted by one answer (a "not mentioned" answer asserts nothing: everything absent)."""
    if question_id not in _PARSERS:
        raise ValueError(f"no slot parser for question {question_id!r}; known: {sorted(_PARSERS)}")
    return _PARSERS[question_id]("" if is_not_mentioned(text) else text)


# --------------------------------------------------------------------------- grading


def _missing(v) -> bool:
    return (
        v is None
        or (isinstance(v, float) and v != v)
        or (isinstance(v, str) and v.strip().lower() in ("", "nan", "none"))
    )


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return False if _missing(v) else bool(v)


def _split(v) -> list[str]:
    return [] if _missing(v) else [s.strip().lower() for s in str(v).split(";") if s.strip()]


def _node_map(stations, sizes) -> dict[str, Optional[float]]:
    names, values = _split(stations), _split(sizes)
    values = [None if v == "?" else float(v) for v in values] + [None] * (len(names) - len(values))
    return dict(zip(names, values))


def _close(a, b, tol: float) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    return abs(float(a) - float(b)) <= tol + 1e-9


def compare_slot(slot: str, truth: Mapping, pred: Mapping, tol: float = 1.0) -> bool:
    """Whether the predicted slot value agrees with the truth (rules in the module docstring)."""
    t, p = truth.get(slot), pred.get(slot)
    if slot.endswith("_present") or slot == "degenerative_spine":
        return _as_bool(t) == _as_bool(p)
    if slot == "node_stations" or slot == "metastatic_sites":
        return sorted(_split(t)) == sorted(_split(p))
    if slot == "node_short_axis_mm":
        tm, pm = _node_map(truth.get("node_stations"), t), _node_map(pred.get("node_stations"), p)
        return tm.keys() == pm.keys() and all(_close(tm[k], pm[k], tol) for k in tm)
    if slot.endswith("_mm"):
        return _close(t, p, tol)
    if _missing(t) or _missing(p):
        return _missing(t) and _missing(p)
    return str(t).strip().lower() == str(p).strip().lower()


def case_key(case_id) -> str:
    """Id used to match answers with truth: "train_1_a_1.nii.gz" (CT-RATE VolumeName) == "train_1_a_1"."""
    return re.sub(r"\.nii(\.gz)?$", "", str(case_id).strip())


def _answers_by_case(pairs) -> dict[str, dict[str, str]]:
    """Accepts per-volume records (``{"id", "answers": [...]}``), pair rows/frames with
    ``case_id``/``question_id``/``answer`` columns, or ``{case_id: {question_id: answer}}``."""
    if isinstance(pairs, Mapping):
        return {case_key(k): dict(v) for k, v in pairs.items()}
    if hasattr(pairs, "to_dict") and hasattr(pairs, "columns"):
        pairs = pairs.to_dict("records")
    out: dict[str, dict[str, str]] = {}
    for rec in pairs:
        if "answers" in rec:
            answers = {a["question_id"]: a["answer"] for a in rec["answers"]}
            out.setdefault(case_key(rec["id"]), {}).update(answers)
        else:
            out.setdefault(case_key(rec["case_id"]), {})[rec["question_id"]] = rec["answer"]
    return out


def _truth_by_case(findings_truth) -> dict[str, dict]:
    """Accepts ``Findings`` objects, slot dicts, or a frame read from ``findings.csv``."""
    if hasattr(findings_truth, "to_dict") and hasattr(findings_truth, "columns"):
        findings_truth = findings_truth.to_dict("records")
    rows = [f.slots() if hasattr(f, "slots") else dict(f) for f in findings_truth]
    return {case_key(r["case_id"]): r for r in rows}


@dataclass
class ExtractionScores:
    """Grading result: one row per (case, question, slot) plus per-question summaries."""

    details: Any
    """DataFrame: case_id, question_id, slot, truth, predicted, correct."""
    per_question: Any
    """DataFrame indexed by question_id: slot_accuracy, answer_accuracy (every slot right), n_cases."""
    slot_accuracy: float
    """Fraction of all graded slots that are correct."""
    missing_cases: list
    """Truth cases with no extracted answers (graded as all-absent)."""


def evaluate_extraction(
    pairs, findings_truth, size_tol_mm: float = 1.0, question_map: Optional[Mapping[str, str]] = None
) -> ExtractionScores:
    """Per-question accuracy of extracted answers against known findings.

    Args:
        pairs: extracted answers (see :func:`_answers_by_case` for accepted forms).
        findings_truth: ``Findings`` list, slot dicts or the ``findings.csv`` frame (``case_id`` keyed).
        size_tol_mm: sizes within this many mm count as correct.
        question_map: your question id -> one of ``QUESTION_SLOTS`` (identity by default).

    Returns:
        ExtractionScores.
    """
    import pandas as pd

    answers, truth = _answers_by_case(pairs), _truth_by_case(findings_truth)
    qmap = dict(question_map or {q: q for q in QUESTION_SLOTS})
    rows, missing = [], [c for c in truth if c not in answers]
    for case_id, t in truth.items():
        for qid, canonical in qmap.items():
            pred = parse_answer(canonical, answers.get(case_id, {}).get(qid, ""))
            for slot in QUESTION_SLOTS[canonical]:
                rows.append(
                    (
                        case_id,
                        qid,
                        slot,
                        t.get(slot),
                        pred.get(slot),
                        compare_slot(slot, t, pred, size_tol_mm),
                    )
                )
    details = pd.DataFrame(rows, columns=["case_id", "question_id", "slot", "truth", "predicted", "correct"])
    by_answer = details.groupby(["question_id", "case_id"])["correct"].all().groupby("question_id")
    per_q = pd.DataFrame(
        {
            "slot_accuracy": details.groupby("question_id")["correct"].mean(),
            "answer_accuracy": by_answer.mean(),
            "n_cases": by_answer.size(),
        }
    )
    return ExtractionScores(details, per_q.loc[list(qmap)], float(details["correct"].mean()), missing)


def run_evaluate_vqa(out_dir: str | Path, findings_truth, size_tol_mm: float = 1.0) -> ExtractionScores:
    """Grade the build in ``out_dir`` (its ``vqa_volumes.jsonl``) against known findings.

    Args:
        out_dir: a ``run_build_vqa`` output folder.
        findings_truth: path of a synthetic cohort's ``findings.csv``, or anything :func:`evaluate_extraction` takes.
        size_tol_mm: size tolerance.

    Returns:
        ExtractionScores; also written as ``evaluation_per_question.csv`` and ``evaluation_details.csv``.
    """
    import pandas as pd

    from ctvl.vqa.build import JOURNAL, read_journal

    out_dir = Path(out_dir)
    if isinstance(findings_truth, (str, Path)):
        findings_truth = pd.read_csv(findings_truth, keep_default_na=True)
    scores = evaluate_extraction(read_journal(out_dir / JOURNAL), findings_truth, size_tol_mm)
    scores.per_question.to_csv(out_dir / "evaluation_per_question.csv")
    scores.details.to_csv(out_dir / "evaluation_details.csv", index=False)
    logger.info("VQA slot accuracy %.4f\n%s", scores.slot_accuracy, scores.per_question.to_string())
    return scores
