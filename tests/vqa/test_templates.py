"""Question sets: the shipped YAML is the paper's six questions; editing, validation, LLM-proposed candidates."""

from pathlib import Path

import pytest
import yaml

from ctvl.data.questions import QuestionSet, QuestionSpec, load_question_set, save_question_set
from ctvl.vqa.templates import propose_question_templates, write_candidate_templates

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "vqa" / "questions_chest_ct.yaml"
PAPER = [
    "What is the location and size of the primary lung tumor?",
    "Which lymph nodes are involved, and what are their size and location?",
    "Is there any pleural involvement or effusion present?",
    "Are metastases or involvement of other organs observed?",
    "Are major vessels involved or compressed?",
    "Are there skeleton/bone changes on the scan?",
]


def test_shipped_yaml_holds_the_papers_six_questions_and_equals_the_defaults():
    qs = load_question_set(SHIPPED)
    assert [q.text for q in qs.questions] == PAPER
    assert qs == QuestionSet() == load_question_set(None)
    assert qs.tag == "chest_ct@1.0"


def test_edited_copy_round_trips(tmp_path):
    edited = QuestionSet(
        name="inspect",
        version="2",
        questions=(QuestionSpec("pe", "Is there a pulmonary embolism?", include=(r"\bembol",)),),
    )
    save_question_set(edited, tmp_path / "q.yaml")
    assert load_question_set(tmp_path / "q.yaml") == edited


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"questions": [{"id": "Tumor", "text": "x?"}]}, "must match"),
        ({"questions": [{"id": "a", "text": "x?"}, {"id": "a", "text": "y?"}]}, "unique"),
        ({"questions": [{"id": "a", "text": "x?", "include": ["(unclosed"]}]}, "invalid regular expression"),
        ({"questions": [{"id": "a", "txt": "x?"}]}, "txt"),
        ({"questions": []}, "at least one"),
    ],
)
def test_invalid_question_sets_are_refused_naming_the_file(tmp_path, doc, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match) as err:
        load_question_set(path)
    assert "bad.yaml" in str(err.value)


def test_llm_proposed_candidates_are_parsed_and_written_for_review(tmp_path):
    prompts = []

    def generate(messages):
        prompts.extend(messages)
        return [
            "Here you go:\n1. Is there a lung mass?\n2) Where are enlarged lymph nodes?\n- Is there a mass?\n"
            "3. Is there a lung mass?\nThanks"
        ]

    found = propose_question_templates(["mass", "lobe", "node"], generate, n=2)
    assert found == ["Is there a lung mass?", "Where are enlarged lymph nodes?"]
    assert "mass, lobe, node" in prompts[0] and "3 most frequent" in prompts[0]
    doc = yaml.safe_load(write_candidate_templates(found, tmp_path / "cand.yaml", ["mass"]).read_text())
    assert [c["text"] for c in doc["candidates"]] == found and all(
        c["approve"] is None for c in doc["candidates"]
    )
    with pytest.raises(ValueError, match="no words"):
        propose_question_templates([], generate)
