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

# 3. the worker's Python: .venv (or KOTARA_PYTHON), filled by `kotara setup` (the same
#    steps an installed package uses: torch==2.13.0 when no torch is there, then what
#    requirements.txt lists and that Python lacks; an existing torch is kept), then the
#    checkout's test extras (requirements-dev.txt). Skipped while nothing changed.
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
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ "$(cat "$stamp")" != "$py" ]; then
  node bin/kotara setup --python "$py"
  if ! "$py" -c 'import pytest' 2>/dev/null; then
    say "installing requirements-dev.txt into $py"
    "$py" -m pip install --disable-pip-version-check -q -r requirements-dev.txt
  fi
  printf '%s' "$py" > "$stamp"
fi

# 4. the demo's held-out texts, cut from the interpreter's own docs and stdlib
#    (never committed: data/demo/ is ignored)
if { [ ! -f data/demo/docs-heldout.txt ] || [ ! -f data/demo/docs-heldout-2k.txt ] || [ ! -f data/demo/docs-heldout-640.txt ] \
     || [ ! -f data/demo/docs-dev.txt ] || [ ! -f data/demo/docs-test-2k.txt ]; } && [ -f scripts/demo_text.py ]; then
  say "writing the demo's held-out texts to data/demo/"
  "$py" scripts/demo_text.py --out data/demo >/dev/null
fi
