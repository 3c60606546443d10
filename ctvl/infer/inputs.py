"""What inference runs on: a manifest, a folder of NIfTI files or a folder of DICOM series -> cases.

* A manifest (``.csv``/``.parquet``/``.pq``, :mod:`ctvl.data.manifest`): ``case_id``, ``image`` and any
  clinical columns; relative image paths resolve against the manifest's folder.
* A folder: every ``.nii``/``.nii.gz`` (and ``.nrrd``/``.mha``/``.mhd``) file is a case named after the
  file without its suffix; every sub-folder holding files is a DICOM series named after the sub-folder.
  A folder that itself holds the slices of one series is taken as that single series (with a warning).

A bad manifest row never stops a job: it is recorded in ``errors.csv`` (stage ``input``, with its
CSV line, or ``data row N`` of a Parquet file/DataFrame, in ``location``) and the other rows run (see
:mod:`ctvl.data.manifest`); of rows or volumes sharing a case id the first is kept. An input with no
case at all, or a manifest without a ``case_id``/``image`` column, raises ``ValueError`` naming it.

Clinical context (:func:`build_contexts`): the sentence of :mod:`ctvl.data.clinical_text`, from a
clinical table joined on ``case_id`` (or from the manifest's own columns). A case without clinical data
gets no context line and a warning, never a failure.

The settings of a trained model's run (:func:`load_model_run`: the model, its ``run_config.yaml`` and
DeepHit cuts; :func:`resolve_questions`, :func:`resolve_preprocess`, :func:`resolve_template`) are shared
by ``ctvl predict`` and ``ctvl generate``.

Entry points: :func:`resolve_inputs` -> :class:`Inputs`, :func:`build_contexts`, :func:`load_model_run`,
:func:`iter_volume_batches`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ctvl.config import ClinicalTextConfig, PreprocessConfig, PromptConfig, RunConfig, load_config
from ctvl.data.clinical_text import build_clinical_texts, load_clinical_template, template_columns
from ctvl.data.io import ITK_SUFFIXES, NIFTI_SUFFIXES
from ctvl.data.manifest import RejectedRow, check_manifest, record_rejected
from ctvl.data.questions import QuestionSet, load_question_set
from ctvl.data.tables import TABLE_SUFFIXES, read_table, read_table_rows
from ctvl.utils.errors import ErrorLog
from ctvl.utils.processes import dataloader_worker_init

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass
class Inputs:
    """Resolved cases.

    Attributes:
        cases: DataFrame with ``case_id`` and ``image`` (absolute path), unique ids, input order.
        table: the manifest's usable rows (all its columns) when the input was a manifest, else None.
        rejected: the manifest rows (or volumes) that are no case: duplicate ids, empty cells, ...
    """

    cases: pd.DataFrame
    table: Optional[pd.DataFrame]
    rejected: list[RejectedRow]

    def record_rejected(self, errors: ErrorLog) -> None:
        """One ``errors.csv`` row (stage ``input``, with the row's location) per rejected row."""
        record_rejected(errors, self.rejected)


def resolve_inputs(inputs: str | os.PathLike | pd.DataFrame) -> Inputs:
    """A manifest file/DataFrame or a folder -> :class:`Inputs`.

    Raises:
        ValueError: the path does not exist, the manifest cannot be read as a table, lacks the ``case_id``
            or ``image`` column or has no row, or the folder holds no volume. Bad rows do not raise: they
            are :attr:`Inputs.rejected`.
    """
    if isinstance(inputs, pd.DataFrame):
        return _from_table(inputs, None, "<DataFrame>", None)
    path = Path(inputs)
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise ValueError(f"input {str(path)!r} does not exist (give a manifest or a folder of volumes)")
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _from_table(*read_table_rows(path, "manifest"), str(path), path.parent)
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        return _frame([(_case_id(path), str(path.resolve()))], None)
    raise ValueError(f"{path}: not a manifest (.csv/.parquet), a volume or a folder")


def _from_table(df: pd.DataFrame, locations: Optional[list[str]], source: str,
                base_dir: Optional[Path]) -> Inputs:
    rows = check_manifest(df, source=source, base_dir=base_dir, locations=locations)
    if df.empty:
        raise ValueError(f"{source}: the manifest has no rows")
    if rows.rejected:
        first = rows.rejected[0]
        logger.warning("%s: %d row(s) skipped (listed in errors.csv), e.g. %s: %s", source,
                       len(rows.rejected), first.location, first.reason)
    return Inputs(rows.table[["case_id", "image"]].copy(), rows.table, rows.rejected)


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _has_files(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())


def _from_folder(folder: Path) -> Inputs:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    found = []
    for p in entries:
        if p.is_dir() and _has_files(p):
            found.append((p.name, str(p.resolve())))
        elif p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES):
            found.append((_case_id(p), str(p.resolve())))
    other = [p for p in entries if p.is_file() and not p.name.lower().endswith(VOLUME_SUFFIXES)]
    if not found and other:
        logger.warning("%s holds %d files but no volume or series folder: reading it as one DICOM series",
                       folder, len(other))
        return _frame([(folder.name, str(folder.resolve()))], None)
    if not found:
        raise ValueError(
            f"{folder}: no volumes found (expected {', '.join(VOLUME_SUFFIXES)} files or one sub-folder per "
            "DICOM series)"
        )
    if other:
        logger.info("%s: ignored %d file(s) that are not volumes, e.g. %s", folder, len(other), other[0].name)
    return _frame(found, None)


