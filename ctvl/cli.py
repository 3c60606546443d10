"""The ``ctvl`` command line: argument parsing only, then one call into the library.

Every sub-command takes its typed config from ``ctvl.config`` (dataclass fields become
``--group.field`` options, with the field docstrings as help) and an optional
``--config file.yaml`` holding the same keys. Run ``ctvl --help`` or
``ctvl <command> --help``.

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
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from ctvl.config import (
    ContrastiveConfig,
    CTRateConfig,
    CTVLConfig,
    DataConfig,
    PreprocessConfig,
    RunConfig,
    SyntheticCohortConfig,
    TrainConfig,
    VisionConfig,
    from_dict,
)

log = logging.getLogger("ctvl")

# Field docstrings in ctvl.config become the --help text of each option.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


def _synth(args: Namespace) -> int:
    from ctvl.data.synthetic import write_cohort

    cfg = _as(SyntheticCohortConfig, args.cohort)
    paths = write_cohort(cfg, Path(args.out), release=args.release)
    log.info("wrote %d cases to %s (manifest: %s)", cfg.n_cases, args.out, paths.manifest)
    return 0


def _preprocess(args: Namespace) -> int:
    from ctvl.data.ctrate import load_ctrate
    from ctvl.data.manifest import load_manifest
    from ctvl.data.preprocess import run_preprocess

    if bool(args.manifest) == bool(args.ctrate.root):
        raise SystemExit("give exactly one of --manifest or --ctrate.root")
    ctrate_cfg = _as(CTRateConfig, args.ctrate) if args.ctrate.root else None
    items = load_manifest(args.manifest) if args.manifest else load_ctrate(ctrate_cfg)
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
        from ctvl.train.loop import fit
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
                          shard=_shard(args), resume=not args.restart, save_embeddings=args.save_embeddings)
    log.info("predicted %d, skipped %d (done), failed %d of %d cases -> %s", summary.n_predicted,
             summary.n_skipped, summary.n_failed, summary.n_cases, args.out)
    return summary.exit_code


def _generate(args: Namespace) -> int:
    from ctvl.infer.generate import run_generate

    summary = run_generate(args.model, args.inputs, Path(args.out), clinical=args.clinical,
                           clinical_template=args.clinical_template, questions=args.questions,
                           max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                           workers=args.workers, resume=not args.restart)
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
    from ctvl.demo import run_demo

    return run_demo(Path(args.out), n_cases=args.n_cases, workers=args.workers, encoder_epochs=args.encoder_epochs,
                    encoder=Path(args.encoder) if args.encoder else None)


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
                                   "or survival (stage 2).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--local_rank", type=Optional[int], default=None,
                   help="Set by the deepspeed launcher; ignored (ranks come from the environment).")
    p.add_class_arguments(CTVLConfig, "model")
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(TrainConfig, "train")
    p.add_class_arguments(PreprocessConfig, "preprocess")
    p.add_class_arguments(ContrastiveConfig, "contrastive")
    return p


def _inputs_arguments(p: ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Exported model folder (a training run's model/).")
    p.add_argument("--inputs", required=True, help="Manifest (CSV/Parquet), folder of NIfTI files, or folder of DICOM series.")
    p.add_argument("--out", required=True, help="Output file (predict: .csv/.parquet) or folder (generate).")
    p.add_argument("--clinical", default=None, help="Clinical table joined on case_id (default: the manifest's columns).")
    p.add_argument("--clinical_template", default=None, help="Clinical sentence template (default: the training run's).")
    p.add_argument("--questions", default=None, help="Question templates YAML (default: the training run's / the six).")
    p.add_argument("--batch_size", type=int, default=4, help="Cases per forward pass.")
    p.add_argument("--workers", type=int, default=2, help="Preprocessing worker processes.")
    p.add_argument("--restart", action="store_true", help="Ignore finished cases in --out and start over.")


def _predict_parser() -> ArgumentParser:
    p = ArgumentParser(description="Risk scores for CT volumes (mean over the questions), resumable and sharded.")
    _inputs_arguments(p)
    p.add_argument("--horizons", type=Optional[list[float]], default=None,
                   help="DeepHit: times of the survival probabilities (default: every cut).")
    p.add_argument("--save_embeddings", action="store_true", help="Also write z_surv as <out stem>.z_surv.npy.")
    return p


def _generate_parser() -> ArgumentParser:
    p = ArgumentParser(description="Answers to the questions per volume (JSONL) and a per-case report.")
    _inputs_arguments(p)
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
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ctvl", description="CT vision-language survival modelling.")
    parser.add_argument("--log_level", default="INFO", help="Logging level.")
    sub = parser.add_subcommands(dest="command")
    for name, (make_parser, _) in COMMANDS.items():
        command = make_parser()
        sub.add_subcommand(name, command, help=command.description)
    return parser


def _as(cls, ns: Namespace):
    """Namespace group -> frozen config dataclass (validated by its ``__post_init__``)."""
    if isinstance(ns, cls):
        return ns
    values = ns.as_dict() if isinstance(ns, Namespace) else dict(ns)
    values.pop("__path__", None)  # set by jsonargparse when the group came from a file (--cohort file.yaml)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, handler = COMMANDS[args.command]
    try:
        return handler(args[args.command])
    except (ValueError, FileNotFoundError) as err:  # unusable input: a clear message, not a traceback
        log.error("%s: %s", args.command, err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
