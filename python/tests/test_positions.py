"""The token view's per-position numbers (protocol v6 `positions`, positions.py): what the
pass sums, position by position, for the view's first bytes only; the spans tile the
text; a resumed run gives them too; bad requests are refused."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import spec
from kotara_worker import positions as pos
from kotara_worker import protocol, server
from kotara_worker.windows import plan_byte_windows, plan_windows
from test_fusion import setting
from test_server import CancelAfter, FakeChannel, append_progress, sent

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = [setting("average", 2, [1.0, 1.0]), setting("entropy", 2, [0.9, 1.1], id_="entropy-sharp"),
            setting("mix", 2, [1.0, 1.0]), setting("gap", 2, [1.0, 1.0])]
ASK = [3, 0, 2]          # gap, average, mix: out of order, and not every setting


def request(path, positions, L=64, S=32, **kw) -> dict:
    return {"type": "evaluate", "request_id": "r1", "batch_size": kw.pop("batch_size", 2),
            "progress_every": kw.pop("progress_every", 10**6), "resume": kw.pop("resume", None),
            "dataset": {"path": str(path), "max_length": L, "stride": S, "bos_per_window": kw.pop("bos", False)},
            "settings": kw.pop("settings", SETTINGS), **({"positions": positions} if positions is not None else {})}


def answer(s: server.Server, message: dict) -> dict:
    s.channel.sent.clear()
    s.dispatch(message)
    for m in s.channel.sent:                                   # everything the worker says is on the schema
        assert protocol.schema_errors({**m, "seq": 0}, "from_worker") == [], m
    return s.channel.sent[-1]


@pytest.fixture(scope="module")
def token_server(tiny):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["llama"])],
                "tokenizer": None, "max_length": 64, "bos_per_window": False})
    assert s.channel.sent[-1]["type"] == "loaded", s.channel.sent[-1]
    return s


def window_of(windows, n_positions: int) -> list[int]:
    """The window that scores each stream position 0 .. n − 1 (−1: none)."""
    owner = [-1] * n_positions
    for i, w in enumerate(windows):
        for t in range(w.first_scored, min(w.end, n_positions)):
            owner[t] = i
    return owner


def check_sums_per_window(p: dict, sums: dict, windows, stream: list[int], ask: list[int]) -> int:
    """Every window inside the view: Σ of its positions' numbers = its per-window sums.
    Tolerance: the pass adds a window's float64 position values one by one into its
    window's accumulator (index_add_ on the CPU; in byte space a float64 sum); adding the
    same ≤ 64 values here in another grouping differs by at most 64 · 2⁻⁵³ of their sum
    (< 1e-14 relative), so 1e-12 relative is far above rounding and far below any
    missing or doubled position (≥ 1e-3 of a window's sum)."""
    owner = window_of(windows, max(stream) + 1)
    n_models = len(p["model_nll"])
    checked = 0
    for i, w in enumerate(windows):
        mine = [j for j, t in enumerate(stream) if owner[t] == i]
        if not mine or len(mine) != w.n_scored:
            continue                                           # a window the view covers in part (or not at all)
        checked += 1
        for m in range(n_models):
            got = math.fsum(p["model_nll"][m][j] for j in mine)
            assert got == pytest.approx(sums["window_model_nll"][m][i], rel=1e-12)
        for a, k in enumerate(ask):
            got = math.fsum(p["fusion_nll"][a][j] for j in mine)
            assert got == pytest.approx(sums["window_fusion_nll"][k][i], rel=1e-12)
    return checked


def token_stream(s: server.Server, text: str) -> tuple[list[int], list[int]]:
    out = s.tokenizer(text, return_offsets_mapping=True)
    return out["input_ids"], [e for _, e in out["offset_mapping"]]


@pytest.mark.parametrize("L,S,bos", [(64, 32, False), (64, 64, False), (48, 48, True)])
def test_a_view_of_the_whole_text_is_what_the_pass_sums(token_server, tiny, L, S, bos):
    s = token_server
    data = tiny["text"].read_bytes()
    r = answer(s, request(tiny["text"], {"settings": ASK, "bytes": len(data)}, L, S, bos=bos))
    assert r["type"] == "result", r
    p, sums = r["positions"], r["sums"]
    assert p["settings"] == ASK and p["bytes"] == len(data)
    # every scored position is in the view, once: the totals are the positions' sums
    assert len(p["start"]) == sums["scored_tokens"]
    for m in range(2):
        assert math.fsum(p["model_nll"][m]) == pytest.approx(sums["model_nll"][m], rel=1e-12)
    for a, k in enumerate(ASK):
        assert math.fsum(p["fusion_nll"][a]) == pytest.approx(sums["fusion_nll"][k], rel=1e-12)
        for m in range(2):   # Σ α: the pass adds chunk sums in float64, in another order (same bound)
            assert math.fsum(p["weights"][a][m]) == pytest.approx(sums["fusion_weights"][k][m], rel=1e-12)
        for j in range(len(p["start"])):
            assert sum(p["weights"][a][m][j] for m in range(2)) == pytest.approx(1.0, abs=1e-12)
    ids, ends = token_stream(s, tiny["text"].read_text(encoding="utf-8"))
    windows = plan_windows(len(ids), L, S, bos=bos)
    stream = [t for w in windows for t in range(w.first_scored, w.end)]
    assert check_sums_per_window(p, sums, windows, stream, ASK) == len(windows)
    # the spans: each scored token's text, from where the token before it ended to its own end
    text = tiny["text"].read_text(encoding="utf-8")
    assert text.isascii()                                      # char offsets are byte offsets
    running = 0
    want = {}
    for t, e in enumerate(ends):
        want[t] = (running, max(running, e))
        running = max(running, e)
    assert list(zip(p["start"], p["end"])) == [want[t] for t in stream]
    if not bos:                                                # token 0 is not scored: its text is the gap
        assert p["start"][0] == ends[0] > 0
    # the scored tokens' spans tile the rest of the text; each is the token's own text
    assert p["end"][-1] == len(data) and all(a == b for a, b in zip(p["end"], p["start"][1:]) if S < L)
    for j in range(0, len(stream), 37):
        assert data[p["start"][j]:p["end"][j]] == s.tokenizer.decode([ids[stream[j]]]).encode()


def test_a_short_view_keeps_only_its_positions_and_changes_nothing_else(token_server, tiny):
    s = token_server
    whole = answer(s, request(tiny["text"], {"settings": ASK, "bytes": 65536}))
    short = answer(s, request(tiny["text"], {"settings": ASK, "bytes": 300}))
    plain = answer(s, request(tiny["text"], None))
    assert "positions" not in plain                            # not asked: not there
    assert short["sums"] == whole["sums"] == plain["sums"]    # the view changes no sum, bit for bit
    p, w = short["positions"], whole["positions"]
    n = len(p["start"])
    assert 0 < n < len(w["start"]) and p["bytes"] <= 300 and p["end"][-1] == p["bytes"]
    assert all(e <= 300 for e in p["end"]) and w["end"][n] > 300   # every position that ends in the view, no other
    for key in ("start", "end"):
        assert p[key] == w[key][:n]
    for key in ("model_nll", "fusion_nll"):
        assert p[key] == [row[:n] for row in w[key]]            # the same floats: the same pass
    assert p["weights"] == [[row[:n] for row in per] for per in w["weights"]]


def test_a_resumed_run_scores_the_checkpointed_windows_again_for_its_view(token_server, tiny):
    s = token_server
    message = request(tiny["text"], {"settings": ASK, "bytes": 2000}, progress_every=1)
    whole = answer(s, message)
    channel = s.channel
    try:
        s.channel = CancelAfter(k=6)
        s.dispatch(message)
        assert s.channel.sent[-1]["code"] == "cancelled"
        checkpoint = append_progress(None, sent(s, "progress"))
        ids, _ = token_stream(s, tiny["text"].read_text(encoding="utf-8"))
        windows = plan_windows(len(ids), 64, 32)
        n_view = len(whole["positions"]["start"]) + 1           # + token 0, not scored
        assert 0 < checkpoint["windows_done"] < pos.windows_in_view(windows, n_view)   # a cut inside the view
        s.channel = FakeChannel()
        resumed = answer(s, {**message, "resume": checkpoint})
    finally:
        s.channel = channel
    assert resumed["sums"] == whole["sums"]
    p, w = resumed["positions"], whole["positions"]
    assert (p["settings"], p["bytes"], p["start"], p["end"]) == (w["settings"], w["bytes"], w["start"], w["end"])
    # windows scored again in batches cut elsewhere: the same logits up to float32 rounding of
    # the forward (a batch of another size may sum a matmul in another order, ~1e-6 relative
    # on logits of size ~10, so ~1e-5 nats); 1e-4 nats is above that and far below a
    # position's NLL (> 0.01 here)
    for key in ("model_nll", "fusion_nll"):
        for a, b in zip(p[key], w[key]):
            assert a == pytest.approx(b, abs=1e-4)
    for a, b in zip(p["weights"], w["weights"]):
        for x, y in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4)


