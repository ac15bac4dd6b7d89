"""Kotara's own demo models (models/demo/, scripts/train_demo.py, scripts/demo_text.py).

- the corpora come from the interpreter, split deterministically, held-out text
  never trained on;
- the training script, on a tiny budget (seconds), makes models that load through
  Kotara's real loading path (kotara_worker.models.load_models) and score held-out
  text far better than a random model of the same shape;
- the committed demo models load, share one vocabulary, fit the size limits, and
  behave as the demo says (fusion beats each model alone; the far model is worse);
- configs/demo.yaml validates and points at them.
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
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
DEMO = ROOT / "models" / "demo"
CONFIG = ROOT / "configs" / "demo.yaml"
NAMES = ["twin-a", "twin-b", "sibling", "far"]
for p in (ROOT / "python", SCRIPTS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import demo_text  # noqa: E402  (scripts/demo_text.py)

MB = 1_000_000


# ----------------------------------------------------------------------------- helpers

def spec(ref: Path, dtype: str = "auto") -> dict:
    return {"ref": str(ref), "revision": None, "trust_remote_code": False, "dtype": dtype,
            "device": "cpu"}


def load(refs: list[Path], max_length: int, dtype: str = "auto"):
    from kotara_worker.models import load_models
    return load_models([spec(r, dtype) for r in refs], None, max_length, False, lambda _msg: None)


def perplexities(models: dict, ids: torch.Tensor, max_length: int, stride: int,
                 pairs: list[tuple[str, str]] = ()) -> dict[str, float]:
    """PPL of each model alone and of the plain logit average of each pair (T = 1),
    over Kotara's windows (kotara_worker.windows.plan_windows), one forward per model
    per window."""
    from kotara_worker.windows import plan_windows
    nll = {k: 0.0 for k in [*models, *(f"{a}+{b}" for a, b in pairs)]}
    count = 0
    for w in plan_windows(ids.numel(), max_length, stride):
        inp = ids[w.start:w.end].unsqueeze(0)
        rows = slice(w.first_scored - 1 - w.start, w.end - 1 - w.start)
        targets = ids[w.first_scored:w.end].unsqueeze(1)
        logits = {k: m.full_logits(inp)[0, rows].float() for k, m in models.items()}
        fused = {f"{a}+{b}": (logits[a] + logits[b]) / 2 for a, b in pairs}
        for k, lg in {**logits, **fused}.items():
            nll[k] -= torch.log_softmax(lg, -1).gather(1, targets).sum().item()
        count += targets.numel()
    return {k: math.exp(v / count) for k, v in nll.items()}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a few shared cores: more intra-op threads only add sync cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def heldout_ids(tokenizer, chars: int) -> torch.Tensor:
    text = demo_text.docs_domain().heldout_text[:chars]
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


# ----------------------------------------------------------------------------- corpora

def test_corpora_are_deterministic_and_held_out_text_is_never_trained_on():
    a, b = demo_text.docs_domain(), demo_text.docs_domain()
    assert a.train == b.train and a.heldout == b.heldout
    assert len(a.heldout_text.encode()) >= 20_000
    assert len(a.heldout_text) <= demo_text.DOCS_HELDOUT_MAX + 1_000
    assert not {k for k, _ in a.train} & {k for k, _ in a.heldout}
    train_paras = {demo_text._norm(p) for _, t in a.train for p in demo_text._paragraphs(t)}
    held_paras = {demo_text._norm(p) for _, t in a.heldout for p in demo_text._paragraphs(t)}
    assert not {p for p in held_paras if len(p) >= 40} & train_paras

    code = demo_text.code_domain()
    assert code.heldout and code.train
    assert not {k for k, _ in code.train} & {k for k, _ in code.heldout}
    assert not any(k.startswith(("test/", "site-packages/", "pydoc_data/")) for k, _ in code.train)


def test_cli_writes_both_held_out_files(tmp_path):
    subprocess.run([sys.executable, str(SCRIPTS / "demo_text.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    docs = (tmp_path / "docs-heldout.txt").read_text(encoding="utf-8")
    assert docs == demo_text.docs_domain().heldout_text
    assert (tmp_path / "code-heldout.txt").stat().st_size > 10_000


# ----------------------------------------------------------------------------- training

TINY_ARGS = ["--preset", "tiny", "--only", "twin-a", "--only", "sibling", "--no-eval"]


def train_tiny(out: Path) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train_demo.py"), "--out", str(out), *TINY_ARGS],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The training script on a tiny budget (a few seconds): GPT-2 twin-a, Llama sibling."""
    out = tmp_path_factory.mktemp("tiny-demo")
    train_tiny(out)
    return out


