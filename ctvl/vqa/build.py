"""``ctvl build-vqa``: a table of radiology reports -> clinician-reviewable VQA data (paper section 2.2).

Steps (all outputs under ``out_dir``):

1. ``word_frequencies.csv`` / ``.png`` -- the top medical words over all reports;
   ``template_candidates.yaml`` -- LLM-proposed questions from them (``propose_templates``).
2. ``vqa_volumes.jsonl`` -- the journal and per-volume view: one record per volume with every answer and
   its provenance, appended (and flushed) after each chunk; a rerun skips volumes already in it, so a
   killed job resumes where it stopped. A half-written last line is discarded on resume.
3. ``vqa_llava.jsonl`` -- LLaVA-style records, one per (volume, question), in input order:
   ``{"id", "image", "conversations": [{"from": "human", "value": "<clinical>\\n<image>\\n<question>"},
   {"from": "gpt", "value": "<answer>"}]}``.
4. ``review.csv`` (``approve`` / ``edited_answer``), ``errors.csv`` (``case_id,file,stage,reason``: empty
   reports, failed chunks, duplicate ids), ``build_settings.json`` and ``summary.json``.
5. ``prompts.yaml`` -- the clinical template itself and the questions the prompts were rendered with
   (:class:`ctvl.config.PromptConfig`); training saves it with the model, so inference rebuilds the same
   prompts.

Deterministic: rule answers are a pure function of the report; LLM answers are greedy, and chunks are cut at
fixed input positions so a resumed run forms the same batches as an uninterrupted one (bf16 logits depend on
the batch).

After review, :func:`run_import_review` writes ``vqa_llava_reviewed.jsonl`` and ``vqa_volumes_reviewed.jsonl``.

Entry points:
    run_build_vqa(reports, out_dir, cfg, *, clinical=None, extractor=None, resume=True, progress=True) -> BuildSummary
    run_import_review(out_dir, review_csv, drop_unreviewed=False) -> Path
    read_reports(path) -> DataFrame
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ctvl.data.clinical_text import build_clinical_texts, load_clinical_template
from ctvl.data.model_prompts import make_prompt_config, write_prompt_config
from ctvl.data.questions import QuestionSet, load_question_set
from ctvl.utils.atomic import atomic_open
from ctvl.utils.errors import ErrorLog
from ctvl.vqa.answer import AnswerExtractor, compose_report, split_sections
from ctvl.vqa.config import VQAConfig
from ctvl.vqa.review import apply_review, export_review_csv, load_review_csv, pair_id

logger = logging.getLogger(__name__)

JOURNAL, LLAVA, REVIEW, ERRORS = "vqa_volumes.jsonl", "vqa_llava.jsonl", "review.csv", "errors.csv"
STAGE = "vqa"


@dataclass
class BuildSummary:
    """What one ``run_build_vqa`` call did."""

    n_reports: int = 0
    """Rows in the input table (unique ids)."""
    n_resumed: int = 0
    """Volumes already in the journal, skipped."""
    n_processed: int = 0
    """Volumes answered in this call."""
    n_empty: int = 0
    """Volumes with neither findings nor impression (no pairs; listed in errors.csv)."""
    n_failed: int = 0
    """Volumes whose extraction raised (not journaled: a rerun retries them; listed in errors.csv)."""
    n_pairs: int = 0
    """Records in ``vqa_llava.jsonl``."""
    n_fallback_slots: int = 0
    """Answers where the LLM failed and the rule answer was used (this call)."""
    n_truncated: int = 0
    """Reports truncated for the LLM (this call)."""
    paths: dict = field(default_factory=dict)
    """Output name -> path."""


def read_reports(path: str | Path):
    """Read a report table (``.csv``, ``.parquet``, ``.jsonl`` or ``.xlsx``) with every column as text."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"report table {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    if suffix in (".xlsx", ".xls"):
        return pd.read_excel(path, dtype=str, keep_default_na=False)
    raise ValueError(f"report table {str(path)!r}: unsupported format {suffix!r} (csv, parquet, jsonl, xlsx)")


# ------------------------------------------------------------------------ preparation


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _prepare(reports, cfg: VQAConfig, clinical, errors: ErrorLog) -> list[dict]:
    """Input table -> ``[{id, image, report, clinical_text}]`` in input order (duplicate ids dropped)."""
    for col in (cfg.id_column, cfg.findings_column, cfg.impressions_column):
        if col not in reports.columns:
            raise ValueError(
                f"report table has no column {col!r} (columns: {list(reports.columns)}); "
                "set VQAConfig.id_column / findings_column / impressions_column"
            )
    frame = reports
    if clinical is not None:
        if cfg.id_column not in clinical.columns:
            raise ValueError(f"clinical table has no id column {cfg.id_column!r}")
        frame = reports.merge(clinical, on=cfg.id_column, how="left", suffixes=("", "_clinical"))
    texts = None
    if cfg.clinical_template:
        texts = build_clinical_texts(frame, load_clinical_template(cfg.clinical_template)).tolist()
    items, seen = [], set()
    for i, row in enumerate(frame.to_dict("records")):
        vid = _text(row[cfg.id_column])
        if not vid or vid in seen:
            errors.add(
                vid or f"row {i}", "", STAGE, "missing id" if not vid else "duplicate id (first row kept)"
            )
            continue
        seen.add(vid)
        items.append(
            {
                "id": vid,
                "image": _text(row.get(cfg.image_column)) or vid,
                "report": compose_report(_text(row[cfg.findings_column]), _text(row[cfg.impressions_column])),
                "clinical_text": texts[i] if texts else "",
            }
        )
    return items


def _settings(cfg: VQAConfig, questions: QuestionSet, extractor: AnswerExtractor) -> dict:
    """What decides the answers: a resumed journal must have been written with the same settings."""
    from ctvl.config import config_hash

    return {
        "templates": questions.tag,
        "questions_hash": config_hash(questions),
        "backend": extractor.name,
        "model": getattr(extractor, "model_name", ""),
        "clinical_template": cfg.clinical_template or "",
        "rules_max_sentences": cfg.rules_max_sentences,
        "image_token": cfg.image_token,
    }


def _build_extractor(cfg: VQAConfig) -> AnswerExtractor:
    if cfg.backend == "llm":
        from ctvl.vqa.extract_llm import build_llm_extractor

        return build_llm_extractor(cfg)
    from ctvl.vqa.extract_rules import RuleExtractor

    return RuleExtractor(cfg.rules_max_sentences)


# ---------------------------------------------------------------------------- journal


def read_journal(path: str | Path, repair: bool = False) -> list[dict]:
    """Records of a ``vqa_volumes.jsonl``; with ``repair`` a half-written last line is cut off the file."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if repair and len(complete) != len(raw):
        logger.warning("%s: discarding a half-written last line (%d bytes)", path, len(raw) - len(complete))
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        fh.flush()
        os.fsync(fh.fileno())


def _start_journal(out_dir: Path, settings: dict, resume: bool) -> tuple[list[dict], str]:
    """Existing records to skip (``resume``) after checking the settings; else a fresh journal."""
    journal, settings_path = out_dir / JOURNAL, out_dir / "build_settings.json"
    if resume and journal.exists():
        if not settings_path.exists():
            raise ValueError(f"{journal} exists without build_settings.json; use resume=False to rebuild")
        old = json.loads(settings_path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ValueError(
                f"{out_dir} holds a VQA build made with other settings ({changed}); "
                "use another out_dir or resume=False to rebuild"
            )
        return read_journal(journal, repair=True), "a"
    journal.unlink(missing_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2))
    return [], "w"


# ------------------------------------------------------------------------- extraction


def _record(item: dict, answers, questions: QuestionSet) -> dict:
    text = {q.id: q.text for q in questions.questions}
    return {
        **item,
        "templates": questions.tag,
        "answers": [{**a.to_dict(), "question": text[a.question_id]} for a in answers],
    }


def _extract_chunk(extractor, chunk: list[dict], questions: QuestionSet, errors: ErrorLog) -> list[dict]:
    """Answer one chunk; when the chunk raises, each report is retried alone (failures go to errors.csv)."""
    try:
        answers = extractor.extract([it["report"] for it in chunk], questions)
        return [_record(it, a, questions) for it, a in zip(chunk, answers)]
    except Exception as err:  # noqa: BLE001 -- one bad report must not stop a 50k-report job
        if len(chunk) == 1:
            logger.error("extraction failed for %s: %s", chunk[0]["id"], err)
            errors.add(
                chunk[0]["id"], chunk[0]["image"], STAGE, f"extraction failed: {type(err).__name__}: {err}"
            )
            return []
        return [r for it in chunk for r in _extract_chunk(extractor, [it], questions, errors)]


def _process(
    chunks: list[list[dict]], extractor, questions, cfg, journal: Path, errors: ErrorLog, summary, progress
):
    from tqdm.auto import tqdm

    with tqdm(total=sum(map(len, chunks)), disable=not progress, unit="report", desc="build-vqa") as bar:
        for chunk in chunks:
            empty = [it for it in chunk if not it["report"]]
            for it in empty:
                errors.add(
                    it["id"], it["image"], STAGE, "empty report (no findings, no impression): no pairs"
                )
            records = _extract_chunk(extractor, [it for it in chunk if it["report"]], questions, errors)
            records += [
                {**it, "templates": questions.tag, "answers": [], "skipped": "empty report"} for it in empty
            ]
            _append(journal, records)
            summary.n_empty += len(empty)
            summary.n_failed += len(chunk) - len(records)
            summary.n_processed += len(records) - len(empty)
            provs = [a["provenance"] for r in records for a in r["answers"]]
            summary.n_fallback_slots += sum(p["fallback"] for p in provs)
            summary.n_truncated += sum(
                any(a["provenance"]["truncated"] for a in r["answers"][:1]) for r in records
            )
            bar.update(len(chunk))


# ----------------------------------------------------------------------------- export


def llava_records(records: list[dict], image_token: str = "<image>") -> list[dict]:
    """Per-volume records -> LLaVA conversation records, one per (volume, question)."""
    out = []
    for rec in records:
        context = rec.get("clinical_text", "").strip()
        for a in rec.get("answers", []):
            human = "\n".join(p for p in (context, image_token, a["question"]) if p)
            out.append(
                {
                    "id": pair_id(rec["id"], a["question_id"]),
                    "image": rec["image"],
                    "conversations": [
                        {"from": "human", "value": human},
                        {"from": "gpt", "value": a["answer"]},
                    ],
                }
            )
    return out


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as fh:  # readers never see a half-written file
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


def _ordered(records: list[dict], items: list[dict]) -> list[dict]:
    """Journal records in input order (a record per id; ids no longer in the input are left out)."""
    by_id = {r["id"]: r for r in records}
    return [by_id[it["id"]] for it in items if it["id"] in by_id]


def _export(out_dir: Path, records: list[dict], cfg: VQAConfig, summary: BuildSummary) -> None:
    pairs = llava_records(records, cfg.image_token)
    summary.n_pairs = len(pairs)
    summary.paths.update(
        {
            "llava": str(_write_jsonl(out_dir / LLAVA, pairs)),
            "review": str(
                export_review_csv(records, out_dir / REVIEW, include_report=cfg.review_include_report)
            ),
        }
    )


def _word_frequencies(items: list[dict], cfg: VQAConfig, out_dir: Path) -> list[str]:
    from ctvl.vqa.wordfreq import compute_word_frequencies, load_wordlist, write_word_frequencies

    freqs = compute_word_frequencies(
        (" ".join(split_sections(it["report"])) for it in items),
        load_wordlist(cfg.stopwords, "stopwords"),
        load_wordlist(cfg.medical_allowlist, "allowlist"),
        mode=cfg.word_filter,
        min_length=cfg.min_word_length,
    )
    write_word_frequencies(freqs, out_dir, cfg.top_k_words, cfg.chart_top_n)
    return freqs["word"].head(cfg.top_k_words).tolist()


def _propose(words: list[str], extractor, cfg: VQAConfig, out_dir: Path) -> Optional[Path]:
    from ctvl.vqa.templates import propose_question_templates, write_candidate_templates

    path = out_dir / "template_candidates.yaml"
    if path.exists():
        return path
    llm = (
        extractor
        if hasattr(extractor, "generate")
        else _build_extractor(VQAConfig(**{**asdict(cfg), "backend": "llm"}))
    )
    return write_candidate_templates(propose_question_templates(words, llm.generate), path, words)


def run_build_vqa(
    reports,
    out_dir: str | Path,
    cfg: VQAConfig,
    *,
    clinical=None,
    extractor: Optional[AnswerExtractor] = None,
    resume: bool = True,
    progress: bool = True,
) -> BuildSummary:
    """Build VQA data from a report table (see the module docstring for the outputs).

    Args:
        reports: ``pandas.DataFrame`` (or a table file, see :func:`read_reports`) with ``cfg.id_column``, ``cfg.findings_column``,
            ``cfg.impressions_column`` (``ctvl.data.ctrate.load_ctrate`` output: ``case_id``, ``Findings_EN``,
            ``Impressions_EN``; a raw CT-RATE reports CSV: set ``id_column="VolumeName"``), optionally
            ``cfg.image_column`` and the clinical columns of ``cfg.clinical_template``.
        out_dir: output folder (created).
        cfg: settings.
        clinical: optional table (or file) joined on ``cfg.id_column`` holding the clinical columns.
        extractor: answer back-end to use instead of the one ``cfg`` describes (tests, custom back-ends).
        resume: skip volumes already in the journal (settings must match); False rebuilds from scratch.
        progress: show a tqdm bar.

    Returns:
        BuildSummary.
    """
    reports = read_reports(reports) if isinstance(reports, (str, Path)) else reports
    clinical = read_reports(clinical) if isinstance(clinical, (str, Path)) else clinical
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    questions = load_question_set(cfg.questions)
    extractor = extractor or _build_extractor(cfg)
    settings = _settings(cfg, questions, extractor)
    done, mode = _start_journal(out_dir, settings, resume)
    template = load_clinical_template(cfg.clinical_template) if cfg.clinical_template else None
    prompts_path = write_prompt_config(make_prompt_config(template, questions, cfg.image_token), out_dir)
    errors = ErrorLog(out_dir / ERRORS, mode=mode)
    items = _prepare(reports, cfg, clinical, errors)
    summary = BuildSummary(n_reports=len(items))
    words = _word_frequencies(items, cfg, out_dir)
    summary.paths.update(
        words=str(out_dir / "word_frequencies.csv"), chart=str(out_dir / "word_frequencies.png")
    )
    if cfg.propose_templates:
        summary.paths["template_candidates"] = str(_propose(words, extractor, cfg, out_dir))
    done_ids = {r["id"] for r in done}
    # Chunks are cut at fixed input positions, so a resumed run batches reports exactly as an uninterrupted
    # one would (LLM outputs in bf16 depend on batch composition).
    chunks = [
        [it for it in items[i : i + cfg.chunk_size] if it["id"] not in done_ids]
        for i in range(0, len(items), cfg.chunk_size)
    ]
    chunks = [c for c in chunks if c]
    summary.n_resumed = len(items) - sum(map(len, chunks))
    _process(chunks, extractor, questions, cfg, out_dir / JOURNAL, errors, summary, progress)
    _export(out_dir, _ordered(read_journal(out_dir / JOURNAL), items), cfg, summary)
    summary.paths.update(volumes=str(out_dir / JOURNAL), errors=str(out_dir / ERRORS),
                         prompts=str(prompts_path))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    logger.info("build-vqa: %s", {k: v for k, v in asdict(summary).items() if k != "paths"})
    return summary


def run_import_review(
    out_dir: str | Path, review_csv: str | Path, drop_unreviewed: bool = False, image_token: str = "<image>"
) -> Path:
    """Apply a reviewed ``review.csv`` to the build in ``out_dir``; returns ``vqa_llava_reviewed.jsonl``."""
    out_dir = Path(out_dir)
    records = read_journal(out_dir / JOURNAL)
    if not records:
        raise ValueError(f"{out_dir / JOURNAL} is missing or empty: run build-vqa first")
    kept, counts = apply_review(records, load_review_csv(review_csv), drop_unreviewed=drop_unreviewed)
    _write_jsonl(out_dir / "vqa_volumes_reviewed.jsonl", kept)
    logger.info("review %s: %s", review_csv, counts)
    return _write_jsonl(out_dir / "vqa_llava_reviewed.jsonl", llava_records(kept, image_token))
