"""A token LM as a byte LM (SPEC §7), exactly where the beam holds every hypothesis.

The model starts from its start token s (BOS; EOS where there is no BOS) and writes
the bytes β(t) of the tokens it emits; a token with no bytes (None in the table of
token_bytes) ends the text. For a byte string y,

    Q(y) = Σ over covers τ of y of p(τ | s)

where a cover's tokens before the last spell a proper prefix of y and its last token
reaches or passes the end of y. Group the covers by all but their last token: a
HYPOTHESIS is (P, j), a token sequence P that spells y[:j] exactly (j < |y|), and its
weight is

    w(P, j) = p(P | s) · M_P(y[j:]),    M_P(r) = Σ_{t : β(t) starts with r} p(t | s, P)

so Q(y) = Σ w over all hypotheses of y (Vieira et al. 2025, "From Language Models over
Tokens to Language Models over Characters"; genlm-bytes implements the same).

Trie trick: with the vocabulary sorted by byte strings, the tokens whose bytes start
with r are one contiguous range [lo, hi) of that order, and M_P(r) = C[hi] - C[lo] for
C the cumulative sum of p(· | P) in that order: one cumsum per next-token distribution,
two look-ups per trie node.

Next byte. A hypothesis (P, j) of y gives, for each byte c,
  - within the token:  p(P) · M_P(y[j:] c)                       (no model call)
  - after a token t that spells y[j:] exactly (β(t) = y[j:]): the new prefix P t
    (one model call) gives p(P t) · M_{Pt}(c), and p(P t) · p(None | P t) to "end".
These add up to exactly w(P, j), so over the whole beam they sum to Q(y), and
p(c | y) = Q(y c) / Q(y) is the c-th sum over their total (257 outcomes, the last
being "end"). The terms for the true next byte x_i are the hypotheses of y x_i: the
beam advances to them and keeps the K heaviest (and those within `prune` of the
heaviest), always keeping the canonical tokenization's hypothesis, so the beam never
empties and every byte has a finite NLL.

Speed: the canonical tokenization carries almost all the mass of a trained model.
Its prefixes' next-token distributions come from ONE ordinary forward over the
window (use_cache=True); a hypothesis that leaves the canonical path at token k
starts from that forward's KV cache cut to k + 1 positions and then takes one
cached step per token. `plain=True` computes every prefix with its own full
forward instead (slow; the tests check the two agree).

Precision: everything after the logits is float64. The logits may be float32 (the
model's own dtype): a log-softmax and these sums would be fine in float32 too, but
M_P(r) = C[hi] - C[lo] is a difference of cumulative sums with absolute error ~ε·1,
so in float32 (ε = 6e-8) a node of mass 1e-6 would keep one digit; in float64
(ε = 1.1e-16) it keeps ten.
"""
from __future__ import annotations

import bisect
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .token_bytes import canonical_ids, start_token, token_bytes

NEG_INF = float("-inf")
END = 256   # index of the "end" outcome in a 257-way distribution


class NonFiniteLogits(ArithmeticError):
    """The model gave NaN or +inf logits (-inf is a token it rules out, and is fine)."""


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    # NaN < inf and inf < inf are both False: one comparison finds either
    if not bool((logits < float("inf")).all()):
        raise NonFiniteLogits("NaN or +inf logits")
    return logits


def _log(x: float) -> float:
    """log that gives -inf for 0 (a token the model rules out, e.g. a masked logit)."""
    return math.log(x) if x > 0 else NEG_INF


# ----------------------------------------------------------------------------- the vocabulary as a trie

