"""Models bigger than a device (models.plan_placement, accelerate's device_map) and out of
memory recovered (evaluate.run_pass halving its forwards): docs/scale.md.

No GPU here: the sharded path runs on the CPU, accelerate offloading part of each tiny
model to disk under a small CPU budget (its hooks then load those layers' weights for
every forward), through the real loading path (Server.dispatch load). The CUDA-only
decisions are the pure function plan_placement, tested with 0, 1 and 2 GPUs."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import spec
from kotara_worker import evaluate as ev
from kotara_worker import protocol, server
from kotara_worker.models import Placement, load_session, parse_size, plan_placement
from kotara_worker.protocol import RequestError
from kotara_worker.windows import plan_windows
from test_evaluate import fake_stream, fakes, run
from test_fusion import all_settings
from test_server import FakeChannel
from tiny_models import FakeModel

pytestmark = pytest.mark.usefixtures("one_thread")

# Each tiny model holds ~170 KB of float32 weights: under 120 KB of CPU, accelerate keeps
# the embeddings (and some heads) in memory and sends the rest to disk (checked below).
SMALL_CPU = {"cpu": "120KB"}


# ----------------------------------------------------------------------------- the decision

def test_sizes():
    assert parse_size(1000) == 1000 and parse_size("500MB") == 500 * 10**6 and parse_size("20GiB") == 20 * 2**30
    assert parse_size("1.5 GB") == 1_500_000_000 and parse_size("64gib") == 64 * 2**30 and parse_size("7B") == 7
    for bad in ("20 gigs", "-1GB", "GiB", -5, 1.5, True, None):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_nothing_asked_shards_only_device_auto_on_several_gpus(gpus):
    for device in ("cpu", "cuda", "cuda:0", "mps"):
        assert plan_placement("m", device, gpus, None, None) == Placement()
    auto = plan_placement("m", "auto", gpus, None, None)
    if gpus < 2:
        assert auto == Placement()                        # one device, as before (_pick_device)
    else:
        assert auto == Placement(True, "auto", (0, 1, "cpu"), {}, implicit=True)


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_asked_sharding_over_the_devices_the_spec_allows(gpus):
    budgets = {"cpu": "64GiB"}
    p = plan_placement("m", "auto", gpus, None, budgets)                # max_memory alone asks for it
    assert p.sharded and not p.implicit and p.device_map == "auto"
    assert p.devices == (*range(gpus), "cpu") and p.max_memory == {"cpu": 64 * 2**30}
    p = plan_placement("m", "cpu", gpus, "sequential", None)
    assert p == Placement(True, "sequential", ("cpu",), {}, False)
    if gpus:
        p = plan_placement("m", "cuda", gpus, "balanced", {"0": "20GiB", "cpu": 1000})
        assert p.devices == (*range(gpus), "cpu") and p.max_memory == {0: 20 * 2**30, "cpu": 1000}
        assert plan_placement("m", f"cuda:{gpus - 1}", gpus, "auto", None).devices == (gpus - 1, "cpu")
    else:
        with pytest.raises(RequestError, match="sees no CUDA device"):
            plan_placement("m", "cuda", gpus, "auto", None)


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_refusals_name_the_model_and_the_field(gpus):
    def refused(device, device_map, max_memory, match):
        with pytest.raises(RequestError, match=match) as e:
            plan_placement("big-model", device, gpus, device_map, max_memory)
        assert e.value.code == "bad_request" and "model big-model" in e.value.message

    refused("auto", "pipeline", None, "device_map must be one of auto, balanced, sequential")
    refused("auto", None, {"gpu0": "1GiB"}, "max_memory keys are GPU indices")
    refused("auto", None, {"cpu": "lots"}, r"max_memory.cpu: a size must be")
    refused("auto", None, {str(gpus): "1GiB"}, f"max_memory names GPU {gpus}")      # one past the last GPU
    refused("cpu", None, {"0": "1GiB"}, "max_memory names GPU 0")
    refused("mps", "auto", None, "not mps")
    refused(f"cuda:{gpus}", "auto", None, "CUDA device")


# ----------------------------------------------------------------------------- sharded on the CPU

def load_server(refs, space="tokens", **kw) -> server.Server:
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(r, **kw) for r in refs], "tokenizer": None,
                "max_length": 64, "bos_per_window": True, "space": space, "bytes": {"beam": 2, "prune": 0.0}})
    assert s.channel.sent[-1]["type"] == "loaded", s.channel.sent[-1]
    return s


def evaluate(s: server.Server, path, settings, **dataset) -> dict:
    s.channel.sent.clear()
    s.dispatch({"type": "evaluate", "request_id": "r1", "batch_size": 3, "progress_every": 10**6, "resume": None,
                "dataset": {"path": str(path), "max_length": 64, "stride": 48, "bos_per_window": True, **dataset},
                "settings": settings})
    for m in s.channel.sent:                                   # everything the worker says is on the schema
        assert protocol.schema_errors({**m, "seq": 0}, "from_worker") == [], m
    assert s.channel.sent[-1]["type"] == "result", s.channel.sent[-1]
    return s.channel.sent[-1]


def test_a_model_sharded_over_cpu_and_disk_gives_the_sums_of_one_device(tiny):
    names = ["gpt2-a", "llama", "gemma2-softcap"]               # scored head, scored head, full forward
    plain = load_server([tiny[n] for n in names])
    sharded = load_server([tiny[n] for n in names], max_memory=SMALL_CPU)
    loaded = sharded.channel.sent[-1]["models"]
    assert [m.get("devices") for m in loaded] == [["cpu", "disk"]] * 3
    assert all("devices" not in m for m in plain.channel.sent[-1]["models"])
    assert [m["head_path"] for m in loaded] == ["scored", "scored", "full"]
    for m in sharded.models:                                   # really split, and dispatched with hooks
        placed = set(m.model.hf_device_map.values())
        assert placed == {"cpu", "disk"}, m.model.hf_device_map
        assert any(hasattr(mod, "_hf_hook") for mod in m.model.modules())
        assert m.device == torch.device("cpu")
    lines = [x["message"] for x in sharded.channel.sent if x["type"] == "status"]
    assert any("sharded over cpu, disk (input on cpu, head on cpu)" in line for line in lines), lines

    settings = all_settings(3)
    a = evaluate(plain, tiny["text"], settings)
    b = evaluate(sharded, tiny["text"], settings)
    # exactly: the same kernels on the same device; accelerate only moves weights in and out
    assert b["sums"] == a["sums"]
    assert len(a["sums"]["window_model_nll"][0]) > 5 and len(a["sums"]["window_fusion_nll"]) == len(settings)


def test_byte_space_on_a_sharded_model(tiny):
    refs = [tiny["gpt2-a"], tiny["gpt2-othertok"]]
    plain = load_server(refs, space="bytes")
    sharded = load_server(refs, space="bytes", max_memory=SMALL_CPU)
    assert all(m.get("devices") == ["cpu", "disk"] for m in sharded.channel.sent[-1]["models"])
    settings = all_settings(2)[:4]
    data = dict(max_length=48, stride=48, bos_per_window=False)
    text = tiny["text"].parent / "short.txt"
    text.write_text(tiny["text"].read_text(encoding="utf-8")[:300], encoding="utf-8")
    a, b = evaluate(plain, text, settings, **data), evaluate(sharded, text, settings, **data)
    assert b["sums"] == a["sums"] and b["byte_stats"] == a["byte_stats"]


def test_sharding_without_accelerate_is_refused_with_how_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)       # `import accelerate` raises ImportError
    with pytest.raises(RequestError) as e:
        load_session([spec(tiny["gpt2-a"], device_map="auto"), spec(tiny["gpt2-b"])], None, 64, False,
                     lambda _m: None)
    assert e.value.code == "bad_request" and "gpt2-a" in e.value.message
    assert "pip install accelerate" in e.value.message and "kotara setup" in e.value.message
    # unsharded models load without it
    session = load_session([spec(tiny["gpt2-a"]), spec(tiny["gpt2-b"])], None, 64, False, lambda _m: None)
    assert not any(m.sharded for m in session.models)


def test_device_auto_on_several_gpus_without_accelerate_loads_on_one_with_a_warning(tiny, monkeypatch):
    from kotara_worker import models
    monkeypatch.setitem(sys.modules, "accelerate", None)
    monkeypatch.setattr(models, "_cuda_count", lambda: 2)
    monkeypatch.setattr(models, "_pick_device", lambda requested: torch.device("cpu"))   # no GPU here
    messages: list[str] = []
    session = load_session([spec(tiny["gpt2-a"], device="auto"), spec(tiny["gpt2-b"], device="cpu")], None, 64,
                           False, messages.append)
    assert not session.models[0].sharded
    assert any(m.startswith("warning: model") and "pip install accelerate" in m for m in messages), messages


# ----------------------------------------------------------------------------- out of memory

class OomModel(FakeModel):
    """A FakeModel whose forward runs out of memory on more than `rows` windows at once
    (head=True: its output layer does, on a chunk of a batch of more than `rows`)."""

    def __init__(self, *a, rows: int, head: bool = False, **kw):
        super().__init__(*a, **kw)
        self.rows, self.in_head, self.batch, self.attempts = rows, head, 0, 0

    def hidden(self, input_ids):
        self.batch = input_ids.shape[0]
        if not self.in_head and self.batch > self.rows:
            self.attempts += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.2 GiB total)")
        return super().hidden(input_ids)

    def head(self, hidden):
        if self.in_head and self.batch > self.rows:
            self.attempts += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.2 GiB total)")
        return super().head(hidden)


def close(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(r == pytest.approx(s, rel=1e-12, abs=1e-9) for r, s in zip(a, b))


class Recorder:
    """A collect hook's owner with the mark/rollback evaluate uses (as fit.Collector has)."""

    def __init__(self):
        self.windows: list[int] = []

    def add(self, logits, targets, windows):
        self.windows += windows.tolist()

    def mark(self):
        return len(self.windows)

    def rollback(self, mark):
        del self.windows[mark:]


