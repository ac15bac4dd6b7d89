"""The one pass in byte space (SPEC §7): models whose tokenizers differ, fused over bytes.

The text is read as bytes and cut into windows of bytes (windows.plan_byte_windows:
max_length and stride count bytes, every byte is scored once, cuts on UTF-8 character
boundaries). For each window, each model tokenizes the window's text with its own
tokenizer (the canonical tokenization, the beam's anchor: byte_lm), and its ByteLM gives
the 257-way next-byte log-probabilities l_m of every scored byte, the start token being
the context of the window's first byte. Every setting is then fused by the token-space
code (fusion.py, per position) with l_m in place of the logits, the byte values as
targets and 257 outcomes as the vocabulary: SPEC §3 with l_m in place of z_m. Only sums
leave this module (and, when a request asks, the numbers of the token view's first bytes:
positions.py); a window's rows die with it, so memory does not grow with the text.

Sums mean what they mean in token space (model_nll, fusion_nll, fusion_weights,
scored_tokens = scored bytes, windows_done, and per window its scored bytes twice, as
window_targets and window_bytes), so progress, checkpoints and resume work unchanged.
Each model's NLL is summed in float64 straight from its rows (they are exact
log-probabilities already); the fusions go through fusion.py's float32 path.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .byte_lm import ByteLM, ByteStats, Interrupted, NonFiniteLogits
from .evaluate import _ALLOCATE, Cancelled, OutOfMemory, Sums, _starting_sums, share_sums
from .fusion import ChunkSums, FusionConfig, NumericalError, Setting
from .fusion import _each_position as each_position   # score_chunk's per-position numbers, settings trusted
from .models import ByteReader, LoadedModel
from .positions import Collector
from .protocol import RequestError
from .token_bytes import ByteSpaceError, canonical_ids
from .windows import Window

__all__ = ["ByteModel", "LOG_FLOOR", "byte_models", "check_byte_settings", "check_windows", "window_input", "run_pass",
           "BeamTotals"]

# The rows hold -inf for a byte no hypothesis can write (K = 1 often rules out most).
# fusion.py wants finite numbers (it checks finiteness to catch NaN, and its entropy
# moments would form 0 · -inf), so -inf becomes this floor before fusing; NaN stays NaN
# (clamp propagates it) and still raises.
#
# Why -1e30 changes nothing for any temperature a user will meet: every quantity of
# fusion.py that involves a floored entry is exp(c · (-1e30) + finite) in float32 (the
# entropy and gap moments, and the log-softmax of the fused row), c = α_m / T_m ≥ 0.
# float32 exp underflows to exactly 0 below -104, so a floored entry has weight exactly
# 0 — as -inf has — whenever c · 1e30 > 104 + (the spread of the finite entries, at most
# ~1e4 nats): for T_m below ~1e25 / α_m. Beyond that every finite entry is divided down
# to ~1e-21 (the tempered distribution is uniform to float precision) and the floored
# ones get weight exp(-1e30 / T) instead of 0. In the other direction 1e30 · c stays
# finite in float32 (≤ 3.4e38) while c < 3.4e8 (T > 3e-9 for α ≤ 1); past it the product
# is -inf, which is the exact value. A weight of exactly 0 (gap: a model whose top two
# bytes tie) gives 0 · floor = 0: that model does not take part, where 0 · -inf would be
# NaN. A NEGATIVE poe beta turns a ruled-out byte into the fused favourite (the exact
# value is +inf; here it is ~|β| · 1e30): such a fused NLL is meaningless either way.
# `mix` (log Σ w_m p_m) takes log_softmax(l_m / T_m) per model: a floored entry is
# -1e30 / T_m minus a finite normalizer, whose exp is exactly 0 in float32 for the same
# temperatures, so it adds exactly nothing to that model's normalizer and gets
# probability exactly 0 in the mixture; the mixture is read only at the text's byte, which
# no model rules out (_window_sums checks each model's own NLL first), and a model whose
# weight is 0 is left out of the sum altogether.
LOG_FLOOR = -1e30
VOCAB = 257      # 256 bytes and "end"


def check_byte_settings(settings: Sequence[Setting]) -> None:
    """What byte space refuses beyond fusion.check_settings: a negative poe beta. A byte that
    a model rules out (log p = -inf, common with narrow beams) would be the fused favourite
    (β · -inf = +inf): its fused NLL is infinite, whatever the other models say."""
    for s in settings:
        betas = s.get("betas")
        if s.get("type") == "poe" and betas is not None and any(b < 0 for b in betas):
            raise ValueError(f"setting {s.get('id', 'poe')}: in byte space poe betas must be >= 0, got {list(betas)} "
                             "(a negative beta makes every byte a model rules out the fused favourite)")


@dataclass
class ByteModel:
    """One model as byte space runs it."""
    ref: str
    reader: ByteReader
    lm: ByteLM
    max_positions: int | None     # the model's context (None: unknown)
    sliding_window: int | None    # the KV path refuses windows past it (byte_lm)


def byte_models(models: Sequence[LoadedModel], readers: Sequence[ByteReader], beam: int,
                prune: float) -> list[ByteModel]:
    out = []
    for m, r in zip(models, readers):
        gpus = [d for d in (m.devices or []) if d.startswith("cuda")]
        if len(gpus) > 1:
            # the beam stacks every layer's KV cache into one tensor (byte_lm): one device
            raise RequestError("bad_request", f"model {m.ref} is sharded over {', '.join(gpus)}: byte space runs a "
                                              "model on one GPU (its parts on the CPU or disk may stay); set "
                                              "device: cuda:N with max_memory for that GPU and cpu")
        lm = ByteLM(m, r.table, r.start_id, beam=beam, prune=prune)
        window = getattr(lm.model.config, "sliding_window", None)
        out.append(ByteModel(m.ref, r, lm, lm.max_positions, window if isinstance(window, int) else None))
    return out


@dataclass(frozen=True)
class WindowInput:
    data: bytes          # what the model writes: the dummy prefix (if any) and the window's bytes
    context: int         # bytes of data before the first scored one
    ids: list[int]       # the canonical tokenization of data


def window_input(m: ByteModel, text: bytes, w: Window) -> WindowInput:
    """The window as model m reads it. Raises ByteSpaceError where its tokenizer cannot
    reproduce the window's text. The cuts are on character boundaries, so the bytes decode."""
    from transformers.utils import logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()            # a window over model_max_length: windows are checked below
    try:
        ids, prefix = canonical_ids(m.reader.tokenizer, m.reader.table, text[w.start:w.end].decode("utf-8"),
                                    dummy_prefix=m.reader.dummy_prefix)
    finally:
        logging.set_verbosity(verbosity)
    return WindowInput(prefix + text[w.start:w.end], len(prefix) + w.first_scored - w.start, ids)


