"""generate.py: fused generation against evaluation's own numbers (teacher-forced), batch
against one prompt at a time, sampling against independent selections, stop strings,
truncation, and the server's messages against the protocol schema."""
from __future__ import annotations

import pytest
import torch

from conftest import spec
from kotara_worker import protocol, server
from kotara_worker.evaluate import evaluate
from kotara_worker.fusion import score_each_position
from kotara_worker.generate import Request, Sampling, _held_back, choose, generate
from kotara_worker.models import load_models
from kotara_worker.protocol import RequestError
from kotara_worker.windows import plan_windows
from test_fusion import setting
from test_server import FakeChannel

pytestmark = pytest.mark.usefixtures("one_thread")
# three models of one tokenizer: GPT-2, Llama, and a GPT-2 whose output layer has padding rows
NAMES = ["gpt2-a", "llama", "gpt2-padded"]
SETTINGS = [
    setting("average", 3, temps=[1.0, 1.3, 0.8]),
    setting("poe", 3, temps=[1.0, 1.3, 0.8], betas=[0.7, 0.2, 0.1]),
    setting("entropy", 3, temps=[1.0, 1.3, 0.8]),
    setting("gap", 3, temps=[1.0, 1.3, 0.8]),
    setting("mix", 3, temps=[1.0, 1.3, 0.8], weights=[0.5, 0.3, 0.2]),
]
PROMPTS = ["", "the cat sat on", "a much longer prompt than the others, so that the batch is left-padded"]


@pytest.fixture(scope="module")
def loaded(tiny):
    tok, models = load_models([spec(tiny[n], dtype="float32") for n in NAMES], None, None, False, lambda _m: None)
    return tok, models


def run(loaded, prompts, s, max_new=12, sampling=Sampling(), stop=(), truncate=True, warn=lambda _m: None):
    tok, models = loaded
    steps: list[tuple[int, list[dict]]] = []
    out = generate(models, tok, len(tok), Request(list(prompts), s, max_new, sampling, list(stop), truncate),
                   tok.bos_token_id, lambda i, c: steps.append((i, c)), lambda: False, warn)
    return out, steps


def teacher_forced(loaded, prompt: str, tokens: list[int], s: dict) -> torch.Tensor:
    """−NLL of each generated token under the fusion, by evaluation's per-position code
    (fusion.score_each_position) on ONE full forward of the whole sequence per model (no
    KV cache, no batch, no padding): [n] float64."""
    tok, models = loaded
    ids = [tok.bos_token_id] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []) + tokens
    x = torch.tensor(ids)
    with torch.inference_mode():
        zs = [m.full_logits(x[None])[0, :-1] for m in models]                # [L - 1, V_m]
    scores = score_each_position(zs, x[1:], len(tok), [s])
    return -scores.fusion_nll[0, len(ids) - 1 - len(tokens):]


@pytest.mark.parametrize("s", SETTINGS, ids=[s["type"] for s in SETTINGS])
def test_generation_reports_what_evaluation_says_of_its_own_output(loaded, s):
    out, steps = run(loaded, PROMPTS, s)
    for o in out["outputs"]:
        want = teacher_forced(loaded, PROMPTS[o["prompt"]], o["tokens"], s)
        got = torch.tensor(o["logprobs"], dtype=torch.float64)
        # Tolerance: both sides take log_softmax of float32 fused logits, from float32 logits
        # of the same weights by different kernels (a cached one-token step in a left-padded
        # batch vs one full forward): |Δz| ~ 1e-6 at these logit sizes (|z| < 10), which moves
        # a log-probability by ≲ 2·Σ|c_m|·|Δz| ≈ 1e-5; gap's weights (∝ a top-2 difference)
        # amplify it most. The bound, 1e-4 per token, holds with room: measured ≤ 2e-5.
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (s["type"], (got - want).abs().max())
        # the streamed text is the output's text, in order, none of it twice
        streamed = "".join(c["text"] for _, cs in steps for c in cs if c["prompt"] == o["prompt"])
        assert streamed == o["text"]
    # and evaluate() itself: the empty prompt's output is the whole text after the start token
    tok, models = loaded
    o = out["outputs"][0]
    ids = torch.tensor(o["tokens"])
    sums = evaluate(models, ids, plan_windows(len(ids), len(ids), len(ids), bos=True), [s], 1, tok.bos_token_id,
                    len(tok), None, lambda _s: None, 1, lambda: False)
    assert abs(float(sums.fusion_nll[0]) + sum(o["logprobs"])) <= 1e-4 * len(ids)


