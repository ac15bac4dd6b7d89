"""Fitting fusion rules on a dev text (`kotara fit`, the `fit` request; docs/fitting.md).

One pass over the dev text's windows (the evaluation pass itself: every model once per
window, the request's settings scored as usual) hands each chunk of scored positions to
a Collector, which keeps what the optimizers need. Then, in this process, nothing but
the kept data:

**mix**, f = log Σ_m w_m p_m(T_m). For fixed temperatures the dev NLL
    L(w) = -Σ_p log Σ_m w_m p_m(y_p)
needs only p_m(y_p), each model's probability of the text's token: P × N floats.
EM: responsibilities r_pm = w_m p_pm / Σ_k w_k p_pk, then w_m ← mean_p r_pm. EM never
raises L (it is the EM of a mixture whose components are fixed), and its fixed points
are the optimum: L is convex in w, and with s_m = mean_p p_pm / Σ_k w_k p_pk the
optimality condition on the simplex is s_m ≤ 1 for every m, = 1 where w_m > 0. Since
Σ_m w_m s_m = 1 always, max_m s_m − 1 ≥ 0 is the Frank-Wolfe gap of the mean NLL: it
bounds how far the mean dev NLL is above its optimum over w (the certificate EM stops
on). The temperatures: each model's p_m(y) is collected at every temperature of a grid
(`mix_temperatures`), and a coordinate search over the grid (one model at a time, every
grid value, EM to convergence at each, warm-started) keeps a change when it lowers L.
Every step lowers L or keeps it: the result is EM-optimal weights at a grid point that
no single-model change of temperature improves.

**loglinear**, f = Σ_m c_m z_m (c_m = w_m / T_m: average, poe, entropy and gap are this
rule with fixed or per-position coefficients). The dev NLL
    L(c) = Σ_p [ logsumexp_v Σ_m c_m z_{m,p,v} − Σ_m c_m z_{m,p,y_p} ]
is convex in c: its Hessian Σ_p Cov_{softmax(f_p)}(z_p) is a sum of covariance matrices.
Gradient and Hessian need E_q[z_m] and Cov_q(z_m, z_n) over the whole vocabulary at
every position, hence every model's logits at every dev position: they are KEPT
(float32, [P, V] per model, on the fusion device: N × P × V × 4 bytes; 2 × 16,968 × 2,048
× 4 B = 278 MB for the demo) and refused above `memory_budget_bytes` before the pass
starts. Newton's method (N parameters: an N × N system) with a backtracking (Armijo)
line search, under c_m ≥ lower (0 in token space; 1e-12 in byte space, see below):
a coefficient at its bound whose gradient points outward is held there (projected
Newton); it stops when the projected gradient of the mean NLL per position is below
`tolerance` (∞-norm), and reports the iterations. Objective, gradient and Hessian are
float64, summed over blocks of positions (the block's [b, N, V] float64 copy, 4 MiB, and
a few arrays of its size are the only working memory: ≈ 30 MB measured on the demo).
c ≥ 0 because the fitted rule must
be a config strategy that `kotara run` accepts: poe with temperatures 1 and betas = c
is exactly this rule (Σ β_m log_softmax(z_m) = Σ β_m z_m − a per-position constant,
which the softmax removes), and a config's betas are ≥ 0. In byte space z_m are the
257-way log-probabilities l_m (a byte a model rules out is LOG_FLOOR there, as in
byte_eval); any coefficient ≥ 1e-12 keeps such a byte at probability exactly 0 (c ·
-1e30 underflows), so L is smooth and convex on c ≥ 1e-12, where at c_m = 0 the model,
and its zeros, would drop out.

Dev numbers of the fitted settings are computed by the evaluation's own code on the
kept data (fusion.fused_nll on the same chunks for the log-linear rule, the mix
registry entry's NLL on the collected target log-probabilities), so they are what
`kotara run` reports for the written config on the dev text, up to float32 rounding
of a different block layout.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from .fusion import STRATEGIES, FusionConfig, ModelLogits, Setting, fused_nll

MIX = "mix"
LOGLINEAR = "loglinear"
KINDS = (LOGLINEAR, MIX)
BYTE_SPACE_LOWER = 1e-12     # the least coefficient of the log-linear rule in byte space (module docstring)
FLOAT32 = 4


class FitError(ValueError):
    """A fit the worker refuses (the server answers bad_request with the message)."""


@dataclass(frozen=True)
class FitOptions:
    """What a fit request asks for (protocol.ts FitOptions)."""
    fits: tuple[str, ...] = KINDS
    mix_temperatures: tuple[float, ...] = (1.0,)    # the grid of the mix temperatures (1 is always in it)
    memory_budget_bytes: int = 1 << 30              # the kept logits of the log-linear fit may take at most this
    max_iterations: int = 50                        # Newton iterations
    tolerance: float = 1e-6                         # ∞-norm of the projected gradient of the mean NLL
    em_max_iterations: int = 20_000                 # per EM run
    em_tolerance: float = 1e-9                      # the EM runs stop at this Frank-Wolfe gap (mean nats)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "FitOptions":
        o = FitOptions(tuple(d["fits"]), tuple(float(t) for t in d["mix_temperatures"]), int(d["memory_budget_bytes"]),
                       int(d["max_iterations"]), float(d["tolerance"]), int(d["em_max_iterations"]),
                       float(d["em_tolerance"]))
        o.check()
        return o

    def check(self) -> None:
        if not self.fits or any(k not in KINDS for k in self.fits) or len(set(self.fits)) != len(self.fits):
            raise FitError(f"fits must list each of {', '.join(KINDS)} at most once, got {list(self.fits)}")
        if not self.mix_temperatures or not all(math.isfinite(t) and t > 0 for t in self.mix_temperatures):
            raise FitError(f"mix_temperatures must be > 0, got {list(self.mix_temperatures)}")
        if self.memory_budget_bytes < 0 or self.max_iterations < 1 or self.em_max_iterations < 1 \
                or not self.tolerance > 0 or not self.em_tolerance > 0:
            raise FitError("memory_budget_bytes must be >= 0, the iteration limits >= 1 and the tolerances > 0")

    @property
    def temperature_grid(self) -> list[float]:
        return sorted(set(self.mix_temperatures) | {1.0})


def kept_logits_bytes(n_models: int, positions: int, vocab: int) -> int:
    """What the log-linear fit keeps: every model's float32 logits over the fused vocabulary at every position."""
    return n_models * positions * vocab * FLOAT32


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@dataclass
class Chunk:
    start: int
    stop: int


