#!/usr/bin/env bash
# Both suites, each printing its own summary; fails if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
py="${KOTARA_PYTHON:-.venv/bin/python}"
# as the worker does (src/worker.ts): spinning OpenMP threads crawl on shared cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
status=0
echo "== TypeScript (node:test) =="
node --import tsx --test --test-concurrency=1 test/*.test.ts || status=1
echo "== Python (pytest) =="
"$py" -m pytest -q python/tests || status=1
exit $status