def test_a_batch_decodes_each_prompt_as_it_would_alone(loaded):
    s = SETTINGS[2]
    together, _ = run(loaded, PROMPTS, s)
    for o in together["outputs"]:
        alone, _ = run(loaded, [PROMPTS[o["prompt"]]], s)
        a = alone["outputs"][0]
        assert a["tokens"] == o["tokens"], o["prompt"]
        # left padding is masked out: only the kernels' batch shapes differ (float32 rounding)
        assert max(abs(x - y) for x, y in zip(a["logprobs"], o["logprobs"])) <= 1e-5


def test_greedy_is_deterministic_and_sampling_reproducible_by_seed(loaded):
    s = SETTINGS[0]
    g1, _ = run(loaded, PROMPTS[:2], s)
    g2, _ = run(loaded, PROMPTS[:2], s)
    assert [o["tokens"] for o in g1["outputs"]] == [o["tokens"] for o in g2["outputs"]]
    hot = dict(greedy=False, temperature=1.5, top_k=0, top_p=1.0)
    a, _ = run(loaded, PROMPTS[:2], s, sampling=Sampling(seed=1, **hot))
    b, _ = run(loaded, PROMPTS[:2], s, sampling=Sampling(seed=1, **hot))
    c, _ = run(loaded, PROMPTS[:2], s, sampling=Sampling(seed=2, **hot))
    assert [o["tokens"] for o in a["outputs"]] == [o["tokens"] for o in b["outputs"]]
    assert [o["tokens"] for o in a["outputs"]] != [o["tokens"] for o in c["outputs"]]
    # what is reported is the FUSED log-probability, whatever sampled the token
    for o in a["outputs"]:
        want = teacher_forced(loaded, PROMPTS[o["prompt"]], o["tokens"], s)
        assert torch.allclose(torch.tensor(o["logprobs"], dtype=torch.float64), want, atol=1e-4, rtol=0)


def test_choose_keeps_to_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(4, 50, generator=g) * 2, -1)            # [4, 50]
    assert choose(logp, Sampling(), g).tolist() == logp.argmax(-1).tolist()
    for _ in range(200):
        picked = choose(logp, Sampling(greedy=False, top_k=3, seed=0), g)
        for b in range(4):
            assert int(picked[b]) in set(torch.topk(logp[b], 3).indices.tolist())
    for p in (0.3, 0.9):
        # the nucleus, independently: tokens by probability, until their sum reaches p
        allowed = []
        for b in range(4):
            probs = sorted(((float(x), i) for i, x in enumerate(logp[b].exp())), reverse=True)
            keep, total = set(), 0.0
            for q, i in probs:
                if total >= p:
                    break
                keep.add(i)
                total += q
            allowed.append(keep)
        for _ in range(200):
            picked = choose(logp, Sampling(greedy=False, top_p=p, seed=0), g)
            assert all(int(picked[b]) in allowed[b] for b in range(4))
    with pytest.raises(ValueError):
        Sampling.from_dict({"greedy": False, "temperature": 0, "top_k": 0, "top_p": 1, "seed": 0})


def test_a_stop_string_ends_the_text_before_it_and_is_never_printed(loaded):
    s = SETTINGS[0]
    free, _ = run(loaded, [PROMPTS[1]], s, max_new=16)
    text = free["outputs"][0]["text"]
    assert len(text) > 6
    stop = text[3:6]                                  # three characters from inside the free text
    cut, steps = run(loaded, [PROMPTS[1]], s, max_new=16, stop=[stop])
    o = cut["outputs"][0]
    assert o["finish"] == "stop" and o["text"] == text[:text.find(stop)]
    assert "".join(c["text"] for _, cs in steps for c in cs) == o["text"]
    assert steps[-1][1][0]["done"]


