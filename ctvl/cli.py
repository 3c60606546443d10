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
    encode      run the frozen image encoder once over a preprocessed cache (feature cache)
    train       one training stage (1: VQA pre-training, 2: joint survival fine-tuning)
    demo        the main job on the built-in synthetic cohort with tiny models
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from ctvl.config import (
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


def _encode(args: Namespace) -> int:
    from ctvl.infer.encode import run_encode
    from ctvl.models.vision3d import build_image_encoder, load_merlin_image_encoder

    vision = _as(VisionConfig, args.vision)
    encoder = load_merlin_image_encoder(vision.checkpoint, vision) if vision.checkpoint else None
    if encoder is None:
        raise SystemExit("--vision.checkpoint is required: features of a random encoder are meaningless")
    summary = run_encode(encoder, args.cache, args.out, batch_size=args.batch_size)
    return 1 if summary.n_failed else 0


def _train(args: Namespace) -> int:
    from ctvl.train.loop import fit

    values = {k: v for k, v in args.as_dict().items() if k in ("model", "data", "train", "preprocess")}
    result = fit(from_dict(RunConfig, values))
    log.info("finished %d steps; outputs in %s", result.steps, result.out_dir)
    return 0


def _demo(args: Namespace) -> int:
    from ctvl.demo import run_demo

    return run_demo(Path(args.out), n_cases=args.n_cases, workers=args.workers)


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


def _encode_parser() -> ArgumentParser:
    p = ArgumentParser(description="Precompute frozen-encoder features of a preprocessed cache.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--cache", required=True, help="Preprocessed-volume cache (ctvl preprocess).")
    p.add_argument("--out", required=True, help="Feature cache folder to fill.")
    p.add_argument("--batch_size", type=int, default=2, help="Volumes per forward pass.")
    p.add_class_arguments(VisionConfig, "vision")
    return p


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(description="Train one stage: --train.stage vqa (stage 1) or survival (stage 2).")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_class_arguments(CTVLConfig, "model")
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(TrainConfig, "train")
    p.add_class_arguments(PreprocessConfig, "preprocess")
    return p


def _demo_parser() -> ArgumentParser:
    p = ArgumentParser(description="Run the main job on the built-in synthetic cohort with tiny models.")
    p.add_argument("--out", default="demo_out", help="Output folder.")
    p.add_argument("--n_cases", type=int, default=200, help="Synthetic cohort size.")
    p.add_argument("--workers", type=int, default=2, help="Preprocessing worker processes.")
    return p


COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], int]]] = {
    "synth": (_synth_parser, _synth),
    "preprocess": (_preprocess_parser, _preprocess),
    "build-vqa": (_build_vqa_parser, _build_vqa),
    "import-review": (_import_review_parser, _import_review),
    "encode": (_encode_parser, _encode),
    "train": (_train_parser, _train),
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
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, handler = COMMANDS[args.command]
    return handler(args[args.command])


if __name__ == "__main__":
    sys.exit(main())
