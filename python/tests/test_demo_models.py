"""Kotara's own demo models (models/demo/, scripts/train_demo.py, scripts/demo_text.py).

- the corpora come from the interpreter, split deterministically, held-out text
  never trained on;
- the training script, on a tiny budget (seconds), makes models that load through
  Kotara's real loading path (kotara_worker.models.load_models) and score held-out
  text far better than a random model of the same shape;
- the committed demo models load, share one vocabulary, fit the size limits, and
  behave as the demo says (fusion beats each model alone; the far model is worse);
- the cousin (models/demo/cousin) has a sentencepiece-style tokenizer of its own that
  spells every held-out text exactly, byte for byte (SPEC §7's round trip), loads
  through the same path (and is refused there next to the family: another
  vocabulary), and scores held-out docs about as well per byte as the family;
- configs/demo.yaml validates and points at them; configs/cross-tokenizer.yaml
  points at the cousin and sibling, with byte windows that fit both.
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
CROSS_CONFIG = ROOT / "configs" / "cross-tokenizer.yaml"
DATA = ROOT / "data" / "demo"          # written by `python scripts/demo_text.py` (the set-up)
NAMES = ["twin-a", "twin-b", "sibling", "far"]   # the family: one tokenizer
COUSIN = DEMO / "cousin"                          # a tokenizer of its own
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


def bits_per_byte(model, tokenizer, text: str, max_length: int, stride: int) -> float:
    """Total NLL of the text in the model's own tokens (Kotara's windows) / (ln 2 x its
    UTF-8 bytes): the number that compares models whose tokenizers differ."""
    from kotara_worker.windows import plan_windows
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    nll = 0.0
    for w in plan_windows(ids.numel(), max_length, stride):
        logits = model.full_logits(ids[w.start:w.end].unsqueeze(0))[0, w.first_scored - 1 - w.start:w.end - 1 - w.start]
        nll -= torch.log_softmax(logits.float(), -1).gather(1, ids[w.first_scored:w.end].unsqueeze(1)).sum().item()
    return nll / (math.log(2) * len(text.encode("utf-8")))


def assert_byte_round_trip(tokenizer, text: str) -> tuple[list[int], bytes]:
    """SPEC §7's decode-free round trip, by kotara_worker.token_bytes, and the same
    by hand: '▁' -> space, <0xNN> -> byte NN, the rest its UTF-8."""
    from kotara_worker.token_bytes import canonical_ids, token_bytes
    ids, prefix = canonical_ids(tokenizer, token_bytes(tokenizer), text)   # raises if not
    by_hand = b""
    for piece in tokenizer.convert_ids_to_tokens(ids):
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            by_hand += bytes([int(piece[3:5], 16)])
        else:
            by_hand += piece.replace("\u2581", " ").encode("utf-8")
    assert prefix == (b"" if text.startswith(" ") else b" ")       # the dummy prefix (SPEC §7)
    assert by_hand == prefix + text.encode("utf-8")
    return ids, prefix


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
    # the short cut for byte space: the first whole lines, at most DOCS_HELDOUT_SHORT_BYTES
    short = (tmp_path / "docs-heldout-2k.txt").read_bytes()
    assert docs.encode("utf-8").startswith(short) and short.endswith(b"\n")
    assert demo_text.DOCS_HELDOUT_SHORT_BYTES - 400 < len(short) <= demo_text.DOCS_HELDOUT_SHORT_BYTES
    nxt = docs.encode("utf-8")[len(short):].split(b"\n", 1)[0] + b"\n"
    assert len(short) + len(nxt) > demo_text.DOCS_HELDOUT_SHORT_BYTES   # the longest such cut
    one = (tmp_path / "docs-heldout-640.txt").read_bytes()
    assert short.startswith(one) and one.endswith(b"\n") and 0 < len(one) <= demo_text.DOCS_HELDOUT_WINDOW_BYTES


# ----------------------------------------------------------------------------- training

TINY_ARGS = ["--preset", "tiny", "--only", "twin-a", "--only", "sibling", "--only", "cousin", "--no-eval"]


def train_tiny(out: Path) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train_demo.py"), "--out", str(out), *TINY_ARGS],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The training script on a tiny budget (a few seconds): GPT-2 twin-a, Llama sibling,
    and the Llama cousin with its own tokenizer."""
    out = tmp_path_factory.mktemp("tiny-demo")
    train_tiny(out)
    return out


def test_tiny_training_run_beats_a_random_model_through_kotaras_loading_path(tiny_run):
    out = tiny_run
    for name in ("twin-a", "sibling", "cousin"):
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


