#!/usr/bin/env bash
# Both suites, each printing its own summary; fails if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
py="${KOTARA_PYTHON:-.venv/bin/python}"
status=0
echo "== TypeScript (node:test) =="
node --import tsx --test --test-concurrency=1 test/*.test.ts || status=1
echo "== Python (pytest) =="
"$py" -m pytest -q python/tests || status=1
exit $status