def _after_prefix(r: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with r (None: no bound)."""
    r = r.rstrip(b"\xff")
    return r[:-1] + bytes([r[-1] + 1]) if r else None


class ByteTrie:
    """The tokens that have bytes, sorted by their bytes. A trie node is a byte string r;
    its tokens (those whose bytes start with r) are order[lo:hi], the ones that ARE r
    come first: order[lo:lo + n_exact]."""

    def __init__(self, table: list[bytes | None]):
        ids = sorted((i for i, b in enumerate(table) if b is not None), key=lambda i: table[i])
        self.keys = [table[i] for i in ids]                                  # sorted bytes
        self.order = torch.tensor(ids, dtype=torch.long)                     # [n] token ids in trie order
        self.none_ids = torch.tensor([i for i, b in enumerate(table) if b is None], dtype=torch.long)
        self.rows = len(table)
        self._nodes: dict[bytes, tuple[int, int, int] | None] = {}
        self._children: dict[bytes, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def node(self, r: bytes) -> tuple[int, int, int] | None:
        """(lo, hi, n_exact) of node r, None when no token starts with r."""
        if r not in self._nodes:
            lo = bisect.bisect_left(self.keys, r)
            bound = _after_prefix(r)
            hi = len(self.keys) if bound is None else bisect.bisect_left(self.keys, bound, lo)
            exact = bisect.bisect_right(self.keys, r, lo, hi) - lo
            self._nodes[r] = (lo, hi, exact) if hi > lo else None
        return self._nodes[r]

    def children(self, r: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next bytes [k], lo [k], hi [k]) of the children of node r (which must exist)."""
        if r not in self._children:
            lo, hi, exact = self.node(r)
            nxt = sorted({self.keys[m][len(r)] for m in range(lo + exact, hi)})
            ranges = [self.node(r + bytes([c]))[:2] for c in nxt]
            self._children[r] = (torch.tensor(nxt, dtype=torch.long),
                                 torch.tensor([a for a, _ in ranges], dtype=torch.long),
                                 torch.tensor([b for _, b in ranges], dtype=torch.long))
        return self._children[r]

    def exact_ids(self, r: bytes) -> list[int]:
        """The tokens whose bytes are r (more than one where the vocabulary spells r twice,
        e.g. 'a' and the byte-fallback '<0x61>')."""
        node = self.node(r)
        return [] if node is None else self.order[node[0]:node[0] + node[2]].tolist()


# ----------------------------------------------------------------------------- a token prefix

@dataclass(eq=False)
class Prefix:
    """A token sequence after the start token, with what its next token costs."""
    tokens: tuple[int, ...]
    logp: float                      # log p(tokens | s)
    p: torch.Tensor                  # [V] float64: p(next token | s, tokens)
    cum: torch.Tensor                # [n + 1] float64: cumsum of p in trie order, cum[0] = 0
    log_end: float                   # log p(next token has no bytes)
    canon: int | None = None         # k when tokens == canonical[:k]
    # (per-layer (k, v), n): the model's KV cache of [s] + tokens is the first n positions
    # of those tensors (the window's one cache on the canonical path); None in plain mode
    kv: tuple[list[tuple[torch.Tensor, torch.Tensor]], int] | None = field(default=None, repr=False)

    def log_mass(self, lo: int, hi: int) -> float:
        m = float(self.cum[hi] - self.cum[lo])
        return _log(m)


def _prefix(trie: ByteTrie, tokens: tuple[int, ...], logp: float, logits: torch.Tensor,
            canon: int | None = None, kv: Any = None) -> Prefix:
    # the byte algorithm runs on the CPU whatever the model's device (one [V] copy per prefix)
    p = torch.softmax(logits.double(), dim=-1).cpu()                         # [V] float64
    cum = torch.nn.functional.pad(torch.cumsum(p[trie.order], 0), (1, 0))   # [n + 1]
    end = float(p[trie.none_ids].sum()) if trie.none_ids.numel() else 0.0   # summed, not 1 - cum[-1]: exact when small
    return Prefix(tokens, logp, p, cum, _log(end), canon, kv)


# ----------------------------------------------------------------------------- KV caches across transformers versions

def _kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A model's past_key_values as per-layer (k [1, H, L, D], v [1, H, L, D])."""
    if hasattr(cache, "layers"):                                             # transformers ≥ 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]                                        # legacy tuples


def _cache(kv: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> Any:
    """A fresh DynamicCache over the first `length` positions. The forward appends to the
    cache it is given, so each step gets its own; the tensors are shared, never written."""
    from transformers import DynamicCache
    data = [(k[:, :, :length], v[:, :, :length]) for k, v in kv]
    try:
        return DynamicCache(ddp_cache_data=data)
    except TypeError:                                                        # transformers 4.x before ddp_cache_data
        return DynamicCache.from_legacy_cache(tuple(data))


# ----------------------------------------------------------------------------- the byte LM

def _hf_model(model: Any) -> Any:
    """The transformers model of a LoadedModel (its .model), or the model itself. (A
    transformers model has a .model too, its body: hence the Module test.)"""
    return model if isinstance(model, torch.nn.Module) else model.model


@dataclass
class ByteStats:
    """How much the beam left out: with pruned == 0 the scores are exact."""
    positions: int = 0               # bytes the beam advanced over (context and scored)
    pruned: int = 0                  # hypotheses dropped (beyond K, or under prune × the best)
    pruned_positions: int = 0        # positions where anything was dropped
    max_pruned_share: float = 0.0    # largest share of Q(x[:i+1]) dropped at one position
    skipped_extensions: int = 0      # token extensions under the prune threshold, not run
    max_hypotheses: int = 0          # most hypotheses before pruning (K ≥ this is exact)
    forwards: int = 0                # model calls: the window's one + one per batch of extension steps
    too_long: int = 0                # extensions dropped for passing the model's context

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class ByteLM:
    """The byte LM of one model.

    model:   a transformers causal LM (or a LoadedModel: its .model is used)
    table:   token_bytes(tokenizer, rows)
    start_id: s, e.g. token_bytes.start_token(tokenizer)
    beam:    K, the most hypotheses kept after each byte (the canonical one always is)
    prune:   in [0, 1): also drop hypotheses lighter than prune × the heaviest
    batch:   the most token extensions one forward steps (all of a byte's, normally)
    plain:   every prefix by its own full forward (no shared forward, no KV cache)
    """

    def __init__(self, model: Any, table: list[bytes | None], start_id: int, beam: int = 8,
                 prune: float = 0.0, batch: int = 64, plain: bool = False):
        if beam < 1:
            raise ValueError(f"beam must be ≥ 1, got {beam}")
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {prune}")
        self.model = _hf_model(model)
        self.device = next(self.model.parameters()).device
        self.trie = ByteTrie(table)
        self.table = table
        self.start_id, self.beam, self.prune, self.batch, self.plain = start_id, beam, prune, max(1, batch), plain
        cfg = self.model.config
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        # transformers ≥ 5.2x names the forward's KV argument `cache` (past_key_values before)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_tokenizer(cls, model: Any, tokenizer: Any, **kw: Any) -> "ByteLM":
        rows = _hf_model(model).get_output_embeddings().weight.shape[0]
        return cls(model, token_bytes(tokenizer, rows), start_token(tokenizer), **kw)

    # ------------------------------------------------------------------ model calls

    @torch.inference_mode()
    def _forward(self, ids: list[int], past: Any = None) -> tuple[torch.Tensor, Any]:
        """(logits [L, V], the KV cache after ids or None)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)        # [1, L]
        use_cache = past is not None or not self.plain
        out = self.model(input_ids=x, use_cache=use_cache, **({self._cache_kw: past} if past is not None else {}))
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return _check_logits(out.logits[0]), (_kv_tensors(cache) if use_cache else None)

    def _canonical_path(self, canonical: list[int], stats: ByteStats) -> list[Prefix]:
        """Prefix canonical[:k] for k = 0..n, from one forward over [s] + canonical."""
        ids = [self.start_id] + canonical
        if self.max_positions is not None and len(ids) > self.max_positions:
            raise ValueError(f"the window is {len(ids)} tokens with the start token; the model has "
                             f"{self.max_positions} positions")
        window = getattr(self.model.config, "sliding_window", None)
        if not self.plain and isinstance(window, int) and len(ids) > window:
            # a sliding-window layer's cache holds only the last `window` positions, so the
            # window's cache cannot be cut at an earlier token: not handled (yet)
            raise ValueError(f"the window is {len(ids)} tokens, past the model's sliding attention window "
                             f"of {window}: use shorter windows or plain=True")
        if self.plain:      # each prefix by its own forward: the definition, slowly
            rows = [self._forward(ids[:k + 1])[0][-1] for k in range(len(canonical) + 1)]
            stats.forwards += len(rows)
            kv = None
        else:
            rows, kv = self._forward(ids)                                    # [n + 1, V]
            stats.forwards += 1
        path, logp = [], 0.0
        for k in range(len(canonical) + 1):
            path.append(_prefix(self.trie, tuple(canonical[:k]), logp, rows[k], canon=k,
                                kv=None if kv is None else (kv, k + 1)))
            if k < len(canonical):
                logp += _log(float(path[k].p[canonical[k]]))
        return path

    def _on_path(self, parent: Prefix, t: int, path: list[Prefix]) -> bool:
        """Whether parent + t is a canonical prefix (then it costs no model call)."""
        k = parent.canon
        return k is not None and k < len(path) - 1 and path[k + 1].tokens[-1] == t

    def _extend_all(self, jobs: list[tuple[Prefix, int]], path: list[Prefix],
                    stats: ByteStats) -> list[Prefix | None]:
        """parent + t for each job: from the canonical path, else by the model, `batch` steps
        per forward (None where it would not fit the model's context)."""
        out: list[Prefix | None] = [None] * len(jobs)
        todo = []
        for n, (parent, t) in enumerate(jobs):
            if self._on_path(parent, t, path):
                out[n] = path[parent.canon + 1]
            elif self.max_positions is not None and len(parent.tokens) + 2 > self.max_positions:
                stats.too_long += 1
            else:
                todo.append(n)
        for lo in range(0, len(todo), self.batch):
            chunk = todo[lo:lo + self.batch]
            stats.forwards += len(chunk) if self.plain else 1
            steps = self._plain_steps if self.plain else self._cached_steps
            for n, (logits, kv) in zip(chunk, steps([jobs[n] for n in chunk])):
                parent, t = jobs[n]
                tokens = parent.tokens + (t,)
                out[n] = _prefix(self.trie, tokens, parent.logp + _log(float(parent.p[t])), logits,
                                 kv=None if kv is None else (kv, len(tokens) + 1))
        return out

    def _plain_steps(self, jobs: list[tuple[Prefix, int]]) -> list[tuple[torch.Tensor, None]]:
        """The definition: a full forward of [s] + parent + t for each job."""
        return [(self._forward([self.start_id, *parent.tokens, t])[0][-1], None) for parent, t in jobs]

    @torch.inference_mode()
    def _cached_steps(self, jobs: list[tuple[Prefix, int]]) -> list[tuple[torch.Tensor, Any]]:
        """One forward of B new tokens on B caches of different lengths n_b: the caches are
        left-padded to the longest, the padding masked out, each token at its own position."""
        lens = [parent.kv[1] for parent, _ in jobs]
        longest = max(lens)
        data = []
        for layer in range(len(jobs[0][0].kv[0])):
            ks, vs = [], []
            for (parent, _), n in zip(jobs, lens):
                k, v = parent.kv[0][layer]                                   # [1, H, ≥n, D]
                ks.append(torch.nn.functional.pad(k[:, :, :n], (0, 0, longest - n, 0)))
                vs.append(torch.nn.functional.pad(v[:, :, :n], (0, 0, longest - n, 0)))
            data.append((torch.cat(ks), torch.cat(vs)))                      # [B, H, longest, D]
        mask = torch.zeros(len(jobs), longest + 1, dtype=torch.long)         # [B, longest + 1]
        for b, n in enumerate(lens):
            mask[b, longest - n:] = 1
        x = torch.tensor([[t] for _, t in jobs], dtype=torch.long, device=self.device)   # [B, 1]
        pos = torch.tensor(lens, dtype=torch.long, device=self.device)[:, None]            # [B, 1]
        cache = _cache(data, longest)
        out = self.model(input_ids=x, attention_mask=mask.to(self.device), position_ids=pos,
                         use_cache=True, **{self._cache_kw: cache})
        _check_logits(out.logits)
        kv = _kv_tensors(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        # item b's cache: its row, without the padding (views of the batch's tensors)
        return [(out.logits[b, -1], [(k[b:b + 1, :, longest - n:], v[b:b + 1, :, longest - n:]) for k, v in kv])
                for b, n in enumerate(lens)]

    # ------------------------------------------------------------------ one byte

    def _next_byte(self, x: bytes, i: int, beam: list[tuple[Prefix, int]], path: list[Prefix],
                   stats: ByteStats) -> tuple[torch.Tensor, list[tuple[float, Prefix, int]]]:
        """The 257 log-masses Q(x[:i] c) (unnormalized; last = end) from the beam of x[:i],
        and the hypotheses of x[:i + 1] as (log weight, prefix, j)."""
        log_q = torch.full((257,), NEG_INF, dtype=torch.float64)            # [257]
        nxt: list[tuple[float, Prefix, int]] = []
        b = bytes([x[i]])
        best = max(P.logp + self._log_w(P, x[j:i]) for P, j in beam)
        jobs: list[tuple[Prefix, int]] = []                                  # (P, t): t spells r exactly
        for P, j in beam:
            r = x[j:i]
            # within the current token: the children of node r (r is a node: w(P, j) > 0)
            self._add_children(log_q, P, r)
            node = self.trie.node(r + b)
            if node is not None:
                nxt.append((P.logp + P.log_mass(node[0], node[1]), P, j))
            if not r:                                                        # the start: the text may be empty
                self._add_end(log_q, P)
            for t in self.trie.exact_ids(r):
                if self.prune > 0 and not self._on_path(P, t, path) \
                        and P.logp + _log(float(P.p[t])) < best + math.log(self.prune):
                    stats.skipped_extensions += 1                            # would be pruned: no model call
                    continue
                jobs.append((P, t))
        # after a token that spells r exactly: a new prefix, at the root of the trie
        node = self.trie.node(b)
        for Pt in self._extend_all(jobs, path, stats):
            if Pt is None:
                continue
            self._add_children(log_q, Pt, b"")
            self._add_end(log_q, Pt)
            if node is not None:
                nxt.append((Pt.logp + Pt.log_mass(node[0], node[1]), Pt, i))
        return log_q, nxt

    @staticmethod
    def _add_end(log_q: torch.Tensor, P: Prefix) -> None:
        """log_q[end] ⊕= log p(P) + log p(a token with no bytes | P)."""
        log_q[END] = torch.logaddexp(log_q[END], torch.tensor(P.logp + P.log_end, dtype=torch.float64))

    def _log_w(self, P: Prefix, r: bytes) -> float:
        node = self.trie.node(r)
        return NEG_INF if node is None else P.log_mass(node[0], node[1])

    def _add_children(self, log_q: torch.Tensor, P: Prefix, r: bytes) -> None:
        """log_q[c] ⊕= log p(P) + log M_P(r c) for every child c of node r."""
        nxt, lo, hi = self.trie.children(r)
        if nxt.numel() == 0:
            return
        mass = (P.cum[hi] - P.cum[lo]).clamp_min(0.0)                       # [k] float64
        log_q[nxt] = torch.logaddexp(log_q[nxt], P.logp + torch.log(mass))

    # ------------------------------------------------------------------ keeping K

    def _keep(self, cands: list[tuple[float, Prefix, int]], canon_k: int,
              stats: ByteStats) -> list[tuple[Prefix, int]]:
        """The K heaviest hypotheses (and none under prune × the heaviest), the canonical
        one (whose prefix is canonical[:canon_k]) always among them."""
        cands = [c for c in cands if c[0] > NEG_INF or c[1].canon == canon_k]
        cands.sort(key=lambda c: -c[0])
        stats.max_hypotheses = max(stats.max_hypotheses, len(cands))
        floor = cands[0][0] + math.log(self.prune) if self.prune > 0 else NEG_INF
        kept = [c for c in cands if c[0] >= floor][: self.beam]
        if not any(c[1].canon == canon_k for c in kept):
            canon = next(c for c in cands if c[1].canon == canon_k)
            kept = kept[: self.beam - 1] + [canon]
        if len(kept) < len(cands):
            ids = {id(c) for c in kept}
            dropped = [c[0] for c in cands if id(c) not in ids]
            total = torch.logsumexp(torch.tensor([c[0] for c in cands], dtype=torch.float64), 0)
            share = float(torch.exp(torch.logsumexp(torch.tensor(dropped, dtype=torch.float64), 0) - total))
            stats.pruned += len(dropped)
            stats.pruned_positions += 1
            stats.max_pruned_share = max(stats.max_pruned_share, share)
        return [(P, j) for _, P, j in kept]

    # ------------------------------------------------------------------ a window

    def score(self, data: bytes, context_len: int, canonical: list[int]) -> tuple[torch.Tensor, ByteStats]:
        """log p(· | data[:i]) over 257 outcomes for i = context_len .. len(data) - 1.

        data: the bytes the model writes (dummy prefix included); canonical: a tokenization
        of exactly data (the beam's anchor). Returns logp [len(data) - context_len, 257]
        float64 (the last column is "end") and the beam's ByteStats."""
        spelled = b"".join(self.table[t] or b"" for t in canonical)
        if spelled != data or any(self.table[t] is None for t in canonical):
            raise ValueError("the canonical tokens do not spell the data")
        if not 0 <= context_len < len(data):
            raise ValueError(f"context_len {context_len} outside [0, {len(data)})")
        stats = ByteStats()
        path = self._canonical_path(canonical, stats)
        ends = [0]
        for t in canonical:
            ends.append(ends[-1] + len(self.table[t]))                       # canonical[:k] spells data[:ends[k]]
        beam: list[tuple[Prefix, int]] = [(path[0], 0)]
        rows = []
        for i in range(len(data)):
            log_q, cands = self._next_byte(data, i, beam, path, stats)
            if i >= context_len:
                rows.append(log_q - torch.logsumexp(log_q, 0))               # normalized by Q(data[:i])
            # the canonical hypothesis of data[:i + 1]: canonical[:k] with ends[k] ≤ i < ends[k + 1]
            canon_k = bisect.bisect_right(ends, i) - 1
            beam = self._keep(cands, canon_k, stats)
            stats.positions += 1
        return torch.stack(rows), stats                                      # [n_scored, 257]

    def score_text(self, tokenizer: Any, text: str, context_len: int = 0) -> tuple[torch.Tensor, ByteStats]:
        """score() of a text's UTF-8 bytes, context_len of them as context. A tokenizer with a
        dummy prefix writes ' ' + text: its rows are Q(' ' text[:i] c) / Q(' ' text[:i])."""
        canonical, prefix = canonical_ids(tokenizer, self.table, text)
        return self.score(prefix + text.encode("utf-8"), len(prefix) + context_len, canonical)