class Collector:
    """What one pass over the dev windows leaves for the optimizers. `add` is the pass's
    collect hook: per chunk of scored positions, each model's logits [p, V_m] (the fusion
    reads [:, :vocab]), the targets [p] and each position's window index [p].

    Keeps, for P positions and N models: the target log-probabilities at every
    temperature of the mix grid ([N, G, P] float64, from fusion.ModelLogits, as the
    evaluation's mix computes them), and for the log-linear fit each model's logits
    over the fused vocabulary ([P, vocab] float32, on the fusion device)."""

    def __init__(self, n_models: int, vocab: int, positions: int, options: FitOptions, device: torch.device | str,
                 cfg: FusionConfig | None = None):
        self.n_models, self.vocab, self.positions, self.options = n_models, vocab, positions, options
        self.device = torch.device(device)
        self.cfg = cfg or FusionConfig.for_device(self.device)
        self.temperatures = options.temperature_grid
        self.keep = LOGLINEAR in options.fits
        need = kept_logits_bytes(n_models, positions, vocab) if self.keep else 0
        if need > options.memory_budget_bytes:
            fits = max(0, options.memory_budget_bytes // (n_models * vocab * FLOAT32))
            raise FitError(
                f"the log-linear fit keeps every model's logits at every dev position: {positions:,} positions × "
                f"{n_models} models × {vocab:,} logits × 4 bytes = {_mib(need)}, over the memory budget of "
                f"{_mib(options.memory_budget_bytes)}; use a shorter dev text (at most {fits:,} scored positions fit), "
                "or raise the budget (kotara fit --memory-budget MIB), or fit mix only (kotara fit --fits mix: "
                f"its EM keeps {n_models} × {len(self.temperatures)} numbers per position)")
        self.kept_bytes = need + n_models * len(self.temperatures) * positions * 8 + positions * 16
        self.z = [torch.empty(positions, vocab, dtype=torch.float32, device=self.device) for _ in range(n_models)] \
            if self.keep else []
        self.logp = torch.empty(n_models, len(self.temperatures), positions, dtype=torch.float64)   # [N, G, P]
        self.targets = torch.empty(positions, dtype=torch.long)
        self.window = torch.empty(positions, dtype=torch.long)
        self.chunks: list[Chunk] = []
        self.filled = 0

    def add(self, logits: Sequence[torch.Tensor], targets: torch.Tensor, windows: torch.Tensor) -> None:
        p = int(targets.numel())
        i = self.filled
        if i + p > self.positions:
            raise AssertionError(f"the pass scored more than the {self.positions} positions planned")
        on_device = targets.to(logits[0].device)
        for m, z in enumerate(logits):
            view = ModelLogits(z, self.vocab, self.cfg, on_device)
            for g, t in enumerate(self.temperatures):
                self.logp[m, g, i:i + p] = view.target_log_prob(t)
            if self.keep:
                self.z[m][i:i + p].copy_(z[:, :self.vocab])              # float32, as fused_nll reads them
        self.targets[i:i + p] = targets.cpu()
        self.window[i:i + p] = windows.cpu()
        self.chunks.append(Chunk(i, i + p))
        self.filled = i + p

    def mark(self) -> tuple[int, int]:
        """A point to roll back to (evaluate: a batch that ran out of memory is scored again;
        the positions it filled are then written again)."""
        return self.filled, len(self.chunks)

    def rollback(self, mark: tuple[int, int]) -> None:
        self.filled = mark[0]
        del self.chunks[mark[1]:]

    def check_complete(self) -> None:
        if self.filled != self.positions:
            raise AssertionError(f"the pass scored {self.filled} positions, {self.positions} were planned")


# ----------------------------------------------------------------------------- mix: EM

@dataclass
class EmRun:
    weights: torch.Tensor        # [N] float64, sum 1
    nll: float                   # Σ dev NLL (nats) at the weights
    iterations: int
    gap: float                   # max_m s_m − 1 at the weights: the mean NLL is within this of its optimum over w
    history: list[float]         # mean NLL before each update (monotone non-increasing), then at the end


def em(log_p: torch.Tensor, w0: torch.Tensor, max_iterations: int, tolerance: float) -> EmRun:
    """EM for the weights of a mixture of fixed components. log_p [N, P] float64: each
    component's log-probability of the text at every position; w0 [N] > 0 where a model
    may take part. Stops when the Frank-Wolfe gap max_m s_m − 1 is at most `tolerance`."""
    n, P = log_p.shape
    w = (w0 / w0.sum()).double()
    history: list[float] = []
    iterations = 0
    while True:
        with torch.no_grad():
            a = log_p + torch.log(w)[:, None]                          # [N, P] log w_m p_pm (−inf where w_m = 0)
            lse = torch.logsumexp(a, 0)                                # [P] log of the mixture at the text
            nll = -float(lse.sum())
            s = torch.exp(log_p - lse).mean(1)                         # [N] mean_p p_pm / mix_p
            gap = float(s.max()) - 1.0
        history.append(nll / P)
        if gap <= tolerance or iterations >= max_iterations:
            return EmRun(w, nll, iterations, gap, history)
        w = torch.exp(a - lse).mean(1)                                 # responsibilities, averaged
        w = w / w.sum()
        iterations += 1


@dataclass
class FitResult:
    kind: str
    setting: dict                # the fitted rule as a wire Setting
    iterations: int              # Newton iterations; EM: every iteration of every run
    evaluations: int             # passes over the kept logits (Newton: objective evaluations); EM: runs
    converged: bool
    gradient_norm: float         # loglinear: ∞-norm of the projected gradient (mean NLL); mix: the EM gap
    history: list[float]         # mean dev NLL per Newton iteration / per coordinate-search round
    coefficients: list[float]    # loglinear: c; mix: w
    at_bound: list[bool]         # loglinear: c_m held at its lower bound; mix: w_m = 0
    note: str | None = None
    position_nll: torch.Tensor | None = field(default=None, repr=False)   # [P] float64: the fitted setting's dev NLL

    def to_dict(self) -> dict:
        return {"kind": self.kind, "setting": self.setting, "iterations": self.iterations,
                "evaluations": self.evaluations, "converged": self.converged,
                "gradient_norm": float(self.gradient_norm), "history": [float(x) for x in self.history],
                "coefficients": [float(x) for x in self.coefficients], "at_bound": list(self.at_bound),
                "note": self.note}


def mix_setting(temperatures: Sequence[float], weights: Sequence[float], n_models: int) -> dict:
    return {"id": "fitted-mix", "type": "mix", "temperatures": [float(t) for t in temperatures], "betas": None,
            "weights": [float(w) for w in weights]}


def poe_setting(coefficients: Sequence[float]) -> dict:
    return {"id": "fitted-poe", "type": "poe", "temperatures": [1.0] * len(coefficients),
            "betas": [float(c) for c in coefficients], "weights": None}


def mix_position_nll(logp_at: torch.Tensor, setting: Setting) -> torch.Tensor:
    """The mix setting's per-position NLL by the registry's own function (fusion.mix_nll)
    on collected target log-probabilities logp_at [N, P] (one row per model, at its T)."""
    stats = [SimpleNamespace(target_log_prob=logp_at[m]) for m in range(logp_at.shape[0])]
    return STRATEGIES["mix"].nll(stats, setting)


def fit_mix(c: Collector, options: FitOptions, should_stop: Callable[[], bool] = lambda: False) -> FitResult:
    """EM on the weights at T = 1, then a coordinate search of the temperatures over the
    grid (each trial: EM to convergence, warm-started from the current weights)."""
    grid = c.temperatures
    n = c.n_models
    at = [grid.index(1.0)] * n

    def run(choice: list[int], w0: torch.Tensor) -> EmRun:
        log_p = torch.stack([c.logp[m, g] for m, g in enumerate(choice)])          # [N, P]
        return em(log_p, w0, options.em_max_iterations, options.em_tolerance)

    best = run(at, torch.full((n,), 1.0 / n, dtype=torch.float64))
    iterations, runs, converged = best.iterations, 1, best.gap <= options.em_tolerance
    history = [best.nll / c.positions]
    improved = len(grid) > 1
    rounds = 0
    while improved and rounds < 20:
        improved = False
        rounds += 1
        for m in range(n):
            for g in range(len(grid)):
                if g == at[m]:
                    continue
                if should_stop():
                    raise Interrupted()
                trial = at.copy()
                trial[m] = g
                r = run(trial, best.weights)
                iterations += r.iterations
                runs += 1
                # keep a change only when it lowers L by more than the EM tolerance can account for
                if r.nll < best.nll - options.em_tolerance * c.positions:
                    best, at, improved = r, trial, True
                    converged = r.gap <= options.em_tolerance
        history.append(best.nll / c.positions)
    temps = [grid[g] for g in at]
    setting = mix_setting(temps, best.weights.tolist(), n)
    logp_at = torch.stack([c.logp[m, g] for m, g in enumerate(at)])
    note = None if converged else f"EM stopped at {options.em_max_iterations} iterations (gap {best.gap:.2e})"
    return FitResult(MIX, setting, iterations, runs, converged, best.gap, history, best.weights.tolist(),
                     [bool(w == 0) for w in best.weights.tolist()], note, mix_position_nll(logp_at, setting))


# ----------------------------------------------------------------------------- log-linear: Newton

class Interrupted(Exception):
    """should_stop() said so during the fit (the server answers cancelled)."""


def _block_rows(n_models: int, vocab: int, budget_elems: int = 1 << 19) -> int:
    return max(1, budget_elems // (n_models * vocab))


def loglinear_objective(z: Sequence[torch.Tensor], targets: torch.Tensor, c: torch.Tensor, order: int = 2,
                        rows: int | None = None) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """L(c) = Σ_p [logsumexp_v Σ_m c_m z_m − Σ_m c_m z_m[y_p]] (float64), and for order ≥ 1
    its gradient Σ_p (E_q[z_m] − z_m[y_p]) [N], for order 2 its Hessian Σ_p Cov_q(z_p) [N, N]
    (q = softmax(f_p)), in blocks of positions. z: N tensors [P, V] (any float dtype)."""
    n, (P, V) = len(z), z[0].shape
    device = z[0].device
    rows = rows or _block_rows(n, V)
    cd = c.to(device=device, dtype=torch.float64)
    t_all = targets.to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    grad = torch.zeros(n, dtype=torch.float64, device=device) if order >= 1 else None
    hess = torch.zeros(n, n, dtype=torch.float64, device=device) if order >= 2 else None
    for i in range(0, P, rows):
        b = min(rows, P - i)
        zb = torch.stack([x[i:i + b] for x in z], 1).double()                  # [b, N, V]
        f = torch.einsum("n,bnv->bv", cd, zb)                                  # [b, V] fused logits
        lse = torch.logsumexp(f, 1)                                            # [b]
        zt = zb.gather(2, t_all[i:i + b].view(b, 1, 1).expand(b, n, 1)).squeeze(2)   # [b, N] z at the target
        total += (lse - zt @ cd).sum()
        if order >= 1:
            q = torch.exp(f - lse[:, None])                                    # [b, V]
            mean = torch.bmm(zb, q.unsqueeze(2)).squeeze(2)                    # [b, N] E_q[z_m]
            grad += (mean - zt).sum(0)
            if order >= 2:
                d = zb - mean.unsqueeze(2)                                     # [b, N, V] centred
                hess += torch.bmm(d * q.unsqueeze(1), d.transpose(1, 2)).sum(0)   # Σ_v q d_m d_n
    return float(total), (grad.cpu() if grad is not None else None), (hess.cpu() if hess is not None else None)


def _newton_direction(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The Newton step -H⁺ g over the eigenvalues of H above 1e-10 × its largest (H is a sum
    of covariances: positive semi-definite; two identical models make it singular, and the
    objective is flat along their difference: no step goes there), plus a gradient step,
    scaled by 1 / the largest eigenvalue, for what of g lies in the discarded directions
    (where L is linear: only the line search can say how far)."""
    evals, evecs = torch.linalg.eigh(0.5 * (h + h.T))
    top = float(evals.max()) if evals.numel() else 0.0
    if not top > 0:
        return -g
    keep = evals > 1e-10 * top
    v = evecs[:, keep]
    g_kept = v.T @ g
    step = -(v @ (g_kept / evals[keep]))
    return step - (g - v @ g_kept) / top


@dataclass
class NewtonRun:
    c: torch.Tensor
    nll: float
    iterations: int
    evaluations: int
    converged: bool
    gradient_norm: float
    history: list[float]
    at_bound: list[bool]
    note: str | None


def newton(z: Sequence[torch.Tensor], targets: torch.Tensor, lower: float, options: FitOptions,
           c0: torch.Tensor | None = None, should_stop: Callable[[], bool] = lambda: False,
           rows: int | None = None) -> NewtonRun:
    """Projected Newton with backtracking on the mean dev NLL over c ≥ lower (module docstring)."""
    n, P = len(z), int(targets.numel())
    c = (c0.clone().double() if c0 is not None else torch.full((n,), 1.0 / n, dtype=torch.float64)).clamp(min=lower)
    history: list[float] = []
    evaluations, it, note = 0, 0, None
    while True:
        if should_stop():
            raise Interrupted()
        total, g, h = loglinear_objective(z, targets, c, 2, rows)
        evaluations += 1
        nll, g, h = total / P, g / P, h / P
        history.append(nll)
        free = (c > lower) | (g < 0)                                          # held at the bound: c = lower, g ≥ 0
        pg = torch.where(free, g, torch.zeros_like(g))
        norm = float(pg.abs().max())
        if norm <= options.tolerance:
            return NewtonRun(c, total, it, evaluations, True, norm, history, (~free).tolist(), None)
        if it >= options.max_iterations:
            note = f"stopped after {it} iterations (max_iterations) with |∇| = {norm:.2e}"
            return NewtonRun(c, total, it, evaluations, False, norm, history, (~free).tolist(), note)
        idx = free.nonzero().view(-1)
        d = torch.zeros(n, dtype=torch.float64)
        d[idx] = _newton_direction(g[idx], h[idx][:, idx])
        step, accepted = 1.0, False
        while step >= 1e-12:
            c_new = (c + step * d).clamp(min=lower)
            new_total, _, _ = loglinear_objective(z, targets, c_new, 0, rows)
            evaluations += 1
            if new_total / P <= nll + 1e-4 * float(g @ (c_new - c)):           # Armijo on the projected step
                accepted = True
                break
            step *= 0.5
        it += 1
        if not accepted:
            # no decrease along Newton's direction at any step: L is at its floating-point floor here
            note = f"the line search found no decrease after {it} iterations (|∇| = {norm:.2e}): at float64 precision"
            return NewtonRun(c, total, it, evaluations, norm <= 1e3 * options.tolerance, norm, history,
                             (~free).tolist(), note)
        c = c_new


def loglinear_position_nll(c: Collector, setting: Setting) -> torch.Tensor:
    """The poe setting's per-position dev NLL by the evaluation's own fused path (fusion.fused_nll),
    replayed on the kept logits chunk by chunk as the pass scored them."""
    coef_row = (torch.tensor(setting["betas"], dtype=torch.float64)
                / torch.tensor(setting["temperatures"], dtype=torch.float64)).float()
    out = torch.empty(c.positions, dtype=torch.float64)
    targets = c.targets.to(c.device)
    for ch in c.chunks:
        p = ch.stop - ch.start
        coef = coef_row.to(c.device).expand(p, 1, c.n_models).contiguous()         # [p, 1, N]
        out[ch.start:ch.stop] = fused_nll([x[ch.start:ch.stop] for x in c.z], targets[ch.start:ch.stop], c.vocab,
                                          coef, c.cfg)[0]
    return out


def fit_loglinear(c: Collector, options: FitOptions, lower: float,
                  should_stop: Callable[[], bool] = lambda: False) -> FitResult:
    run = newton(c.z, c.targets, lower, options, should_stop=should_stop)
    setting = poe_setting(run.c.tolist())
    return FitResult(LOGLINEAR, setting, run.iterations, run.evaluations, run.converged, run.gradient_norm,
                     run.history, run.c.tolist(), run.at_bound, run.note, loglinear_position_nll(c, setting))


# ----------------------------------------------------------------------------- the request

@dataclass
class FitOutcome:
    fits: list[FitResult]
    seconds: float


def run_fits(c: Collector, options: FitOptions, space: str, status: Callable[[str], None] = lambda _m: None,
             should_stop: Callable[[], bool] = lambda: False) -> FitOutcome:
    c.check_complete()
    started = time.perf_counter()
    out: list[FitResult] = []
    for kind in options.fits:
        if kind == MIX:
            status(f"fitting mix: EM on {c.positions:,} positions, temperatures over {len(c.temperatures)} values")
            out.append(fit_mix(c, options, should_stop))
        else:
            status(f"fitting the log-linear rule: Newton over {c.n_models} coefficients on {c.positions:,} positions "
                   f"(kept logits {_mib(kept_logits_bytes(c.n_models, c.positions, c.vocab))})")
            out.append(fit_loglinear(c, options, BYTE_SPACE_LOWER if space == "bytes" else 0.0, should_stop))
    return FitOutcome(out, time.perf_counter() - started)


def window_sums(c: Collector, position_nll: torch.Tensor, n_windows: int) -> list[float]:
    """Per window Σ NLL of one fitted setting (float64, positions added in order)."""
    acc = torch.zeros(n_windows, dtype=torch.float64)
    acc.index_add_(0, c.window, position_nll)
    return acc.tolist()


def static_weights(setting: Setting) -> list[float]:
    """α of a fitted setting at every position: poe's betas as given, mix's weights normalized."""
    if setting["type"] == "poe":
        return [float(b) for b in setting["betas"]]
    w = torch.tensor(setting["weights"], dtype=torch.float64)
    return (w / w.sum()).tolist()
