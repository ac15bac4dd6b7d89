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


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top if top == NEG_INF else top + math.log(math.fsum(math.exp(x - top) for x in xs))


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

    def forget(self) -> None:
        """Drop the memoized nodes. A worker calls it after each request: entries added
        mid-request are small allocations among the request's large temporaries, and kept
        they pin heap pages that malloc_trim could otherwise hand back, so the next
        request's resident peak would grow with every new text (measured: +25 MiB after a
        16 KB text). Recomputing a node is two bisections."""
        self._nodes.clear()
        self._children.clear()

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
    # the model's KV cache of [s] + tokens: (base, k0, suffix, last) = the first k0 positions of
    # the window's canonical cache base [layers, 2, H, Lc, D], then suffix [layers, 2, H, s, D]
    # (None: nothing past the base), then last [layers, 2, H, 1, D] (None: nothing), a view of
    # the step that made it until own() joins it to the suffix; None in plain mode
    kv: tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None] | None = field(default=None, repr=False)
    view: bool = False               # p, cum (and kv's last) are views of a batch's tensors

    def log_mass(self, lo: int, hi: int) -> float:
        m = float(self.cum[hi] - self.cum[lo])
        return _log(m)

    @property
    def kv_len(self) -> int:
        _, k0, suffix, last = self.kv
        return k0 + (0 if suffix is None else suffix.shape[3]) + (0 if last is None else 1)

    def own(self) -> None:
        """Copy what it holds out of the batch it was computed in (so the batch can be freed)."""
        if self.view:
            self.p, self.cum, self.view = self.p.clone(), self.cum.clone(), False
            if self.kv is not None and self.kv[3] is not None:
                base, k0, suffix, last = self.kv
                self.kv = (base, k0, last.clone() if suffix is None else torch.cat((suffix, last), 3), None)

    def suffix(self) -> torch.Tensor | None:
        """The cache past the base, [layers, 2, H, s, D] (joined once, then kept)."""
        self.own()
        return self.kv[2]


