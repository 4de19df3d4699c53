#!/usr/bin/env bash
# Entry point of the workstation image: `wmpo <command> ...`; `accelerate launch ...`,
# `torchrun ...`, `bash` and `python ...` run as given (multi-GPU training).
set -eo pipefail
case "${1:-}" in
  accelerate|torchrun|python|python3|bash|sh) exec "$@" ;;
  *) exec wmpo "$@" ;;
esac