def _frame(found: list[tuple[str, str]], table) -> Inputs:
    seen, rows, dropped = set(), [], []
    for case_id, image in found:
        if case_id in seen:
            dropped.append((case_id, image))
            continue
        seen.add(case_id)
        rows.append((case_id, image))
    if dropped:
        logger.warning("%d volume(s) share a case id with an earlier one and are skipped, e.g. %s",
                       len(dropped), dropped[0][1])
    rejected = [RejectedRow("", case_id, image, f"duplicate case_id {case_id!r} (the first volume is used)")
                for case_id, image in dropped]
    return Inputs(pd.DataFrame(rows, columns=["case_id", "image"]), table, rejected)


# ---------------------------------------------------------------------------- model run and settings


@dataclass
class ModelRun:
    """A trained model and what its run saved next to it."""

    model: object
    run_cfg: Optional[RunConfig]
    cuts: Optional[np.ndarray]
    """DeepHit time-bin cut points (``time_bins.json``), None for Cox."""
    device: torch.device

    @property
    def prompts(self) -> Optional[PromptConfig]:
        """What the training prompts were built from (``prompts.yaml`` of the model), None when unknown."""
        return getattr(self.model, "prompts", None)


def load_model_run(model_dir: str | os.PathLike, device: Optional[str] = None) -> ModelRun:
    """``CTVLModel.from_pretrained`` in eval mode on ``device``, plus the run's ``run_config.yaml`` (in
    ``model_dir`` or its parent) and DeepHit cuts when present.

    ``device`` None: the launcher's ``cuda:$LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    from ctvl.models.ctvl import CTVLModel

    model_dir = Path(model_dir)
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model = CTVLModel.from_pretrained(model_dir).to(dev).eval()
    run_cfg = None
    for candidate in (model_dir / "run_config.yaml", model_dir.parent / "run_config.yaml"):
        if candidate.is_file():
            try:
                run_cfg = load_config(RunConfig, candidate)
            except (ValueError, TypeError) as err:
                logger.warning("%s: not a readable run config (%s); using defaults", candidate, err)
            break
    cuts = None
    if (model_dir / "time_bins.json").is_file():
        cuts = np.asarray(json.loads((model_dir / "time_bins.json").read_text())["cuts"], dtype=np.float64)
    elif model.cfg.survival.head == "discrete":
        logger.warning("%s has no time_bins.json: DeepHit survival probabilities cannot be placed in time",
                       model_dir)
    if model.prompts is None:
        logger.warning("%s has no prompts.yaml (saved by an older ctvl): the clinical template and questions "
                       "come from run_config.yaml and cannot be checked against the training prompts", model_dir)
    return ModelRun(model, run_cfg, cuts, dev)


def resolve_questions(questions=None, run: Optional[ModelRun] = None) -> list[tuple[str, str]]:
    """``(id, text)`` pairs from a question-set YAML path, a ``QuestionSet``, texts or pairs.

    None: the questions the model was trained with (its ``prompts.yaml``); for an older model folder the
    run's ``data.questions`` file when it exists, else the paper's six. Given questions that differ from the
    trained ones are used, with a warning.
    """
    trained = run.prompts.questions if run is not None and run.prompts is not None else ()
    if questions is None and trained:
        return list(trained)
    if questions is None:
        path = run.run_cfg.data.questions if run is not None and run.run_cfg is not None else ""
        questions = load_question_set(path if path and Path(path).is_file() else None)
    elif isinstance(questions, (str, os.PathLike)):
        questions = load_question_set(questions)
    if isinstance(questions, QuestionSet):
        pairs = [(q.id, q.text) for q in questions.questions]
    else:
        pairs = [(f"q{i + 1}", q) if isinstance(q, str) else (str(q[0]), str(q[1]))
                 for i, q in enumerate(questions)]
    if not pairs or len({p[0] for p in pairs}) != len(pairs):
        raise ValueError(f"questions need at least one entry and unique ids, got {[p[0] for p in pairs]}")
    if trained and pairs != list(trained):
        logger.warning("the questions given differ from the %d the model was trained with (%s): prompts and "
                       "risks change accordingly", len(trained), [qid for qid, _ in trained])
    return pairs


def resolve_preprocess(preprocess_cfg: Optional[PreprocessConfig],
                       run_cfg: Optional[RunConfig]) -> PreprocessConfig:
    if preprocess_cfg is not None:
        return preprocess_cfg
    if run_cfg is not None:
        return run_cfg.preprocess
    logger.warning("no preprocessing config given and no run_config.yaml next to the model: "
                   "Merlin's defaults")
    return PreprocessConfig()


def resolve_template(template: str | os.PathLike | ClinicalTextConfig | None,
                     run: Optional[ModelRun]) -> Optional[ClinicalTextConfig]:
    """The clinical template of a run: the given one ("" = none), else the one the model was trained with.

    A given template that differs from the trained one is used, with a warning. An older model folder
    without ``prompts.yaml`` falls back to its run's ``data.clinical_template`` path.
    """
    saved = run.prompts if run is not None else None
    if template is None:
        if saved is not None:
            return saved.clinical_template
        path = run.run_cfg.data.clinical_template if run is not None and run.run_cfg is not None else ""
        return load_clinical_template(path) if path else None
    chosen = None
    if isinstance(template, ClinicalTextConfig):
        chosen = template
    elif str(template):
        chosen = load_clinical_template(template)
    if saved is not None and chosen != saved.clinical_template:
        logger.warning("clinical template %s differs from the one the model was trained with (%s): the "
                       "context sentences change", template or "(none)",
                       "none" if saved.clinical_template is None else repr(saved.clinical_template.name))
    return chosen


# ---------------------------------------------------------------------------- clinical context


def load_clinical_table(clinical: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A clinical table (CSV/Parquet/DataFrame) with a ``case_id`` column, one row per case."""
    if isinstance(clinical, pd.DataFrame):
        df, source = clinical, "<clinical DataFrame>"
    else:
        df, source = read_table(clinical, "clinical table"), str(clinical)
    if "case_id" not in df.columns:
        raise ValueError(f"{source}: clinical table needs a `case_id` column; found {list(df.columns)}")
    df = df.assign(case_id=df["case_id"].astype(str).str.strip())
    dup = df["case_id"].duplicated()
    if dup.any():
        logger.warning("%s: %d duplicate case_id row(s) in the clinical table; the first is used", source,
                       int(dup.sum()))
    return df.loc[~dup]


