#!/usr/bin/env bash
# Entry point of the ctvl image (docker/Dockerfile): a ctvl sub-command, or any program of the image.
#
#   docker run ctvl:0.1.0 train --config ...            -> ctvl train --config ...
#   docker run ctvl:0.1.0 --help                        -> ctvl --help
#   docker run ctvl:0.1.0 torchrun --nproc_per_node 8 -m ctvl.cli train ...   -> run as given
#   docker run ctvl:0.1.0 deepspeed ... / python ... / bash                   -> run as given
#
# Rule: an option or a word that is not a program on PATH goes to `ctvl`; a program runs as given.
# (No ctvl sub-command shares its name with a program of the image.)
set -euo pipefail

if [[ $# -eq 0 ]]; then
    exec ctvl --help
fi
if [[ "$1" == -* ]] || ! command -v -- "$1" > /dev/null 2>&1; then
    exec ctvl "$@"
fi
exec "$@"
