"""LLM back-end: loading a local tiny chat model, prompt formats, parsing, retries, fallbacks, truncation."""

import json
import logging

import pytest

from ctvl.vqa.answer import compose_report
from ctvl.data.questions import QuestionSet
from ctvl.vqa.config import VQAConfig
from ctvl.vqa.extract_llm import build_llm_extractor, load_llm_extractor, parse_llm_output
from ctvl.vqa.extract_rules import RuleExtractor

QS = QuestionSet()


@pytest.fixture
def reports(report_cases):
    return [compose_report(c[1], c[2]) for c in report_cases[:3]]


@pytest.fixture
def extractor(tiny_llm_dir):
    return load_llm_extractor(tiny_llm_dir, max_new_tokens=4, max_attempts=2, batch_size=2)


def full_reply(**overrides):
    return json.dumps({**{q: f"answer {q}" for q in QS.ids}, **overrides})


def test_tiny_chat_model_runs_end_to_end_and_falls_back_to_rules(tiny_llm_dir, reports, caplog):
    cfg = VQAConfig(
        backend="llm",
        llm_path=str(tiny_llm_dir),
        llm_max_new_tokens=4,
        llm_max_attempts=2,
        llm_max_report_tokens=40,
        llm_batch_size=2,
    )
    llm = build_llm_extractor(cfg)
    assert llm.prompt_format == "chat_template" and llm.tokenizer.padding_side == "left"
    with caplog.at_level(logging.WARNING):
        got = llm.extract(reports[:2], QS)
    rules = RuleExtractor().extract(reports[:2], QS)
    assert [[a.text for a in r] for r in got] == [[a.text for a in r] for r in rules]  # random model: no JSON
    prov = got[0][0].provenance
    assert prov.backend == "rules" and prov.fallback and prov.attempts == 2 and prov.truncated
    assert prov.model == tiny_llm_dir.name and "no JSON object" in prov.reason
    assert "truncated to 40" in caplog.text


def test_prompt_formats(extractor, tiny_llm_dir):
    assert extractor.format_prompt("hi") == "<s>[user] hi</s>[assistant] "
    mistral = load_llm_extractor(tiny_llm_dir, prompt_format="mistral")
    assert mistral.format_prompt("hi") == "<s>[INST] hi [/INST]"
    assert (
        mistral.tokenizer("<s>[INST]", add_special_tokens=False)["input_ids"][0]
        == mistral.tokenizer.bos_token_id
    )
    mistral.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        type(mistral)(mistral.model, mistral.tokenizer, prompt_format="chat_template")


def test_retry_then_fallback_for_the_slot_still_missing(extractor, reports, monkeypatch):
    calls = []

    def fake_generate(messages):
        calls.append(messages)
        if len(calls) == 1:
            return [
                '{"tumor": "unterminated',
                full_reply(vessels=None, skeleton="N/A").replace('"pleura"', '"pleurae"'),
            ]
        return [
            f"Here is the JSON: ```json\n{full_reply()}\n```",
            full_reply(pleura=None).replace('"pleura"', '"x"'),
        ]

    monkeypatch.setattr(extractor, "generate", fake_generate)
    got = extractor.extract(reports[:2], QS)
    assert len(calls) == 2 and "previous reply could not be used" in calls[1][0]
    assert "previous reply could not be used" not in calls[0][0]
    first = {a.question_id: a for a in got[0]}
    assert all(a.provenance.backend == "llm" and a.provenance.attempts == 2 for a in got[0])
    assert first["tumor"].text == "answer tumor"
    second = {a.question_id: a for a in got[1]}
    assert (
        second["vessels"].text == QS.not_mentioned and second["skeleton"].text == QS.not_mentioned
    )  # null, "N/A"
    assert second["pleura"].provenance.fallback and second["pleura"].provenance.backend == "rules"
    assert second["pleura"].text == RuleExtractor().extract([reports[1]], QS)[0][2].text
    assert "missing key 'pleura'" in second["pleura"].provenance.reason
    assert not any(a.provenance.fallback for q, a in second.items() if q != "pleura")


def test_valid_first_reply_needs_one_attempt_and_empty_reports_no_call(extractor, reports, monkeypatch):
    seen = []
    monkeypatch.setattr(extractor, "generate", lambda msgs: seen.extend(msgs) or [full_reply()] * len(msgs))
    got = extractor.extract(["", reports[0], "   \n "], QS)
    assert len(seen) == 1 and reports[0].split()[1] in seen[0]
    assert [a.text for a in got[1]] == [f"answer {q}" for q in QS.ids]
    assert got[1][0].provenance.attempts == 1 and not got[1][0].provenance.fallback
    for empty in (got[0], got[2]):
        assert {a.text for a in empty} == {QS.not_mentioned} and empty[0].provenance.reason == "empty report"


def test_generation_errors_fall_back_without_stopping(extractor, reports, monkeypatch):
    def boom(messages):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(extractor, "generate", boom)
    got = extractor.extract(reports[:1], QS)
    assert all(a.provenance.fallback for a in got[0])
    assert "generation error: RuntimeError: CUDA out of memory" in got[0][0].provenance.reason


@pytest.mark.parametrize(
    "reply, answers, problem",
    [
        (
            '{"Tumor": "A mass.", "lymph nodes": ["RUL", 12]}',
            {"tumor": "A mass.", "lymph_nodes": "RUL; 12"},
            None,
        ),
        ("no json here", {}, "no JSON object"),
        ('{"tumor": "' + "x" * 1200 + '"}', {}, "longer than"),
        ('[1, 2] then {"tumor": 25}', {"tumor": "25"}, "missing key"),
    ],
)
def test_parse_llm_output(reply, answers, problem):
    got, problems = parse_llm_output(reply, ["tumor", "lymph_nodes"], "NM")
    assert got == answers
    assert problems == [] if problem is None else any(problem in p for p in problems)


def test_loading_refuses_non_local_paths(tmp_path):
    with pytest.raises(ValueError, match="not a local model directory"):
        load_llm_extractor(tmp_path / "mistralai/Mistral-7B-Instruct-v0.2")
    with pytest.raises(ValueError, match="llm_path"):
        VQAConfig(backend="llm")
