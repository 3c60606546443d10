"""The ``ctvl`` command line: argument parsing only, then one call into the library.

Every sub-command takes its typed config from ``ctvl.config`` (dataclass fields become
``--group.field`` options, with the field docstrings as help) and an optional
``--config file.yaml`` holding the same keys. Run ``ctvl --help`` or
``ctvl <command> --help``; ``ctvl train --help`` indexes its option groups, ``ctvl train --help GROUP``
documents one (``--help all``: every option). ``ctvl --log_level DEBUG <command>`` also shows the
libraries' start-up notes that are hidden by default.

Sub-commands:
    synth       write a synthetic chest-CT cohort (CT-RATE layout + survival manifest)
    preprocess  Merlin preprocessing of a manifest or CT-RATE folder into a float16 cache
    build-vqa   question-answer pairs from radiology reports (rules or a local instruct LLM)
    import-review  apply a clinician-reviewed review.csv to a build-vqa output
    pretrain-encoder  phenotype pre-training of the image encoder from a label table (Merlin layout out)
    encode      run the frozen image encoder once over a preprocessed cache (feature cache)
    train       one training stage (0: image-report alignment, 1: VQA pre-training, 2: survival fine-tuning)
    predict     risk scores for CT volumes (mean over the six questions), resumable, sharded
    generate    answers to the six questions per volume + a readable per-case report
    evaluate    C-indices with CIs, KM/log-rank, calibration, BERTScore, latent map -> report.html
    demo        the main job on the built-in synthetic cohort with tiny models
    distill     a language model that writes a Cox teacher's risk from a patient sentence (any survival table)
    convert-gguf  a GGUF language model (e.g. SmolLM2 of ctvl[smollm]) -> a local HF folder for --decoder.path
    treatment   treatment effects: `simulate` a table with known truth, `fit` factorised / S- / T-learner (+ IPW)
    synth-tabular  synthetic survival tables (CK4Gen): `fit` a generator, `sample` rows, `report` utility and privacy
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

import ctvl
from ctvl.config import (
    ContrastiveConfig,
    CTRateConfig,
    CTVLConfig,
    DataConfig,
    DecoderConfig,
    DistillConfig,
    LoRAConfig,
    PreprocessConfig,
    RunConfig,
    SynthReportConfig,
    SynthSampleConfig,
    SynthTabularConfig,
    SyntheticCohortConfig,
    TabularConfig,
    TrainConfig,
    TreatmentConfig,
    TreatmentSimConfig,
    VisionConfig,
    from_dict,
)

log = logging.getLogger("ctvl")

# Field docstrings in ctvl.config become the --help text of each option.
set_parsing_settings(docstring_parse_attribute_docstrings=True)

# Library loggers whose INFO lines say nothing a user acts on (shown at --log_level DEBUG): numexpr's
# "NumExpr defaulting to N threads" (pandas imports numexpr), nibabel's header notes such as "pixdim[0]
# (qfac) should be 1 (default) or -1; setting qfac to 1" (nibabel fixes the header itself).
QUIET_LOGGERS = ("numexpr", "nibabel.global", "rdt")  # rdt: ctgan's per-column "Guidance" notes
# Single lines shown only at --log_level DEBUG, by logger and message start. DeepSpeed logs this WARNING on
# every import without CUDA, CPU runs included; it sets its logger's level on import: a filter, not a level.
QUIET_LINES = {"DeepSpeed": ("Setting accelerator to CPU",)}


def version() -> str:
    """The installed ``ctvl`` distribution's version (``ctvl.__version__`` from a tree without metadata)."""
    try:
        return importlib.metadata.version("ctvl")
    except importlib.metadata.PackageNotFoundError:
        return getattr(ctvl, "__version__", "unknown")