def _where(i: int, w: Window) -> str:
    return f"window {i} (bytes {w.start}..{w.end - 1})"


def check_windows(models: Sequence[ByteModel], text: bytes, windows: Sequence[Window]) -> None:
    """What a byte-space request is refused for before any window runs (SPEC §7): a window
    whose text a model's tokenizer cannot reproduce ("tokenizer_mismatch"), or whose
    tokenization does not fit the model's context ("context"), naming the model and the
    window. It tokenizes every window once and keeps nothing (the pass tokenizes again:
    a fraction of the cost of scoring, and memory stays flat in the text's length)."""
    for i, w in enumerate(windows):
        for m in models:
            try:
                need = len(window_input(m, text, w).ids) + 1            # + the start token
            except ByteSpaceError as e:
                raise RequestError("tokenizer_mismatch", f"model {m.ref} cannot be read in byte space on "
                                                      f"{_where(i, w)} of the text: {e}") from None
            if m.max_positions is not None and need > m.max_positions:
                raise RequestError("context", f"model {m.ref}: {_where(i, w)} is {need} tokens with the start "
                                              f"token, over its context of {m.max_positions} positions; lower "
                                              "dataset.max_length (bytes in byte space)")
            if m.sliding_window is not None and need > m.sliding_window:
                raise RequestError("context", f"model {m.ref}: {_where(i, w)} is {need} tokens, past its sliding "
                                              f"attention window of {m.sliding_window} (byte space cannot cut its "
                                              "KV cache there yet); lower dataset.max_length")


@dataclass
class BeamTotals:
    """A model's ByteStats over an evaluation, as protocol.ts ByteStats carries them."""
    pruned: int = 0
    pruned_positions: int = 0
    max_pruned_share: float = 0.0
    max_hypotheses: int = 0
    forwards: int = 0                # not on the wire: model calls, for benchmarks

    def add(self, s: ByteStats) -> None:
        self.pruned += s.pruned
        self.pruned_positions += s.pruned_positions
        self.max_pruned_share = max(self.max_pruned_share, s.max_pruned_share)
        self.max_hypotheses = max(self.max_hypotheses, s.max_hypotheses)
        self.forwards += s.forwards

    def to_dict(self) -> dict[str, Any]:
        return {"pruned": self.pruned, "pruned_positions": self.pruned_positions,
                "max_pruned_share": float(self.max_pruned_share), "max_hypotheses": self.max_hypotheses}


