"""The one pass (SPEC §2): every model runs once per batch of windows, and the base
NLL of each model and every requested fusion come from those same logits.

Per batch: each model's body gives hidden states [B, L, H]; only the scored
positions go through the output head, a chunk of positions at a time, so the
float32 logits of a whole batch never exist at once. Models whose logits are
post-processed after the head (head_path "full") run the plain forward instead.
Only sums leave this module (never logits): totals, and per window one float per
model and per setting (for the controller's paired bootstrap). When a request asks for
the HTML report's token view, a positions.Collector also gets each chunk's per-position
numbers and keeps those of the text's first bytes (a few settings; positions.py).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .fusion import FusionConfig, NumericalError, PositionScores, Setting, check_settings
from .positions import Collector
from .fusion import _each_position as each_position   # score_chunk's per-position scores, settings trusted
from .windows import Window

__all__ = ["Model", "Sums", "Cancelled", "NumericalError", "OutOfMemory", "ForwardSize", "EvalConfig", "plan_batches", "evaluate", "run_pass",
           "share_sums"]

# run_pass's collect hook: (each model's logits [p, V_m], targets [p], window index [p]) per chunk
Collect = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], None]


@runtime_checkable
class Model(Protocol):
    """What the pass needs of a model: models.LoadedModel, or the tests' FakeModel. Like
    lm-evaluation-harness's LM class, the one interface a backend implements; here it
    is cut down to one forward per batch and a head on the scored rows."""

    ref: str                 # the name errors give
    device: torch.device     # where its input ids go; the first model's device fuses
    head_path: str           # "scored": hidden() over the batch, head() on the scored rows only;
                             # "full": full_logits() (logits post-processed after the head)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, H] last hidden states, on self.device."""
        ...

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[P, H] hidden states -> [P, V_m] logits (the model's own dtype)."""
        ...

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, V_m] logits, as the model's own forward gives them."""
        ...


