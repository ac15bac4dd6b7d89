"""Memory (issue "performance": peak memory must not grow with the length of the text
beyond the token ids). The pass's live tensor bytes are counted exactly, op by op, free
of the allocator noise a resident-memory peak carries; and server.py's accounting
reports each request's own peak. Resident-memory limits are measured against what the
same test made resident on this machine, or say why they hold on any Linux."""
from __future__ import annotations

import os

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import spec
from kotara_worker import server
from kotara_worker.evaluate import EvalConfig
from kotara_worker.models import load_models
from kotara_worker.windows import plan_windows
from test_evaluate import run
from test_fusion import all_settings
from tiny_models import FakeModel

pytestmark = pytest.mark.usefixtures("one_thread")

linux = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
MiB = 2**20


class LiveTensorBytes(TorchDispatchMode):
    """Every storage an op creates, held by a weak reference: `peak` is the most bytes
    of them alive at once (tensors made outside the mode, like the weights, are not
    counted; views count their storage once)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                self.live.setdefault(st.data_ptr(), (StorageWeakRef(st), st.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def pass_peak(models, n_windows: int, vocab: int, seed: int = 0) -> tuple[int, int]:
    """(peak live tensor bytes, stream length) of the four-strategy pass over a random
    stream of n_windows full windows, L64/S32, batch 2, 40 positions per chunk."""
    n = 64 + 32 * (n_windows - 1)
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))    # [n]
    windows = plan_windows(n, 64, 32)
    assert len(windows) == n_windows
    with LiveTensorBytes() as live:
        run(models, ids, windows, all_settings(len(models)), batch_size=2, vocab=vocab, cfg=EvalConfig(position_chunk=40))
    return live.peak, n


@pytest.mark.parametrize("kind", ["fake", "gpt2+llama"])
def test_the_pass_holds_nothing_per_token_beyond_the_ids(tiny, kind):
    # 11 and 47 windows at batch 2: the same batch shapes (a first pair, pairs, a last
    # single window), 4.3× the tokens. Only the int64 ids may differ.
    if kind == "fake":
        models, vocab = [FakeModel(5000, seed=1), FakeModel(5000, seed=2)], 5000
    else:
        _, models = load_models([spec(tiny["gpt2-a"]), spec(tiny["llama"])], None, 64, True, lambda _m: None)
        vocab = 400
    short, n_short = pass_peak(models, 11, vocab)
    long, n_long = pass_peak(models, 47, vocab)
    chunk_logits = 2 * 40 * vocab * 4                        # one chunk's float32 logits, both models
    assert short > chunk_logits                              # the counter sees the pass's tensors
    # The extra int64 ids (8 bytes a token; the counter sees them through the views that
    # slice windows out of them), and room for one copy should torch ever make one; any
    # per-token growth of logits is ≥ 4·V bytes a scored token (test_the_counter_sees_a_leak),
    # 2500× the ids at V = 5000 and 200× at V = 400.
    assert long - short <= 2 * 8 * (n_long - n_short)


def test_the_counter_sees_a_leak():
    # The same measurement with a model that keeps every head output (a leak of
    # float32 logits per scored token, like the reference cycle this project once had).
    class Hoarding(FakeModel):
        kept: list = []

        def head(self, hidden):
            z = super().head(hidden)
            self.kept.append(z)
            return z

    short, _ = pass_peak([Hoarding(5000, seed=1), Hoarding(5000, seed=2)], 11, 5000)
    Hoarding.kept.clear()
    long, _ = pass_peak([Hoarding(5000, seed=1), Hoarding(5000, seed=2)], 47, 5000)
    Hoarding.kept.clear()
    assert long - short >= (47 - 11) * 32 * 5000 * 4         # 32 new targets a window, float32 rows


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@linux
def test_the_peak_is_per_request():
    server.reset_peak_memory()
    before = server.peak_memory_bytes()
    x = torch.ones(32 * MiB)                                 # 128 MiB, written, so resident
    size = x.numel() * x.element_size()
    held = server.peak_memory_bytes()
    del x
    server.reset_peak_memory()
    after = server.peak_memory_bytes()
    # Any Linux: every page of x is written, and written anonymous pages stay resident
    # (nothing swaps in a millisecond); VmHWM ≥ VmRSS; 1/16 of x covers RSS counters that
    # lag by a few per-CPU batches of pages.
    assert held - before >= size * 15 / 16                    # the request's own peak
    # x (≥ 32 MiB, glibc's largest mmap threshold) was an mmap of its own: freed, it left
    # RSS at once, so a peak that forgot it is back near `before`, far below `held`.
    assert after - before < (held - before) / 4               # the next request starts afresh


@linux
@pytest.mark.skipif(server._MALLOC_TRIM is None, reason="no glibc malloc_trim")
def test_freed_heap_is_returned_before_a_request():
    # Blocks under glibc's mmap threshold live in the heap; freed, they stay resident
    # (pinned by the last one) until malloc_trim hands their pages back.
    server.release_memory()
    start = rss()
    blocks = [bytearray(64 * 1024) for _ in range(2048)]    # 128 MiB in 64 KiB blocks
    allocated = rss() - start                                # what they made resident here
    del blocks[:-1]
    retained = rss() - start
    server.reset_peak_memory()
    released = rss() - start
    # Measured against `allocated` (this machine, this run: transparent huge pages or
    # allocator padding scale all three alike), not against fixed sizes:
    assert allocated >= 64 * 1024 * 2048 * 15 / 16           # the blocks are written (bytearray zeroes them)
    assert retained >= allocated / 2                          # the allocator kept it
    assert released < allocated / 8                           # and gave it back
    assert server.peak_memory_bytes() - start < allocated / 8  # so the next peak starts low
