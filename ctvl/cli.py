"""The ``ctvl`` command line: argument parsing only, then one call into the library.

Every sub-command takes its typed config from ``ctvl.config`` (dataclass fields become
``--group.field`` options, with the field docstrings as help) and an optional
``--config file.yaml`` holding the same keys. Run ``ctvl --help`` or
``ctvl <command> --help``.

Sub-commands:
    synth       write a synthetic chest-CT cohort (CT-RATE layout + survival manifest)
    preprocess  Merlin preprocessing of a manifest or CT-RATE folder into a float16 cache
    demo        the main job on the built-in synthetic cohort with tiny models
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from ctvl.config import CTRateConfig, PreprocessConfig, SyntheticCohortConfig

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


def _demo_parser() -> ArgumentParser:
    p = ArgumentParser(description="Run the main job on the built-in synthetic cohort with tiny models.")
    p.add_argument("--out", default="demo_out", help="Output folder.")
    p.add_argument("--n_cases", type=int, default=200, help="Synthetic cohort size.")
    p.add_argument("--workers", type=int, default=2, help="Preprocessing worker processes.")
    return p


COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], int]]] = {
    "synth": (_synth_parser, _synth),
    "preprocess": (_preprocess_parser, _preprocess),
    "demo": (_demo_parser, _demo),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ctvl", description="CT vision-language survival modelling.")
    parser.add_argument("--log_level", default="INFO", help="Logging level.")
    sub = parser.add_subcommands(dest="command")
    for name, (make_parser, _) in COMMANDS.items():
        sub.add_subcommand(name, make_parser(), help=make_parser().description)
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
