"""Rule back-end: sentence splitting, retrieval per question, sections, bad input."""

import pytest

from ctvl.vqa.answer import AnswerExtractor, compose_report, normalise_answer, split_sections
from ctvl.data.questions import QuestionSet
from ctvl.vqa.extract_rules import RuleExtractor, split_sentences

QS = QuestionSet()


def answers(report: str, **kw) -> dict[str, str]:
    return {a.question_id: a.text for a in RuleExtractor(**kw).extract([report], QS)[0]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A 2.5 cm mass. No effusion.", ["A 2.5 cm mass.", "No effusion."]),
        ("Measures approx. 3 cm. Next.", ["Measures approx. 3 cm.", "Next."]),
        (
            "When examined in the lung parenchyma window; A nodule was seen.",
            ["When examined in the lung parenchyma window", "A nodule was seen."],
        ),
        ("Line one\nLine two.\n\n- Bullet three", ["Line one", "Line two.", "Bullet three"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_every_answer_comes_from_the_right_sentences(report_cases):
    _, findings, impression, _ = report_cases[0]
    got = answers(compose_report(findings, impression))
    assert got["tumor"].startswith("A spiculated mass measuring 34 x 27 mm")
    assert "lymph" not in got["tumor"]
    assert got["lymph_nodes"].startswith("Enlarged lymph nodes were observed in the right paratracheal")
    assert got["pleura"] == "A small right pleural effusion was detected."
    assert got["metastases"] == QS.not_mentioned
    assert got["vessels"] == "The mass compresses the superior vena cava."
    assert got["skeleton"] == "Degenerative changes were observed in the thoracic spine."


def test_impression_is_used_only_when_findings_say_nothing():
    got = answers(
        compose_report("A 20 mm mass in the left lower lobe.", "Lung mass. Right pleural effusion.")
    )
    assert got["tumor"] == "A 20 mm mass in the left lower lobe."  # not the impression's "Lung mass."
    assert got["pleura"] == "Right pleural effusion."  # only the impression mentions the pleura


def test_impression_only_empty_and_non_ascii_reports():
    assert (
        answers(compose_report("", "Mass in the right upper lobe."))["tumor"]
        == "Mass in the right upper lobe."
    )
    assert set(answers("").values()) == {QS.not_mentioned}
    got = answers(
        "Kalp normal (Türkçe). An irregular 2,8\u00a0cm mass \u2013 ﬁbrotic \u2013 in the right middle lobe."
    )
    assert got["tumor"] == "An irregular 2,8 cm mass \u2013 fibrotic \u2013 in the right middle lobe."


def test_pericardial_effusion_is_not_a_pleural_answer():
    got = answers("Pericardial effusion was observed. No pleural or pericardial effusion on the left.")
    assert got["pleura"] == "No pleural or pericardial effusion on the left."


def test_max_sentences_and_provenance():
    report = " ".join(f"Rib fracture number {i}." for i in range(6))
    ans = RuleExtractor(max_sentences=2).extract([report], QS)[0]
    skeleton = next(a for a in ans if a.question_id == "skeleton")
    assert skeleton.text == "Rib fracture number 0. Rib fracture number 1."
    assert skeleton.provenance.backend == "rules" and skeleton.provenance.templates == "chest_ct@1.0"
    assert isinstance(RuleExtractor(), AnswerExtractor)


def test_sections_and_not_mentioned_normalisation():
    assert split_sections("IMPRESSION: b\nFindings: a") == ("a", "b")
    assert split_sections("plain text") == ("plain text", "")
    for variant in (
        "",
        None,
        "N/A",
        "Not mentioned.",
        "not reported in the report",
        "No information given.",
        "Unknown",
        ["", None],
    ):
        assert normalise_answer(variant, "NM") == "NM", variant
    for answer in ("No pleural effusion.", "None of the lymph nodes is enlarged.", "Not enlarged."):
        assert normalise_answer(answer, "NM") == answer
    assert normalise_answer(["RUL mass", "24 mm"], "NM") == "RUL mass; 24 mm"


def test_emphysema_answers_none_of_the_six_questions():
    # Chest-CT reports often describe emphysema, which none of the six questions asks about; a
    # "subpleural" or lobar emphysema sentence is neither a pleural nor a tumour answer.
    report = ("Subpleural paraseptal emphysema in both upper lobes. "
              "Bullous emphysematous changes in the right upper lobe, the largest bulla measuring 4 cm. "
              "A 2.5 cm mass in the right upper lobe.")
    got = answers(report)
    assert got["tumor"] == "A 2.5 cm mass in the right upper lobe."
    assert not any("emphysema" in text.lower() for text in got.values()), got
