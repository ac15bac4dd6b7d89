"""Where strategies RUN (SPEC §3).

For models m = 1..N at one position: logits z_m over the shared vocabulary,
temperature T_m, y_m = z_m / T_m, p_m = softmax(y_m). Every strategy fuses

    f = Σ_m w_m y_m = Σ_m c_m z_m,    c_m = w_m / T_m,

with per-position weights w (α). PoE fits too: Σ β_m log_softmax(y_m) differs
from Σ β_m y_m by a per-position constant, which the final softmax removes.
So a strategy is only a small function that returns its weights, and one shared
fast path turns coefficients into NLLs:  NLL = -log_softmax(Σ_m c_m z_m)[target].

`mix` is the exception: it mixes probabilities, f = log Σ_m w_m p_m, which is no
linear combination of logits, so its registry entry brings its own NLL function. Its
mixture is normalized already (Σ w = 1), so only its value at the target is needed:

    NLL = -logsumexp_m(log w_m + log_softmax(y_m)[target])

with log_softmax(y_m) computed once per (model, temperature) in float32 blocks of
positions and shared by every mix setting, and the logsumexp over the N models in
float64. A model whose weight is 0 is left out of the sum (log 0 is never added).

Cost model (a sweep is 100 settings over a 50k vocabulary): the fused pass is
K × P × V work and is done in small blocks of (positions × settings) that stay
in cache; everything that depends on a (model, temperature) pair only — entropy,
top-2 gap — is computed once per pair, never per setting; settings with identical
coefficients (poe at its default betas is average) are fused once. The block goes
through torch.log_softmax rather than exp_ + sum under an upper bound: on CPU the
softmax kernels use a faster vectorized exp than exp_, so the exact per-row max
comes for free, nothing can underflow, and negative betas need no special case.
All NLL math is float32 whatever the model dtype; sums are float64.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

# {"id", "type", "temperatures": [N], "betas": [N] | None, "weights": [N] | None} (protocol.ts)
Setting = Mapping[str, Any]


class NumericalError(Exception):
    """NaN or ±inf logits. evaluate.py re-raises it with the model ref and window index."""

    def __init__(self, message: str, model_index: int | None = None, position: int | None = None,
                 model_ref: str | None = None, window: int | None = None):
        super().__init__(message)
        self.message = message
        self.model_index = model_index
        self.position = position
        self.model_ref = model_ref
        self.window = window


@dataclass
class FusionConfig:
    # float32 elements of one fused block ([positions, settings, V]); 4 MB on CPU
    # keeps the logits → log_softmax → gather round trip in L2/L3.
    block_elems: int = 1 << 20

    @staticmethod
    def for_device(device: torch.device | str) -> "FusionConfig":
        device = torch.device(device)
        return FusionConfig(block_elems=1 << 26 if device.type == "cuda" else 1 << 20)


# ----------------------------------------------------------------------------- per (model, T) statistics

class ModelLogits:
    """One model's logits at P positions, and what all its temperatures share."""

    def __init__(self, z: torch.Tensor, vocab: int, cfg: FusionConfig, targets: torch.Tensor | None = None):
        self.z = z                      # [P, V_m] model dtype; the fusion uses [:, :vocab]
        self.vocab = vocab
        self.cfg = cfg
        self.targets = targets          # [P] on z's device (what target_log_prob reads)
        self._stats: dict[float, TempStats] = {}

    @property
    def n_positions(self) -> int:
        return self.z.shape[0]

    @cached_property
    def top2(self) -> tuple[torch.Tensor, torch.Tensor]:
        # top-2 of z/T is top-2 of z (T > 0): one topk per model, whatever the temperatures
        values, index = torch.topk(self.z[:, :self.vocab].float(), 2, dim=-1)  # [P, 2]
        return values, index

    def at(self, temperature: float) -> "TempStats":
        if temperature not in self._stats:
            self._stats[temperature] = TempStats(self, temperature)
        return self._stats[temperature]

    def moments(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position, with d = z - max(z) and e = exp(d / T) over the vocabulary minus
        the top-1 token: eps = Σ e and ed = Σ e·d (float64, CPU, [P]).

        The top-1 term (exactly 1) is left out and added back analytically, so a
        near-one-hot row keeps its tiny entropy instead of rounding 1 + eps to 1.
        """
        values, index = self.top2
        P, V = self.n_positions, self.vocab
        rows = max(1, self.cfg.block_elems // V)
        eps = torch.empty(P, dtype=torch.float32, device=self.z.device)
        ed = torch.empty(P, dtype=torch.float32, device=self.z.device)
        d_buf = torch.empty(min(rows, P), V, dtype=torch.float32, device=self.z.device)
        e_buf = torch.empty_like(d_buf)
        for i in range(0, P, rows):
            b = min(rows, P - i)
            d, e = d_buf[:b], e_buf[:b]
            torch.sub(self.z[i:i + b, :V].float(), values[i:i + b, :1], out=d)     # [b, V] ≤ 0
            torch.mul(d, 1.0 / temperature, out=e).exp_()                          # [b, V]
            e.scatter_(1, index[i:i + b, :1], 0.0)                                 # drop the top-1 term
            eps[i:i + b] = e.sum(-1)                                               # [b]
            ed[i:i + b] = torch.bmm(e.unsqueeze(1), d.unsqueeze(2)).view(b)        # [b] Σ e·d
        return eps.cpu().double(), ed.cpu().double()

    def target_log_prob(self, temperature: float) -> torch.Tensor:
        """log_softmax(z[:, :vocab] / T)[target] per position, [P] float64 CPU, from float32
        blocks of positions ([rows, V] at a time, within the block budget)."""
        if self.targets is None:
            raise ValueError("target_log_prob needs the targets")
        P, V = self.n_positions, self.vocab
        rows = max(1, self.cfg.block_elems // V)
        out = torch.empty(P, dtype=torch.float32, device=self.z.device)
        y_buf = torch.empty(min(rows, P), V, dtype=torch.float32, device=self.z.device)
        l_buf = torch.empty_like(y_buf)
        for i in range(0, P, rows):
            b = min(rows, P - i)
            y, logp = y_buf[:b], l_buf[:b]
            torch.div(self.z[i:i + b, :V].float(), temperature, out=y)             # [b, V] y = z / T
            torch.log_softmax(y, -1, out=logp)                                     # [b, V]
            out[i:i + b] = logp.gather(1, self.targets[i:i + b, None]).view(b)
        return out.cpu().double()


class TempStats:
    """Per-position statistics of p = softmax(z / T) over the shared vocabulary,
    computed on first use (average and poe never ask)."""

    def __init__(self, logits: ModelLogits, temperature: float):
        self.logits = logits
        self.temperature = temperature

    @property
    def n_positions(self) -> int:
        return self.logits.n_positions

    @cached_property
    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits.moments(self.temperature)

    @cached_property
    def entropy(self) -> torch.Tensor:
        """H(p) [P] float64. With s = 1 + eps the softmax denominator (max subtracted):
        H = log s − Σ p (y − y_max) = log1p(eps) − ed / (T s): two non-negative terms."""
        eps, ed = self._moments
        return torch.log1p(eps) - ed / (self.temperature * (1.0 + eps))

    @cached_property
    def top_gap(self) -> torch.Tensor:
        """p(top-1) − p(top-2) [P] float64 = (1 − exp((z2 − z1) / T)) / s."""
        eps, _ = self._moments
        values, _ = self.logits.top2
        d2 = (values[:, 1] - values[:, 0]).cpu().double()                 # [P] ≤ 0
        return -torch.expm1(d2 / self.temperature) / (1.0 + eps)

    @cached_property
    def target_log_prob(self) -> torch.Tensor:
        """log p(target) [P] float64: what mix reads, once per (model, temperature)."""
        return self.logits.target_log_prob(self.temperature)

    @cached_property
    def log_probs(self) -> torch.Tensor:
        """log_softmax(z[:, :vocab] / T) [P, V] float32: the whole row (generation's few positions)."""
        return torch.log_softmax(self.logits.z[:, :self.logits.vocab].float() / self.temperature, -1)


# ----------------------------------------------------------------------------- strategies: weights only

WeightFn = Callable[[list[TempStats], Setting], torch.Tensor]   # -> α [P, N] float64


def _normalize(raw: torch.Tensor) -> torch.Tensor:
    """Rows of raw [P, N] scaled to sum 1; an all-zero row gets equal weights."""
    total = raw.sum(1, keepdim=True)                                       # [P, 1]
    equal = torch.full_like(raw, 1.0 / raw.shape[1])
    return torch.where(total > 0, raw / total.clamp_min(torch.finfo(raw.dtype).tiny), equal)


def average(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    n = len(stats)
    return torch.full((stats[0].n_positions, n), 1.0 / n, dtype=torch.float64)


def poe(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    # Σ β_m log_softmax(y_m), renormalized by the final softmax (SPEC §3): static weights β
    # the controller resolves the default (1/N each): a setting always carries its betas
    return torch.tensor(setting["betas"], dtype=torch.float64).expand(stats[0].n_positions, len(stats))


def entropy(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    h = torch.stack([s.entropy for s in stats], 1)                         # [P, N]
    return _normalize(1.0 / (h + 1e-9))


def gap(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    return _normalize(torch.stack([s.top_gap for s in stats], 1))          # [P, N]


def _shares(values: Sequence[float]) -> torch.Tensor:
    """Static per-model weights scaled to sum 1 [N] float64 (check_settings has made sure
    they are ≥ 0 with a positive sum)."""
    w = torch.tensor(values, dtype=torch.float64)
    return w / w.sum()


def mix_weights(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    # the mixture's weights, normalized to sum 1 (SPEC §3: log Σ w_m p_m); the controller
    # resolves the default (1/N each) and sends them as written
    return _shares(setting["weights"]).expand(stats[0].n_positions, len(stats))


def mix_nll(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    """-log Σ_m w_m p_m(target) [P] float64 = -logsumexp_m(log w_m + log p_m(target)).
    Models with w_m = 0 are left out: they have no say, and cost nothing."""
    w = _shares(setting["weights"])
    say = [m for m in range(len(stats)) if w[m] > 0]
    terms = torch.stack([stats[m].target_log_prob + math.log(float(w[m])) for m in say], 1)   # [P, N']
    return -torch.logsumexp(terms, 1)


def mix_log_probs(stats: list[TempStats], setting: Setting) -> torch.Tensor:
    """The whole mixture, log Σ_m w_m p_m over the vocabulary [P, V] float64 (what
    generation samples from; mix_nll is its value at the targets, without building it)."""
    w = _shares(setting["weights"])
    say = [m for m in range(len(stats)) if w[m] > 0]
    terms = torch.stack([stats[m].log_probs.double() + math.log(float(w[m])) for m in say], 1)   # [P, N', V]
    return torch.logsumexp(terms, 1)


NllFn = Callable[[list[TempStats], Setting], torch.Tensor]     # -> fused NLL [P] float64
LogProbsFn = Callable[[list[TempStats], Setting], torch.Tensor]   # -> fused log p [P, V]


@dataclass(frozen=True)
class Strategy:
    """A registry entry: the weight function, and the per-model list parameters (beyond
    `temperatures`, which every strategy takes) that it reads from a setting. `nll`: a
    strategy that is not a weighted sum of logits (mix) brings its own fused NLL; the
    others go through the shared fast path."""
    weights: WeightFn
    params: tuple[str, ...] = ()
    nll: NllFn | None = None
    log_probs: LogProbsFn | None = None     # with nll: the whole fused distribution (generation)


# The one place a strategy is declared on this side (its parameters' defaults and
# config schema live in src/strategies.ts). A new strategy whose parameters are
# per-model lists of numbers needs nothing here but its entry.
STRATEGIES: dict[str, Strategy] = {
    "average": Strategy(average),
    "poe": Strategy(poe, params=("betas",)),
    "entropy": Strategy(entropy),
    "gap": Strategy(gap),
    "mix": Strategy(mix_weights, params=("weights",), nll=mix_nll, log_probs=mix_log_probs),
}
_FIXED_FIELDS = ("id", "type", "temperatures")


def _static_shares_problem(values: list[float]) -> str | None:
    if any(x < 0 for x in values):
        return f"must be >= 0, got {values}"
    if not any(x > 0 for x in values):
        return f"need at least one > 0, got {values}"
    if not math.isfinite(sum(values)):
        return f"must have a finite sum, got {values}"
    return None


# What each kind of per-model list must be as a whole, beyond one finite number per model
# (src/strategies.ts LIST_PARAMS `problem` says the same to the user, earlier). Betas may
# be anything finite here: a negative beta is well defined in token space (byte space
# refuses it, byte_eval.check_byte_settings). Mixture weights are probabilities' weights.
LIST_CHECKS: dict[str, Callable[[list[float]], str | None]] = {
    "betas": lambda values: None,
    "weights": _static_shares_problem,
}


def _number_per_model(s: Setting, key: str, n_models: int, name: str) -> list[float]:
    value = s.get(key)
    if (not isinstance(value, (list, tuple)) or len(value) != n_models
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)):
        raise ValueError(f"setting {name}: {key} must list one finite number per model ({n_models}), got {value!r}")
    return list(value)


def check_settings(settings: Sequence[Setting], n_models: int) -> None:
    """ValueError naming the setting and the field unless every setting has a known type;
    `temperatures` (each > 0) and every parameter its strategy declares are lists of
    n_models finite numbers; and any other field is null or absent."""
    for s in settings:
        name = s.get("id", s.get("type"))
        kind = s.get("type")
        strategy = STRATEGIES.get(kind) if isinstance(kind, str) else None
        if strategy is None:
            raise ValueError(f"setting {name}: unknown strategy type {kind!r} (known: {', '.join(STRATEGIES)})")
        temps = _number_per_model(s, "temperatures", n_models, name)
        if not all(t > 0 for t in temps):
            raise ValueError(f"setting {name}: temperatures must be > 0, got {temps}")
        for key in strategy.params:
            problem = LIST_CHECKS[key](_number_per_model(s, key, n_models, name))
            if problem:
                raise ValueError(f"setting {name}: {key} {problem}")
        for key, value in s.items():
            if key not in _FIXED_FIELDS and key not in strategy.params and value is not None:
                takes = " and ".join(("temperatures", *strategy.params))
                raise ValueError(f"setting {name}: {kind} takes no {key} (only {takes}), got {value!r}")


# ----------------------------------------------------------------------------- the shared fast path

def base_nll(z: torch.Tensor, targets: torch.Tensor, model_index: int, cfg: FusionConfig) -> torch.Tensor:
    """-log_softmax(z)[target] at T = 1 over the model's whole output layer; [P] float64 CPU.
    Also the finiteness check: NaN/inf anywhere in a row raises NumericalError."""
    P, V = z.shape
    rows = max(1, cfg.block_elems // V)
    out = torch.empty(P, dtype=torch.float32, device=z.device)
    l_buf = torch.empty(min(rows, P), V, dtype=torch.float32, device=z.device)
    for i in range(0, P, rows):
        b = min(rows, P - i)
        zb = z[i:i + b].float()                                            # [b, V] (a view if float32)
        # a row sum is finite iff every logit is (NaN and ±inf propagate); far cheaper than isfinite
        finite = torch.isfinite(zb.sum(-1))                                # [b]
        if not bool(finite.all()):
            row = i + int((~finite).nonzero()[0])
            raise NumericalError(f"model {model_index}: non-finite logits at position {row}",
                                 model_index=model_index, position=row)
        logp = l_buf[:b]
        torch.log_softmax(zb, -1, out=logp)                                # [b, V]
        out[i:i + b] = -logp.gather(1, targets[i:i + b, None]).view(b)
    return out.cpu().double()


def fused_nll(zs: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int, coef: torch.Tensor,
              cfg: FusionConfig) -> torch.Tensor:
    """-log_softmax(Σ_m coef[p, k, m] z_m[p, :vocab])[target[p]] for every position p and
    setting k; coef [P, K, N] float32 on the logits' device. Returns [K, P] float64 CPU.

    Never materializes K × P × V: blocks of (b positions × kk settings) go through
    bmm → log_softmax → gather while they are still in cache. log_softmax keeps
    the exact max per row, so large logits and negative coefficients are safe.
    """
    P, K, N = coef.shape
    device = zs[0].device
    rows = max(1, cfg.block_elems // vocab)        # (position, setting) rows per block
    bk = min(K, rows)
    bp = min(P, max(1, rows // bk))
    z_buf = torch.empty(bp, N, vocab, dtype=torch.float32, device=device)
    f_buf = torch.empty(bp * bk * vocab, dtype=torch.float32, device=device)
    l_buf = torch.empty_like(f_buf)
    out = torch.empty(P, K, dtype=torch.float32, device=device)
    for i in range(0, P, bp):
        b = min(bp, P - i)
        zb = z_buf[:b]                                                     # [b, N, V]
        for m, z in enumerate(zs):
            zb[:, m].copy_(z[i:i + b, :vocab])                             # cast to float32 here
        idx = targets[i:i + b].view(b, 1, 1)
        for k in range(0, K, bk):
            kk = min(bk, K - k)
            f = f_buf[:b * kk * vocab].view(b, kk, vocab)
            torch.bmm(coef[i:i + b, k:k + kk], zb, out=f)                  # [b, kk, V] fused logits
            logp = l_buf[:b * kk * vocab].view(b * kk, vocab)
            torch.log_softmax(f.view(b * kk, vocab), -1, out=logp)         # [b·kk, V]
            out[i:i + b, k:k + kk] = -logp.view(b, kk, vocab).gather(2, idx.expand(b, kk, 1)).view(b, kk)
    return out.t().cpu().double()                                          # [K, P]


def fused_log_probs(logits: Sequence[torch.Tensor], vocab: int, setting: Setting,
                    cfg: FusionConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One setting's whole fused distribution at P positions (generation): log p [P, vocab]
    and the weights α [P, N] float64. The same weights as evaluation (the registry's
    functions on the same per-(model, T) statistics) and, for the rules f = Σ c_m z_m,
    the same fused logits by the same bmm as fused_nll; a strategy with its own NLL (mix)
    brings its own log_probs. The setting is trusted (check_settings first)."""
    device = logits[0].device
    cfg = cfg or FusionConfig.for_device(device)
    views = [ModelLogits(z, vocab, cfg) for z in logits]
    try:
        temps = [float(t) for t in setting["temperatures"]]
        strategy = STRATEGIES[setting["type"]]
        stats = [v.at(t) for v, t in zip(views, temps)]
        alpha = strategy.weights(stats, setting)                                          # [P, N]
        if strategy.nll is not None:
            return strategy.log_probs(stats, setting).float(), alpha
        coef = (alpha / torch.tensor(temps, dtype=torch.float64)).float().to(device)      # [P, N]
        zb = torch.stack([z[:, :vocab].float() for z in logits], 1)                       # [P, N, V]
        f = torch.bmm(coef.unsqueeze(1), zb).squeeze(1)                                   # [P, V] fused logits
        return torch.log_softmax(f, -1), alpha
    finally:
        for v in views:
            v._stats.clear()


@dataclass
class PositionScores:
    model_nll: torch.Tensor    # [N, P] float64: each model alone, T = 1, whole output layer
    fusion_nll: torch.Tensor   # [K, P] float64: per setting
    weights: torch.Tensor      # [K, P, N] float64: α per setting, position and model


@dataclass
class ChunkSums:
    positions: int
    model_nll: torch.Tensor       # [N] float64 Σ over positions
    fusion_nll: torch.Tensor      # [K] float64
    fusion_weights: torch.Tensor  # [K, N] float64 Σ α


def score_each_position(logits: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int,
                        settings: Sequence[Setting], cfg: FusionConfig | None = None) -> PositionScores:
    """Per-position NLLs of every model and every setting from the same logits.
    logits: one [P, V_m] tensor per model (V_m ≥ vocab, any float dtype, one device);
    targets: [P] token ids < vocab. Checks the settings first (check_settings)."""
    check_settings(settings, len(logits))
    return _each_position(logits, targets, vocab, settings, cfg)


def score_positions(logits: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int,
                    settings: Sequence[Setting], cfg: FusionConfig | None = None) -> ChunkSums:
    """Sums over positions of score_each_position (what evaluate accumulates)."""
    check_settings(settings, len(logits))
    return score_chunk(logits, targets, vocab, settings, cfg)


def score_chunk(logits: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int,
                settings: Sequence[Setting], cfg: FusionConfig | None = None) -> ChunkSums:
    """score_positions for a caller that has checked the settings once already
    (evaluate, for each chunk of each batch): it trusts them."""
    s = _each_position(logits, targets, vocab, settings, cfg)
    return ChunkSums(positions=int(targets.shape[0]), model_nll=s.model_nll.sum(1),
                     fusion_nll=s.fusion_nll.sum(1), fusion_weights=s.weights.sum(1))


def _each_position(logits: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int,
                   settings: Sequence[Setting], cfg: FusionConfig | None) -> PositionScores:
    n = len(logits)
    if any(z.shape[1] < vocab for z in logits):
        raise ValueError(f"every model needs at least {vocab} output rows, got {[z.shape[1] for z in logits]}")
    device = logits[0].device
    cfg = cfg or FusionConfig.for_device(device)
    targets = targets.to(device)
    P = targets.shape[0]

    base = torch.stack([base_nll(z, targets, m, cfg) for m, z in enumerate(logits)])    # [N, P]
    if not settings:
        return PositionScores(model_nll=base, fusion_nll=torch.zeros(0, P, dtype=torch.float64),
                              weights=torch.zeros(0, P, n, dtype=torch.float64))
    alphas, coefs, own = _weights(logits, targets, vocab, settings, cfg)                 # per setting
    fused = torch.empty(len(settings), P, dtype=torch.float64)                           # [K, P]
    for k, nll in own.items():                                                           # mix: its own path
        fused[k] = nll
    linear = [k for k in range(len(settings)) if k not in own]
    if linear:
        # settings with identical coefficients share one fused pass: e.g. poe with betas
        # 1/N IS average, so a sweep over both does that half of its work once
        unique: dict[bytes, int] = {}
        slot = [unique.setdefault(coefs[k].numpy().tobytes(), len(unique)) for k in linear]   # [K_linear]
        distinct = [coefs[linear[slot.index(u)]] for u in range(len(unique))]
        coef = torch.stack(distinct, 1).float().to(device)                               # [P, U, N]
        fused[linear] = fused_nll(logits, targets, vocab, coef, cfg)[slot]                # [K_linear, P]
    return PositionScores(model_nll=base, fusion_nll=fused, weights=torch.stack(alphas))  # weights [K, P, N]


def _weights(logits: Sequence[torch.Tensor], targets: torch.Tensor, vocab: int, settings: Sequence[Setting],
             cfg: FusionConfig) -> tuple[list[torch.Tensor], list[torch.Tensor | None], dict[int, torch.Tensor]]:
    """Per setting: α [P, N]; for the fast path the coefficients c = α / T [P, N] (float64,
    CPU), for a strategy with its own NLL (mix) None, its fused NLL [P] going into the dict
    under the setting's index. What a (model, temperature) pair needs is computed once."""
    views = [ModelLogits(z, vocab, cfg, targets) for z in logits]
    alphas: list[torch.Tensor] = []
    coefs: list[torch.Tensor | None] = []
    own: dict[int, torch.Tensor] = {}
    try:
        for k, s in enumerate(settings):
            temps = [float(t) for t in s["temperatures"]]
            strategy = STRATEGIES[s["type"]]
            stats = [v.at(t) for v, t in zip(views, temps)]
            alphas.append(strategy.weights(stats, s))                                      # [P, N]
            if strategy.nll is not None:
                own[k] = strategy.nll(stats, s)                                            # [P]
                coefs.append(None)
            else:
                coefs.append(alphas[-1] / torch.tensor(temps, dtype=torch.float64))        # [P, N]
    finally:
        # TempStats points back at its ModelLogits: break the cycle now, or each chunk's
        # logits live until the cyclic GC runs and peak memory grows with the text.
        for v in views:
            v._stats.clear()
    return alphas, coefs, own