def test_bad_position_requests_are_refused_before_any_work(token_server, tiny):
    for ask, why in (([4], "index 4 is not one of the request's 4 settings"), ([1, 1], "asked for twice")):
        r = answer(token_server, request(tiny["text"], {"settings": ask, "bytes": 100}))
        assert r["type"] == "error" and r["code"] == "bad_request" and why in r["message"], r
        assert not any(m["type"] == "status" and "tokenizing" in m["message"] for m in token_server.channel.sent)
    off = {"settings": [0], "bytes": 0}
    assert any(line.startswith("positions") for line in
               protocol.schema_errors({**request("t", off), "seq": 0}, "to_worker"))


def test_without_an_offset_mapping_the_view_is_null_and_the_status_says_why(token_server, tiny, monkeypatch):
    from test_server import NoOffsets
    monkeypatch.setattr(token_server, "tokenizer", NoOffsets(token_server.tokenizer))
    r = answer(token_server, request(tiny["text"], {"settings": [0], "bytes": 100}))
    assert r["type"] == "result" and r["positions"] is None
    assert any(m["type"] == "status" and "no token view" in m["message"] for m in token_server.channel.sent)


def test_the_collector_keeps_the_views_positions_only_and_they_are_what_the_pass_adds():
    """evaluate() with a collector, chunks of 7 positions cutting through windows and the
    view's end: every kept position is in the view (memory: the view's, not the text's),
    every position of the view is there once, and each window's positions add up to its
    sums (the pass adds the same float64 values one by one: see check_sums_per_window)."""
    from test_evaluate import fake_stream, fakes, run
    from kotara_worker.evaluate import EvalConfig
    ids = fake_stream(3000, 50, 9)
    windows = plan_windows(ids.numel(), 64, 40)
    n_view = 150
    view = pos.View(list(range(n_view)), list(range(1, n_view + 1)), n_view)   # spans of no matter here
    settings = [dict(s, betas=None, weights=None) if s["type"] != "mix" else s for s in SETTINGS]
    collector = pos.Collector(view, [2, 0], 2)
    sums = run(fakes(), ids, windows, settings, batch_size=3, vocab=50, cfg=EvalConfig(position_chunk=7),
               positions=collector)
    kept = sum(t.numel() for t in collector._store.stream)
    assert kept == n_view - 1                                  # stream positions 1 .. 149: token 0 has no context
    assert all(int(t.max()) < n_view for t in collector._store.stream)
    p = collector.to_dict()
    stream = list(range(1, n_view))
    assert p["start"] == stream and p["end"] == [t + 1 for t in stream]
    assert check_sums_per_window(p, sums.to_dict(), windows, stream, [2, 0]) == 3
    assert pos.windows_in_view(windows, n_view) == 4 and windows[3].first_scored < n_view <= windows[4].first_scored