def build_contexts(case_ids: list[str], template: str | os.PathLike | ClinicalTextConfig | None, *,
                   clinical: str | os.PathLike | pd.DataFrame | None = None,
                   table: Optional[pd.DataFrame] = None) -> dict[str, Optional[str]]:
    """Clinical-context sentence per case (None = no context line).

    Args:
        case_ids: the cases.
        template: clinical-text template (a ``configs/clinical/*.yaml`` path or the config itself); None =
            no context for any case.
        clinical: table joined on ``case_id``; when None, the manifest's own columns (``table``) are used.
        table: the manifest rows (``Inputs.table``).

    Returns:
        dict case_id -> sentence or None. Cases without clinical data (absent from the table or with every
        template value missing) get None, and one warning lists them.
    """
    if template is None:
        return {cid: None for cid in case_ids}
    cfg = template if isinstance(template, ClinicalTextConfig) else load_clinical_template(template)
    source = load_clinical_table(clinical) if clinical is not None else table
    if source is None:
        logger.warning("clinical template %s given but no clinical table (and the input is not a manifest): "
                       "prompts have no context line", cfg.name or template)
        return {cid: None for cid in case_ids}
    frame = pd.DataFrame({"case_id": [str(c) for c in case_ids]})
    frame = frame.merge(source, on="case_id", how="left", indicator="_found", suffixes=("", "_clinical"))
    texts = build_clinical_texts(frame, cfg)
    contexts = {cid: (text if found == "both" and text else None)
                for cid, text, found in zip(frame["case_id"], texts, frame["_found"])}
    missing = [cid for cid, text in contexts.items() if text is None]
    if missing:
        logger.warning("%d case(s) have no clinical data and get no context sentence, e.g. %s",
                       len(missing), missing[:5])
    return contexts


CONTEXT_STAGE = "context"
"""``errors.csv`` stage of a case refused for lack of the clinical data its model was trained with."""
NO_CONTEXT_REASON = ("no clinical data for the context sentence the model was trained with "
                     "(--allow_missing_context goes on without it)")