def _distributions(trie: ByteTrie, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """For logits [B, V]: p [B, V] and cum [B, n + 1] (float64, CPU: the byte algorithm runs
    on the CPU whatever the model's device) and log p(a token with no bytes) per row."""
    p = torch.softmax(logits.double(), dim=-1).cpu()                        # [B, V] float64
    cum = torch.nn.functional.pad(torch.cumsum(p[:, trie.order], 1), (1, 0))  # [B, n + 1]
    if trie.none_ids.numel():
        end = p[:, trie.none_ids].sum(1).tolist()                           # summed, not 1 - cum[-1]: exact when small
    else:
        end = [0.0] * p.shape[0]
    return p, cum, [_log(e) for e in end]


# ----------------------------------------------------------------------------- KV caches across transformers versions

def _kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A model's past_key_values as per-layer (k [B, H, L, D], v [B, H, L, D])."""
    if hasattr(cache, "layers"):                                             # transformers ≥ 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]                                        # legacy tuples


def _stacked(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-layer (k, v) [1, H, L, D] as one tensor [layers, 2, H, L, D] (one copy per window)."""
    shapes = {tuple(t.shape) for pair in kv for t in pair}
    if len(shapes) != 1:
        raise ValueError(f"byte space needs every layer's KV cache in one shape, got {sorted(shapes)}: "
                         "use plain=True for this model")
    return torch.stack([torch.stack((k[0], v[0])) for k, v in kv])


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A fresh DynamicCache over per-layer (k, v). The forward appends to the cache it is
    given (into new tensors: the ones given are never written)."""
    from transformers import DynamicCache
    try:
        return DynamicCache(ddp_cache_data=layers)
    except TypeError:                                                        # transformers 4.x before ddp_cache_data
        return DynamicCache.from_legacy_cache(tuple(layers))


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
    forwards: int = 0                # model calls this window took part in
    too_long: int = 0                # extensions dropped for passing the model's context

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class Interrupted(Exception):
    """score_many's should_stop() said so (between two bytes)."""


PATH_BLOCK = 32        # canonical prefixes whose distributions are computed together
LOOKAHEAD = 32         # canonical tokens whose sure extensions are stepped together (prune = 0)


class _Path:
    """The canonical prefixes canonical[:k], k = 0..n, of one window, from the window's one
    forward: their log p and KV cache at once, their distributions (p, cum: 2 × V float64
    each) in blocks of PATH_BLOCK when first asked for, and forgotten behind the beam (a
    forgotten block is computed again from the logits if it is asked for again)."""

    def __init__(self, trie: ByteTrie, canonical: list[int], logits: torch.Tensor, kv: torch.Tensor | None):
        self.trie, self.canonical, self.logits, self.kv = trie, canonical, logits, kv
        self.blocks: dict[int, list[Prefix]] = {}
        self.logp = [0.0]
        for b in range(0, len(canonical) + 1, PATH_BLOCK):
            block = self._block(b // PATH_BLOCK)
            for P in block:
                if P.canon < len(canonical):
                    self.logp.append(self.logp[-1] + _log(float(P.p[canonical[P.canon]])))
            if b >= PATH_BLOCK:
                del self.blocks[b // PATH_BLOCK - 1]
        for block in self.blocks.values():                # logp is known only now
            for P in block:
                P.logp = self.logp[P.canon]

    def __len__(self) -> int:
        return len(self.canonical) + 1

    def _block(self, b: int) -> list[Prefix]:
        if b not in self.blocks:
            lo, hi = b * PATH_BLOCK, min((b + 1) * PATH_BLOCK, len(self))
            p, cum, log_end = _distributions(self.trie, self.logits[lo:hi])
            logp = self.logp if len(self.logp) == len(self) else None
            self.blocks[b] = [Prefix(tuple(self.canonical[:k]), logp[k] if logp else 0.0, p[k - lo], cum[k - lo],
                                     log_end[k - lo], canon=k, kv=None if self.kv is None else (self.kv, k + 1, None, None),
                                     view=True) for k in range(lo, hi)]
        return self.blocks[b]

    def __getitem__(self, k: int) -> Prefix:
        return self._block(k // PATH_BLOCK)[k % PATH_BLOCK]

    def forget_before(self, k: int) -> None:
        for b in [b for b in self.blocks if (b + 1) * PATH_BLOCK <= k]:
            del self.blocks[b]


@dataclass(eq=False)
class _Window:
    """One window's state in score_many."""
    data: bytes
    context_len: int
    canonical: list[int]
    path: _Path
    ends: list[int]                                   # canonical[:k] spells data[:ends[k]]
    stats: ByteStats
    beam: list[tuple[Prefix, int]] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    sure: dict[tuple[int, int], Prefix] = field(default_factory=dict)   # stepped ahead: (k, t) -> canonical[:k] + t
    sure_upto: int = 0                                # canonical tokens < this have had theirs stepped
    canon_k: int = 0                                  # the canonical hypothesis' prefix: canonical[:canon_k]
    made: list = field(default_factory=list)          # a stream's extensions for its next byte (next_rows)
    dead: bool = False                                # a stream whose text the model rules out (Q = 0)


class ByteLM:
    """The byte LM of one model.

    model:   a transformers causal LM (or a LoadedModel: its .model is used)
    table:   token_bytes(tokenizer, rows)
    start_id: s, e.g. token_bytes.start_token(tokenizer)
    beam:    K, the most hypotheses kept after each byte (the canonical one always is)
    prune:   in [0, 1): also drop hypotheses lighter than prune × the heaviest
    batch:   the most token extensions one forward steps
    plain:   every prefix by its own full forward (no shared forward, no KV cache)
    """

    def __init__(self, model: Any, table: list[bytes | None], start_id: int, beam: int = 8,
                 prune: float = 0.0, batch: int = 64, plain: bool = False):
        if beam < 1:
            raise ValueError(f"beam must be ≥ 1, got {beam}")
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {prune}")
        self.model = _hf_model(model)
        # a LoadedModel knows where its input goes (a sharded one's first weight may be on disk: meta)
        device = getattr(model, "device", None) if not isinstance(model, torch.nn.Module) else None
        self.device = device if isinstance(device, torch.device) else next(self.model.parameters()).device
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
    def _forward(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """(logits [L, V], per-layer KV after ids or None in plain mode)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)        # [1, L]
        out = self.model(input_ids=x, use_cache=not self.plain)
        if self.plain:
            return _check_logits(out.logits[0]), None
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return _check_logits(out.logits[0]), _kv_tensors(cache)

    def _begin(self, data: bytes, context_len: int, canonical: list[int], stream: bool = False) -> _Window:
        spelled = b"".join(self.table[t] or b"" for t in canonical)
        if spelled != data or any(self.table[t] is None for t in canonical):
            raise ValueError("the canonical tokens do not spell the data")
        if not stream and not 0 <= context_len < len(data):
            raise ValueError(f"context_len {context_len} outside [0, {len(data)})")
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
        stats = ByteStats()
        if self.plain:      # each prefix by its own forward: the definition, slowly
            logits = torch.stack([self._forward(ids[:k + 1])[0][-1] for k in range(len(ids))])
            stats.forwards += len(ids)
            kv = None
        else:
            logits, layers = self._forward(ids)                              # [n + 1, V]
            stats.forwards += 1
            kv = _stacked(layers)                                            # [layers, 2, H, n + 1, D]
        ends = [0]
        for t in canonical:
            ends.append(ends[-1] + len(self.table[t]))
        path = _Path(self.trie, canonical, logits, kv)
        w = _Window(data, context_len, canonical, path, ends, stats)
        w.beam = [(path[0], 0)]
        return w

    def _on_path(self, w: _Window, parent: Prefix, t: int) -> bool:
        """Whether parent + t is a canonical prefix (then it costs no model call)."""
        k = parent.canon
        return k is not None and k < len(w.canonical) and w.canonical[k] == t

    def _sure_jobs(self, w: _Window, k_from: int) -> list[tuple[Prefix, int]]:
        """The extensions canonical[:k] + t, k in [k_from, k_from + LOOKAHEAD), that the
        canonical hypothesis will ask for (the beam always keeps it): every t other than
        canonical[k] whose bytes are a prefix of canonical[k]'s."""
        jobs = []
        for k in range(k_from, min(k_from + LOOKAHEAD, len(w.canonical))):
            piece = self.table[w.canonical[k]]
            parent = None
            for n in range(1, len(piece) + 1):
                for t in self.trie.exact_ids(piece[:n]):
                    if t != w.canonical[k] and (k, t) not in w.sure:
                        parent = parent or w.path[k]
                        if self.max_positions is None or parent.kv_len + 1 <= self.max_positions:
                            jobs.append((parent, t))
        w.sure_upto = min(k_from + LOOKAHEAD, len(w.canonical))
        return jobs

    def _extend_all(self, jobs: list[tuple[_Window, Prefix, int]]) -> list[Prefix | None]:
        """parent + t for each job: from the canonical path or the ones stepped ahead, else by
        the model, `batch` steps per forward (None where it would not fit the model's context).
        With prune = 0 (every extension of the canonical hypothesis is then sure to be asked
        for), a job on the canonical hypothesis also steps its window's sure extensions of the
        next LOOKAHEAD canonical tokens, in the same forwards."""
        out: list[Prefix | None] = [None] * len(jobs)
        todo: list[tuple[_Window, Prefix, int, int | None]] = []         # (window, parent, t, job index | None)
        for n, (w, parent, t) in enumerate(jobs):
            if self._on_path(w, parent, t):
                out[n] = w.path[parent.canon + 1]
                continue
            if parent.canon is not None and (parent.canon, t) in w.sure:
                out[n] = w.sure[(parent.canon, t)]
                continue
            if self.max_positions is not None and len(parent.tokens) + 2 > self.max_positions:
                w.stats.too_long += 1
                continue
            todo.append((w, parent, t, n))
            if not self.plain and self.prune == 0 and parent.canon is not None and parent.canon >= w.sure_upto:
                todo += [(w, P, u, None) for P, u in self._sure_jobs(w, parent.canon) if (P.canon, u) != (parent.canon, t)]
        for lo in range(0, len(todo), self.batch):
            chunk = todo[lo:lo + self.batch]
            for w in {id(w): w for w, *_ in chunk}.values():
                w.stats.forwards += sum(1 for c in chunk if c[0] is w) if self.plain else 1
            made = self._steps([(w, parent, t) for w, parent, t, _ in chunk])
            for (w, parent, t, n), Pt in zip(chunk, made):
                if n is not None:
                    out[n] = Pt
                if parent.canon is not None and (not self.plain and self.prune == 0):
                    w.sure[(parent.canon, t)] = Pt
        return out

    def _step_prefixes(self, jobs: list[tuple[Prefix, int]], logits: torch.Tensor,
                       kvs: list[Any]) -> list[Prefix]:
        p, cum, log_end = _distributions(self.trie, logits)                  # [B, V], [B, n + 1], [B]
        return [Prefix(parent.tokens + (t,), parent.logp + _log(float(parent.p[t])), p[b], cum[b], log_end[b],
                       kv=kvs[b], view=True) for b, (parent, t) in enumerate(jobs)]

    def _plain_steps(self, jobs: list[tuple[Prefix, int]]) -> list[Prefix]:
        """The definition: a full forward of [s] + parent + t for each job."""
        logits = torch.stack([self._forward([self.start_id, *parent.tokens, t])[0][-1] for parent, t in jobs])
        return self._step_prefixes(jobs, logits, [None] * len(jobs))

    def _steps(self, jobs: list[tuple[_Window, Prefix, int]]) -> list[Prefix]:
        """parent + t for each job, by the model."""
        pairs = [(parent, t) for _, parent, t in jobs]
        return self._plain_steps(pairs) if self.plain else self._cached_steps(pairs)

    @staticmethod
    def _fill(buf: torch.Tensor, row: int, at: int, parent: Prefix) -> None:
        """Copy parent's cache into buf[:, :, row, :, at:]."""
        base, k0, suffix, last = parent.kv
        buf[:, :, row, :, at:at + k0] = base[:, :, :, :k0]
        n = k0
        for part in (suffix, last):
            if part is not None:
                buf[:, :, row, :, at + n:at + n + part.shape[3]] = part
                n += part.shape[3]

    @torch.inference_mode()
    def _cached_steps(self, jobs: list[tuple[Prefix, int]]) -> list[Prefix]:
        """One forward of B new tokens on B caches of different lengths n_b: the caches are
        left-padded to the longest, the padding masked out, each token at its own position.
        A new prefix keeps its parent's base (the window's canonical cache) and the suffix
        past it plus the new token's keys and values."""
        lens = [parent.kv_len for parent, _ in jobs]
        longest = max(lens)
        base0 = jobs[0][0].kv[0]
        L, _, H, _, D = base0.shape
        buf = torch.empty(L, 2, len(jobs), H, longest, D, dtype=base0.dtype, device=base0.device)
        for b, ((parent, _), n) in enumerate(zip(jobs, lens)):
            if n < longest:
                buf[:, :, b, :, :longest - n] = 0.0       # masked, but never NaN (0 · NaN would leak)
            self._fill(buf, b, longest - n, parent)
        mask = torch.zeros(len(jobs), longest + 1, dtype=torch.long)          # [B, longest + 1]
        for b, n in enumerate(lens):
            mask[b, longest - n:] = 1
        x = torch.tensor([[t] for _, t in jobs], dtype=torch.long, device=self.device)   # [B, 1]
        pos = torch.tensor(lens, dtype=torch.long, device=self.device)[:, None]          # [B, 1]
        cache = _cache([(buf[layer, 0], buf[layer, 1]) for layer in range(L)])
        out = self.model(input_ids=x, attention_mask=mask.to(self.device), position_ids=pos,
                         use_cache=True, **{self._cache_kw: cache})
        logits = _check_logits(out.logits[:, -1])                                        # [B, V]
        layers = _kv_tensors(getattr(out, "cache", None) or getattr(out, "past_key_values", None))
        new = torch.stack([torch.stack((k[:, :, -1:], v[:, :, -1:])) for k, v in layers])  # [L, 2, B, H, 1, D]
        kvs = []
        for b, (parent, _) in enumerate(jobs):
            base, k0, _, _ = parent.kv
            kvs.append((base, k0, parent.suffix(), new[:, :, b]))                        # last: [L, 2, H, 1, D]
        return self._step_prefixes(jobs, logits, kvs)

    # ------------------------------------------------------------------ one byte

    def _within(self, w: _Window, i: int) -> tuple[torch.Tensor, list[tuple[float, Prefix, int]],
                                                   list[tuple[Prefix, int]]]:
        """From the beam of x[:i]: the 257 log-masses within the current tokens (unnormalized;
        last = end), the hypotheses of x[:i + 1] that stay inside a token, and the token
        extensions to step (P, t with t spelling x[j:i] exactly)."""
        x = w.data
        log_q = torch.full((257,), NEG_INF, dtype=torch.float64)            # [257]
        nxt: list[tuple[float, Prefix, int]] = []
        b = bytes([x[i]])
        best = max(P.logp + self._log_w(P, x[j:i]) for P, j in w.beam)
        jobs: list[tuple[Prefix, int]] = []
        for P, j in w.beam:
            r = x[j:i]
            # within the current token: the children of node r (r is a node: w(P, j) > 0)
            self._add_children(log_q, P, r)
            node = self.trie.node(r + b)
            if node is not None:
                nxt.append((P.logp + P.log_mass(node[0], node[1]), P, j))
            if not r:                                                        # the start: the text may be empty
                self._add_end(log_q, P)
            for t in self.trie.exact_ids(r):
                if self.prune > 0 and not self._on_path(w, P, t) \
                        and P.logp + _log(float(P.p[t])) < best + math.log(self.prune):
                    w.stats.skipped_extensions += 1                          # would be pruned: no model call
                    continue
                jobs.append((P, t))
        return log_q, nxt, jobs

    def _finish(self, w: _Window, i: int, log_q: torch.Tensor, nxt: list[tuple[float, Prefix, int]],
                made: list[Prefix | None]) -> None:
        """After the extensions: their masses, the row of byte i, the beam of x[:i + 1]."""
        node = self.trie.node(w.data[i:i + 1])
        for Pt in made:
            if Pt is None:
                continue
            # after a token that spells r exactly: a new prefix, at the root of the trie
            self._add_children(log_q, Pt, b"")
            self._add_end(log_q, Pt)
            if node is not None:
                nxt.append((Pt.logp + Pt.log_mass(node[0], node[1]), Pt, i))
        if i >= w.context_len:
            w.rows.append(log_q - torch.logsumexp(log_q, 0))                 # normalized by Q(data[:i])
        # the canonical hypothesis of data[:i + 1]: canonical[:k] with ends[k] ≤ i < ends[k + 1]
        canon_k = bisect.bisect_right(w.ends, i) - 1
        w.beam = self._keep(nxt, canon_k, w.stats)
        for P, _ in w.beam:
            P.own()
        w.stats.positions += 1
        if canon_k != w.canon_k:                                             # the canonical hypothesis moved on
            w.canon_k = canon_k
            w.path.forget_before(canon_k)
            for key in [key for key in w.sure if key[0] < canon_k]:         # asked for, or never will be
                del w.sure[key]

    @staticmethod
    def _add_end(log_q: torch.Tensor, P: Prefix) -> None:
        """log_q[end] ⊕= log p(P) + log p(a token with no bytes | P)."""
        log_q[END] = _logaddexp(float(log_q[END]), P.logp + P.log_end)

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
            share = math.exp(_logsumexp(dropped) - _logsumexp([c[0] for c in cands]))
            stats.pruned += len(dropped)
            stats.pruned_positions += 1
            stats.max_pruned_share = max(stats.max_pruned_share, share)
        return [(P, j) for _, P, j in kept]

    # ------------------------------------------------------------------ windows

    def score(self, data: bytes, context_len: int, canonical: list[int]) -> tuple[torch.Tensor, ByteStats]:
        """log p(· | data[:i]) over 257 outcomes for i = context_len .. len(data) - 1.

        data: the bytes the model writes (dummy prefix included); canonical: a tokenization
        of exactly data (the beam's anchor). Returns logp [len(data) - context_len, 257]
        float64 (the last column is "end") and the beam's ByteStats."""
        return self.score_many([(data, context_len, canonical)])[0]

    @torch.inference_mode()
    def score_many(self, windows: list[tuple[bytes, int, list[int]]],
                   should_stop: Any = None) -> list[tuple[torch.Tensor, ByteStats]]:
        """score() of several windows at once: they advance byte by byte together, and the
        token extensions of all of them at one byte run in the same forwards (a forward's
        cost on a small model is mostly its fixed overhead). Each window's rows are what
        score() gives it alone, up to the float rounding of a different batch.
        should_stop(): asked after every byte; True raises Interrupted."""
        states = [self._begin(*item) for item in windows]
        for i in range(max(len(w.data) for w in states)):
            active = [w for w in states if i < len(w.data)]
            pending, jobs = [], []
            for w in active:
                log_q, nxt, mine = self._within(w, i)
                pending.append((w, log_q, nxt, len(jobs), len(mine)))
                jobs += [(w, P, t) for P, t in mine]
            made = self._extend_all(jobs)
            for w, log_q, nxt, lo, n in pending:
                self._finish(w, i, log_q, nxt, made[lo:lo + n])
            if should_stop is not None and should_stop():
                raise Interrupted(f"stopped at byte {i}")
        return [(torch.stack(w.rows), w.stats) for w in states]                # [n_scored, 257] each

    def score_text(self, tokenizer: Any, text: str, context_len: int = 0) -> tuple[torch.Tensor, ByteStats]:
        """score() of a text's UTF-8 bytes, context_len of them as context. A tokenizer with a
        dummy prefix writes ' ' + text: its rows are Q(' ' text[:i] c) / Q(' ' text[:i])."""
        canonical, prefix = canonical_ids(tokenizer, self.table, text)
        return self.score(prefix + text.encode("utf-8"), len(prefix) + context_len, canonical)

    # ------------------------------------------------------------------ a growing text (generation)

    @torch.inference_mode()
    def open_stream(self, data: bytes, canonical: list[int]) -> _Window:
        """A text that grows byte by byte (generation): the beam after `data` (the prompt as
        the model writes it, dummy prefix included; canonical: its tokenization, the anchor
        while the beam reads the prompt). Then next_rows() and advance(), alternately."""
        w = self._begin(data, 0, canonical, stream=True)
        for i in range(len(data)):
            log_q, nxt, jobs = self._within(w, i)
            made = self._extend_all([(w, P, t) for P, t in jobs])
            self._finish(w, i, log_q, nxt, made)
        w.rows.clear()
        return w

    @torch.inference_mode()
    def next_rows(self, streams: list[_Window]) -> list[torch.Tensor]:
        """log p(· | each stream's text) over the 257 outcomes, [257] float64 each: the
        same sums as a scored byte's row (_within and _finish), without knowing the byte.
        The streams' token extensions run in the same forwards; each stream keeps its own
        for advance()."""
        pending, jobs = [], []
        for w in streams:
            if w.dead:
                pending.append((w, None, len(jobs), 0))
                continue
            log_q, mine = self._stream_within(w)
            pending.append((w, log_q, len(jobs), len(mine)))
            jobs += [(w, P, t) for P, t in mine]
        made = self._extend_all(jobs)
        rows = []
        for w, log_q, lo, n in pending:
            if log_q is None:
                rows.append(torch.full((257,), NEG_INF, dtype=torch.float64))
                continue
            w.made = made[lo:lo + n]
            for Pt in w.made:
                if Pt is not None:
                    self._add_children(log_q, Pt, b"")
                    self._add_end(log_q, Pt)
            rows.append(log_q - torch.logsumexp(log_q, 0))
        return rows

    def _stream_within(self, w: _Window) -> tuple[torch.Tensor, list[tuple[Prefix, int]]]:
        """_within for the byte after the whole text: the masses within the current tokens
        and the token extensions to step (no next byte to advance to yet)."""
        x, i = w.data, len(w.data)
        log_q = torch.full((257,), NEG_INF, dtype=torch.float64)            # [257]
        best = max(P.logp + self._log_w(P, x[j:i]) for P, j in w.beam)
        jobs: list[tuple[Prefix, int]] = []
        for P, j in w.beam:
            r = x[j:i]
            self._add_children(log_q, P, r)
            if not r:
                self._add_end(log_q, P)
            for t in self.trie.exact_ids(r):
                if self.prune > 0 and not self._on_path(w, P, t) \
                        and P.logp + _log(float(P.p[t])) < best + math.log(self.prune):
                    w.stats.skipped_extensions += 1
                    continue
                jobs.append((P, t))
        return log_q, jobs

    def advance(self, w: _Window, c: int) -> None:
        """The text grows by byte c (after next_rows): the beam of the longer text, the K
        heaviest of its hypotheses (no canonical anchor: the text was not tokenized; the
        chosen byte has mass in some hypothesis unless this model rules it out, and then
        the stream is dead: every later row is -inf)."""
        if w.dead:
            return
        i, b = len(w.data), bytes([c])
        cands: list[tuple[float, Prefix, int]] = []
        for P, j in w.beam:                                                 # within the current token
            node = self.trie.node(w.data[j:i] + b)
            if node is not None:
                cands.append((P.logp + P.log_mass(node[0], node[1]), P, j))
        node = self.trie.node(b)
        for Pt in w.made:                                                   # after a token that ends here
            if Pt is not None and node is not None:
                cands.append((Pt.logp + Pt.log_mass(node[0], node[1]), Pt, i))
        w.data += b
        w.made = []
        cands = sorted((cand for cand in cands if cand[0] > NEG_INF), key=lambda cand: -cand[0])
        w.stats.positions += 1
        if not cands:
            w.dead, w.beam = True, []
            return
        w.stats.max_hypotheses = max(w.stats.max_hypotheses, len(cands))
        floor = cands[0][0] + math.log(self.prune) if self.prune > 0 else NEG_INF
        kept = [cand for cand in cands if cand[0] >= floor][: self.beam]
        if len(kept) < len(cands):
            dropped = [cand[0] for cand in cands[len(kept):]]
            w.stats.pruned += len(dropped)
            w.stats.pruned_positions += 1
            share = math.exp(_logsumexp(dropped) - _logsumexp([cand[0] for cand in cands]))
            w.stats.max_pruned_share = max(w.stats.max_pruned_share, share)
        w.beam = [(P, j) for _, P, j in kept]
        for P, _ in w.beam:
            P.own()