@dataclass
class ByteResult:
    sums: Sums
    beams: list[BeamTotals] = field(default_factory=list)


def plan_byte_batches(n_windows: int, batch_size: int, done: int = 0) -> list[range]:
    """Window index ranges scored together, grouped by absolute index // batch_size (so a
    resumed run groups exactly as an uninterrupted one did), from window `done` on."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [range(max(g, done), min(g + batch_size, n_windows)) for g in range(0, n_windows, batch_size)
            if min(g + batch_size, n_windows) > done]


def run_pass(models: Sequence[ByteModel], text: bytes, windows: Sequence[Window], settings: Sequence[Setting],
             batch_size: int, resume: Sums | None, on_progress: Callable[[Sums], None], progress_every: int,
             should_stop: Callable[[], bool], fusion_cfg: FusionConfig | None = None,
             positions: Collector | None = None,
             collect: Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], None] | None = None,
             share: tuple[int, int] | None = None) -> ByteResult:
    """_run_pass, then each model's trie forgets the nodes this request memoized (ByteTrie.forget)."""
    try:
        return _run_pass(models, text, windows, settings, batch_size, resume, on_progress, progress_every,
                         should_stop, fusion_cfg, positions, collect, share)
    finally:
        for m in models:
            m.lm.trie.forget()


def _run_pass(models: Sequence[ByteModel], text: bytes, windows: Sequence[Window], settings: Sequence[Setting],
             batch_size: int, resume: Sums | None, on_progress: Callable[[Sums], None], progress_every: int,
             should_stop: Callable[[], bool], fusion_cfg: FusionConfig | None = None,
             positions: Collector | None = None,
             collect: Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], None] | None = None,
             share: tuple[int, int] | None = None) -> ByteResult:
    """Σ byte NLL of every model and every setting over the windows; `resume` continues
    from a checkpoint's sums. The settings are trusted (the server checks them once per
    request); check_windows should have passed. Raises Cancelled (with the sums of every
    finished batch) when should_stop() says so, NumericalError naming model and window.
    positions: a token view's collector (positions.py; a position is a byte), given each
    window's per-byte numbers at the view's bytes.
    collect: called per window with every model's floored rows [n, 257] (what the fusion
    reads), the window's byte values [n] and its index [n] (a fit: fit.py).
    share=(first, stop): only those windows (a pool's batch), as evaluate.run_pass's share.
    A batch is a group of batch_size windows (absolute), whose weights are added at its end
    (evaluate.Sums)."""
    sums = share_sums(share, len(models), len(settings), len(windows), resume, batch_size) if share is not None \
        else _starting_sums(resume, len(models), len(settings), len(windows))
    stop = share[1] if share is not None else len(windows)
    fusion_cfg = fusion_cfg or FusionConfig.for_device("cpu")        # the rows live on the CPU
    beams = [BeamTotals() for _ in models]
    reported = sums.windows_done
    for batch in plan_byte_batches(stop, batch_size, sums.windows_done):
        group_weights = torch.zeros(len(settings), len(models), dtype=torch.float64)   # [K, N]
        if should_stop():
            raise Cancelled(sums.copy())
        # every model over the batch's windows: [n_scored, 257] float64 rows per window
        # (all the batch's windows advance together: their token extensions share forwards)
        rows: list[list[torch.Tensor]] = []
        for mi, m in enumerate(models):
            inputs = [window_input(m, text, windows[i]) for i in batch]
            try:
                scored = m.lm.score_many([(x.data, x.context, x.ids) for x in inputs], should_stop)
            except NonFiniteLogits:
                raise _numerical_batch(m.ref, mi, m, text, windows, batch) from None
            except torch.OutOfMemoryError as e:
                # no retry here: the beam's forwards are batched by ByteLM (`batch` steps), not by window
                first, last = windows[batch.start], windows[batch.stop - 1]
                need = _ALLOCATE.search(str(e))
                raise OutOfMemory(
                    f"model {m.ref}: {'CUDA' if 'CUDA' in str(e) else 'the device'} out of memory in byte space, "
                    f"scoring windows {batch.start}..{batch.stop - 1} (bytes {first.start}..{last.end - 1})"
                    f"{f': it tried to allocate {need.group(1)}' if need else ''}; lower runtime.batch_size, "
                    "dataset.max_length or bytes.beam, or shard the model (docs/scale.md)") from None
            except Interrupted:
                raise Cancelled(sums.copy()) from None
            for _, stats in scored:
                beams[mi].add(stats)
            rows.append([r for r, _ in scored])
        for b, i in enumerate(batch):
            view = positions if positions is not None and windows[i].first_scored < positions.n_view else None
            part = _window_sums(models, [r[b] for r in rows], text, i, windows[i], settings, fusion_cfg, view)
            if collect is not None:          # the rows as the fusion read them (floored), once they passed its checks
                w = windows[i]
                targets = torch.tensor(list(text[w.first_scored:w.end]), dtype=torch.long)
                collect([r[b].clamp(min=LOG_FLOOR) for r in rows], targets, torch.full_like(targets, i))
            # a window's bytes are its scored bytes (they partition the text)
            sums.add_window(part.positions, part.positions, part.model_nll.tolist(), part.fusion_nll.tolist())
            group_weights += part.fusion_weights
        sums.add_weights(group_weights)
        del rows
        sums.windows_done = batch.stop
        if sums.windows_done - reported >= progress_every:
            reported = sums.windows_done
            on_progress(sums.copy())
    return ByteResult(sums, beams)


