"""Byte space wired into the worker (SPEC §7): byte_eval's pass against ByteLM window by
window and against SPEC §3's formulas recomputed here in float64 from the 257-way rows;
byte NLL ≤ token NLL; `space: auto`; resume; the refusals, each naming the model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import byte_reference as R
from conftest import spec
from kotara_worker import byte_eval, protocol, server
from kotara_worker.byte_lm import ByteLM
from kotara_worker.evaluate import Cancelled, Sums
from kotara_worker.models import load_session
from kotara_worker.protocol import RequestError
from kotara_worker.token_bytes import start_token, token_bytes
from kotara_worker.windows import plan_byte_windows
from test_fusion import U64, close, mix64, setting
from test_evaluate import assert_windows_add_up
from test_server import FakeChannel, append_progress

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = Path(__file__).resolve().parents[2] / "protocol" / "golden"
# capitals, a 2-, a 3- and a 4-byte character (windows must not cut them), a newline
TEXT = ("The cat sees a red boat near the sea. My neighbour finds the café. "
        "A small dog follows €3 of bread 🙂 every day.\nThe river likes seven stones.")
BEAM = 4


def settings2() -> list[dict]:
    return [setting("average", 2), setting("poe", 2, betas=[0.7, 0.4]),
            setting("entropy", 2, temps=[0.8, 1.3], id_="entropy-t"), setting("gap", 2, temps=[1.2, 0.9]),
            setting("entropy", 2), setting("gap", 2, id_="gap-1"), setting("mix", 2),
            setting("mix", 2, temps=[0.8, 1.3], weights=[0.7, 0.3], id_="mix-w"),
            setting("mix", 2, temps=[1.0, 0.5], weights=[0.0, 1.0], id_="mix-b")]


def _save(d: Path, model, tok) -> str:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"      # as tiny_models.py does: loads in 4.x and 5.x
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(d)


def _gpt2(rows: int, start: int, seed: int):
    """float32, 256 positions (sentencepiece vocabularies of 60 pieces need ~1 token a byte)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=rows, n_positions=256, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                     bos_token_id=start, eos_token_id=start)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def byte_dirs(tmp_path_factory) -> dict[str, str]:
    """Checkpoints with tokenizers of other kinds than the tiny byte-level BPE:
    sp (sentencepiece-style, byte fallback, dummy prefix), lower (a lowercasing
    normalizer), nofallback (sentencepiece-style, <unk> for unseen characters)."""
    out = tmp_path_factory.mktemp("byte-models")
    dirs = {}
    for name, make, seed in (("sp", R.sentencepiece_bpe, 1), ("lower", R.lowercasing_byte_level, 2),
                             ("nofallback", R.bpe_without_fallback, 3)):
        tok = make()
        dirs[name] = _save(out / name, _gpt2(len(tok), start_token(tok), seed), tok)
    return dirs


def text_file(tmp_path: Path, text: str = TEXT) -> str:
    p = tmp_path / "text.txt"
    p.write_bytes(text.encode("utf-8"))
    return str(p)


def load(refs, space="bytes", beam=BEAM, prune=0.0, tokenizer=None) -> server.Server:
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(r) for r in refs], "tokenizer": tokenizer,
                "max_length": None, "bos_per_window": False, "space": space, "bytes": {"beam": beam, "prune": prune}})
    return s


def evaluate(s: server.Server, path: str, settings, L: int, S: int, **kw) -> dict:
    s.channel.sent.clear()
    s.dispatch({"type": "evaluate", "request_id": "r1", "batch_size": kw.pop("batch_size", 2),
                "progress_every": kw.pop("progress_every", 1), "resume": kw.pop("resume", None),
                "dataset": {"path": path, "max_length": L, "stride": S, "bos_per_window": kw.pop("bos", False)},
                "settings": settings})
    for m in s.channel.sent:                                   # everything the worker says is on the schema
        assert protocol.schema_errors({**m, "seq": 0}, "from_worker") == [], m
    return s.channel.sent[-1]


def quiet(_m: str) -> None:
    pass


# ----------------------------------------------------------------------------- the reference, in float64

