#!/usr/bin/env bash
# Both suites, each printing its own summary; fails if either fails. The Python suite
# runs twice: with the ATen CPU kernels this machine picks, then with a second set it
# does not pick by itself (float results differ by rounding between kernel sets, and
# every tolerance in python/tests must hold for each).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
py="${KOTARA_PYTHON:-.venv/bin/python}"
# as the worker does (src/worker.ts): spinning OpenMP threads crawl on shared cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
status=0
echo "== TypeScript (tsc: tests, bench and scripts type-check against src) =="
npx tsc -p test/tsconfig.json && npx tsc -p bench/tsconfig.json && echo "type-check ok" || status=1
echo "== TypeScript (node:test) =="
node --import tsx --test --test-concurrency=1 test/*.test.ts || status=1

# the kernel set torch picks (under the given ATEN_CPU_CAPABILITY, or by itself when unset)
capability() { "$py" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())' 2>/dev/null || echo unknown; }
native="$(unset ATEN_CPU_CAPABILITY; capability)"
case "$native" in
  AVX512) second=avx2 ;;
  *) second=default ;;   # AVX2, and anything else: the generic kernels every build has
esac

first="${ATEN_CPU_CAPABILITY:+ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY}"
echo "== Python (pytest), ATen CPU kernels: $(capability) (${first:-as this machine picks them}) =="
"$py" -m pytest -q python/tests || status=1
echo "== Python (pytest), ATen CPU kernels: $(ATEN_CPU_CAPABILITY=$second capability) (ATEN_CPU_CAPABILITY=$second; this machine picks $native) =="
ATEN_CPU_CAPABILITY="$second" "$py" -m pytest -q python/tests || status=1
exit $status
