"""Per-position numbers for the HTML report's token view (protocol v6 `positions`).

An evaluate request may ask for them for a few of its settings over the first N bytes
of the text. The pass then hands every chunk of scored positions to a Collector, which
keeps only the positions of the view (the first N bytes: a few thousand positions at
most, whatever the text's length) and, for the asked settings, what the pass sums
there: each model's NLL, the setting's fused NLL, its per-model weights α. Nothing
else is kept, so memory stays flat in the text's length.

A position's text: in token space token j stands for the bytes from where the text of
the tokens before it ended to where its own ends (the same cut rule as the windows'
bytes, windows.window_bytes: a special token (0, 0) moves nothing back, and whitespace
that an offset mapping leaves out goes with the token after it), so the spans of the
stream's tokens tile the text. In byte space position i is byte i.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .windows import Window, _char_start

__all__ = ["View", "Collector", "token_view", "byte_view", "check_request", "windows_in_view"]


@dataclass(frozen=True)
class View:
    """The stream positions 0 .. n − 1 of the view, each with its byte span, and the bytes the view covers."""
    starts: list[int]
    ends: list[int]
    bytes: int

    @property
    def n(self) -> int:
        return len(self.starts)


def token_view(text: str, token_ends, limit: int) -> View:
    """Token space: the tokens whose text ends within the first `limit` bytes of `text`.
    token_ends[j]: the character offset where token j's text ends (a fast tokenizer's
    offset mapping). Each token's span is [end of the text before it, its own end), in
    bytes; ends that go back (special tokens) are held at the running maximum."""
    data = text.encode("utf-8")[:limit]
    chars = len(data.decode("utf-8", errors="ignore"))          # whole characters within the limit
    offset = list(itertools.accumulate((len(c.encode("utf-8")) for c in text[:chars]), initial=0))
    ends = torch.as_tensor(token_ends, dtype=torch.long).reshape(-1)
    running = torch.cummax(ends, 0).values.tolist() if ends.numel() else []
    starts_b, ends_b, prev = [], [], 0
    for e in running:
        e = min(int(e), len(text))
        if e > chars:
            break                                                # this token, and every later one, ends past the view
        b = max(offset[e], prev)
        starts_b.append(prev)
        ends_b.append(b)
        prev = b
    return View(starts_b, ends_b, prev)


def byte_view(data: bytes, limit: int) -> View:
    """Byte space: bytes 0 .. cut − 1, cut the last character boundary within the limit."""
    cut = _char_start(data, min(limit, len(data)))
    return View(list(range(cut)), list(range(1, cut + 1)), cut)


def check_request(request, n_settings: int) -> tuple[list[int], int] | None:
    """A request's `positions` field → (setting indices, bytes), or None when it asks for
    none. Raises ValueError for indices outside the request's settings or repeated."""
    if not request:
        return None
    select = [int(k) for k in request["settings"]]
    bad = [k for k in select if not 0 <= k < n_settings]
    if bad:
        raise ValueError(f"positions.settings: index {bad[0]} is not one of the request's {n_settings} settings")
    if len(set(select)) != len(select):
        raise ValueError(f"positions.settings: a setting is asked for twice: {select}")
    return select, int(request["bytes"])


def windows_in_view(windows: Sequence[Window], n_view: int) -> int:
    """How many windows, from the first, score a position of the view (positions < n_view):
    windows score the stream in order, so they are a prefix."""
    k = 0
    while k < len(windows) and windows[k].first_scored < n_view:
        k += 1
    return k


@dataclass
class _Store:
    stream: list[torch.Tensor] = field(default_factory=list)
    model_nll: list[torch.Tensor] = field(default_factory=list)
    fusion_nll: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)


class Collector:
    """Keeps what the pass computes at the view's positions, for the asked settings."""

    def __init__(self, view: View, select: Sequence[int], n_models: int, _store: _Store | None = None):
        self.view = view
        self.select = list(select)
        self.n_models = n_models
        self._index = torch.tensor(self.select, dtype=torch.long)
        self._store = _store if _store is not None else _Store()

    @property
    def n_view(self) -> int:
        return self.view.n

    def for_settings(self, select: Sequence[int]) -> "Collector":
        """The same store, reading other rows of what the pass gives (a pass over only the
        asked settings: a resumed run's windows that its checkpoint holds)."""
        return Collector(self.view, select, self.n_models, self._store)

    def add(self, stream: torch.Tensor, model_nll: torch.Tensor, fusion_nll: torch.Tensor,
            weights: torch.Tensor) -> None:
        """One chunk of scored positions: stream [P] (stream indices), model_nll [N, P],
        fusion_nll [K, P], weights [K, P, N] (every setting of the pass); keeps the view's."""
        keep = stream < self.view.n
        if not bool(keep.any()):
            return
        s = self._store
        s.stream.append(stream[keep].cpu())
        s.model_nll.append(model_nll[:, keep].double().cpu())
        s.fusion_nll.append(fusion_nll[self._index][:, keep].double().cpu())
        s.weights.append(weights[self._index][:, keep, :].double().cpu())

    def mark(self) -> int:
        """A point to roll back to (evaluate: a batch that ran out of memory is scored again)."""
        return len(self._store.stream)

    def rollback(self, mark: int) -> None:
        s = self._store
        for part in (s.stream, s.model_nll, s.fusion_nll, s.weights):
            del part[mark:]

    def to_dict(self, select: Sequence[int] | None = None) -> dict:
        """The wire form (protocol.ts Positions), positions in stream order. `select`: the
        indices to report (default: this collector's)."""
        s, k = self._store, len(self.select)
        if s.stream:
            stream = torch.cat(s.stream)
            order = torch.argsort(stream)
            stream = stream[order]
            if stream.numel() > 1 and bool((stream[1:] == stream[:-1]).any()):
                raise AssertionError("a position of the token view was scored twice")
            model = torch.cat(s.model_nll, 1)[:, order]
            fused = torch.cat(s.fusion_nll, 1)[:, order]
            weights = torch.cat(s.weights, 1)[:, order, :].permute(0, 2, 1)      # [K, N, P]
        else:
            stream = torch.zeros(0, dtype=torch.long)
            model = torch.zeros(self.n_models, 0, dtype=torch.float64)
            fused = torch.zeros(k, 0, dtype=torch.float64)
            weights = torch.zeros(k, self.n_models, 0, dtype=torch.float64)
        idx = stream.tolist()
        return {
            "settings": list(select if select is not None else self.select),
            "bytes": self.view.bytes,
            "start": [self.view.starts[i] for i in idx],
            "end": [self.view.ends[i] for i in idx],
            "model_nll": model.tolist(),
            "fusion_nll": fused.tolist(),
            "weights": weights.tolist(),
        }