def test_held_back_text():
    assert _held_back("abc\ufffd", []) == 1                # a partial UTF-8 character
    assert _held_back("abc\ufffd\ufffd", []) == 2
    assert _held_back("hello wo", ["world"]) == 2          # the start of a stop string
    assert _held_back("hello", ["xyz"]) == 0


def test_a_prompt_too_long_is_cut_from_the_left_or_refused(loaded):
    tok, models = loaded
    context = min(m.max_positions for m in models)
    long = " ".join(["the cat"] * context)
    n = len(tok(long, add_special_tokens=False)["input_ids"])
    warnings: list[str] = []
    out, _ = run(loaded, [long], SETTINGS[0], max_new=4, warn=warnings.append)
    o = out["outputs"][0]
    assert o["truncated"] == n - (context - 1 - 4) and o["prompt_tokens"] == context - 4
    assert len(warnings) == 1 and "truncated from the left" in warnings[0]
    with pytest.raises(RequestError) as e:
        run(loaded, [long], SETTINGS[0], max_new=4, truncate=False)
    assert e.value.code == "context"
    with pytest.raises(RequestError):
        run(loaded, ["x"], SETTINGS[0], max_new=context)


def test_the_server_streams_chunks_and_a_generated_message_on_the_schema(tiny):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["llama"])],
                "tokenizer": None, "max_length": None, "bos_per_window": False, "space": "tokens",
                "bytes": {"beam": 8, "prune": 0.0}})
    s.channel.sent.clear()
    s.dispatch({"type": "generate", "request_id": "g1", "prompts": ["the cat", ""], "max_new": 5, "stop": [],
                "truncate": True, "setting": setting("entropy", 2),
                "sampling": {"greedy": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}})
    kinds = [m["type"] for m in s.channel.sent]
    assert kinds == ["chunk"] * 5 + ["generated"], kinds
    for m in s.channel.sent:
        assert protocol.schema_errors({**m, "seq": 1}, "from_worker") == [], m   # the channel numbers them
    done = s.channel.sent[-1]
    assert [len(o["tokens"]) for o in done["outputs"]] == [5, 5] and done["space"] == "tokens"
    # bad requests: an unknown strategy, a bad sampling
    s.channel.sent.clear()
    s.dispatch({"type": "generate", "request_id": "g2", "prompts": ["x"], "max_new": 2, "stop": [], "truncate": True,
                "setting": {**setting("entropy", 2), "type": "nope"},
                "sampling": {"greedy": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}})
    assert s.channel.sent[-1]["type"] == "error" and s.channel.sent[-1]["code"] == "bad_request"
    assert "known: average, poe, entropy, gap, mix" in s.channel.sent[-1]["message"]


def test_a_model_alone_generates_what_its_own_hf_generate_does(loaded, tiny):
    """poe with betas [1, 0, 0] at T = 1 is the first model alone (SPEC §3): its greedy
    text must be transformers' own greedy model.generate (KV cache) from the same start."""
    from transformers import AutoModelForCausalLM
    tok, _ = loaded
    hf = AutoModelForCausalLM.from_pretrained(tiny["gpt2-a"], dtype=torch.float32).eval()
    alone = setting("poe", 3, betas=[1.0, 0.0, 0.0])
    out, _ = run(loaded, PROMPTS[:2], alone, max_new=10)
    for o in out["outputs"]:
        prompt = PROMPTS[o["prompt"]]
        ids = torch.tensor([[tok.bos_token_id] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])])
        with torch.inference_mode():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
                              min_new_tokens=10, pad_token_id=tok.eos_token_id)
        assert o["tokens"] == ref[0, ids.shape[1]:].tolist()


# ----------------------------------------------------------------------------- byte space

def byte_server(refs, beam):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(r, dtype="float32") for r in refs],
                "tokenizer": None, "max_length": None, "bos_per_window": False, "space": "auto",
                "bytes": {"beam": beam, "prune": 0.0}})
    assert s.channel.sent[-1]["type"] == "loaded" and s.channel.sent[-1]["space"] == "bytes"
    return s


