"""evaluate.py: the one pass, against a plain transcription of the Hugging Face
"perplexity of fixed-length models" loop and the float64 strategy formulas."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import spec
from kotara_worker.evaluate import Cancelled, EvalConfig, Model, NumericalError, Sums, evaluate, plan_batches
from kotara_worker.fusion import FusionConfig
from kotara_worker.models import LoadedModel, load_models
from kotara_worker.windows import plan_windows
from test_fusion import all_settings, reference, reference_base, setting
from tiny_models import FakeModel

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["gpt2-a", "gpt2-b", "llama", "gpt2-padded", "gemma2-softcap"]


@pytest.fixture(scope="module")
def loaded(tiny):
    tok, models = load_models([spec(tiny[n]) for n in NAMES], None, 64, True, lambda _m: None)
    return tok, dict(zip(NAMES, models))


@pytest.fixture(scope="module")
def hf(tiny):
    """The same checkpoints, loaded by plain transformers (independent of models.py)."""
    from transformers import AutoModelForCausalLM
    return {n: AutoModelForCausalLM.from_pretrained(tiny[n]).eval() for n in NAMES}


def hf_loop(model, ids: torch.Tensor, L: int, S: int, bos_id: int | None = None) -> tuple[float, int]:
    """Σ NLL and count, as the HF docs loop computes them (loss × number of loss tokens;
    the count read off the shifted labels, so a window whose labels are all targets
    counts trg_len − 1)."""
    n, prev_end, total, count = ids.numel(), 0, 0.0, 0
    for begin in range(0, n, S):
        end = min(begin + L, n)
        trg_len = end - prev_end
        input_ids = ids[begin:end].unsqueeze(0)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        if bos_id is not None:
            input_ids = torch.cat([torch.tensor([[bos_id]]), input_ids], 1)
            target_ids = torch.cat([torch.tensor([[-100]]), target_ids], 1)
        k = int((target_ids[:, 1:] != -100).sum())
        if k:
            with torch.no_grad():
                loss = model(input_ids, labels=target_ids).loss
            total += float(loss) * k
            count += k
        prev_end = end
        if end == n:
            break
    return total, count


def run(models, ids, windows, settings=(), batch_size=1, bos_id=None, vocab=400, **kw) -> Sums:
    args = dict(resume=None, on_progress=lambda s: None, progress_every=10**9, should_stop=lambda: False)
    args.update(kw)
    return evaluate(models, ids, windows, list(settings), batch_size, bos_id, vocab, **args)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ----------------------------------------------------------------------------- base PPL = the HF method

@pytest.mark.parametrize("name", ["gpt2-a", "llama", "gpt2-padded", "gemma2-softcap"])
@pytest.mark.parametrize("L,S", [(64, 64), (64, 24), (40, 7)])
def test_base_ppl_is_the_hf_fixed_length_method(loaded, hf, tiny_tokens, name, L, S):
    _, ids = tiny_tokens
    ids = ids[:800] if S < 10 else ids
    total, count = hf_loop(hf[name], ids, L, S)
    for batch_size in (1, 3):
        sums = run([loaded[1][name]], ids, plan_windows(ids.numel(), L, S), batch_size=batch_size)
        assert sums.scored_tokens == count
        assert rel(math.exp(sums.model_nll[0] / count), math.exp(total / count)) < 1e-5


@pytest.mark.parametrize("L,S", [(64, 64), (64, 32)])
def test_bos_per_window_is_the_hf_loop_with_bos(loaded, hf, tiny_tokens, L, S):
    tok, ids = tiny_tokens
    sums = run([loaded[1]["llama"]], ids, plan_windows(ids.numel(), L, S, bos=True), batch_size=2,
               bos_id=tok.bos_token_id)
    total, count = hf_loop(hf["llama"], ids, L, S, bos_id=tok.bos_token_id)
    assert sums.scored_tokens == count == ids.numel()
    assert rel(sums.model_nll[0], total) < 1e-5


def test_head_paths_agree_and_softcap_takes_the_full_path(loaded, tiny_tokens):
    _, ids = tiny_tokens
    models = loaded[1]
    assert models["gemma2-softcap"].head_path == "full"
    assert all(models[n].head_path == "scored" for n in ("gpt2-a", "llama", "gpt2-padded"))
    scored = [models["gpt2-a"], models["llama"]]
    full = [dataclasses.replace(m, head_path="full") for m in scored]
    windows = plan_windows(ids.numel(), 64, 40)
    a = run(scored, ids, windows, all_settings(2), batch_size=4)
    b = run(full, ids, windows, all_settings(2), batch_size=4)
    assert a.scored_tokens == b.scored_tokens
    for x, y in zip(a.model_nll + a.fusion_nll, b.model_nll + b.fusion_nll):
        assert rel(x, y) < 1e-6


# ----------------------------------------------------------------------------- fusion inside the pass

def reference_sums(hf_models, ids, windows, settings, vocab, per_window=None):
    """Σ NLL per model and per setting from plain HF forwards, one window at a time.
    per_window: a dict that receives each window's Σ NLL, "model": [model][window] and
    "fusion": [setting][window]."""
    model_nll = [0.0] * len(hf_models)
    fusion_nll = [0.0] * len(settings)
    weights = [[0.0] * len(hf_models) for _ in settings]
    by_window = {"model": [[] for _ in hf_models], "fusion": [[] for _ in settings]}
    for w in windows:
        rows = slice(w.first_scored - w.start - 1, w.end - w.start - 1)
        targets = ids[w.first_scored:w.end]
        with torch.no_grad():
            logits = [m(ids[w.start:w.end].unsqueeze(0)).logits[0, rows] for m in hf_models]   # [p, V_m]
        for i, z in enumerate(logits):
            x = float(reference_base(z, targets).sum())
            model_nll[i] += x
            by_window["model"][i].append(x)
        for k, s in enumerate(settings):
            nll, alpha = reference(logits, targets, vocab, s)
            fusion_nll[k] += float(nll.sum())
            by_window["fusion"][k].append(float(nll.sum()))
            for m in range(len(hf_models)):
                weights[k][m] += float(alpha[:, m].sum())
    if per_window is not None:
        per_window.update(by_window)
    return model_nll, fusion_nll, weights


def assert_windows_add_up(sums, windows, window_bytes=None) -> None:
    """The per-window sums of a whole run (protocol.ts Sums): one entry per window, the
    windows' scored counts, and every total exactly the float64 sum of its per-window
    values in window order (a Sums or its wire dict)."""
    d = sums if isinstance(sums, dict) else sums.to_dict()
    n = len(windows)
    assert d["window_first"] == 0 and d["windows_done"] == n
    assert d["window_targets"] == [w.end - w.first_scored for w in windows]
    assert sum(d["window_targets"]) == d["scored_tokens"] and len(d["window_bytes"]) == n
    if window_bytes is not None:
        assert d["window_bytes"] == list(window_bytes)
    for totals, lists in ((d["model_nll"], d["window_model_nll"]), (d["fusion_nll"], d["window_fusion_nll"])):
        assert len(lists) == len(totals)
        for total, values in zip(totals, lists):
            assert len(values) == n
            acc = 0.0
            for x in values:
                acc += x
            assert acc == total                               # exactly: the total IS this sum


@pytest.mark.parametrize("names", [("gpt2-a", "llama"), ("gpt2-a", "gpt2-padded", "gpt2-b")])
def test_fusions_in_the_pass_equal_the_formulas(loaded, hf, tiny_tokens, names):
    tok, ids = tiny_tokens
    ids = ids[:900]
    windows = plan_windows(ids.numel(), 64, 48)
    settings = all_settings(len(names))
    nbytes = [3 * i + 1 for i in range(len(windows))]          # recorded as given
    sums = run([loaded[1][n] for n in names], ids, windows, settings, batch_size=3, vocab=len(tok),
               cfg=EvalConfig(position_chunk=50), window_bytes=nbytes)   # chunks straddle windows
    per_window: dict = {}
    model_nll, fusion_nll, weights = reference_sums([hf[n] for n in names], ids, windows, settings, len(tok),
                                                    per_window)
    for got, want in zip(sums.model_nll + sums.fusion_nll, model_nll + fusion_nll):
        assert rel(got, want) < 1e-5
    # each window's own sums, against the same window scored alone by plain HF
    assert_windows_add_up(sums, windows, nbytes)
    for got_rows, want_rows in ((sums.window_model_nll, per_window["model"]),
                                (sums.window_fusion_nll, per_window["fusion"])):
        for got_row, want_row in zip(got_rows, want_rows):
            for got, want in zip(got_row, want_row):
                assert rel(got, want) < 1e-5
    for got_row, want_row in zip(sums.fusion_weights, weights):
        for got, want in zip(got_row, want_row):
            assert abs(got - want) <= 1e-5 * sums.scored_tokens
    assert sums.scored_tokens == sum(w.end - w.first_scored for w in windows) == ids.numel() - 1


# ----------------------------------------------------------------------------- batches, progress, resume

def fake_stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def fakes(n_models: int = 2, vocab: int = 50, **kw) -> list[FakeModel]:
    return [FakeModel(vocab + 3 * m, seed=m, ref=f"fake-{m}", **kw) for m in range(n_models)]


def test_batches_group_by_index_and_never_pad():
    windows = plan_windows(1000, 64, 48)
    batches = plan_batches(windows, 4)
    assert [i for b in batches for i in b] == list(range(len(windows)))
    for b in batches:
        assert len({windows[i].end - windows[i].start for i in b}) == 1          # one length per forward
        assert len({i // 4 for i in b}) == 1                                    # never across groups
    assert list(batches[-1]) == [len(windows) - 1]                              # the short last window alone
    with pytest.raises(ValueError):
        plan_batches(windows, 0)


def test_each_model_runs_once_per_batch_and_progress_comes_at_batch_boundaries():
    ids = fake_stream(2000, 50, 0)
    windows = plan_windows(ids.numel(), 64, 48)
    models = fakes(3)
    seen: list[int] = []
    sums = run(models, ids, windows, all_settings(3), batch_size=5, vocab=50,
               on_progress=lambda s: seen.append(s.windows_done), progress_every=12)
    batches = plan_batches(windows, 5)
    assert [m.forwards for m in models] == [len(batches)] * 3
    ends = [b.stop for b in batches]
    assert seen and all(x in ends for x in seen)
    assert all(b - a >= 12 for a, b in zip([0] + seen, seen))
    assert sums.windows_done == len(windows) and sums.scored_tokens == ids.numel() - 1


@pytest.mark.parametrize("bos", [False, True])
def test_resume_after_cancel_is_bitwise_identical(bos):
    ids = fake_stream(3000, 50, 1)
    windows = plan_windows(ids.numel(), 64, 40, bos=bos)
    settings = all_settings(2)
    bos_id = 0 if bos else None
    whole = run(fakes(), ids, windows, settings, batch_size=4, vocab=50, bos_id=bos_id)

    # should_stop is asked once before each batch: False for calls 0..6, so batches
    # 0..6 finish and the checkpoint holds every window up to the end of batch 6
    assert len(windows) == math.ceil((3000 - 64) / 40) + 1 == 75   # the last one starts at 2960
    batches = plan_batches(windows, 4)                        # 18 of 4, 2, the short last one
    assert len(batches) > 8                                   # the cancel comes well before the end
    calls = iter(range(10**9))
    with pytest.raises(Cancelled) as e:
        run(fakes(), ids, windows, settings, batch_size=4, vocab=50, bos_id=bos_id,
            should_stop=lambda: next(calls) == 7)
    checkpoint = e.value.sums
    assert checkpoint.windows_done == batches[6].stop == 7 * 4  # seven full batches of 4
    assert checkpoint.window_targets == whole.window_targets[:28]   # the per-window sums of what finished
    resumed = run(fakes(), ids, windows, settings, batch_size=4, vocab=50, bos_id=bos_id,
                  resume=Sums(**checkpoint.to_dict()))
    assert resumed == whole                                   # dataclass equality: exact floats
    assert resumed.window_fusion_nll == whole.window_fusion_nll   # (per-window lists included)
    assert_windows_add_up(whole, windows)

    snapshots: list[Sums] = []
    run(fakes(), ids, windows, settings, batch_size=4, vocab=50, bos_id=bos_id,
        on_progress=snapshots.append, progress_every=9)
    assert len(snapshots) >= 3                                # every 3 batches (12 ≥ 9 windows)
    for snap in snapshots[:3]:
        assert run(fakes(), ids, windows, settings, batch_size=4, vocab=50, bos_id=bos_id, resume=snap) == whole


def test_resume_with_real_models_is_bitwise_identical(loaded, tiny_tokens):
    _, ids = tiny_tokens
    models = [loaded[1]["gpt2-a"], loaded[1]["llama"]]
    windows = plan_windows(ids.numel(), 64, 32)
    whole = run(models, ids, windows, all_settings(2), batch_size=3)
    snaps: list[Sums] = []
    run(models, ids, windows, all_settings(2), batch_size=3, on_progress=snaps.append, progress_every=7)
    assert run(models, ids, windows, all_settings(2), batch_size=3, resume=snaps[1]) == whole


def test_nan_logits_name_the_model_and_the_window():
    ids = fake_stream(1500, 50, 2)
    windows = plan_windows(ids.numel(), 64, 32)
    bad = int(ids[1000])
    # the first window with a scored target predicted from the bad token
    expected = next(i for i, w in enumerate(windows) if any(int(ids[j - 1]) == bad
                                                            for j in range(w.first_scored, w.end)))
    models = [FakeModel(50, seed=0, ref="fake-ok"), FakeModel(50, seed=1, ref="fake-nan", nan_token=bad)]
    with pytest.raises(NumericalError) as e:
        run(models, ids, windows, all_settings(2), batch_size=3, vocab=50)
    assert e.value.model_ref == "fake-nan" and e.value.window == expected
    assert "fake-nan" in str(e.value) and f"window {expected}" in str(e.value)


@pytest.mark.parametrize("bad_at", [700, 1447])
def test_nan_logits_in_a_later_chunk_and_block_name_their_window_and_tokens(bad_at):
    # One NaN position, deep in the pass: windows of 64 with stride 32 (32 targets each),
    # 3 windows a batch, 40 positions a chunk, 2 rows a fusion block. The bad token is the
    # input at stream index bad_at, so the NaN row predicts target bad_at + 1: the window
    # that scores that target is the one to name (computed here from the plan alone).
    ids = fake_stream(1500, 49, 5)                         # tokens 0..48: 49 occurs once
    ids[bad_at] = 49
    windows = plan_windows(ids.numel(), 64, 32)
    expected = next(i for i, w in enumerate(windows) if w.first_scored <= bad_at + 1 < w.end)
    batch = next(b for b in plan_batches(windows, 3) if expected in b)
    scored_before = sum(windows[i].n_scored for i in range(batch.start, expected))
    row_in_batch = scored_before + (bad_at + 1 - windows[expected].first_scored)
    assert row_in_batch >= 40 and row_in_batch % 40 >= 2  # a later chunk, a later block of it
    assert expected > batch.start                         # not the batch's first window
    models = [FakeModel(50, seed=0, ref="fake-ok"), FakeModel(50, seed=1, ref="fake-nan", nan_token=49)]
    cfg = EvalConfig(position_chunk=40, fusion=FusionConfig(block_elems=2 * 50))
    with pytest.raises(NumericalError) as e:
        run(models, ids, windows, all_settings(2), batch_size=3, vocab=50, cfg=cfg)
    w = windows[expected]
    assert (e.value.model_ref, e.value.model_index, e.value.window) == ("fake-nan", 1, expected)
    assert e.value.position == row_in_batch % 40          # the row in its chunk
    assert str(e.value) == (f"model fake-nan: NaN or infinite logits in window {expected} "
                            f"(tokens {w.start}..{w.end - 1})")


def test_the_model_protocol_is_what_loaded_and_fake_models_offer(loaded):
    assert isinstance(loaded[1]["gpt2-a"], LoadedModel) and isinstance(loaded[1]["gpt2-a"], Model)
    assert isinstance(FakeModel(10), Model)
    assert not isinstance(object(), Model)


def test_sweep_sized_settings_equal_one_setting_at_a_time():
    ids = fake_stream(600, 50, 3)
    windows = plan_windows(ids.numel(), 64, 64)
    grid = [0.7, 0.85, 1.0, 1.15, 1.3]
    settings = [setting(t, 2, [a, b], id_=f"{t}-{a}-{b}")
                for t in ("average", "poe", "entropy", "gap") for a in grid for b in grid]
    together = run(fakes(), ids, windows, settings, batch_size=4, vocab=50)
    for k in range(0, 100, 7):
        alone = run(fakes(), ids, windows, [settings[k]], batch_size=4, vocab=50)
        assert rel(together.fusion_nll[k], alone.fusion_nll[0]) < 1e-6
        assert together.fusion_weights[k] == alone.fusion_weights[0]
    assert together.model_nll == alone.model_nll


def test_per_window_sums_do_not_depend_on_batches_or_chunks():
    ids = fake_stream(2000, 50, 5)
    windows = plan_windows(ids.numel(), 64, 40)
    nbytes = list(range(len(windows)))
    a = run(fakes(), ids, windows, all_settings(2), batch_size=1, vocab=50, window_bytes=nbytes,
            cfg=EvalConfig(position_chunk=1000))
    b = run(fakes(), ids, windows, all_settings(2), batch_size=5, vocab=50, window_bytes=nbytes,
            cfg=EvalConfig(position_chunk=7))
    for x in (a, b):
        assert_windows_add_up(x, windows, nbytes)
    for rows_a, rows_b in ((a.window_model_nll, b.window_model_nll), (a.window_fusion_nll, b.window_fusion_nll)):
        for ra, rb in zip(rows_a, rows_b):
            assert all(rel(x, y) < 1e-6 for x, y in zip(ra, rb))
    # without byte counts (a library call) each window records 0 bytes
    assert run(fakes(), ids, windows[:3], vocab=50).window_bytes == [0, 0, 0]
    with pytest.raises(ValueError, match="window_bytes"):
        run(fakes(), ids, windows, vocab=50, window_bytes=nbytes[:-1])


def test_resume_sums_that_do_not_add_up_are_refused():
    ids = fake_stream(1200, 50, 6)
    windows = plan_windows(ids.numel(), 64, 64)
    with pytest.raises(Cancelled) as e:
        calls = iter(range(10**9))
        run(fakes(), ids, windows, all_settings(2), batch_size=2, vocab=50, should_stop=lambda: next(calls) == 3)
    good = e.value.sums
    assert good.windows_done == 6
    bad_total = good.copy()
    bad_total.fusion_nll[1] += 1e-9                          # the total no longer is the sum of its windows
    short = good.copy()
    short.window_model_nll[0].pop()
    partial = good.copy()
    partial.window_first = 2                                 # a progress message's share is not a checkpoint
    for bad, why in ((bad_total, "do not add up"), (short, "do not match"), (partial, "do not match")):
        with pytest.raises(ValueError, match=why):
            run(fakes(), ids, windows, all_settings(2), batch_size=2, vocab=50, resume=bad)


def test_bad_inputs_are_refused():
    ids = fake_stream(300, 50, 4)
    with pytest.raises(ValueError, match="without BOS"):
        run(fakes(), ids, plan_windows(300, 64, 64, bos=True), vocab=50)     # first token needs a BOS
    with pytest.raises(ValueError, match="resume"):
        run(fakes(), ids, plan_windows(300, 64, 64), all_settings(2), vocab=50, resume=Sums.zeros(2, 1))
    with pytest.raises(ValueError, match="unknown strategy"):
        run(fakes(), ids, plan_windows(300, 64, 64), [{"id": "x", "type": "max", "temperatures": [1, 1],
                                                        "betas": None}], vocab=50)


def test_concurrent_forwards_give_the_same_sums(loaded, tiny_tokens):
    # On separate CUDA devices the models' forwards run in threads at the same time;
    # the threaded path itself is exercised here on the CPU and must change nothing.
    _, ids = tiny_tokens
    models = [loaded[1]["gpt2-a"], loaded[1]["llama"]]
    windows = plan_windows(ids.numel(), 64, 32)
    serial = run(models, ids, windows, all_settings(2), batch_size=3, cfg=EvalConfig(concurrent=False))
    threaded = run(models, ids, windows, all_settings(2), batch_size=3, cfg=EvalConfig(concurrent=True))
    assert threaded == serial


def test_no_logits_outlive_their_chunk_into_the_next_forward():
    # The [p, V] float32 logits of a chunk are the pass's biggest tensors; any kept alive
    # (by a loop variable, a list, a reference cycle) while the next batch's forward runs
    # adds 2 × [256, V] to the peak of every batch (issue "performance": flat memory).
    import weakref

    produced: list[weakref.ref] = []
    alive_at_forward: list[int] = []

    class Tracked(FakeModel):
        def hidden(self, input_ids):
            alive_at_forward.append(sum(r() is not None for r in produced))
            return super().hidden(input_ids)

        def head(self, hidden):
            z = super().head(hidden)
            produced.append(weakref.ref(z))
            return z

    ids = fake_stream(1500, 50, 0)
    windows = plan_windows(ids.numel(), 64, 32)
    models = [Tracked(50, seed=s, ref=f"m{s}") for s in (1, 2)]
    plain = run([FakeModel(50, seed=s, ref=f"m{s}") for s in (1, 2)], ids, windows, all_settings(2),
                batch_size=3, vocab=50, cfg=EvalConfig(position_chunk=40))
    tracked = run(models, ids, windows, all_settings(2), batch_size=3, vocab=50, cfg=EvalConfig(position_chunk=40))
    assert tracked == plain                                   # the tracking changes nothing
    assert len(alive_at_forward) == 2 * len(plan_batches(windows, 3)) > 10
    assert len(produced) > 2 * len(alive_at_forward)          # several chunks per batch
    assert alive_at_forward == [0] * len(alive_at_forward)


def join_shares(shares: list[Sums]) -> Sums:
    """A pool's merge, written here independently of src/pool.ts: the shares in window order,
    their window lists concatenated, every NLL total the running float64 sum of its windows'
    values, the weights the running sum of each share's total."""
    out = Sums.zeros(len(shares[0].model_nll), len(shares[0].fusion_nll))
    for s in shares:
        assert s.window_first == out.windows_done
        for j, t in enumerate(s.window_targets):
            out.add_window(t, s.window_bytes[j], [r[j] for r in s.window_model_nll],
                           [r[j] for r in s.window_fusion_nll])
        for k, row in enumerate(s.fusion_weights):
            for m, x in enumerate(row):
                out.fusion_weights[k][m] += x
        out.windows_done = s.windows_done
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_shares_of_whole_groups_join_into_the_whole_pass_bit_for_bit(batch_size):
    # a pool hands out groups of batch_size windows; joined in window order, their sums are
    # the one-worker pass's exactly (the weights too: they are summed per group)
    ids = fake_stream(3000, 50, 7)
    windows = plan_windows(ids.numel(), 64, 40)
    assert len(windows) == 75
    edges = list(range(0, 75, batch_size)) + [75]
    settings = all_settings(2)
    nbytes = [3 * i + 1 for i in range(len(windows))]
    whole = run(fakes(), ids, windows, settings, batch_size=batch_size, vocab=50, window_bytes=nbytes)
    shares = [run(fakes(), ids, windows, settings, batch_size=batch_size, vocab=50, window_bytes=nbytes,
                  share=(a, b)) for a, b in zip(edges, edges[1:])]
    for (a, b), s in zip(zip(edges, edges[1:]), shares):
        assert (s.window_first, s.windows_done, len(s.window_targets)) == (a, b, b - a)
    assert join_shares(shares) == whole                      # dataclass equality: exact floats
    # in the wire form too (what a result message carries)
    assert join_shares([Sums.from_dict(s.to_dict()) for s in shares]) == whole


def test_a_share_cannot_resume_and_must_lie_within_the_windows():
    ids = fake_stream(500, 50, 2)
    windows = plan_windows(ids.numel(), 64, 64)
    with pytest.raises(ValueError, match="within"):
        run(fakes(), ids, windows, batch_size=2, vocab=50, share=(2, len(windows) + 1))
    with pytest.raises(ValueError, match="within"):
        run(fakes(), ids, windows, batch_size=2, vocab=50, share=(3, 3))
    with pytest.raises(ValueError, match="resume"):
        run(fakes(), ids, windows, batch_size=2, vocab=50, share=(0, 2), resume=Sums.zeros(2, 0))
    with pytest.raises(ValueError, match="one group"):
        run(fakes(), ids, windows, batch_size=2, vocab=50, share=(0, 4))