# ----------------------------------------------------------------------------- spans

def test_token_spans_hold_back_at_special_tokens_and_stop_at_the_limit():
    text = "Grüße, wörld"                                     # ü, ß, ö: 2 bytes each
    # a BOS (0, 0), then tokens ending at characters 3, 5, 6, 12 (GPT-2 style: the space
    # in front of "wörld" left out of its offsets)
    ends = [0, 3, 5, 6, 12]
    b = [len(text[:e].encode()) for e in ends]
    full = pos.token_view(text, ends, 100)
    assert full.starts == [0, 0, b[1], b[2], b[3]] and full.ends == b and full.bytes == len(text.encode())
    cut = pos.token_view(text, ends, b[3] + 1)                # the limit inside "wörld"
    assert cut.ends == b[:4] and cut.bytes == b[3]
    inside = pos.token_view(text, ends, 3)                    # 3 bytes: "Gr" and half of ü
    assert inside.ends == [0] and inside.bytes == 0


def test_byte_view_ends_on_a_character_boundary():
    data = "aé€🙂".encode()                                   # 1 + 2 + 3 + 4 bytes
    for limit, cut in ((1, 1), (2, 1), (3, 3), (5, 3), (6, 6), (9, 6), (10, 10), (99, 10)):
        v = pos.byte_view(data, limit)
        assert (v.bytes, v.starts, v.ends) == (cut, list(range(cut)), list(range(1, cut + 1)))