def byte_teacher_forced(s, prompt: str, out: bytes, st: dict) -> torch.Tensor:
    """−NLL of each generated byte under the fusion, as byte_eval scores a text: each
    model's ByteLM rows of prompt + output (the dummy prefix its tokenizer writes before
    it), the prompt as context; floored and fused by evaluation's per-position code."""
    from kotara_worker.byte_eval import LOG_FLOOR, VOCAB
    from kotara_worker.token_bytes import canonical_ids
    text = prompt + out.decode("utf-8")
    rows = []
    for m in s.byte_models:
        ids, prefix = canonical_ids(m.reader.tokenizer, m.reader.table, text)
        data = prefix + text.encode("utf-8")
        r, stats = m.lm.score(data, len(data) - len(out), ids)                    # [len(out), 257]
        assert stats.pruned == 0, "a beam this wide holds every hypothesis: exact"
        rows.append(r.clamp(min=LOG_FLOOR))
    scores = score_each_position(rows, torch.tensor(list(out)), VOCAB, [st])
    return -scores.fusion_nll[0]


def byte_generate(s, prompts, st, max_new):
    s.channel.sent.clear()
    s.dispatch({"type": "generate", "request_id": "g", "prompts": prompts, "max_new": max_new, "stop": [],
                "truncate": True, "setting": st,
                "sampling": {"greedy": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}})
    for m in s.channel.sent:
        assert protocol.schema_errors({**m, "seq": 1}, "from_worker") == [], m
    done = s.channel.sent[-1]
    assert done["type"] == "generated" and done["space"] == "bytes", done
    return done, [c for m in s.channel.sent if m["type"] == "chunk" for c in m["chunks"]]


@pytest.mark.parametrize("refs,prompt,max_new", [
    (["gpt2-a", "gpt2-othertok"], "The c", 10),      # two byte-level BPEs of different vocabularies
    ("demo", "The", 6),                                # the demo's cousin: sentencepiece, byte fallback, dummy prefix
])
def test_byte_generation_reports_what_byte_evaluation_says_of_its_output(tiny, refs, prompt, max_new):
    from pathlib import Path
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    paths = [demo / "cousin", demo / "sibling"] if refs == "demo" else [tiny[r] for r in refs]
    s = byte_server(paths, beam=100_000)
    for st in (setting("average", 2), setting("entropy", 2, temps=[1.0, 1.4]), setting("mix", 2, weights=[0.7, 0.3])):
        done, chunks = byte_generate(s, [prompt], st, max_new)
        o = done["outputs"][0]
        assert o["finish"] == "length" and 256 not in o["tokens"]
        out = bytes(o["tokens"])
        assert o["text"] == out.decode("utf-8") == "".join(c["text"] for c in chunks)
        want = byte_teacher_forced(s, prompt, out, st)
        # Tolerance: with nothing pruned both sides are the same exact sums (float64 after
        # the logits) from float32 logits of the same weights by different kernels (one
        # cached step in a batch of extensions vs a window's forward): ~1e-6 per row;
        # the fusion then runs the same float32 code. 1e-4 per byte, the bound.
        got = torch.tensor(o["logprobs"], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (st["type"], (got - want).abs().max())


def test_byte_generation_holds_back_partial_characters_and_batches_prompts(tiny):
    from kotara_worker.generate import ByteRow, Request as Req, _advance_bytes
    import codecs
    # "é" is two bytes: nothing is printed after the first, the character after the second
    row, dec = ByteRow(0, [], 0), codecs.getincrementaldecoder("utf-8")(errors="replace")
    r = Req(["x"], setting("average", 2), 5, Sampling(), [], True)
    texts = [_advance_bytes(row, c, -1.0, [0.5, 0.5], dec, r)["text"] for c in "aé".encode()]
    assert texts == ["a", "", "é"]
    # a batch of prompts: each row is its prompt alone (greedy)
    s = byte_server([tiny["gpt2-a"], tiny["gpt2-othertok"]], beam=4)
    st = setting("entropy", 2)
    together, _ = byte_generate(s, ["The c", "a"], st, 8)
    for o in together["outputs"]:
        alone, _ = byte_generate(s, [["The c", "a"][o["prompt"]]], st, 8)
        assert alone["outputs"][0]["tokens"] == o["tokens"]
        assert max(abs(x - y) for x, y in zip(alone["outputs"][0]["logprobs"], o["logprobs"])) <= 1e-5