def _window_sums(models: Sequence[ByteModel], rows: Sequence[torch.Tensor], text: bytes, i: int, w: Window,
                 settings: Sequence[Setting], fusion_cfg: FusionConfig, view: Collector | None = None) -> ChunkSums:
    """One window's sums: each model's NLL in float64 from its rows, every setting fused by
    fusion.py from the floored rows (fusion.score_chunk's sums of its per-position numbers,
    which `view` gets at the token view's bytes)."""
    targets = torch.tensor(list(text[w.first_scored:w.end]), dtype=torch.long)       # [P] byte values
    at = torch.arange(targets.numel())
    model_nll = []
    for mi, (m, r) in enumerate(zip(models, rows)):
        if r.shape != (targets.numel(), VOCAB):
            raise AssertionError(f"model {m.ref}: rows {tuple(r.shape)} for {targets.numel()} scored bytes")
        nll = -r[at, targets]                                                          # [P] float64
        if torch.isnan(r).any():
            raise _numerical(m.ref, mi, i, w, "NaN log-probabilities")
        if not bool(torch.isfinite(nll).all()):
            k = int((~torch.isfinite(nll)).nonzero()[0])
            raise _numerical(m.ref, mi, i, w, f"probability 0 for the text's byte {w.first_scored + k}")
        model_nll.append(nll)
    floored = [r.clamp(min=LOG_FLOOR) for r in rows]                                  # -inf -> floor, NaN stays
    try:
        each = each_position(floored, targets, VOCAB, settings, fusion_cfg)           # what score_chunk sums
    except NumericalError as e:
        raise _numerical(models[e.model_index].ref, e.model_index, i, w, "non-finite log-probabilities") from None
    exact = torch.stack(model_nll)                                                    # [N, P] exact, not float32
    if view is not None:
        view.add(torch.arange(w.first_scored, w.end), exact, each.fusion_nll, each.weights)
    return ChunkSums(positions=int(targets.numel()), model_nll=torch.stack([x.sum() for x in model_nll]),
                     fusion_nll=each.fusion_nll.sum(1), fusion_weights=each.weights.sum(1))


def _numerical_batch(ref: str, model_index: int, m: ByteModel, text: bytes, windows: Sequence[Window],
                     batch: range) -> NumericalError:
    """NaN logits somewhere in a batch of windows that ran together: find the first window
    whose own pass gives them (the error is rare; the windows are scored again alone)."""
    for i in batch:
        x = window_input(m, text, windows[i])
        try:
            m.lm.score(x.data, x.context, x.ids)
        except NonFiniteLogits:
            return _numerical(ref, model_index, i, windows[i], "NaN or infinite logits")
    return NumericalError(f"model {ref}: NaN or infinite logits in windows {batch.start}..{batch.stop - 1} "
                          "(scored together; not alone)", model_index=model_index, model_ref=ref)


def _numerical(ref: str, model_index: int, i: int, w: Window, what: str) -> NumericalError:
    return NumericalError(f"model {ref}: {what} in {_where(i, w)}", model_index=model_index, model_ref=ref,
                          window=i)