@dataclass
class Sums:
    """Running sums of one evaluation (protocol.ts Sums): all a result or a checkpoint needs.

    Besides the totals, the per-window sums that the controller's paired bootstrap
    resamples: per window its scored positions, its bytes, and the Σ NLL of every model
    and every setting over it (floats per window; never per position). Every NLL total
    is the float64 sum of its per-window values in window order (add_window adds each
    window's value to the total as it appends it), so the two agree exactly and a
    resumed run repeats both bit for bit. The weights have no per-window list: their
    totals grow by one float64 sum per group of batch_size windows (add_weights, once a
    group is done), so that a pool of workers, each scoring whole groups, adds the
    groups' sums in window order and gets one worker's totals bit for bit.
    The window_* lists hold windows window_first .. windows_done − 1: every window done
    (window_first 0), or a share of the windows (a pool's batch: run_pass's `share`);
    to_dict(since=k) gives a progress message's part."""
    windows_done: int = 0
    scored_tokens: int = 0
    model_nll: list[float] = field(default_factory=list)            # per model: Σ NLL (nats)
    fusion_nll: list[float] = field(default_factory=list)           # per setting, request order
    fusion_weights: list[list[float]] = field(default_factory=list)  # per setting: Σ α_m
    window_first: int = 0                                           # 0, or a share's first window
    window_targets: list[int] = field(default_factory=list)         # per window: scored positions
    window_bytes: list[int] = field(default_factory=list)           # per window: bytes it covers
    window_model_nll: list[list[float]] = field(default_factory=list)   # per model, per window
    window_fusion_nll: list[list[float]] = field(default_factory=list)  # per setting, per window

    @staticmethod
    def zeros(n_models: int, n_settings: int) -> "Sums":
        return Sums(0, 0, [0.0] * n_models, [0.0] * n_settings, [[0.0] * n_models for _ in range(n_settings)],
                    0, [], [], [[] for _ in range(n_models)], [[] for _ in range(n_settings)])

    def add_window(self, targets: int, n_bytes: int, model_nll: Sequence[float], fusion_nll: Sequence[float]) -> None:
        """One finished window: its values appended, and added to the totals (float64
        Python floats, in window order: the totals are the sums of the lists)."""
        self.window_targets.append(int(targets))
        self.window_bytes.append(int(n_bytes))
        self.scored_tokens += int(targets)
        for i, x in enumerate(model_nll):
            x = float(x)
            self.window_model_nll[i].append(x)
            self.model_nll[i] += x
        for k, x in enumerate(fusion_nll):
            x = float(x)
            self.window_fusion_nll[k].append(x)
            self.fusion_nll[k] += x

    def add_weights(self, fusion_weights: torch.Tensor) -> None:
        """Σ α of a group of windows [K, N] (float64; one addition per group, in window
        order: a resumed run, or a pool adding its shares, repeats it bit for bit)."""
        for k, row in enumerate(fusion_weights.tolist()):
            for m, x in enumerate(row):
                self.fusion_weights[k][m] += x

    def copy(self) -> "Sums":
        """An independent copy (lists of floats copied by slicing: cheap per progress message,
        where deepcopy would cost ~1 µs a float)."""
        return Sums(self.windows_done, self.scored_tokens, self.model_nll[:], self.fusion_nll[:],
                    [r[:] for r in self.fusion_weights], self.window_first, self.window_targets[:],
                    self.window_bytes[:], [r[:] for r in self.window_model_nll],
                    [r[:] for r in self.window_fusion_nll])

    def to_dict(self, since: int = 0) -> dict:
        """The wire form; since=k keeps only windows k.. in the window_* lists (a progress
        message: the windows finished since the previous one), window_first = k."""
        d = asdict(self)
        if since > self.window_first:
            cut = since - self.window_first
            d["window_first"] = since
            for key in ("window_targets", "window_bytes"):
                d[key] = d[key][cut:]
            for key in ("window_model_nll", "window_fusion_nll"):
                d[key] = [r[cut:] for r in d[key]]
        return d

    @staticmethod
    def from_dict(d: Mapping) -> "Sums":
        """Sums from the wire (a resume) or from to_dict(); the numbers as floats."""
        return Sums(int(d["windows_done"]), int(d["scored_tokens"]), [float(x) for x in d["model_nll"]],
                    [float(x) for x in d["fusion_nll"]], [[float(x) for x in r] for r in d["fusion_weights"]],
                    int(d["window_first"]), [int(x) for x in d["window_targets"]], [int(x) for x in d["window_bytes"]],
                    [[float(x) for x in r] for r in d["window_model_nll"]],
                    [[float(x) for x in r] for r in d["window_fusion_nll"]])


class Cancelled(Exception):
    """should_stop() said so; sums holds every finished batch (a valid checkpoint)."""

    def __init__(self, sums: Sums):
        super().__init__(f"cancelled after {sums.windows_done} windows")
        self.sums = sums


@dataclass
class EvalConfig:
    position_chunk: int = 256            # scored positions per head + fusion call
    fusion: FusionConfig | None = None   # None: FusionConfig.for_device(first model's device)
    # run the models' forwards in threads, at the same time; None: when every model
    # sits on its own CUDA device (cuda:0, cuda:1, …), where they then overlap
    concurrent: bool | None = None

    @staticmethod
    def for_device(device: torch.device | str) -> "EvalConfig":
        # a GPU wants big launches; a CPU wants the [chunk, V] logits to stay modest
        cuda = torch.device(device).type == "cuda"
        return EvalConfig(position_chunk=1024 if cuda else 256, fusion=FusionConfig.for_device(device))