@dataclass
class Contexts:
    """The clinical-context sentences of a run's cases.

    Attributes:
        sentences: case_id -> sentence, or None for a case prompted without one.
        refused: cases refused because their model needs a sentence they have no data for.
        template: the template in use (None = no context for any case).
    """

    sentences: dict[str, Optional[str]]
    refused: list[str]
    template: Optional[ClinicalTextConfig]

    @property
    def n_without(self) -> int:
        """Cases prompted without a sentence although a template is in use."""
        if self.template is None:
            return 0
        return sum(v is None for v in self.sentences.values()) - len(self.refused)


def model_contexts(run: ModelRun, case_ids: list[str], template, *, clinical=None,
                   table: Optional[pd.DataFrame] = None, allow_missing_context: bool = False) -> Contexts:
    """The context sentences of ``case_ids`` for ``run``'s model, refusing to drop context silently.

    A model trained with clinical context (its ``prompts.yaml`` holds a template) asked to predict without
    it is an error unless ``allow_missing_context``: no template at all, or a clinical source that lacks the
    template's columns, raises; a single case without clinical data is refused (``Contexts.refused``, for
    ``errors.csv``) while the others run.

    Args:
        run: the model run (:func:`load_model_run`).
        case_ids: the cases.
        template: as :func:`resolve_template` (None = the model's own).
        clinical, table: as :func:`build_contexts`.
        allow_missing_context: prompt cases without data (or every case, without a template) with no
            context line instead.

    Raises:
        ValueError: the run as a whole has no clinical context for a model trained with it.
    """
    template = resolve_template(template, run)
    trained = run.prompts is not None and run.prompts.has_context
    source = load_clinical_table(clinical) if clinical is not None else table
    problem = None
    if template is None:
        problem = "no clinical template is in use"
    elif source is None:
        problem = "the input has no clinical table (a folder of volumes needs --clinical)"
    elif absent := [c for c in template_columns(template) if c not in source.columns]:
        problem = f"the clinical table lacks the template's column(s) {absent}"
    if problem is not None and (trained or template is not None) and not allow_missing_context:
        raise ValueError(f"{'the model was trained with a clinical-context sentence, but ' if trained else ''}"
                         f"{problem}; give them (--clinical/--clinical_template) or pass "
                         "--allow_missing_context to go on without")
    if problem is not None:
        if template is not None:
            logger.warning("%s: every case is prompted without a context sentence", problem)
        return Contexts({cid: None for cid in case_ids}, [], None)
    sentences = build_contexts(case_ids, template, table=source)
    refused = [] if allow_missing_context or not trained else [c for c, t in sentences.items() if t is None]
    return Contexts(sentences, refused, template)


# ---------------------------------------------------------------------------- streaming volumes


class VolumeDataset:
    """Cases -> preprocessed volumes, for a ``torch.utils.data.DataLoader`` with worker processes.

    ``__getitem__`` never raises: a volume that cannot be read or preprocessed comes back with
    ``image=None`` and ``error=(stage, reason)``, so one bad file never stops a job.

    Args:
        cases: ``(case_id, image path)`` pairs.
        cfg: the preprocessing config (:class:`ctvl.config.PreprocessConfig`).
    """

    def __init__(self, cases: list[tuple[str, str]], cfg):
        self.cases, self.cfg = list(cases), cfg

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        """``{"case_id", "file", "image": float32 (1, x, y, z) or None, "error": None or (stage, why)}``."""
        from ctvl.data.transforms import load_and_preprocess

        case_id, file = self.cases[i]
        item = {"case_id": case_id, "file": file, "image": None, "error": None}
        if not os.path.exists(file):
            item["error"] = ("load", f"no such file or folder: {file}")
            return item
        try:
            item["image"] = load_and_preprocess(file, self.cfg)
        except Exception as exc:  # noqa: BLE001 -- any reader/transform failure is one failed case
            item["error"] = ("load", f"{type(exc).__name__}: {exc}")
        return item


def _as_list(items: list[dict]) -> list[dict]:
    return items


def iter_volume_batches(cases: list[tuple[str, str]], cfg, batch_size: int, workers: int):
    """Batches (lists of :meth:`VolumeDataset.__getitem__` items) in input order.

    With ``workers > 0``, volumes are read and preprocessed in that many DataLoader worker processes while
    the model runs on the previous batches (at most ``2 * workers`` batches are prepared ahead).
    """
    from torch.utils.data import DataLoader

    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    if not cases:
        return iter(())
    loader = DataLoader(VolumeDataset(cases, cfg), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_as_list, prefetch_factor=2 if workers else None,
                        worker_init_fn=dataloader_worker_init)  # workers die with us, even after kill -9
    return iter(loader)
