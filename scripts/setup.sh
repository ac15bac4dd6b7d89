#!/usr/bin/env bash
# Idempotent set-up of a checkout: node deps, the build, and the worker's Python
# environment. Safe to run again; each step is skipped when it is already done.
#   KOTARA_PYTHON=/path/to/python  use that environment instead of .venv (its torch
#                                  is kept; only missing packages are installed)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*" >&2; }

# 1. node dependencies (npm ci when the lock changed since the last install)
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing node dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

# 2. the build (dist/ from src/)
if [ ! -f dist/cli.js ] || [ -n "$(find src -newer dist/cli.js -print -quit)" ]; then
  say "building"
  npx tsc -p tsconfig.json
fi

# 3. the worker's Python
if [ -n "${KOTARA_PYTHON:-}" ]; then
  py="$KOTARA_PYTHON"
else
  py=.venv/bin/python
  if [ ! -x "$py" ]; then
    say "creating .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
fi
stamp=.kotara/setup-python.stamp
mkdir -p .kotara
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ "$(cat "$stamp")" != "$py" ]; then
  if ! "$py" -c 'import torch' 2>/dev/null; then
    # A pinned release: a range would pull the newest CUDA wheels even where
    # there is no GPU. This one is the CPU wheel on this project's machines.
    say "installing torch==2.13.0 into $py"
    "$py" -m pip install --disable-pip-version-check -q 'torch==2.13.0'
  fi
  say "installing requirements.txt into $py"
  "$py" -m pip install --disable-pip-version-check -q -r requirements.txt
  printf '%s' "$py" > "$stamp"
fi

# 4. the demo's held-out texts, cut from the interpreter's own docs and stdlib
#    (never committed: data/demo/ is ignored)
if [ ! -f data/demo/docs-heldout.txt ] && [ -f scripts/demo_text.py ]; then
  say "writing the demo's held-out texts to data/demo/"
  "$py" scripts/demo_text.py --out data/demo >/dev/null
fi