def plan_batches(windows: Sequence[Window], batch_size: int) -> list[range]:
    """Window index ranges, one per forward. Grouped by absolute index // batch_size (so a
    resumed run batches exactly like an uninterrupted one), then split where the window
    length changes: the last, shorter window runs on its own and nothing is ever padded."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    batches: list[range] = []
    for g in range(0, len(windows), batch_size):
        start = g
        for i in range(g + 1, min(g + batch_size, len(windows)) + 1):
            if i == min(g + batch_size, len(windows)) or \
                    windows[i].end - windows[i].start != windows[start].end - windows[start].start:
                batches.append(range(start, i))
                start = i
    return batches


def _scored_positions(windows: Sequence[Window], token_ids: torch.Tensor, offset: int):
    """For a batch: (row in batch [P], input position [P], target id [P]) of every scored
    target. The logits at input position q predict input token q + 1, i.e. stream index
    start + q + 1 - offset (offset = 1 when a BOS heads the window)."""
    b_idx, p_idx, targets = [], [], []
    for b, w in enumerate(windows):
        n = w.end - w.first_scored
        first = w.first_scored - w.start - 1 + offset
        b_idx.append(torch.full((n,), b, dtype=torch.long))
        p_idx.append(torch.arange(first, first + n))
        targets.append(token_ids[w.first_scored:w.end])
    return torch.cat(b_idx), torch.cat(p_idx), torch.cat(targets)


def _forward(model: Model, ids: torch.Tensor) -> torch.Tensor:
    # inference_mode is per thread: a pool thread needs its own
    with torch.inference_mode():
        return model.hidden(ids) if model.head_path == "scored" else model.full_logits(ids)


@torch.inference_mode()
def evaluate(models: Sequence[Model], token_ids: torch.Tensor, windows: Sequence[Window],
             settings: Sequence[Setting], batch_size: int, bos_id: int | None, vocab: int, resume: Sums | None,
             on_progress: Callable[[Sums], None], progress_every: int,
             should_stop: Callable[[], bool], cfg: EvalConfig | None = None,
             window_bytes: Sequence[int] | None = None, feed_last: bool = True,
             positions: Collector | None = None, share: tuple[int, int] | None = None) -> Sums:
    """Σ NLL of every model (T = 1, whole output layer) and every setting (over [:vocab])
    on the scored targets of `windows`, in total and per window; `resume` continues from
    a checkpoint's sums. window_bytes: each window's bytes of text (windows.window_bytes;
    the server always passes them), recorded per window; None records 0 for each.
    positions: a token view's collector (positions.py), given each chunk's per-position
    numbers at the view's stream positions. share: run_pass's (a pool's batch).
    The library's entry point: checks the settings, then run_pass checks the rest."""
    check_settings(settings, len(models))
    return run_pass(models, token_ids, windows, settings, batch_size, bos_id, vocab, resume,
                    on_progress, progress_every, should_stop, cfg, window_bytes, feed_last, positions, share=share)


@torch.inference_mode()
def run_pass(models: Sequence[Model], token_ids: torch.Tensor, windows: Sequence[Window],
             settings: Sequence[Setting], batch_size: int, bos_id: int | None, vocab: int, resume: Sums | None,
             on_progress: Callable[[Sums], None], progress_every: int,
             should_stop: Callable[[], bool], cfg: EvalConfig | None = None,
             window_bytes: Sequence[int] | None = None, feed_last: bool = True,
             positions: Collector | None = None, collect: Collect | None = None,
             share: tuple[int, int] | None = None, on_status: Callable[[str], None] | None = None,
             forward: "ForwardSize | None" = None) -> Sums:
    """evaluate() for a caller that has checked the settings already (the server does, once
    per request, before tokenizing): the settings are trusted, everything else is checked.
    feed_last=False feeds each window without its last token (a target only: its logits
    are never read), so a window of L + 1 stream positions enters the model as L tokens
    (documents mode, windows.plan_document_windows; the same NLLs for a causal LM).
    collect: called with every chunk's logits (one [p, V_m] tensor per model), its targets [p]
    and each position's window index [p], in window order (a fit keeps what it needs: fit.py).
    share=(first, stop): only windows first .. stop − 1 (a pool's batch), batched as the whole
    pass batches them; the sums then list those windows (window_first = first) and hold their
    totals alone (the controller adds the shares in window order). No resume with a share.
    on_status: told once per request when an out-of-memory error made the pass halve its
    forward size (a batch then runs as sub-batches, its sums the same but for kernel
    effects; see _run_batch); an out-of-memory error at 1 window per forward raises
    OutOfMemory."""
    cfg = cfg or EvalConfig.for_device(models[0].device)
    token_ids = token_ids.reshape(-1).long().cpu()                                 # [n]
    offset = 0 if bos_id is None else 1
    _check_stream(windows, token_ids, offset, vocab)
    window_bytes = _check_window_bytes(window_bytes, len(windows))
    sums = share_sums(share, len(models), len(settings), len(windows), resume, batch_size) if share is not None \
        else _starting_sums(resume, len(models), len(settings), len(windows))
    first, stop = sums.windows_done, (share[1] if share is not None else len(windows))
    fusion_cfg = cfg.fusion or FusionConfig.for_device(models[0].device)
    reported = sums.windows_done
    group_weights = torch.zeros(len(settings), len(models), dtype=torch.float64)   # [K, N] Σ α of this group
    forward = forward or ForwardSize(batch_size)
    with _forward_pool(models, cfg.concurrent) as pool:
        for batch in plan_batches(windows, batch_size):
            if batch.stop <= first:
                continue                                            # done before the checkpoint, or another share's
            if batch.start >= stop:
                break
            batch = range(max(batch.start, first), min(batch.stop, stop))
            # stop only between groups: the sums then hold every finished group's weights
            if _group_starts(batch.start, first, batch_size) and should_stop():
                raise Cancelled(sums.copy())
            ws = [windows[i] for i in batch]
            # the batch's per-window sums and its part of the group's weights: batch-local, kept
            # only once every sub-batch succeeded (an out-of-memory attempt leaves nothing behind)
            model_acc = torch.zeros(len(models), len(ws), dtype=torch.float64)        # [N, B]
            fusion_acc = torch.zeros(len(settings), len(ws), dtype=torch.float64)     # [K, B]
            weight_parts: list[torch.Tensor] = []                                     # [K, N] per chunk, in order
            at = 0
            while at < len(ws):
                n = min(forward.size, len(ws) - at)
                sub = range(batch.start + at, batch.start + at + n)
                marks = _marks(positions, collect)
                try:
                    parts = _run_batch(models, token_ids, windows, sub, settings, bos_id, offset, vocab, feed_last,
                                       cfg, fusion_cfg, positions, collect, pool)
                except _OutOfMemory as e:
                    _rollback(marks)
                    e.__traceback__ = e.error.__traceback__ = None     # the frames that hold the attempt's tensors
                    _free(models)
                    forward.shrink(e, n, models, windows, sub, on_status)
                    continue
                model_acc[:, at:at + n] = parts[0]
                fusion_acc[:, at:at + n] = parts[1]
                weight_parts += parts[2]
                at += n
            for w in weight_parts:                                                    # the order of an unsplit batch
                group_weights += w
            for b, (i, w) in enumerate(zip(batch, ws)):
                sums.add_window(w.n_scored, window_bytes[i], model_acc[:, b].tolist(), fusion_acc[:, b].tolist())
            sums.windows_done = batch.stop
            if _group_ends(batch.stop, stop, batch_size):
                sums.add_weights(group_weights)
                group_weights.zero_()
                if sums.windows_done - reported >= progress_every:
                    reported = sums.windows_done
                    on_progress(sums.copy())
    return sums


# ----------------------------------------------------------------------------- one (sub-)batch, and out of memory

def _run_batch(models: Sequence[Model], token_ids: torch.Tensor, windows: Sequence[Window], batch: range,
               settings: Sequence[Setting], bos_id: int | None, offset: int, vocab: int, feed_last: bool,
               cfg: EvalConfig, fusion_cfg: FusionConfig, positions: Collector | None, collect: Collect | None,
               pool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One forward of every model over windows `batch` and the scoring of its positions:
    (Σ NLL per model and window [N, B], per setting and window [K, B], each chunk's Σ α
    [K, N] in order). Touches no sums (the view and the collect hook are called per chunk:
    _marks/_rollback undo them). An out-of-memory error comes out as _OutOfMemory."""
    ws = [windows[i] for i in batch]
    trim = 0 if feed_last else 1
    ids = torch.stack([token_ids[w.start:w.end - trim] for w in ws])          # [B, L]
    if bos_id is not None:
        ids = torch.cat([torch.full((len(ws), 1), bos_id, dtype=torch.long), ids], 1)  # [B, 1 + L]
    b_idx, p_idx, targets = _scored_positions(ws, token_ids, offset)        # [P] each
    # the token view's positions (a prefix of the stream) are in the first batches only
    view = positions if positions is not None and ws[0].first_scored < positions.n_view else None
    if view is not None:
        # input position q of row b predicts stream index start_b + q + 1 - offset
        stream = torch.tensor([w.start for w in ws])[b_idx] + p_idx + 1 - offset     # [P]
    try:
        # each model runs once: hidden states (or, for head_path "full", its own logits);
        # on separate devices all at once, each in its own thread
        sources = list(pool.map(_forward_of, models, [ids] * len(models))) if pool else \
            [_forward_of(m, ids) for m in models]
        # per window of the batch: Σ NLL of each model and each setting, every position
        # added in order (index_add_ on the CPU), whatever the chunks
        model_acc = torch.zeros(len(models), len(ws), dtype=torch.float64)        # [N, B]
        fusion_acc = torch.zeros(len(settings), len(ws), dtype=torch.float64)     # [K, B]
        weights: list[torch.Tensor] = []
        for c in range(0, targets.numel(), cfg.position_chunk):
            sel = slice(c, c + cfg.position_chunk)
            try:
                part = _score_chunk(models, sources, b_idx[sel], p_idx[sel], targets[sel], vocab, settings,
                                    fusion_cfg, collect and (lambda z, t, sel=sel: collect(z, t, batch.start + b_idx[sel])))
            except NumericalError as e:
                raise _in_window(e, models, windows, batch.start + int(b_idx[c + e.position])) from None
            if view is not None:
                view.add(stream[sel], part.model_nll, part.fusion_nll, part.weights)
            model_acc.index_add_(1, b_idx[sel], part.model_nll)
            fusion_acc.index_add_(1, b_idx[sel], part.fusion_nll)
            weights.append(part.weights.sum(1))                               # [K, N]
            del part
        del sources
    except torch.OutOfMemoryError as e:          # torch.cuda.OutOfMemoryError is one
        where = getattr(e, "kotara_model", None)
        raise _OutOfMemory(e, where) from None
    return model_acc, fusion_acc, weights


def _forward_of(model: Model, ids: torch.Tensor) -> torch.Tensor:
    """_forward, an out-of-memory error marked with the model that ran out."""
    try:
        return _forward(model, ids)
    except torch.OutOfMemoryError as e:
        e.kotara_model = model.ref
        raise


class _OutOfMemory(Exception):
    def __init__(self, error: BaseException, model: str | None):
        super().__init__(str(error))
        self.error, self.model = error, model


class OutOfMemory(RuntimeError):
    """Out of memory at one window per forward: nothing smaller to retry with. The server
    reports it as a RequestError("internal") with this message."""


_ALLOCATE = re.compile(r"Tried to allocate ([0-9.]+ ?[KMGTP]?i?B)")


class ForwardSize:
    """Windows per forward: batch_size, halved at each out-of-memory error, for the rest of
    the request (a pool's request is many shares: the server passes one ForwardSize to all
    of a request's shares, run_pass's `forward`) (the groups of batch_size windows, their weights, and the cancel points at
    their starts are those of the batch_size run: only the forwards get smaller)."""

    def __init__(self, batch_size: int):
        self.size, self.told = batch_size, False

    def shrink(self, e: _OutOfMemory, n: int, models: Sequence[Model], windows: Sequence[Window], batch: range,
               on_status: Callable[[str], None] | None) -> None:
        model = e.model or (models[0].ref if len(models) == 1 else None)
        whose = f"model {model}" if model else f"the models {', '.join(m.ref for m in models)}"
        device = "CUDA" if "CUDA" in str(e.error) else "the device"
        if n <= 1:
            w = windows[batch.start]
            need = _ALLOCATE.search(str(e.error))
            raise OutOfMemory(
                f"{whose}: {device} out of memory at 1 window per forward, in window {batch.start} (tokens "
                f"{w.start}..{w.end - 1}){f': it tried to allocate {need.group(1)}' if need else ''}; lower "
                "dataset.max_length, use a smaller dtype (models[].dtype), or shard the model over more devices "
                "(models[].max_memory / device_map: docs/scale.md)") from e.error
        self.size = (n + 1) // 2
        if not self.told and on_status is not None:
            self.told = True
            on_status(f"{device} out of memory at {n} windows per forward; retrying with {self.size} "
                      f"(window {batch.start} of {whose}); the rest of this request runs {self.size} per forward")


def _marks(positions: Collector | None, collect: Collect | None) -> list:
    """What a failed attempt must undo: the token view's and the collect hook's owner's state."""
    owners = [positions, getattr(collect, "__self__", None)]
    return [(o, o.mark()) for o in owners if o is not None and hasattr(o, "mark")]


def _rollback(marks: list) -> None:
    for owner, mark in marks:
        owner.rollback(mark)


def _free(models: Sequence[Model]) -> None:
    """Give the failed attempt's memory back before the retry."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _group_starts(i: int, first: int, batch_size: int) -> bool:
    """Window i opens a group of batch_size windows (absolute: index // batch_size), or the pass."""
    return i % batch_size == 0 or i == first


def _group_ends(i: int, stop: int, batch_size: int) -> bool:
    """A batch ending before window i closes its group (or the pass)."""
    return i % batch_size == 0 or i == stop


def share_sums(share: tuple[int, int], n_models: int, n_settings: int, n_windows: int,
               resume: Sums | None, batch_size: int) -> Sums:
    """The empty sums of a pool's share: windows first .. stop − 1 (within one group of
    batch_size windows, so that its weights are one group's sum), none done yet."""
    first, stop = share
    if resume is not None:
        raise ValueError("a share of the windows cannot also resume (the controller holds the checkpoint)")
    if not 0 <= first < stop <= n_windows:
        raise ValueError(f"the share of windows {first}..{stop - 1} is not within the {n_windows} windows")
    if first // batch_size != (stop - 1) // batch_size:
        raise ValueError(f"the share of windows {first}..{stop - 1} is not within one group of {batch_size} windows")
    sums = Sums.zeros(n_models, n_settings)
    sums.window_first = sums.windows_done = first
    return sums


def _check_stream(windows: Sequence[Window], token_ids: torch.Tensor, offset: int, vocab: int) -> None:
    for i, w in enumerate(windows):
        # without a BOS the window's first token has no context and cannot be a target
        if not (0 <= w.start and w.start + 1 - offset <= w.first_scored < w.end <= token_ids.numel()):
            raise ValueError(f"window {i} {w} does not fit a {token_ids.numel()}-token stream"
                             f"{'' if offset else ' without BOS'}")
    if token_ids.numel() and (int(token_ids.max()) >= vocab or int(token_ids.min()) < 0):
        raise ValueError(f"token ids must lie in [0, {vocab})")


def _check_window_bytes(window_bytes: Sequence[int] | None, n_windows: int) -> list[int]:
    if window_bytes is None:
        return [0] * n_windows
    out = [int(b) for b in window_bytes]
    if len(out) != n_windows or any(b < 0 for b in out):
        raise ValueError(f"window_bytes must give {n_windows} byte counts >= 0, one per window, got {len(out)}")
    return out


def _starting_sums(resume: Sums | None, n_models: int, n_settings: int, n_windows: int) -> Sums:
    """Zeros, or a copy of the resume sums once they fit the request: the shapes, every
    window so far listed (window_first 0), and each total the window-order sum of its
    per-window values, as add_window makes them (so the run ends with totals and lists
    that agree exactly, as an uninterrupted run's do)."""
    sums = resume.copy() if resume is not None else Sums.zeros(n_models, n_settings)
    done = sums.windows_done
    per_window = [sums.window_targets, sums.window_bytes, *sums.window_model_nll, *sums.window_fusion_nll]
    if (len(sums.model_nll) != n_models or len(sums.fusion_nll) != n_settings
            or any(len(r) != n_models for r in sums.fusion_weights) or len(sums.fusion_weights) != n_settings
            or len(sums.window_model_nll) != n_models or len(sums.window_fusion_nll) != n_settings
            or not 0 <= done <= n_windows or sums.window_first != 0 or any(len(r) != done for r in per_window)):
        raise ValueError(f"resume sums do not match {n_models} models, {n_settings} settings, "
                         f"{n_windows} windows")
    totals = [(sums.scored_tokens, sums.window_targets)] + list(zip(sums.model_nll, sums.window_model_nll)) \
        + list(zip(sums.fusion_nll, sums.window_fusion_nll))
    for total, values in totals:
        acc = 0 if values is sums.window_targets else 0.0
        for x in values:
            acc += x
        if acc != total:
            raise ValueError(f"resume sums do not add up: a total is {total!r}, its {done} windows sum to {acc!r}")
    return sums


def _forward_pool(models: Sequence[Model], concurrent: bool | None) -> AbstractContextManager:
    """Threads for the forwards when they can overlap (see EvalConfig.concurrent), else none."""
    devices = [m.device for m in models]
    if concurrent is None:
        concurrent = len(models) > 1 and all(d.type == "cuda" for d in devices) and \
            len(set(map(str, devices))) == len(models)
    return ThreadPoolExecutor(len(models), thread_name_prefix="kotara-forward") if concurrent else nullcontext()


def _score_chunk(models: Sequence[Model], sources: Sequence[torch.Tensor], b_idx: torch.Tensor,
                 p_idx: torch.Tensor, targets: torch.Tensor, vocab: int, settings: Sequence[Setting],
                 fusion_cfg: FusionConfig, collect: Callable[[list, torch.Tensor], None] | None = None) -> PositionScores:
    """The per-position NLLs of one chunk of scored positions. Its [p, V] logits are the
    pass's biggest tensors; they die when this returns, so none is alive through the next
    batch's forward."""
    fuse_device = models[0].device
    logits = []
    for m, src in zip(models, sources):
        rows = src[b_idx.to(src.device), p_idx.to(src.device)]                     # [p, H] or [p, V]
        try:
            z = m.head(rows) if m.head_path == "scored" else rows                   # [p, V_m]
            logits.append(z.to(fuse_device))
        except torch.OutOfMemoryError as e:
            e.kotara_model = m.ref
            raise
    if collect is not None:
        collect(logits, targets)
    # the settings were checked once for the request (fusion.score_chunk's contract, per position)
    return each_position(logits, targets, vocab, settings, fusion_cfg)


def _in_window(e: NumericalError, models: Sequence[Model], windows: Sequence[Window], w: int) -> NumericalError:
    """The fusion's NumericalError (a model index and a position in the chunk), told in
    the user's terms: the model's ref and the window, with its tokens."""
    ref = models[e.model_index].ref
    return NumericalError(f"model {ref}: NaN or infinite logits in window {w} "
                          f"(tokens {windows[w].start}..{windows[w].end - 1})",
                          model_index=e.model_index, position=e.position, model_ref=ref, window=w)