def test_tiny_cousin_has_its_own_tokenizer_and_beats_a_random_model(tiny_run):
    out = tiny_run
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    info = json.loads((out / "cousin" / "training.json").read_text())
    assert info["tokenizer"] == "own" and info["vocab_size"] == info["own_vocab_size"] == 640
    own = AutoTokenizer.from_pretrained(out / "cousin")
    assert len(own) == 640 and own.get_vocab() != AutoTokenizer.from_pretrained(out / "tokenizer").get_vocab()
    assert_byte_round_trip(own, demo_text.docs_domain().heldout_text[:8_000])

    torch.manual_seed(0)
    rand = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out / "cousin"))
    rand.save_pretrained(out / "random-cousin")
    own.save_pretrained(out / "random-cousin")
    tokenizer, models = load([out / "cousin", out / "random-cousin"], max_length=64)
    assert tokenizer.get_vocab() == own.get_vocab() and models[0].vocab_size == 640
    ppl = perplexities(dict(zip(["cousin", "random"], models)), heldout_ids(tokenizer, 8_000), 64, 32)
    assert ppl["random"] > 0.7 * len(tokenizer), ppl
    assert ppl["cousin"] < 0.6 * ppl["random"], ppl


def test_tiny_training_is_deterministic(tiny_run, tmp_path):
    train_tiny(tmp_path)
    for name in ("twin-a", "sibling", "cousin"):
        assert ((tmp_path / name / "model.safetensors").read_bytes()
                == (tiny_run / name / "model.safetensors").read_bytes()), name
    for tok in ("tokenizer", "cousin"):
        assert ((tmp_path / tok / "tokenizer.json").read_text()
                == (tiny_run / tok / "tokenizer.json").read_text()), tok


# ----------------------------------------------------------------------------- committed models

def test_committed_demo_models_fit_the_limits():
    total = 0
    for name in [*NAMES, COUSIN.name]:
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


# ----------------------------------------------------------------------------- the cousin

def test_cousin_has_a_sentencepiece_style_tokenizer_of_its_own():
    from transformers import AutoTokenizer
    from kotara_worker.token_bytes import has_dummy_prefix, start_token, token_bytes
    tok = AutoTokenizer.from_pretrained(COUSIN)
    family = AutoTokenizer.from_pretrained(DEMO / "tokenizer")
    assert tok.get_vocab() != family.get_vocab() and len(tok) == 3072 != len(family)
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert spec["normalizer"] is None                                  # no lowercasing, no NFKC
    assert spec["pre_tokenizer"]["type"] == "Metaspace" and spec["pre_tokenizer"]["prepend_scheme"] == "first"
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is True
    assert spec["model"]["unk_token"] is None and tok.unk_token_id is None
    vocab = tok.get_vocab()
    assert all(vocab[f"<0x{b:02X}>"] == 2 + b for b in range(256))     # every byte has a token
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>") and start_token(tok) == vocab["<s>"] == 0
    assert tok("x")["input_ids"][0] == 0                               # BOS before every text
    assert has_dummy_prefix(tok)
    table = token_bytes(tok)
    assert [i for i, b in enumerate(table) if b is None] == [0, 1]     # only BOS and EOS write nothing
    info = json.loads((COUSIN / "training.json").read_text())
    assert info["tokenizer"] == "own" and info["vocab_size"] == 3072 and info["steps"] == 480


def test_cousin_tokenizer_round_trips_any_text_at_the_byte_level():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(COUSIN)
    ids, _ = assert_byte_round_trip(tok, demo_text.docs_domain().heldout_text)
    assert 15_000 < len(ids) < 25_000
    # characters it never saw: byte-fallback tokens, one per byte
    text = "na\u00efve \U0001F40D\tx\x00\x7f\r\n  two  spaces\u00a0 \u2028\ufeff end"
    ids, _ = assert_byte_round_trip(tok, text)
    pieces = tok.convert_ids_to_tokens(ids)
    assert "<0xF0>" in pieces and "<0x00>" in pieces and "<0x09>" in pieces
    assert_byte_round_trip(tok, " a text that starts with a space")     # no second dummy space
    # what no Metaspace tokenizer can spell: its own space mark in the text (it reads as ' ')
    from kotara_worker.token_bytes import ByteSpaceError, canonical_ids, token_bytes
    with pytest.raises(ByteSpaceError):
        canonical_ids(tok, token_bytes(tok), "a\u2581b")