class GroupedHelpAction(argparse._HelpAction):
    """``-h/--help [GROUP]`` for a command with many config groups (``ctvl train``: ~200 options).

    ``--help``: the command's own options and one line per option group; ``--help GROUP``: the options
    of that group and of the groups nested in it (``model`` includes ``model.lora``); ``--help all``:
    every option.
    """

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        argparse.Action.__init__(self, option_strings, dest=dest, default=default, nargs="?", metavar="GROUP",
                                 help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        groups = config_groups(parser)
        if values is None:
            text = _format_groups(parser, [parser._positionals, parser._optionals])
            text += _group_index(parser, groups)
        elif values == "all":
            text = parser.format_help()
        else:
            chosen = [g for key, g in groups.items() if key == values or key.startswith(values + ".")]
            if not chosen:
                parser.error(f"--help {values}: no such option group; choose from all, {', '.join(groups)}")
            text = _format_groups(parser, chosen)
        parser._print_message(text, sys.stdout)
        parser.exit()


def config_groups(parser: ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The parser's option groups of config dataclasses, by key (``model``, ``model.lora``, ...)."""
    own = (parser._positionals, parser._optionals)
    return {g._group_actions[0].dest: g for g in parser._action_groups if g not in own and g._group_actions}


def _format_groups(parser: ArgumentParser, groups: list) -> str:
    """``parser.format_help()`` (usage, description) showing only ``groups``."""
    every = parser._action_groups
    parser._action_groups = groups
    try:
        return parser.format_help()
    finally:
        parser._action_groups = every


def _group_index(parser: ArgumentParser, groups: dict[str, argparse._ArgumentGroup]) -> str:
    """One line per option group: key, description, option count; then how to see the options."""
    indent, columns = max(len(k) for k in groups) + 4, shutil.get_terminal_size().columns - 2  # as argparse
    lines = ["", "option groups (options --GROUP.FIELD VALUE; --GROUP FILE.yaml reads a whole group):"]
    for key, group in groups.items():
        name = group.title.split("(", 1)[0]  # a dataclass without a docstring has its signature as __doc__
        title = name if name.isidentifier() else group.title
        n = len(group._group_actions) - 1  # the first action is --GROUP FILE.yaml
        lines.append(textwrap.fill(f"{title} ({n} option{'s' * (n != 1)})", max(columns, 60),
                                   initial_indent=f"  {key:<{indent - 2}}", subsequent_indent=" " * indent))
    prog = parser.prog.replace(" [options]", "")
    lines += ["", f"{prog} --help GROUP documents a group's options, {prog} --help all every option;",
              f"{prog} --config FILE.yaml [--GROUP.FIELD VALUE ...] --print_config prints the resolved",
              "configuration (examples: configs/train/*.yaml; fields: the dataclasses of ctvl/config.py)."]
    return "\n".join(lines) + "\n"


def _synth(args: Namespace) -> int:
    from ctvl.data.synthetic import write_cohort

    cfg = _as(SyntheticCohortConfig, args.cohort)
    paths = write_cohort(cfg, Path(args.out), release=args.release)
    log.info("wrote %d cases to %s (manifest: %s)", cfg.n_cases, args.out, paths.manifest)
    return 0


def _preprocess(args: Namespace) -> int:
    from ctvl.data.ctrate import load_ctrate
    from ctvl.data.preprocess import run_preprocess

    if bool(args.manifest) == bool(args.ctrate.root):
        raise SystemExit("give exactly one of --manifest or --ctrate.root")
    ctrate_cfg = _as(CTRateConfig, args.ctrate) if args.ctrate.root else None
    # a manifest path: run_preprocess checks it row by row (a bad row goes to errors.csv, the rest run)
    items = Path(args.manifest) if args.manifest else load_ctrate(ctrate_cfg)
    if ctrate_cfg is not None:  # the manifest later steps (build-vqa, train, predict) read
        from ctvl.data.manifest import write_manifest

        path = write_manifest(items, Path(args.cache) / f"ctrate_{ctrate_cfg.split}_manifest.csv")
        log.info("CT-RATE manifest written to %s", path)
    summary = run_preprocess(
        items, Path(args.cache), _as(PreprocessConfig, args.preprocess),
        workers=args.workers, ctrate_cfg=ctrate_cfg,
    )
    log.info("%s", summary)
    return 1 if summary.failed else 0


def _build_vqa(args: Namespace) -> int:
    from ctvl.vqa.build import run_build_vqa
    from ctvl.vqa.config import VQAConfig
    from ctvl.vqa.evaluate import run_evaluate_vqa

    summary = run_build_vqa(args.reports, Path(args.out), _as(VQAConfig, args.vqa), clinical=args.clinical,
                            resume=not args.restart)
    log.info("%d reports -> %d pairs in %s", summary.n_reports, summary.n_pairs, args.out)
    if args.evaluate:
        scores = run_evaluate_vqa(Path(args.out), args.evaluate)
        log.info("slot accuracy %.4f", scores.slot_accuracy)
    return 1 if summary.n_failed else 0


def _import_review(args: Namespace) -> int:
    from ctvl.vqa.build import run_import_review

    path = run_import_review(Path(args.out), args.review_csv, drop_unreviewed=args.drop_unreviewed)
    log.info("reviewed pairs written to %s", path)
    return 0


def _pretrain_encoder(args: Namespace) -> int:
    from ctvl.train.encoder_pretrain import run_pretrain_encoder

    path, history = run_pretrain_encoder(args.labels, args.cache, args.out, _as(VisionConfig, args.vision),
                                         split=args.split or None, epochs=args.epochs,
                                         batch_size=args.batch_size, lr=args.lr, holdout=args.holdout,
                                         seed=args.seed, device=args.device)
    log.info("encoder (epoch %d of %d) written to %s", history.best_epoch, len(history.train), path)
    return 0


def _encode(args: Namespace) -> int:
    from ctvl.infer.encode import run_encode
    from ctvl.models.vision3d import build_image_encoder

    vision = _as(VisionConfig, args.vision)
    if not vision.checkpoint:
        raise SystemExit("--vision.checkpoint is required: features of a random encoder are meaningless")
    encoder = build_image_encoder(vision)
    summary = run_encode(encoder, args.cache, args.out, batch_size=args.batch_size)
    return 1 if summary.n_failed else 0


def _train(args: Namespace) -> int:
    values = {k: v for k, v in args.as_dict().items() if k in ("model", "data", "train", "preprocess", "contrastive")}
    cfg = from_dict(RunConfig, values)
    if cfg.train.stage == "contrastive":
        from ctvl.train.contrastive import fit_contrastive as fit
    else:
        from ctvl.train.vlm import fit_vlm as fit
    result = fit(cfg)
    log.info("finished %d steps; outputs in %s", result.steps, result.out_dir)
    return 0


def _shard(args: Namespace) -> Optional[tuple[int, int]]:
    import os

    world = int(os.environ.get("WORLD_SIZE", 1))
    return (int(os.environ.get("RANK", 0)), world) if world > 1 else None


def _predict(args: Namespace) -> int:
    from ctvl.infer.predict import run_predict
    from ctvl.train.engine import init_distributed

    init_distributed()  # under torchrun: ranks share the cases, rank 0 merges the shards

    summary = run_predict(args.model, args.inputs, Path(args.out), clinical=args.clinical,
                          clinical_template=args.clinical_template, questions=args.questions,
                          batch_size=args.batch_size, workers=args.workers, horizons=args.horizons,
                          shard=_shard(args), resume=not args.restart, save_embeddings=args.save_embeddings,
                          allow_missing_context=args.allow_missing_context)
    log.info("predicted %d, skipped %d (done), failed %d of %d cases -> %s", summary.n_predicted,
             summary.n_skipped, summary.n_failed, summary.n_cases, args.out)
    return summary.exit_code


def _generate(args: Namespace) -> int:
    from ctvl.infer.generate import run_generate

    summary = run_generate(args.model, args.inputs, Path(args.out), clinical=args.clinical,
                           clinical_template=args.clinical_template, questions=args.questions,
                           max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                           workers=args.workers, resume=not args.restart,
                           allow_missing_context=args.allow_missing_context)
    return summary.exit_code


def _evaluate(args: Namespace) -> int:
    from ctvl.infer.evaluate import run_evaluate

    metrics = run_evaluate(args.predictions, args.manifest, Path(args.out), generated=args.generated,
                           references=args.references, bertscore_model=args.bertscore_model,
                           n_bertscore=args.n_bertscore, embeddings=args.embeddings, bootstrap=args.bootstrap,
                           horizon=args.horizon, split=args.split)
    log.info("report: %s", Path(args.out) / "report.html")
    return 0 if metrics else 1


def _demo(args: Namespace) -> int:
    from ctvl.workflows.demo import run_demo

    return run_demo(Path(args.out), n_cases=args.n_cases, workers=args.workers, encoder_epochs=args.encoder_epochs,
                    encoder=Path(args.encoder) if args.encoder else None)


def _distill(args: Namespace) -> int:
    from ctvl.workflows.distill import run_distill

    run_distill(_as(TabularConfig, args.tabular), _as(DistillConfig, args.distill), _as(DecoderConfig, args.decoder),
                _as(LoRAConfig, args.lora), _as(TrainConfig, args.train), Path(args.out))
    return 0


def _treatment(args: Namespace) -> int:
    from ctvl.workflows.treatment import run_treatment_fit, simulate_treatment_table

    if args.action == "simulate":
        simulate_treatment_table(_as(TreatmentSimConfig, args.simulate.sim), args.simulate.out)
        return 0
    fit = args.fit
    run_treatment_fit(_as(TabularConfig, fit.tabular), _as(TreatmentConfig, fit.treatment), fit.out)
    return 0


def _convert_gguf(args: Namespace) -> int:
    from ctvl.models.gguf import convert_gguf

    convert_gguf(args.gguf, Path(args.out), dtype=args.dtype)
    return 0


def _synth_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write a synthetic chest-CT cohort with known truth.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--release", default="fixed", choices=["fixed", "original"],
                   help="CT-RATE release to imitate: 'fixed' (HU in the file) or 'original' (raw values, rescale in metadata).")
    p.add_class_arguments(SyntheticCohortConfig, "cohort")
    return p


def _preprocess_parser() -> ArgumentParser:
    p = ArgumentParser(description="Preprocess CT volumes (Merlin pipeline) into a float16 cache.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--manifest", default=None, help="Survival manifest (CSV/Parquet) with case_id and image columns.")
    p.add_argument("--cache", required=True, help="Cache folder (index.csv, errors.csv, <key>.npy).")
    p.add_argument("--workers", type=int, default=2, help="Worker processes; 0 runs in-process.")
    p.add_class_arguments(CTRateConfig, "ctrate")
    p.add_class_arguments(PreprocessConfig, "preprocess")
    return p


def _build_vqa_parser() -> ArgumentParser:
    from ctvl.vqa.config import VQAConfig

    p = ArgumentParser(description="Build clinician-reviewable VQA pairs from radiology reports.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--reports", required=True, help="Report table (CSV/Parquet/JSONL/XLSX), e.g. a manifest.")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--clinical", default=None, help="Optional clinical table joined on the id column.")
    p.add_argument("--evaluate", default=None, help="Ground-truth findings.csv (synthetic cohort): grade the answers.")
    p.add_argument("--restart", action="store_true", help="Ignore finished reports in --out and start over.")
    p.add_class_arguments(VQAConfig, "vqa")
    return p


def _import_review_parser() -> ArgumentParser:
    p = ArgumentParser(description="Apply a reviewed review.csv (approve / edited_answer columns).")
    p.add_argument("--out", required=True, help="The build-vqa output folder.")
    p.add_argument("--review_csv", required=True, help="The reviewed CSV.")
    p.add_argument("--drop_unreviewed", action="store_true", help="Drop pairs with a blank approve cell.")
    return p


def _pretrain_encoder_parser() -> ArgumentParser:
    p = ArgumentParser(description="Phenotype pre-training of the image encoder from per-volume labels "
                                   "(for encoders without CT weights); writes Merlin's checkpoint layout.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--labels", required=True,
                   help="Table (CSV/Parquet): case_id and labels, e.g. a synthetic cohort's findings.csv.")
    p.add_argument("--cache", required=True, help="Preprocessed-volume cache (ctvl preprocess).")
    p.add_argument("--out", required=True, help="Checkpoint to write (for --vision.checkpoint elsewhere).")
    p.add_argument("--split", default="train", help="Rows whose split column equals this ('' = all rows).")
    p.add_argument("--epochs", type=int, default=10, help="Passes over the training cases.")
    p.add_argument("--batch_size", type=int, default=8, help="Volumes per step.")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate.")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="Fraction held out; the epoch with the lowest held-out loss is kept (0: the last).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the initialisation, hold-out draw and order.")
    p.add_argument("--device", default="cpu", help="Torch device, e.g. cuda.")
    p.add_class_arguments(VisionConfig, "vision")
    return p


def _encode_parser() -> ArgumentParser:
    p = ArgumentParser(description="Precompute frozen-encoder features of a preprocessed cache.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--cache", required=True, help="Preprocessed-volume cache (ctvl preprocess).")
    p.add_argument("--out", required=True, help="Feature cache folder to fill.")
    p.add_argument("--batch_size", type=int, default=2, help="Volumes per forward pass.")
    p.add_class_arguments(VisionConfig, "vision")
    return p


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(description="Train one stage: --train.stage contrastive (optional stage 0), vqa (stage 1) "
                                   "or survival (stage 2).", add_help=False,
                       usage="%(prog)s [-h [GROUP]] [--config CONFIG] [--print_config[=flags]] "
                             "[--GROUP.FIELD VALUE ...]")
    p.add_argument("-h", "--help", action=GroupedHelpAction,
                   help="Show these options and an index of the option groups; --help GROUP (e.g. train, "
                        "model.lora) documents a group, --help all every option; then exit.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--local_rank", type=Optional[int], default=None,
                   help="Set by the deepspeed launcher; ignored (ranks come from the environment).")
    p.add_class_arguments(CTVLConfig, "model")
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(TrainConfig, "train")
    p.add_class_arguments(PreprocessConfig, "preprocess")
    p.add_class_arguments(ContrastiveConfig, "contrastive")
    return p


def _inputs_arguments(p: ArgumentParser, out_help: str) -> None:
    p.add_argument("--model", required=True, help="Exported model folder (a training run's model/).")
    p.add_argument("--inputs", required=True, help="Manifest (CSV/Parquet), folder of NIfTI files, or folder of DICOM series.")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--clinical", default=None, help="Clinical table joined on case_id (default: the manifest's columns).")
    p.add_argument("--clinical_template", default=None, help="Clinical sentence template (default: the training run's).")
    p.add_argument("--questions", default=None, help="Question templates YAML (default: the training run's / the six).")
    p.add_argument("--batch_size", type=int, default=4, help="Cases per forward pass.")
    p.add_argument("--workers", type=int, default=2, help="Preprocessing worker processes.")
    p.add_argument("--restart", action="store_true", help="Ignore finished cases in --out and start over.")
    p.add_argument("--allow_missing_context", action="store_true",
                   help="Predict/answer without the clinical sentence for cases whose clinical data "
                        "(or template) is missing, although the model was trained with it; default: such a "
                        "run is an error.")


def _predict_parser() -> ArgumentParser:
    p = ArgumentParser(description="Risk scores for CT volumes (mean over the questions), resumable and sharded.")
    _inputs_arguments(p, "Output table (.csv or .parquet), one row per case.")
    p.add_argument("--horizons", type=Optional[list[float]], default=None,
                   help="DeepHit: times of the survival probabilities (default: every cut).")
    p.add_argument("--save_embeddings", action="store_true", help="Also write z_surv as <out stem>.z_surv.npy.")
    return p


def _generate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Answers to the questions per volume (JSONL) and a per-case report.")
    _inputs_arguments(p, "Output folder (answers JSONL and the per-case reports).")
    p.add_argument("--max_new_tokens", type=int, default=64, help="Longest answer in tokens.")
    p.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    p.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass.")
    return p


def _evaluate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Survival and language evaluation into report.html and metrics.json.")
    p.add_argument("--predictions", required=True, help="Output of ctvl predict.")
    p.add_argument("--manifest", required=True, help="Table with case_id, time, event (and split).")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--generated", default=None, help="answers.jsonl of ctvl generate (for BERTScore).")
    p.add_argument("--references", default=None, help="Reference VQA JSONL (build-vqa output).")
    p.add_argument("--bertscore_model", default=None, help="Local model folder (default: the shipped MiniLM).")
    p.add_argument("--n_bertscore", type=int, default=500, help="Answer pairs sampled for BERTScore.")
    p.add_argument("--embeddings", default=None, help="z_surv .npy of ctvl predict --save_embeddings.")
    p.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95 % CIs.")
    p.add_argument("--horizon", type=Optional[float], default=None, help="Calibration time (default: median).")
    p.add_argument("--split", default=None, help="Evaluate this split only (default: all but train).")
    return p


def _demo_parser() -> ArgumentParser:
    p = ArgumentParser(description="Run the main job on the built-in synthetic cohort with tiny models.")
    p.add_argument("--out", default="demo_out", help="Output folder.")
    p.add_argument("--n_cases", type=Optional[int], default=None,
                   help="Synthetic cohort size (default: configs/synthetic/demo.yaml).")
    p.add_argument("--encoder_epochs", type=int, default=20,
                   help="Phenotype pre-training epochs of the tiny encoder (0 = random init).")
    p.add_argument("--encoder", default=None,
                   help="Use this tiny-encoder checkpoint (e.g. ctvl pretrain-encoder) instead; with a fresh --out.")
    p.add_argument("--workers", type=int, default=2, help="Preprocessing worker processes.")
    return p


def _distill_parser() -> ArgumentParser:
    p = ArgumentParser(description="Distil a Cox teacher's risk into a language model that writes it, on a "
                                   "survival table (--tabular.table FILE --tabular.time COL --tabular.event COL, or "
                                   "--tabular.dataset gbsg2|whas500|aids|flchain|veterans).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", required=True, help="Output folder (predictions.csv, metrics.json, student/).")
    p.add_class_arguments(TabularConfig, "tabular")
    p.add_class_arguments(DistillConfig, "distill")
    p.add_class_arguments(DecoderConfig, "decoder")
    p.add_class_arguments(LoRAConfig, "lora")
    p.add_class_arguments(TrainConfig, "train")
    return p


def _treatment_parser() -> ArgumentParser:
    return ArgumentParser(description="Treatment effects on survival: a baseline hazard x a treatment hazard ratio "
                                      "(factorised), S-/T-learners, IPW; `simulate` writes a table with known truth.")


def _treatment_simulate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write a simulated table with a known treatment effect (+ truth files).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", required=True, help="Table to write (.csv or .parquet); truth files beside it.")
    p.add_class_arguments(TreatmentSimConfig, "sim")
    return p


def _treatment_fit_parser() -> ArgumentParser:
    p = ArgumentParser(description="Fit a treatment model on a survival table (--tabular.table FILE --tabular.time "
                                   "COL --tabular.event COL --treatment.column COL, or --tabular.dataset aids|gbsg2 ...).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", required=True, help="Output folder (hazard_ratios.csv, metrics.json, model/).")
    p.add_class_arguments(TabularConfig, "tabular")
    p.add_class_arguments(TreatmentConfig, "treatment")
    return p


def _synth_tabular(args: Namespace) -> int:
    from ctvl.workflows.synth_tabular import run_synth_fit, run_synth_report, run_synth_sample

    ns = args[args.action]
    if args.action == "fit":
        run_synth_fit(_as(TabularConfig, ns.tabular), _as(SynthTabularConfig, ns.synth), ns.out)
    elif args.action == "sample":
        run_synth_sample(ns.model, _as(SynthSampleConfig, ns.sample), ns.out)
    else:
        run_synth_report(ns.real, ns.synthetic, ns.out, holdout=ns.holdout, time=ns.time, event=ns.event,
                         cfg=_as(SynthReportConfig, ns.report))
    return 0


def _synth_tabular_parser() -> ArgumentParser:
    return ArgumentParser(description="Synthetic survival tables that keep hazard ratios (CK4Gen): `fit` a generator "
                                      "on a table, `sample` rows from it, `report` real vs synthetic.")


def _synth_tabular_fit_parser() -> ArgumentParser:
    p = ArgumentParser(description="Fit CK4Gen on the training split of a table (--tabular.table FILE --tabular.time "
                                   "COL --tabular.event COL, or --tabular.dataset gbsg2|aids|whas500|flchain).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--out", required=True, help="Output folder (model/, real_train.parquet, real_holdout.parquet).")
    p.add_class_arguments(TabularConfig, "tabular")
    p.add_class_arguments(SynthTabularConfig, "synth")
    return p


def _synth_tabular_sample_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write synthetic rows from a fitted generator (--model DIR/model --out FILE).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--model", required=True, help="The model/ folder written by `synth-tabular fit`.")
    p.add_argument("--out", required=True, help="Table to write (.csv or .parquet).")
    p.add_class_arguments(SynthSampleConfig, "sample")
    return p


def _synth_tabular_report_parser() -> ArgumentParser:
    p = ArgumentParser(description="Real vs synthetic: marginals, correlations, hazard ratios, KM, TSTR, augmentation, "
                                   "privacy; baselines fitted on the real rows in the same run.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--real", required=True, help="Real rows the generator saw (real_train.parquet of `fit`).")
    p.add_argument("--holdout", default=None, help="Real rows it did not see (real_holdout.parquet of `fit`).")
    p.add_argument("--synthetic", nargs="*", default=[], help="Synthetic tables (same columns), labelled by file stem.")
    p.add_argument("--time", default="time", help="Time column of every table.")
    p.add_argument("--event", default="event", help="Event column of every table.")
    p.add_argument("--out", required=True, help="Output folder (report.html, metrics.json, *.png).")
    p.add_class_arguments(SynthReportConfig, "report")
    return p


def _convert_gguf_parser() -> ArgumentParser:
    p = ArgumentParser(description="Turn a GGUF language model into a local Hugging Face folder (safetensors + "
                                   "tokenizer) for --decoder.path.")
    p.add_argument("--gguf", default=None, help="The .gguf file (default: SmolLM2-135M-Instruct of ctvl[smollm]).")
    p.add_argument("--out", required=True, help="Folder to write.")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="Saved parameter dtype.")
    return p


COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], int]]] = {
    "synth": (_synth_parser, _synth),
    "preprocess": (_preprocess_parser, _preprocess),
    "build-vqa": (_build_vqa_parser, _build_vqa),
    "import-review": (_import_review_parser, _import_review),
    "pretrain-encoder": (_pretrain_encoder_parser, _pretrain_encoder),
    "encode": (_encode_parser, _encode),
    "train": (_train_parser, _train),
    "predict": (_predict_parser, _predict),
    "generate": (_generate_parser, _generate),
    "evaluate": (_evaluate_parser, _evaluate),
    "demo": (_demo_parser, _demo),
    "distill": (_distill_parser, _distill),
    "convert-gguf": (_convert_gguf_parser, _convert_gguf),
    "treatment": (_treatment_parser, _treatment),
    "synth-tabular": (_synth_tabular_parser, _synth_tabular),
}
ACTIONS: dict[str, dict[str, Callable[[], ArgumentParser]]] = {
    "treatment": {"simulate": _treatment_simulate_parser, "fit": _treatment_fit_parser},
    "synth-tabular": {"fit": _synth_tabular_fit_parser, "sample": _synth_tabular_sample_parser,
                      "report": _synth_tabular_report_parser},
}
"""Commands with actions of their own (``ctvl treatment fit``): the action's parser per name."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ctvl", description="CT vision-language survival modelling.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="Logging level; DEBUG also shows the libraries' start-up notes.")
    sub = parser.add_subcommands(dest="command")
    for name, (make_parser, _) in COMMANDS.items():
        command = make_parser()
        sub.add_subcommand(name, command, help=command.description)
        if name in ACTIONS:  # jsonargparse: a level's subcommands are added after the level itself
            actions = command.add_subcommands(dest="action")
            for action, make_action in ACTIONS[name].items():
                action_parser = make_action()
                actions.add_subcommand(action, action_parser, help=action_parser.description)
    return parser


def _as(cls, ns: Namespace):
    """Namespace group -> frozen config dataclass (validated by its ``__post_init__``)."""
    if isinstance(ns, cls):
        return ns
    values = ns.as_dict() if isinstance(ns, Namespace) else dict(ns)
    values.pop("__path__", None)  # set by jsonargparse when the group came from a file (--cohort file.yaml)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def setup_logging(level: str) -> None:
    """Root handler at ``level``; above DEBUG, the libraries' notes (``QUIET_LOGGERS``/``_LINES``) are hidden."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_notes = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if show_notes else logging.WARNING)
    # nibabel gives its logger a stream handler of its own: propagated too, every line would print twice.
    logging.getLogger("nibabel.global").propagate = False
    for name, prefixes in QUIET_LINES.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _QuietLines)]:  # main() may run more than once
            logger.removeFilter(old)
        logger.addFilter(_QuietLines(prefixes, show=show_notes))


class _QuietLines(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``, unless ``show`` (at DEBUG)."""

    def __init__(self, prefixes: tuple[str, ...], show: bool):
        super().__init__()
        self.prefixes, self.show = prefixes, show

    def filter(self, record: logging.LogRecord) -> bool:
        return self.show or not record.getMessage().startswith(self.prefixes)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    _, handler = COMMANDS[args.command]
    try:
        return handler(args[args.command])
    except (ValueError, FileNotFoundError) as err:  # unusable input: a clear message, not a traceback
        log.error("%s: %s", args.command, err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