@pytest.mark.parametrize("head", [False, True])
def test_out_of_memory_halves_the_forward_and_keeps_the_sums(head):
    ids = fake_stream(2000, 50, 7)
    windows = plan_windows(ids.numel(), 64, 48)
    settings = all_settings(2)
    cfg = ev.EvalConfig(position_chunk=40)                      # several chunks per batch: some pass before the OOM
    told: list[str] = []
    a, b = fakes()
    models = [a, OomModel(53, seed=1, ref="fake-1", rows=2, head=head)]
    rec = Recorder()
    got = ev.run_pass(models, ids, windows, settings, 8, None, 50, None, lambda s: None, 10**9, lambda: False, cfg,
                      collect=rec.add, on_status=told.append)
    want = run(fakes(), ids, windows, settings, batch_size=2, vocab=50, cfg=cfg)
    # the windows' numbers do not depend on the batch beyond kernel effects, and FakeModel's
    # rows are row by row (embedding lookups, one matmul per row's output): the retried
    # sub-batches of 2 are the batch_size=2 run's forwards, so every per-window value and
    # every NLL total (their sum in window order) is equal exactly
    for key in ("windows_done", "scored_tokens", "window_targets", "window_model_nll", "window_fusion_nll",
                "model_nll", "fusion_nll"):
        assert getattr(got, key) == getattr(want, key), key
    # the weights: the same chunk sums, added per group of 8 windows instead of 2 (float64
    # additions in another grouping: equal to ~1e-15 relative, not bit for bit)
    assert close(got.fusion_weights, want.fusion_weights)
    # and exactly what an unfailing batch_size=8 run gives to its weights, the groups being the same
    plain = run([*fakes()[:1], FakeModel(53, seed=1, ref="fake-1")], ids, windows, settings, batch_size=8, vocab=50, cfg=cfg)
    assert close(got.fusion_weights, plain.fusion_weights)
    assert len(told) == 1, told
    assert told[0].startswith("CUDA out of memory at 8 windows per forward; retrying with 4 (window 0 of model "
                              "fake-1)"), told
    assert sorted(rec.windows) == rec.windows and len(rec.windows) == got.scored_tokens   # each position once
    assert models[1].attempts == 2                              # 8 -> 4 -> 2, then 2 for the rest of the request