def test_tiny_training_run_beats_a_random_model_through_kotaras_loading_path(tiny_run):
    out = tiny_run
    for name in ("twin-a", "sibling"):
        assert (out / name / "model.safetensors").is_file()
        assert (out / name / "tokenizer.json").is_file()
        info = json.loads((out / name / "training.json").read_text())
        assert info["steps"] == info["steps_planned"] > 0

    # A random model of the same shape, saved the same way.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    rand = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out / "twin-a"))
    rand.save_pretrained(out / "random")
    AutoTokenizer.from_pretrained(out / "twin-a").save_pretrained(out / "random")

    tokenizer, models = load([out / "twin-a", out / "sibling", out / "random"], max_length=64)
    assert [m.vocab_size for m in models] == [len(tokenizer)] * 3
    ids = heldout_ids(tokenizer, 8_000)
    ppl = perplexities(dict(zip(["gpt2", "llama", "random"], models)), ids, 64, 32)
    assert ppl["random"] > 0.7 * len(tokenizer), ppl          # about uniform
    assert ppl["gpt2"] < 0.6 * ppl["random"], ppl
    assert ppl["llama"] < 0.6 * ppl["random"], ppl


def test_tiny_training_is_deterministic(tiny_run, tmp_path):
    train_tiny(tmp_path)
    for name in ("twin-a", "sibling"):
        assert ((tmp_path / name / "model.safetensors").read_bytes()
                == (tiny_run / name / "model.safetensors").read_bytes()), name
    assert ((tmp_path / "tokenizer" / "tokenizer.json").read_text()
            == (tiny_run / "tokenizer" / "tokenizer.json").read_text())


# ----------------------------------------------------------------------------- committed models

def test_committed_demo_models_fit_the_limits():
    total = 0
    for name in NAMES:
        d = DEMO / name
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file(), d
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        assert size <= 4 * MB, (name, size)
        total += size
    total += sum(p.stat().st_size for p in (DEMO / "tokenizer").iterdir() if p.is_file())
    assert total <= 16 * MB
    assert (DEMO / "README.md").is_file()


def test_committed_demo_models_share_one_vocabulary():
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(DEMO / "tokenizer").get_vocab()
    assert len(ref) >= 1024
    for name in NAMES:
        assert AutoTokenizer.from_pretrained(DEMO / name).get_vocab() == ref, name


@pytest.fixture(scope="module")
def demo_models():
    tokenizer, models = load([DEMO / n for n in NAMES], max_length=256, dtype="float32")
    return tokenizer, dict(zip(NAMES, models))


def test_committed_demo_models_load_through_kotaras_loading_path(demo_models):
    tokenizer, models = demo_models
    assert len(models) == 4
    for name, m in models.items():
        assert m.vocab_size == len(tokenizer), name
        assert m.max_positions is None or m.max_positions >= 256


def test_committed_demo_models_do_what_the_demo_says(demo_models):
    tokenizer, models = demo_models
    ids = heldout_ids(tokenizer, 12_000)
    ppl = perplexities(models, ids, 256, 128, pairs=[("twin-a", "sibling"), ("twin-a", "twin-b")])
    assert ppl["twin-a+sibling"] < min(ppl["twin-a"], ppl["sibling"]), ppl
    assert ppl["twin-a+twin-b"] < min(ppl["twin-a"], ppl["twin-b"]), ppl
    assert ppl["far"] > 2 * max(ppl["twin-a"], ppl["twin-b"], ppl["sibling"]), ppl


# ----------------------------------------------------------------------------- the config

def test_demo_config_points_at_the_demo_models_and_held_out_docs():
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(CONFIG.read_text())
    base = CONFIG.parent
    refs = [(base / m["ref"]).resolve() for m in cfg["models"]]
    assert refs == [DEMO / "twin-a", DEMO / "sibling"]
    assert all((r / "config.json").is_file() for r in refs)
    # the held-out text the set-up writes with `python scripts/demo_text.py`
    assert (base / cfg["dataset"]["path"]).resolve() == ROOT / "data" / "demo" / "docs-heldout.txt"
    L, S = cfg["dataset"]["max_length"], cfg["dataset"]["stride"]
    assert 0 < S <= L
    for r in refs:
        c = json.loads((r / "config.json").read_text())
        assert L <= c.get("n_positions", c.get("max_position_embeddings"))
    names = {s if isinstance(s, str) else s["type"] for s in cfg["strategies"]}
    assert names == {"average", "poe", "entropy", "gap"}


def test_demo_config_validates_with_kotaras_config_loader():
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "tsx").is_dir():
        pytest.skip("node and the node dependencies (npm ci) are needed")
    script = ("import {loadConfig} from './src/config.ts';"
              "const p = await loadConfig('configs/demo.yaml', {checkFiles: false});"
              "console.log(JSON.stringify({models: p.models, settings: p.settings, dataset: p.dataset}));")
    proc = subprocess.run([node, "--import", "tsx", "--input-type=module", "-e", script],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [Path(m["ref"]) for m in plan["models"]] == [DEMO / "twin-a", DEMO / "sibling"]
    assert sorted(s["type"] for s in plan["settings"]) == ["average", "entropy", "gap", "poe"]
    assert Path(plan["dataset"]["path"]) == ROOT / "data" / "demo" / "docs-heldout.txt"