def fused64(rows: list[torch.Tensor], targets: torch.Tensor, s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §3 with l_m (the 257-way log-probs, -inf where a byte is ruled out) in place of
    z_m, straight from the formulas: per-position fused NLL [P] and α [P, N]."""
    n = len(rows)
    temps = s["temperatures"]
    y = [r / t for r, t in zip(rows, temps)]                                  # -inf stays -inf
    p = [torch.softmax(v, -1) for v in y]                                      # exp(-inf) = 0
    P = targets.numel()
    if s["type"] == "mix":                                                     # log Σ w_m p_m
        w = torch.tensor(s["weights"], dtype=torch.float64)
        w = w / w.sum()
        mixture = sum(w[m] * p[m] for m in range(n))
        return -torch.log(mixture.gather(1, targets[:, None]).squeeze(1)), w.expand(P, n)
    if s["type"] == "average":
        alpha = torch.full((P, n), 1.0 / n, dtype=torch.float64)
    elif s["type"] == "poe":
        alpha = torch.tensor(s["betas"], dtype=torch.float64).expand(P, n)
    else:
        if s["type"] == "entropy":
            h = torch.stack([-torch.special.xlogy(q, q).sum(-1) for q in p], 1)   # 0 log 0 = 0
            raw = 1.0 / (h + 1e-9)
        else:
            top = [q.topk(2, -1).values for q in p]
            raw = torch.stack([t[:, 0] - t[:, 1] for t in top], 1)
        total = raw.sum(1, keepdim=True)
        alpha = torch.where(total > 0, raw / total, torch.full_like(raw, 1.0 / n))
    if s["type"] == "poe":
        terms = [alpha[:, m:m + 1] * torch.log_softmax(y[m], -1) for m in range(n)]
    else:
        terms = [alpha[:, m:m + 1] * y[m] for m in range(n)]
    # a model with weight exactly 0 takes no part (0 · -inf would be NaN)
    f = sum(torch.where(alpha[:, m:m + 1] == 0, torch.zeros_like(t), t) for m, t in enumerate(terms))
    nll = -torch.log_softmax(f, -1).gather(1, targets[:, None]).squeeze(1)
    return nll, alpha


def bytelm_rows(model, ref: str, text: bytes, windows, beam: int) -> list[torch.Tensor]:
    """ByteLM.score_text window by window, with a tokenizer loaded here (not the worker's)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ref)
    lm = ByteLM(model, token_bytes(tok, model.get_output_embeddings().weight.shape[0]), start_token(tok), beam=beam)
    return [lm.score_text(tok, text[w.start:w.end].decode(), w.first_scored - w.start)[0] for w in windows]


# ----------------------------------------------------------------------------- (a) the pass, exactly

@pytest.mark.parametrize("L,S", [(64, 40), (50, 50)])
def test_byte_pass_is_bytelm_window_by_window_and_fusions_are_spec(tiny, byte_dirs, L, S):
    refs = [str(tiny["gpt2-a"]), byte_dirs["sp"]]                    # byte-level BPE and sentencepiece
    session = load_session([spec(r) for r in refs], None, None, False, quiet, space="auto")
    assert session.space == "bytes" and [r.dummy_prefix for r in session.readers] == [False, True]
    for m in session.models:
        m.model.double()          # float64: batching in the pass then moves nothing beyond ~1e-13
    models = byte_eval.byte_models(session.models, session.readers, beam=BEAM, prune=0.0)
    text = TEXT.encode()
    windows = plan_byte_windows(text, L, S)
    assert any(w.first_scored > w.start for w in windows) == (S < L)      # windows with context, or none
    byte_eval.check_windows(models, text, windows)
    settings = settings2()
    out = byte_eval.run_pass(models, text, windows, settings, 3, None, quiet, 10**6, lambda: False)

    targets = torch.tensor(list(text))                                # every byte, once, in order
    rows = [torch.cat(bytelm_rows(m.model, r, text, windows, BEAM)) for m, r in zip(session.models, refs)]
    assert all(r.shape == (len(text), 257) for r in rows)
    assert any(bool(torch.isinf(r).any()) for r in rows)              # ruled-out bytes: the floor is exercised
    sums = out.sums
    assert sums.scored_tokens == len(text) and sums.windows_done == len(windows)
    for got, r in zip(sums.model_nll, rows):
        want = float(-r[torch.arange(len(text)), targets].sum())
        assert got == pytest.approx(want, rel=1e-11)
    # per window: its scored bytes (twice: targets and bytes), each sum the window's own
    scored = [w.end - w.first_scored for w in windows]
    assert_windows_add_up(sums, windows, window_bytes=scored)
    cuts = [sum(scored[:i]) for i in range(len(windows) + 1)]
    for got_row, r in zip(sums.window_model_nll, rows):
        nll = -r[torch.arange(len(text)), targets]
        assert got_row == pytest.approx([float(nll[a:b].sum()) for a, b in zip(cuts, cuts[1:])], rel=1e-11)
    for k, s in enumerate(settings):
        nll, _ = fused64(rows, targets, s)
        want = [float(nll[a:b].sum()) for a, b in zip(cuts, cuts[1:])]
        assert sums.window_fusion_nll[k] == pytest.approx(want, rel=1e-5), s["id"]
    for k, s in enumerate(settings):
        nll, alpha = fused64(rows, targets, s)
        assert sums.fusion_nll[k] == pytest.approx(float(nll.sum()), rel=1e-5), s["id"]
        for m in range(2):
            assert sums.fusion_weights[k][m] == pytest.approx(float(alpha[:, m].sum()), rel=1e-4, abs=1e-3), s["id"]
    assert len(out.beams) == 2 and all(b.max_hypotheses >= 1 for b in out.beams)


def test_the_server_answers_in_byte_space(tiny, byte_dirs, tmp_path):
    s = load([tiny["gpt2-a"], byte_dirs["sp"]], space="auto")
    loaded = s.channel.sent[-1]
    assert loaded["type"] == "loaded" and loaded["space"] == "bytes"
    assert protocol.schema_errors({**loaded, "seq": 0}, "from_worker") == []
    assert [m["tokenizer"] for m in loaded["models"]] == [str(tiny["gpt2-a"]), byte_dirs["sp"]]
    result = evaluate(s, text_file(tmp_path), settings2(), 64, 40)
    assert result["type"] == "result", result
    windows = plan_byte_windows(TEXT.encode(), 64, 40)
    assert result["space"] == "bytes" and result["tokens"] == len(TEXT.encode()) == result["sums"]["scored_tokens"]
    assert result["windows"] == len(windows) and len(result["byte_stats"]) == 2
    progress = [m for m in s.channel.sent if m["type"] == "progress"]
    assert [p["sums"]["windows_done"] for p in progress] == [2 * (i + 1) for i in range(len(windows) // 2)] + \
        ([len(windows)] if len(windows) % 2 else [])
    assert all(p["tokens_total"] == len(TEXT.encode()) for p in progress)
    assert append_progress(None, progress) == result["sums"]             # each window once, then all of them
    assert_windows_add_up(result["sums"], windows, window_bytes=[w.end - w.first_scored for w in windows])
    assert sum(result["sums"]["window_bytes"]) == len(TEXT.encode())
    # the pass's float32 rows against ByteLM's, window by window
    for m, ref, got in zip(s.models, (str(tiny["gpt2-a"]), byte_dirs["sp"]), result["sums"]["model_nll"]):
        rows = bytelm_rows(m.model, ref, TEXT.encode(), windows, BEAM)
        want = sum(float(-r[torch.arange(r.shape[0]), torch.tensor(list(TEXT.encode()[w.first_scored:w.end]))].sum())
                   for r, w in zip(rows, windows))
        assert got == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------- (b) byte NLL ≤ token NLL

def test_byte_nll_is_at_most_the_token_nll_of_one_window(tiny, tmp_path):
    """The canonical tokenization is one cover of the text: −log Q(x) ≤ −log p(canonical),
    whatever the beam (SPEC §7), when both spaces see the text as one window from the
    start token (token space: bos_per_window)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny["gpt2-a"])
    text = TEXT.split("\n")[0][:160]
    n_tokens = len(tok(text)["input_ids"])
    assert n_tokens < 120
    path = text_file(tmp_path, text)
    refs = [tiny["gpt2-a"], tiny["gpt2-b"]]
    tokens = evaluate(load(refs, space="tokens"), path, [setting("average", 2)], 120, 120, bos=True)
    assert tokens["type"] == "result" and tokens["space"] == "tokens" and tokens["byte_stats"] is None
    assert tokens["windows"] == 1 and tokens["sums"]["scored_tokens"] == n_tokens
    n_bytes = len(text.encode())
    for beam in (1, BEAM):
        b = evaluate(load(refs, space="bytes", beam=beam), path, [setting("average", 2)], n_bytes, n_bytes)
        assert b["space"] == "bytes" and b["windows"] == 1 and b["sums"]["scored_tokens"] == n_bytes
        for got, token_nll in zip(b["sums"]["model_nll"], tokens["sums"]["model_nll"]):
            assert got <= token_nll * (1 + 1e-6), (beam, got, token_nll)


# ----------------------------------------------------------------------------- (c) which space

def test_space_auto_picks_tokens_for_one_vocabulary_and_bytes_otherwise(tiny, tmp_path):
    a, b, other = str(tiny["gpt2-a"]), str(tiny["gpt2-b"]), str(tiny["gpt2-othertok"])
    loaded = load([a, b], space="auto").channel.sent[-1]
    assert (loaded["space"], loaded["space_reason"]) == ("tokens", "every vocabulary agrees")
    assert [m["tokenizer"] for m in loaded["models"]] == [a, a]       # the shared one
    loaded = load([a, other], space="auto").channel.sent[-1]
    assert (loaded["space"], loaded["space_reason"]) == ("bytes", f"the vocabularies of {a} and {other} differ")
    assert [m["tokenizer"] for m in loaded["models"]] == [a, other]   # each its own
    assert loaded["tokenizer"]["ref"] == a                              # the first model's
    loaded = load([a, b], space="bytes").channel.sent[-1]
    assert (loaded["space"], loaded["space_reason"]) == ("bytes", "asked for")
    loaded = load([a, b], space="tokens").channel.sent[-1]
    assert (loaded["space"], loaded["space_reason"]) == ("tokens", "asked for")
    error = load([a, other], space="tokens").channel.sent[-1]           # asked for tokens: still refused
    assert error["type"] == "error" and error["code"] == "tokenizer_mismatch" and other in error["message"]
    # the load's tokenizer is compared like a model's: a named one that differs means bytes
    loaded = load([other, other], space="auto", tokenizer=a).channel.sent[-1]
    assert (loaded["space"], loaded["space_reason"]) == ("bytes", f"the vocabularies of {a} and {other} differ")


def test_a_model_without_a_tokenizer_reads_with_the_named_one_in_byte_space(tiny, tmp_path):
    from tiny_models import gpt2
    gpt2(400, 0, seed=7).save_pretrained(tmp_path / "bare")
    other = str(tiny["gpt2-othertok"])
    loaded = load([other, tmp_path / "bare"], space="bytes", tokenizer=str(tiny["gpt2-a"])).channel.sent[-1]
    assert loaded["type"] == "loaded", loaded
    assert [m["tokenizer"] for m in loaded["models"]] == [other, str(tiny["gpt2-a"])]


# ----------------------------------------------------------------------------- (d) resume

def test_resume_from_mid_run_sums_is_bit_identical(tiny, byte_dirs):
    session = load_session([spec(tiny["gpt2-a"]), spec(byte_dirs["sp"])], None, None, False, quiet, space="bytes")
    models = byte_eval.byte_models(session.models, session.readers, beam=2, prune=0.0)
    text = TEXT.encode()
    windows = plan_byte_windows(text, 48, 32)
    settings = settings2()

    def run(resume=None, stop_mid_second_batch=False, snapshots=None):
        seen: list[Sums] = [] if snapshots is None else snapshots
        calls = [0]

        def should_stop():            # asked before each batch and after every byte
            calls[0] += len(seen) > 0
            return stop_mid_second_batch and calls[0] > 5
        return byte_eval.run_pass(models, text, windows, settings, 2, resume, seen.append, 1, should_stop)

    snapshots: list[Sums] = []
    full = run(snapshots=snapshots).sums
    assert len(windows) > 4 and [s.windows_done for s in snapshots][:2] == [2, 4]
    with pytest.raises(Cancelled) as c:
        run(stop_mid_second_batch=True)                               # a few bytes into the second batch
    assert c.value.sums.windows_done == 2 and c.value.sums == snapshots[0]   # the finished batches only
    assert_windows_add_up(full, windows)
    assert c.value.sums.window_fusion_nll == [r[:2] for r in full.window_fusion_nll]
    assert run(resume=c.value.sums).sums == full                       # floats compared exactly (per window too)
    assert run(resume=snapshots[1]).sums == full
    assert run(resume=Sums(**json.loads(json.dumps(snapshots[0].to_dict())))).sums == full   # as the wire carries it


# ----------------------------------------------------------------------------- (e) refusals

@pytest.mark.parametrize("options, field", [({"beam": 0, "prune": 0}, "bytes.beam"),
                                            ({"beam": 1.5, "prune": 0}, "bytes.beam"),
                                            ({"beam": 8, "prune": 1}, "bytes.prune"),
                                            ({"beam": 8, "prune": -0.1}, "bytes.prune")])
def test_beam_and_prune_are_checked_by_the_schema(options, field):
    load_msg = json.loads((GOLDEN / "load.json").read_text())
    assert protocol.schema_errors(load_msg, "to_worker") == []
    errors = protocol.schema_errors({**load_msg, "bytes": options}, "to_worker")
    assert any(e.startswith(field) for e in errors), errors


def test_bad_byte_options_that_pass_no_schema_are_refused(tiny):
    error = load([tiny["gpt2-a"], tiny["gpt2-othertok"]], beam=0).channel.sent[-1]
    assert error["type"] == "error" and error["code"] == "bad_request" and "beam" in error["message"]


def test_a_tokenizer_that_cannot_round_trip_is_refused_naming_the_model(tiny, byte_dirs):
    error = load([tiny["gpt2-a"], byte_dirs["lower"]], space="auto").channel.sent[-1]
    assert error["type"] == "error" and error["code"] == "tokenizer_mismatch", error
    assert byte_dirs["lower"] in error["message"] and "cannot reproduce" in error["message"]


def test_a_text_a_tokenizer_cannot_spell_is_refused_naming_model_and_window(tiny, byte_dirs, tmp_path):
    s = load([tiny["gpt2-a"], byte_dirs["nofallback"]])
    assert s.channel.sent[-1]["type"] == "loaded", s.channel.sent[-1]
    error = evaluate(s, text_file(tmp_path), settings2(), 64, 64)
    assert error["type"] == "error" and error["code"] == "tokenizer_mismatch", error
    assert byte_dirs["nofallback"] in error["message"] and "window 1 " in error["message"]   # é is at byte 78
    assert "unknown token" in error["message"]
    assert not any(m["type"] == "progress" for m in s.channel.sent)   # refused before any window ran


def test_a_window_over_a_models_context_names_the_model(tiny, tmp_path):
    s = load([tiny["gpt2-a"], tiny["gpt2-othertok"]])
    long_text = (TEXT + " ") * 4
    error = evaluate(s, text_file(tmp_path, long_text), settings2(), 200, 200)
    assert error["type"] == "error" and error["code"] == "context", error
    assert str(tiny["gpt2-othertok"]) in error["message"] and "window 0" in error["message"]
    assert "128 positions" in error["message"]


def test_nan_logits_in_byte_space_name_model_and_window(tiny, tmp_path):
    from transformers import AutoTokenizer
    s = load([tiny["gpt2-a"], tiny["gpt2-othertok"]])
    other = s.models[1].model
    bad = AutoTokenizer.from_pretrained(tiny["gpt2-othertok"]).convert_tokens_to_ids("#")

    def hook(module, args, kwargs, output):       # NaN wherever the input holds '#'
        if (kwargs["input_ids"] == bad).any():
            output.logits.fill_(float("nan"))
        return output

    handle = other.register_forward_hook(hook, with_kwargs=True)
    try:
        error = evaluate(s, text_file(tmp_path, "a" * 30 + "#" + "b" * 9), settings2(), 20, 20)
    finally:
        handle.remove()
    assert error["type"] == "error" and error["code"] == "numerical", error
    assert str(tiny["gpt2-othertok"]) in error["message"] and "window 1 (bytes 20..39)" in error["message"]


def test_negative_poe_betas_are_refused_in_byte_space(tiny, tmp_path):
    s = load([tiny["gpt2-a"], tiny["gpt2-othertok"]])
    error = evaluate(s, text_file(tmp_path), [setting("poe", 2, betas=[1.2, -0.2], id_="sharp")], 64, 64)
    assert error["type"] == "error" and error["code"] == "bad_request" and "setting sharp" in error["message"]


def test_the_floor_is_minus_infinity_for_the_fusion(tiny):
    """A row with ruled-out bytes, fused by fusion.py with the floor, equals the row fused
    with those bytes removed altogether, for temperatures from 1e-3 to 1e6."""
    from kotara_worker.fusion import score_each_position
    g = torch.Generator().manual_seed(0)
    rows = [torch.log_softmax(torch.randn(5, 257, generator=g, dtype=torch.float64) * 3, -1) for _ in range(2)]
    out = torch.zeros(257, dtype=torch.bool)
    out[100:200] = True                                               # both models rule these out
    rows[0][:, 50:60] = float("-inf")                                 # and model 0 these
    for r in rows:
        r[:, out] = float("-inf")
        r -= torch.logsumexp(r, -1, keepdim=True)
    targets = torch.tensor([1, 2, 3, 70, 250])
    keep = (~out).nonzero().squeeze(1)
    for t in (1e-3, 0.5, 1.0, 3.0, 1e6):
        ss = [setting(k, 2, temps=[t, t]) for k in ("average", "entropy", "gap")] + \
             [setting("poe", 2, temps=[t, t], betas=[0.6, 0.4]), setting("mix", 2, temps=[t, t], weights=[0.6, 0.4])]
        floored = score_each_position([r.clamp(min=byte_eval.LOG_FLOOR) for r in rows], targets, 257, ss)
        removed = score_each_position([r[:, keep].clamp(min=byte_eval.LOG_FLOOR) for r in rows],
                                      torch.searchsorted(keep, targets), len(keep), ss)
        assert torch.allclose(floored.fusion_nll, removed.fusion_nll, rtol=1e-5, atol=1e-6), t
        assert torch.allclose(floored.weights, removed.weights, rtol=1e-5, atol=1e-6), t
        for k, s in enumerate(ss):
            want, alpha = fused64(rows, targets, s)
            assert math.isfinite(float(floored.fusion_nll[k].sum()))
            if s["type"] == "mix" and not bool(torch.isfinite(want).all()):
                continue             # T = 1e-3: the plain float64 mixture underflows (NLL ~5e3); floored = removed above
            assert torch.allclose(floored.fusion_nll[k], want, rtol=1e-4, atol=1e-4), (t, s["type"])
            if s["type"] == "mix":   # and within its derived bound of the rows without the floor (-inf)
                ref = mix64(rows, targets, 257, s)
                close(floored.fusion_nll[k], ref.nll, ref.mix_err, (t, "mix, floored"))
                close(removed.fusion_nll[k], ref.nll, ref.mix_err, (t, "mix, removed"))


def test_byte_space_mix_is_the_mixture_of_each_windows_rows(tiny, byte_dirs, monkeypatch):
    """mix in byte space against −log Σ w_m softmax(l_m / T_m) recomputed in float64 from the
    rows the pass fused (captured at _window_sums, -inf and all), within mix_allowed summed
    over each window's bytes; the rows themselves are ByteLM's (the pass test checks that).
    Ruled-out bytes (the floor) get probability exactly 0: the bound counts them as 0."""
    refs = [str(tiny["gpt2-a"]), byte_dirs["sp"]]
    session = load_session([spec(r) for r in refs], None, None, False, quiet, space="bytes")
    models = byte_eval.byte_models(session.models, session.readers, beam=2, prune=0.0)   # K = 2: many -inf
    text = TEXT.encode()
    windows = plan_byte_windows(text, 64, 40)
    settings = [setting("mix", 2), setting("mix", 2, temps=[0.7, 1.4], weights=[3.0, 1.0], id_="mix-31"),
                setting("mix", 2, temps=[0.05, 2.0], weights=[0.5, 0.5], id_="mix-cold"),
                setting("mix", 2, temps=[1.0, 1.0], weights=[0.0, 1.0], id_="mix-sp")]
    seen = []
    window_sums = byte_eval._window_sums

    def spy(models_, rows, text_, i, w, settings_, cfg, *view):
        part = window_sums(models_, rows, text_, i, w, settings_, cfg, *view)
        seen.append((w, [r.clone() for r in rows], part))
        return part
    monkeypatch.setattr(byte_eval, "_window_sums", spy)
    out = byte_eval.run_pass(models, text, windows, settings, 2, None, quiet, 10**6, lambda: False)
    assert [w for w, _, _ in seen] == list(windows)
    assert any(bool(torch.isinf(r).any()) for _, rows, _ in seen for r in rows)      # the floor is exercised
    total = torch.zeros(len(settings), dtype=torch.float64)
    sp_alone, sp_allowed = 0.0, 0.0
    for w, rows, part in seen:
        targets = torch.tensor(list(text[w.first_scored:w.end]))
        for k, s in enumerate(settings):
            ref = mix64(rows, targets, 257, s)
            # the window's sum of float64 per-byte values adds ≤ P·2^-53·Σ|nll| on each side
            allowed = ref.mix_err.sum() + 2 * len(targets) * U64 * ref.nll.abs().sum()
            close(part.fusion_nll[k], ref.nll.sum(), allowed, (s["id"], w))
            close(part.fusion_weights[k], ref.alpha.sum(0), len(targets) * ref.alpha_err[0] * 2, (s["id"], "weights"))
            if s["id"] == "mix-sp":
                sp_allowed += float(allowed)
        total += part.fusion_nll
        sp_alone += float(-rows[1][torch.arange(len(targets)), targets].sum())
    assert out.sums.fusion_nll == total.tolist()
    # weight 0 for the first model: the second model alone, its own byte NLL from its rows (float64,
    # exact log-probabilities: softmax(l) = p), within the same bounds
    assert out.sums.fusion_weights[3][0] == 0.0
    close(torch.tensor(out.sums.fusion_nll[3]), torch.tensor(sp_alone), sp_allowed, "mix-sp is the second model")


# ----------------------------------------------------------------------------- (f) a pool's shares

@pytest.mark.parametrize("space", ["tokens", "bytes"])
def test_the_servers_shares_join_into_its_whole_result_bit_for_bit(tiny, byte_dirs, tmp_path, space):
    # what a pool does (src/pool.ts): one group of batch_size windows per evaluate request
    # (`share`), on separate servers, joined in window order: the one-server result exactly
    from test_evaluate import join_shares
    refs = [tiny["gpt2-a"], tiny["gpt2-b"]] if space == "tokens" else [tiny["gpt2-a"], byte_dirs["sp"]]
    path, settings, B = text_file(tmp_path), settings2(), 2
    one = load(refs, space=space)
    whole = evaluate(one, path, settings, 24, 16, batch_size=B, progress_every=10**6)
    assert whole["type"] == "result", whole
    n = whole["windows"]
    assert n >= 4
    pool = [load(refs, space=space), load(refs, space=space)]
    shares, tokenized = [], [0, 0]
    for g, first in enumerate(range(0, n + B, B)):          # one share past the end: empty
        s = pool[g % 2]
        s.channel.sent.clear()
        s.dispatch({"type": "evaluate", "request_id": f"s{g}", "batch_size": B, "progress_every": 1, "resume": None,
                    "dataset": {"path": path, "max_length": 24, "stride": 16, "bos_per_window": False},
                    "settings": settings, "share": {"first": first, "stop": first + B}})
        for m in s.channel.sent:
            assert protocol.schema_errors({**m, "seq": 0}, "from_worker") == [], m
        out = s.channel.sent[-1]
        assert out["type"] == "result" and out["windows"] == n, out
        assert not any(m["type"] == "progress" for m in s.channel.sent)
        tokenized[g % 2] += out["tokenize_seconds"] > 0          # each server reads the text once
        if first >= n:
            assert out["sums"]["window_first"] == out["sums"]["windows_done"] == n and not out["sums"]["window_targets"]
            continue
        assert out["sums"]["window_first"] == first and out["sums"]["windows_done"] == min(first + B, n)
        shares.append(Sums.from_dict(out["sums"]))
    assert tokenized == [1, 1]
    assert join_shares(shares) == Sums.from_dict(whole["sums"])
    # a share that spans two groups, or resumes, is refused
    s = pool[0]
    for extra in ({"share": {"first": 1, "stop": 3}}, {"share": {"first": 0, "stop": 2}, "resume": whole["sums"]}):
        s.dispatch({"type": "evaluate", "request_id": "bad", "batch_size": B, "progress_every": 1, "resume": None,
                    "dataset": {"path": path, "max_length": 24, "stride": 16, "bos_per_window": False},
                    "settings": settings, **extra})
        assert s.channel.sent[-1]["type"] == "error" and s.channel.sent[-1]["code"] == "bad_request"