def test_out_of_memory_at_one_window_fails_naming_model_window_and_memory():
    ids = fake_stream(600, 50, 8)
    windows = plan_windows(ids.numel(), 64, 48)
    told: list[str] = []
    with pytest.raises(ev.OutOfMemory) as e:
        ev.run_pass([fakes()[0], OomModel(53, seed=1, ref="fake-1", rows=0)], ids, windows, all_settings(2), 4,
                    None, 50, None, lambda s: None, 10**9, lambda: False, on_status=told.append)
    message = str(e.value)
    assert "model fake-1" in message and "1 window per forward" in message and "2.00 GiB" in message
    assert f"window 0 (tokens {windows[0].start}..{windows[0].end - 1})" in message
    assert len(told) == 1


def test_a_failed_attempt_leaves_no_partial_sums():
    """Stop the pass after its first batch succeeded: the sums hold that batch exactly as a
    run that never ran out of memory does, nothing of the attempts that failed."""
    ids = fake_stream(1500, 50, 9)
    windows = plan_windows(ids.numel(), 64, 48)
    settings = all_settings(2)
    asked = iter([False, True])
    oom = OomModel(53, seed=1, ref="fake-1", rows=1, head=True)
    with pytest.raises(ev.Cancelled) as c:
        ev.run_pass([fakes()[0], oom], ids, windows, settings, 4, None, 50, None, lambda s: None, 10**9,
                    lambda: next(asked), ev.EvalConfig(position_chunk=30))
    want = run(fakes(), ids, windows[:4], settings, batch_size=1, vocab=50, cfg=ev.EvalConfig(position_chunk=30))
    got = c.value.sums
    assert got.windows_done == 4 and oom.attempts == 2
    assert got.window_model_nll == want.window_model_nll and got.window_fusion_nll == want.window_fusion_nll
    assert got.model_nll == want.model_nll and got.scored_tokens == want.scored_tokens
    assert close(got.fusion_weights, want.fusion_weights)