@pytest.mark.parametrize("name", ["docs-heldout.txt", "code-heldout.txt", "docs-heldout-2k.txt", "docs-heldout-640.txt"])
def test_cousin_tokenizer_round_trips_the_held_out_files_at_the_byte_level(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is written by `python scripts/demo_text.py` (the set-up)")
    from transformers import AutoTokenizer
    text = path.read_text(encoding="utf-8")
    ids, prefix = assert_byte_round_trip(AutoTokenizer.from_pretrained(COUSIN), text)
    assert prefix == b" " and len(ids) < len(text)


@pytest.fixture(scope="module")
def cousin_model():
    tokenizer, models = load([COUSIN], max_length=256, dtype="float32")
    return tokenizer, models[0]


def test_cousin_loads_through_kotaras_loading_path_and_is_refused_next_to_the_family(cousin_model):
    from transformers import AutoTokenizer
    from kotara_worker.protocol import RequestError
    tokenizer, m = cousin_model
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(COUSIN).get_vocab()
    assert m.vocab_size == len(tokenizer) == 3072
    assert m.max_positions is None or m.max_positions >= 256
    # token space needs one vocabulary (SPEC §3): only byte space (SPEC §7) can fuse them
    for refs in ([COUSIN, DEMO / "sibling"], [DEMO / "sibling", COUSIN]):
        with pytest.raises(RequestError) as e:
            load(refs, max_length=256)
        assert e.value.code == "tokenizer_mismatch"


def test_cousin_scores_held_out_docs_about_as_well_per_byte_as_its_family(cousin_model, demo_models):
    text = demo_text.docs_domain().heldout_text[:12_000]
    tokenizer, cousin = cousin_model
    family_tok, family = demo_models
    bpb = {"cousin": bits_per_byte(cousin, tokenizer, text, 256, 128),
           **{n: bits_per_byte(family[n], family_tok, text, 256, 128) for n in ("sibling", "twin-a", "far")}}
    # measured: cousin 2.43, sibling 2.30, twin-a 2.43, far 2.88 on these 12,000 characters
    # (the card, all the held-out docs: 2.29, 2.15, 2.27, 2.80)
    assert 1.5 < bpb["cousin"] < 1.15 * bpb["sibling"], bpb
    assert bpb["cousin"] < 1.1 * bpb["twin-a"] and bpb["cousin"] < bpb["far"], bpb
    ppl = perplexities({"cousin": cousin}, heldout_ids(tokenizer, 12_000), 256, 128)["cousin"]
    assert ppl < 0.15 * len(tokenizer), ppl          # measured 214 (uniform: 3072)


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


def test_cross_tokenizer_config_fuses_the_cousin_and_sibling_in_byte_space():
    """configs/cross-tokenizer.yaml (space: auto resolves to bytes: the vocabularies differ).
    Its `space` and `bytes` keys are new (SPEC §4, §7): the TS config loader is checked
    on it once it knows them."""
    yaml = pytest.importorskip("yaml")
    from transformers import AutoTokenizer
    from kotara_worker.token_bytes import canonical_ids, token_bytes
    cfg = yaml.safe_load(CROSS_CONFIG.read_text())
    base = CROSS_CONFIG.parent
    assert cfg["space"] == "auto" and cfg["bytes"] == {"beam": 8, "prune": 0}
    refs = [(base / m["ref"]).resolve() for m in cfg["models"]]
    assert refs == [COUSIN, DEMO / "sibling"]
    toks = [AutoTokenizer.from_pretrained(r) for r in refs]
    assert toks[0].get_vocab() != toks[1].get_vocab()                  # so auto means bytes
    path = (base / cfg["dataset"]["path"]).resolve()
    assert path == DATA / "docs-heldout-2k.txt"
    L, S = cfg["dataset"]["max_length"], cfg["dataset"]["stride"]     # bytes
    assert 0 < S <= L
    names = {s if isinstance(s, str) else s["type"] for s in cfg["strategies"]}
    assert names == {"average", "poe", "entropy", "gap"}
    if not path.is_file():
        pytest.skip(f"{path} is written by `python scripts/demo_text.py` (the set-up)")
    # every byte window's tokens (its dummy prefix included) and the start token fit each
    # model's context (windows cut back to a character boundary here, so with a margin)
    data = path.read_bytes()
    assert len(data) <= demo_text.DOCS_HELDOUT_SHORT_BYTES
    for ref, tok in zip(refs, toks):
        positions = json.loads((ref / "config.json").read_text())
        positions = positions.get("n_positions", positions.get("max_position_embeddings"))
        table = token_bytes(tok)
        for start in range(0, len(data), S):
            window = data[start:start + L].decode("utf-8", errors="ignore")
            ids, _ = canonical_ids(tok, table, window)
            assert 1 + len(ids) + 4 <= positions, (ref.name, start, len(ids))