# ----------------------------------------------------------------------------- byte space

BYTE_TEXT = ("The cat sees a red boat near the sea. My neighbour finds the café. "
             "A small dog follows €3 of bread 🙂 every day.\nThe river likes seven stones.")


@pytest.fixture(scope="module")
def byte_server(tiny):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["gpt2-othertok"])],
                "tokenizer": None, "max_length": None, "bos_per_window": False, "space": "bytes",
                "bytes": {"beam": 2, "prune": 0.0}})
    assert s.channel.sent[-1]["type"] == "loaded" and s.channel.sent[-1]["space"] == "bytes"
    return s


def test_byte_space_positions_are_bytes_and_what_the_pass_sums(byte_server, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(BYTE_TEXT.encode())
    data = BYTE_TEXT.encode()
    settings = SETTINGS[:2] + SETTINGS[3:]                     # no mix (it is exercised in token space)
    whole = answer(byte_server, request(path, {"settings": [2, 0], "bytes": len(data)}, 48, 32, settings=settings))
    assert whole["type"] == "result", whole
    p, sums = whole["positions"], whole["sums"]
    assert p["start"] == list(range(len(data))) and p["end"] == list(range(1, len(data) + 1))
    for m in range(2):
        assert math.fsum(p["model_nll"][m]) == pytest.approx(sums["model_nll"][m], rel=1e-12)
    for a, k in enumerate([2, 0]):
        assert math.fsum(p["fusion_nll"][a]) == pytest.approx(sums["fusion_nll"][k], rel=1e-12)
    windows = plan_byte_windows(data, 48, 32)
    assert check_sums_per_window(p, sums, windows, list(range(len(data))), [2, 0]) == len(windows)
    # a view that ends inside 🙂 stops before it
    at = data.index("🙂".encode())
    short = answer(byte_server, request(path, {"settings": [1], "bytes": at + 2}, 48, 32, settings=settings))
    q = short["positions"]
    assert q["bytes"] == at and q["end"][-1] == at and short["sums"] == sums
    assert q["model_nll"] == [r[:at] for r in p["model_nll"]]       # the same pass: the same floats


def test_byte_space_resume_scores_the_checkpointed_windows_again_for_its_view(byte_server, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(BYTE_TEXT.encode())
    settings = SETTINGS[:2]
    message = request(path, {"settings": [1], "bytes": 100}, 48, 32, settings=settings, progress_every=1, batch_size=1)
    whole = answer(byte_server, message)
    channel = byte_server.channel
    try:
        data = BYTE_TEXT.encode()
        windows = plan_byte_windows(data, 48, 32)
        in_view = pos.windows_in_view(windows, pos.byte_view(data, 100).n)
        for k in range(2, 400, 10):                            # should_stop() is asked per byte too
            byte_server.channel = CancelAfter(k=k)
            byte_server.dispatch(message)
            assert byte_server.channel.sent[-1]["code"] == "cancelled", byte_server.channel.sent[-1]
            checkpoint = append_progress(None, sent(byte_server, "progress"))
            if checkpoint and checkpoint["windows_done"]:
                break
        assert 0 < checkpoint["windows_done"] < in_view         # a cut inside the view
        byte_server.channel = FakeChannel()
        resumed = answer(byte_server, {**message, "resume": checkpoint})
    finally:
        byte_server.channel = channel
    assert resumed["sums"] == whole["sums"]
    p, w = resumed["positions"], whole["positions"]
    assert (p["start"], p["end"]) == (w["start"], w["end"])
    # batch_size 1: the windows are scored again exactly as before, so the same floats
    assert p["model_nll"] == w["model_nll"] and p["fusion_nll"] == w["fusion_nll"] and p["weights"] == w["weights"]