def test_the_server_warns_once_and_reports_an_oom_at_one_window(tiny, monkeypatch):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["gpt2-b"])],
                "tokenizer": None, "max_length": 64, "bos_per_window": False})
    real = s.models[1]

    def failing(rows):
        original = type(real).hidden

        def hidden(self, input_ids):
            if self is real and input_ids.shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(self, input_ids)
        monkeypatch.setattr(type(real), "hidden", hidden)

    failing(1)
    s.channel.sent.clear()
    s.dispatch({"type": "evaluate", "request_id": "r1", "batch_size": 4, "progress_every": 10**6, "resume": None,
                "dataset": {"path": str(tiny["text"]), "max_length": 64, "stride": 64, "bos_per_window": False},
                "settings": all_settings(2)[:3]})
    warnings = [m["message"] for m in s.channel.sent if m["type"] == "status" and "out of memory" in m["message"]]
    assert s.channel.sent[-1]["type"] == "result" and len(warnings) == 1, s.channel.sent[-1]
    assert warnings[0].startswith("warning: CUDA out of memory at 4 windows per forward; retrying with 2")
    failing(0)
    s.channel.sent.clear()
    s.dispatch({"type": "evaluate", "request_id": "r2", "batch_size": 2, "progress_every": 10**6, "resume": None,
                "dataset": {"path": str(tiny["text"]), "max_length": 64, "stride": 64, "bos_per_window": False},
                "settings": []})
    error = s.channel.sent[-1]
    assert error["type"] == "error" and error["code"] == "internal" and error["request_id"] == "r2", error
    assert str(tiny["gpt2-b"]) in error["message"] and "2.00 GiB" in error["message"]
    assert protocol.schema_errors({**error, "seq": 0}, "from_worker") == []


def test_a_pools_request_keeps_its_smaller_forwards_across_its_shares(tiny, monkeypatch):
    # a pool sends a request as many shares (one group each): the first share's retry sets the
    # forward size for the rest of the request on that worker, with one warning; a new request
    # starts again at batch_size
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["gpt2-b"])],
                "tokenizer": None, "max_length": 64, "bos_per_window": False})
    real = s.models[1]
    original = type(real).hidden
    sizes: list[int] = []

    def hidden(self, input_ids):
        if self is real:
            sizes.append(input_ids.shape[0])
            if input_ids.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, input_ids)
    monkeypatch.setattr(type(real), "hidden", hidden)

    def share(request_id: str, first: int) -> dict:
        s.dispatch({"type": "evaluate", "request_id": request_id, "batch_size": 4, "progress_every": 1, "resume": None,
                    "dataset": {"path": str(tiny["text"]), "max_length": 16, "stride": 16, "bos_per_window": False},
                    "settings": all_settings(2)[:2], "share": {"first": first, "stop": first + 4}})
        return s.channel.sent[-1]

    s.channel.sent.clear()
    for first in (0, 4, 8):
        assert share("r1", first)["type"] == "result"
    warnings = [m for m in s.channel.sent if m["type"] == "status" and "out of memory" in m["message"]]
    assert len(warnings) == 1
    assert sizes == [4, 2, 2, 2, 2, 2, 2]          # one failed attempt, then 2 per forward for every share
    sizes.clear()
    assert share("r2", 0)["type"] == "result"
    assert sizes == [4, 2, 2]                       # a new request tries batch_size again
