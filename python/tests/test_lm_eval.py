"""Kotara's documents mode against lm-evaluation-harness itself (docs/lm-eval.md).

For the same model, documents and max_length, lm-eval's HF backend (`loglikelihood_rolling`
on a local task: word_perplexity, byte_perplexity, bits_per_byte) and Kotara's CLI
(`dataset.mode: documents`, the model fused with itself; its row under models) must give
the same numbers. Skipped where lm_eval is not importable (it is not a dependency of the
worker): run it in an environment that has it, e.g.

    python -m venv /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install torch==2.13.0 \\
        transformers==5.24.0 lm_eval pyzmq msgpack jsonschema pytest
    /tmp/lmeval-venv/bin/python -m pytest -q python/tests/test_lm_eval.py

Tolerance, from an error analysis: both sides compute each token's log-probability in
float32 from the same float32 weights and sum in float64 (lm-eval per window, Kotara per
window and then per document). What differs is the float32 forward: lm-eval runs
`model(input_ids)` on its own batches, Kotara the body and then the head on the scored rows,
so reductions run in another order: a token's log-probability moves by a few float32 ulps
(~1e-6 nats at 5-10 nats). Over the 2,926 scored tokens here (Σ NLL ~ 18,000 nats) that is
~5e-5 nats as a random walk, 3e-3 at worst (every error of one sign): ~2e-7 relative in Σ
NLL, and in word perplexity exp(Σ NLL / W) with W ~ 1,000 words a relative 3e-3 / W ~ 3e-6
at worst. rtol 1e-5 holds that worst case with a factor of 3. Measured (docs/lm-eval.md):
~1e-8 relative in Σ NLL, 1e-7 in word perplexity.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"
KOTARA = ROOT / "bin" / "kotara"
MAX_LENGTH = 48


def documents() -> list[str]:
    import tiny_models
    docs = [tiny_models.make_text(n, seed) for n, seed in [(3, 1), (40, 2), (1, 3), (12, 4), (90, 5)]]
    docs[1] = "  " + docs[1] + "\n"                    # leading and trailing whitespace: lm-eval's word count
    docs[3] = docs[3].replace(".", " — déjà vu.", 2)    # multi-byte characters
    return docs


def lm_eval_scores(model_dir: Path, data: Path, tasks_dir: Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    (tasks_dir / "kotara_local.yaml").write_text(f"""task: kotara_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},max_length={MAX_LENGTH},dtype=float32,device=cpu",
                          tasks=["kotara_local"], task_manager=TaskManager(include_path=str(tasks_dir)), batch_size=4,
                          bootstrap_iters=0)
    r = out["results"]["kotara_local"]
    return {k: r[f"{k},none"] for k in ("word_perplexity", "byte_perplexity", "bits_per_byte")}


def kotara_scores(model_dir: Path, data: Path, work: Path) -> dict:
    config = work / f"{model_dir.name}.yaml"
    config.write_text(f"""models:
  - {{ ref: {model_dir}, dtype: float32, device: cpu }}
  - {{ ref: {model_dir}, dtype: float32, device: cpu }}
dataset: {{ path: {data}, field: text, mode: documents, max_length: {MAX_LENGTH} }}
strategies: [average]
runtime: {{ batch_size: 4 }}
""")
    metrics = work / f"{model_dir.name}.json"
    env = {**os.environ, "KOTARA_PYTHON": sys.executable}
    subprocess.run(["node", str(KOTARA), "run", str(config), "--metrics", str(metrics), "--quiet"], check=True, env=env,
                   capture_output=True, timeout=600)
    m = json.loads(metrics.read_text())
    return {**{k: m["models"][0][k] for k in ("word_perplexity", "byte_perplexity", "bits_per_byte")},
            "dataset": m["dataset"]}


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / "dist" / "cli.js").exists(),
                    reason="needs node and the build (dist/)")
@pytest.mark.parametrize("name", ["twin-a", "sibling"])   # a GPT-2 and a Llama (its tokenizer's BOS)
def test_documents_mode_equals_lm_eval(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    data = tmp_path / "docs.jsonl"
    docs = documents()
    data.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    ref = lm_eval_scores(DEMO / name, data, tasks)
    got = kotara_scores(DEMO / name, data, tmp_path)
    # the denominators, as lm-eval counts them
    import re
    assert got["dataset"]["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert got["dataset"]["words"] == sum(len(re.split(r"\s+", d)) for d in docs)
    print(f"{name}: lm-eval {ref} kotara { {k: got[k] for k in ref} }")
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-5), k
    # the same Σ NLL: bits per byte agree in their log, too
    assert math.log(got["byte_perplexity"]) == pytest.approx(math.log(ref["byte_perplexity"]), rel=1e-5)
