"""fusion.py against the formulas of SPEC §3, computed directly here in float64, with
tolerances from an error analysis of the float32 code (next to close())."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kotara_worker.fusion import (STRATEGIES, FusionConfig, NumericalError, check_settings,
                                  score_each_position, score_positions)

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "strategies.json"
EPS_H = 1e-9        # the entropy strategy's epsilon: α ∝ 1 / (H + 1e-9) (SPEC §3)


# ----------------------------------------------------------------------------- the reference

@dataclass
class Fused64:
    """One setting on P positions, straight from SPEC §3 in float64."""
    nll: torch.Tensor                    # [P]
    alpha: torch.Tensor                  # [P, N]
    alpha_err: torch.Tensor              # [P, N] bound on |α_code − α| + |α_ref − α| (weights_allowed)
    alpha_ref_err: torch.Tensor          # [P, N] the reference's own share of it
    y: list[torch.Tensor]                # [P, V] per model: the tempered logits z / T
    mix_err: torch.Tensor | None = None  # [P] mix only: its whole bound (mix_allowed), else None


def raw_weights64(y: list[torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(raw weights [P, N], the statistic H or gap [P, N], a bound on the reference's own
    error in the raw weights [P, N]), from the softmax probabilities q in float64."""
    raw, stat, err = [], [], []
    for v in y:
        V = v.shape[1]
        q = torch.softmax(v, -1)                                               # [P, V]
        if kind == "entropy":
            L = -torch.log(q.clamp_min(1e-300))                                # [P, V] -log q ≥ |y − y_max|
            h = (q * L).sum(-1)                                                # [P]
            # q has relative error ≤ 2^-53 (|y − y_max| + V + 3) ≤ 2^-53 (L + V + 3) (exp argument,
            # exp, the sum over V, the division); d(−q log q)/dq = −(log q + 1); the sum adds (V+1)·2^-53·H
            h_err = U64 * ((q * (L + 1) * (L + V + 3)).sum(-1) + (V + 1) * h)
            r = 1.0 / (h + EPS_H)
            raw.append(r), stat.append(h), err.append(r * h_err / (h + EPS_H))  # |d r / d H| = r / (H + eps)
        else:
            top = q.topk(2, -1).values                                         # [P, 2]
            g = top[:, 0] - top[:, 1]
            raw.append(g), stat.append(g), err.append((V + 2) * U64 * (top[:, 0] + top[:, 1]))
    return torch.stack(raw, 1), torch.stack(stat, 1), torch.stack(err, 1)


def fuse64(logits: list[torch.Tensor], targets: torch.Tensor, vocab: int, setting: dict,
           raw: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> Fused64:
    """`raw` replaces raw_weights64 (the one-hot test brings closed forms)."""
    n = len(logits)
    temps = setting["temperatures"]
    z = [x[:, :vocab].double() for x in logits]                                # [P, V] each
    y = [v / t for v, t in zip(z, temps)]
    zero = torch.zeros(len(targets), n, dtype=torch.float64)
    kind = setting["type"]
    if kind == "mix":
        return mix64(logits, targets, vocab, setting)
    if kind == "average":
        alpha, alpha_err, ref_err = torch.full_like(zero, 1.0 / n), zero, zero
        f = sum(v / n for v in y)
    elif kind == "poe":
        alpha, alpha_err, ref_err = torch.tensor(setting["betas"], dtype=torch.float64).expand_as(zero), zero, zero
        f = sum(b * torch.log_softmax(v, -1) for b, v in zip(setting["betas"], y))
    else:
        r, stat, r_ref_err = raw if raw is not None else raw_weights64(y, kind)
        total = r.sum(1, keepdim=True)
        alpha = torch.where(total > 0, r / total, torch.full_like(r, 1.0 / n))
        r_err = code_raw_error(z, temps, kind, r, stat) + r_ref_err
        alpha_err = weights_allowed(alpha, total, r_err)
        ref_err = weights_allowed(alpha, total, r_ref_err)
        f = sum(alpha[:, m:m + 1] * y[m] for m in range(n))
    nll = -torch.log_softmax(f, -1).gather(1, targets[:, None]).squeeze(1)
    return Fused64(nll=nll, alpha=alpha, alpha_err=alpha_err, alpha_ref_err=ref_err, y=y)


def mix64(logits: list[torch.Tensor], targets: torch.Tensor, vocab: int, setting: dict) -> Fused64:
    """mix, plainly: NLL = −log Σ_m w_m softmax(z_m / T_m)[target], w normalized to sum 1,
    in float64 (the tests keep −log p below ~700, where float64 does not underflow)."""
    n = len(logits)
    w = torch.tensor(setting["weights"], dtype=torch.float64)
    w = w / w.sum()
    y = [x[:, :vocab].double() / t for x, t in zip(logits, setting["temperatures"])]
    p = [torch.softmax(v, -1) for v in y]                                       # [P, V] each
    mixture = sum(w[m] * p[m] for m in range(n))                                # [P, V]
    nll = -torch.log(mixture.gather(1, targets[:, None]).squeeze(1))
    assert bool(torch.isfinite(nll).all()), "the float64 reference underflowed: pick other inputs"
    alpha = w.expand(len(targets), n)
    alpha_err = 4 * U64 * alpha                            # both sides: x / Σx in float64
    rounds = logits[0].dtype not in (torch.float32, torch.bfloat16, torch.float16)
    return Fused64(nll=nll, alpha=alpha, alpha_err=alpha_err, alpha_ref_err=torch.zeros_like(alpha), y=y,
                   mix_err=mix_allowed(y, p, w, targets, input_rounds=rounds))


def reference(logits: list[torch.Tensor], targets: torch.Tensor, vocab: int, setting: dict):
    """Per-position fused NLL [P] and α [P, N], straight from SPEC §3, float64."""
    r = fuse64(logits, targets, vocab, setting)
    return r.nll, r.alpha


def reference_base(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(z.double(), -1).gather(1, targets[:, None]).squeeze(1)


# ----------------------------------------------------------------------------- the tolerances
#
# Error analysis: float32 code vs a float64 reference of the same float32 inputs.
# u = 2^-24 is float32's unit roundoff (one rounding moves a value by ≤ u·|value|);
# the float64 reference adds the same terms with 2^-53 (negligible, but counted: the
# bounds below use u = 2^-24 + 2^-53). First order in u throughout.
#
# (1) log_softmax in float32 of a row x [V], target t, NLL = m + log s − x_t with
#     m = max x, s = Σ exp(x_i − m) ∈ [1, V]. Whatever order a kernel set adds in:
#       x_i − m rounds by u|x_i − m|, which moves exp by that relatively; weighted by p,
#         Σ p_i |x_i − m| = H(p) − log s ≤ ln V
#       exp: ≤ 2 ulp (≤ 4u; the fast softmax exp is within 2 ulp)
#       the sum of V terms in [0, 1]: ≤ (V − 1)·u relative, in any order
#       log s: its relative error becomes absolute; log itself ≤ 1 ulp ≤ 2u·ln V
#       x_t − m and the final subtraction: ≤ u·NLL each; or, where a kernel forms
#       m + log s first: ≤ u(|m| + ln V)
#     ⇒ |ΔNLL| ≤ u·(|m| + 2·NLL + V + 4·ln V + 3)                     (log_softmax_error)
# (2) the fused logits f_i = Σ_m c_m z_m,i in float32 (c = α/T rounded to float32: u;
#     N products and sums in any order: N·u):  |Δf_i| ≤ (N + 1)·u·g_i, g_i = Σ_m |c_m z_m,i|.
#     NLL(f) = LSE(f) − f_t has gradient p − e_t, of 1-norm ≤ 2, summing to 0, so
#     |ΔNLL| ≤ range_i(Δf_i) ≤ 2·(N + 1)·u·max_i g_i.
# (3) the weights: α enters f through Σ_m α_m y_m, so by the same gradient
#     |ΔNLL| ≤ Σ_m |Δα_m|·range_i(y_m,i), with Δα = α_code − α_ref as measured plus the
#     reference's own bound (a third float64 computation, the golden file, is then covered).
#     α_code itself is checked against weights_allowed (below).
# (4) mix, NLL = −log Σ_m w_m exp(l_m,t), l_m = log_softmax(y_m) (mix_allowed):
#     y_m = z_m / T_m is one float32 division (u|y_i|; logits in float64, as byte space
#     passes them, are cast to float32 first: another u|y_i|). l_t = y_t − LSE(y) has
#     gradient e_t − p in y, so  |Δl_t| ≤ k·u·(|y_t| + Σ_i p_i |y_i|), k = 1 or 2; an entry
#     with p_i = 0 exactly (the byte floor) counts 0: its exp is 0 either way.
#     The float32 log_softmax of y_m adds (1): u(|max y_m| + 2·NLL_m + V + 4 ln V + 3).
#     The mixture −LSE_m(a_m), a_m = l_m,t + log w_m, is float64; its gradient in a_m is the
#     posterior π_m (π ≥ 0, Σ π = 1), so the float32 errors move it by ≤ max_m |Δl_m,t| over
#     the models with w_m > 0 (a weight of 0 drops the model, exactly, on both sides).
#     Its own float64 steps: w / Σw (N·2^-53 relative, so N·2^-53 in log w), log (2^-53|log w|),
#     the addition (2^-53|a_m|), and LSE = max + log Σ exp(a − max): 2^-53 per |a_m − max|
#     weighted by π, N·2^-53 for the sum, 2^-53(|max| + ln N) for the log and the add; with
#     |log w| ≤ |a| (both ≤ 0) and ln N ≤ N all of it is ≤ 2^-53(5·max|a_m| + 3N + 3),
#     counted twice (the code's and the reference's float64 steps). The reference's own
#     float64 softmax is the float32 analysis at 2^-53, covered by u = 2^-24 + 2^-53.
# Taken together:  fused:  (1) on f + (2) + (3);  mix: (4);  base (T = 1, no fusion):  (1) on z.
# For near-one-hot rows the reference's entropy loses its digits (H ~ 1e-11 is a
# difference of terms ~1); the one-hot test brings closed forms instead.
#
# The old fixed tolerance (absolute 1e-7, below one float32 ulp at 1.0) did not hold:
# rows whose NLL is ~1e-3 with |m| = 15 are wrong by 2u in the default and AVX2
# kernel sets, all of it float32 log_softmax rounding (a float64 log_softmax of the
# same float32 fused logits agrees with the reference).

U = 2.0 ** -24
U64 = 2.0 ** -53
UB = U + U64


def log_softmax_error(x: torch.Tensor, nll: torch.Tensor, u: float = UB) -> torch.Tensor:
    """(1): bound on |ΔNLL| [P] of a float32 log_softmax of the rows x [P, V] (float64)."""
    V = x.shape[1]
    return u * (x.max(-1).values.abs() + 2 * nll.abs() + V + 4 * math.log(V) + 3)


def nll_allowed(ref: Fused64, alpha_got: torch.Tensor) -> torch.Tensor:
    """(1) + (2) + (3) for one setting: [P]; (4) for mix."""
    if ref.mix_err is not None:
        return ref.mix_err
    n = len(ref.y)
    f = sum(ref.alpha[:, m:m + 1] * ref.y[m] for m in range(n))               # [P, V] what the code fuses
    g = sum((ref.alpha[:, m:m + 1] * ref.y[m]).abs() for m in range(n)).max(-1).values   # [P]
    d_alpha = (alpha_got.double() - ref.alpha).abs() + ref.alpha_ref_err       # [P, N]
    spread = torch.stack([v.max(-1).values - v.min(-1).values for v in ref.y], 1)  # [P, N] range(y_m)
    return log_softmax_error(f, ref.nll) + 2 * (n + 1) * UB * g + (d_alpha * spread).sum(1)


def mix_allowed(y: list[torch.Tensor], p: list[torch.Tensor], w: torch.Tensor, targets: torch.Tensor,
                input_rounds: bool = False) -> torch.Tensor:
    """(4): bound [P] on |ΔNLL| of mix, from the float64 tempered logits y_m [P, V], their
    softmax p_m and the normalized weights w [N]. Models with w_m = 0 are out on both sides."""
    say = [m for m in range(len(y)) if w[m] > 0]
    k = 2 if input_rounds else 1                           # roundings of y: the float32 cast, z / T
    per_model, a_max = [], []
    for m in say:
        yt = y[m].gather(1, targets[:, None]).squeeze(1)                        # [P]
        nll_m = torch.logsumexp(y[m], -1) - yt                                  # [P] −l_m,t ≥ 0
        finite = torch.where(p[m] > 0, y[m].abs(), torch.zeros_like(y[m]))      # 0 · ∞ is 0 here
        divide = k * UB * (yt.abs() + (p[m] * finite).sum(-1))                  # Δl from Δy
        per_model.append(divide + log_softmax_error(torch.where(p[m] > 0, y[m], -math.inf), nll_m))
        a_max.append(nll_m - math.log(float(w[m])))                             # |a_m|, a ≤ 0
    f32 = torch.stack(per_model, 1).max(1).values
    return f32 + 2 * U64 * (5 * torch.stack(a_max, 1).max(1).values + 3 * len(y) + 3)


def code_raw_error(z: list[torch.Tensor], temps, kind: str, raw: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    """Bound [P, N] on |raw_code − raw| of the float32 moments (ModelLogits.moments), with
    D = range(z)/T: d = z − max rounds by u|d|; d·(1/T) by 3u|d|/T in all; exp adds ≤ 4u;
    so each e has relative error ≤ u(3D + 4), each e·d ≤ u(3D + 6); V-term sums add (V − 1)u:
        eps = Σ e:  u(3D + V + 3)      ed = Σ e·d:  u(3D + V + 5)
    entropy  H = log1p(eps) + (−ed)/(T(1 + eps)), two non-negative terms: δH ≤ δeps + δed
             = u(6D + 2V + 8); raw = 1/(H + eps_H) moves by raw·ΔH/(H + eps_H)
    gap      (1 − exp(d2/T))/(1 + eps): the rounded top-2 difference moves the numerator by
             ≤ u relatively (x e^-x/(1 − e^-x) ≤ 1), the denominator by ≤ δeps: u(3D + V + 4)."""
    out = []
    for m, (v, t) in enumerate(zip(z, temps)):
        V = v.shape[1]
        D = (v.max(-1).values - v.min(-1).values) / t                             # [P]
        if kind == "entropy":
            h = stat[:, m]
            out.append(raw[:, m] * h * UB * (6 * D + 2 * V + 8) / (h + EPS_H))
        else:
            out.append(raw[:, m] * UB * (3 * D + V + 4))
    return torch.stack(out, 1)


def weights_allowed(alpha: torch.Tensor, total: torch.Tensor, raw_err: torch.Tensor) -> torch.Tensor:
    """α_m = r_m / R moves by ≤ (Δr_m + α_m Σ_j Δr_j) / R, plus the two float64 divisions
    (4·2^-53·α). Where every raw weight is 0 both sides take 1/N exactly."""
    spread = (raw_err + alpha * raw_err.sum(1, keepdim=True)) / total.clamp_min(1e-300)
    return torch.where(total > 0, spread + 4 * U64 * alpha, torch.zeros_like(alpha))


def close(got: torch.Tensor, want: torch.Tensor, allowed: torch.Tensor, what: object = "") -> None:
    """|got − want| ≤ allowed, elementwise; `allowed` from the error analysis above."""
    err = (got.double() - want.double()).abs()
    allowed = torch.as_tensor(allowed, dtype=torch.float64).expand_as(err)
    if not bool((err <= allowed).all()):
        worst = int((err - allowed).argmax())
        raise AssertionError(f"{what}: |got − want| = {err.reshape(-1)[worst]:.3g} over the allowed "
                             f"{allowed.reshape(-1)[worst]:.3g} (got {got.reshape(-1)[worst]:.9g}, "
                             f"want {want.reshape(-1)[worst]:.9g})")


# ----------------------------------------------------------------------------- inputs

def setting(type_: str, n: int, temps=None, betas=None, id_: str | None = None, weights=None) -> dict:
    """A wire Setting as the controller sends it: everything resolved; poe without betas
    and mix without weights get the default 1/N each (SPEC §3), the others null."""
    if type_ == "poe" and betas is None:
        betas = [1.0 / n] * n
    if type_ == "mix" and weights is None:
        weights = [1.0 / n] * n
    return {"id": id_ or type_, "type": type_, "temperatures": temps or [1.0] * n, "betas": betas, "weights": weights}


def random_logits(n: int, P: int, V: int, seed: int, scale: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(P, V, generator=g) for _ in range(n)]


def all_settings(n: int) -> list[dict]:
    t = [0.6 + 0.3 * m for m in range(n)]
    b = [1.0 / (m + 1) for m in range(n)]
    return [setting("average", n), setting("average", n, t), setting("poe", n), setting("poe", n, t, b),
            setting("poe", n, betas=[1.0] * n), setting("poe", n, betas=[-0.3] + [1.0] * (n - 1)),
            setting("entropy", n), setting("entropy", n, t), setting("gap", n), setting("gap", n, t[::-1]),
            setting("mix", n), setting("mix", n, t[::-1], weights=[m + 1.0 for m in range(n)]),
            setting("mix", n, t, weights=[0.0] + [0.25] * (n - 1))]


def check_against_reference(logits, targets, vocab, settings, got, what=""):
    """Every setting's NLL and α, and every model's base NLL, within the derived bounds."""
    for k, s in enumerate(settings):
        ref = fuse64(logits, targets, vocab, s)
        close(got.weights[k], ref.alpha, ref.alpha_err, (what, s, "weights"))
        close(got.fusion_nll[k], ref.nll, nll_allowed(ref, got.weights[k]), (what, s, "nll"))
    for m, z in enumerate(logits):
        base = reference_base(z, targets)
        close(got.model_nll[m], base, log_softmax_error(z.double(), base), (what, "model", m))


# ----------------------------------------------------------------------------- strategies

@pytest.mark.parametrize("n,P,V,scale", [(2, 9, 50, 3.0), (3, 7, 33, 2.0), (2, 5, 40, 60.0), (4, 4, 10, 1.0)])
def test_every_strategy_is_its_formula(n, P, V, scale):
    logits = random_logits(n, P, V, seed=n * 100 + P, scale=scale)
    targets = torch.randint(0, V, (P,), generator=torch.Generator().manual_seed(1))
    settings = all_settings(n)
    check_against_reference(logits, targets, V, settings, score_each_position(logits, targets, V, settings))


def test_uniform_rows_fall_back_to_equal_weights_and_log_v():
    P, V = 3, 16
    logits = [torch.zeros(P, V), torch.full((P, V), 2.5)]
    targets = torch.tensor([0, 5, 15])
    settings = all_settings(2)
    got = score_each_position(logits, targets, V, settings)
    expected = torch.full((P,), math.log(V), dtype=torch.float64)
    for k, s in enumerate(settings):
        close(got.fusion_nll[k], expected, nll_allowed(fuse64(logits, targets, V, s), got.weights[k]), s)
    gap_k = [k for k, s in enumerate(settings) if s["type"] == "gap"]
    assert torch.equal(got.weights[gap_k], torch.full_like(got.weights[gap_k], 0.5))


def one_hot_raw(peaks: torch.Tensor, V: int, temps: list[float], kind: str):
    """Closed forms for rows with one logit a (per position and model, peaks [P, N]) and V − 1
    zeros: with x = (V − 1) exp(−a/T),
        H = log1p(x) + (a/T) x / (1 + x)          p(top-1) − p(top-2) = (1 − exp(−a/T)) / (1 + x)
    in float64 to ~10·2^-53 relative (no difference of nearly equal terms)."""
    a = peaks / torch.tensor(temps, dtype=torch.float64)                      # [P, N] a/T
    x = (V - 1) * torch.exp(-a)
    if kind == "entropy":
        h = torch.log1p(x) + a * x / (1 + x)
        r = 1.0 / (h + EPS_H)
        return r, h, r * U64 * (a + 10)
    g = -torch.expm1(-a) / (1 + x)
    return g, g, g * U64 * (a + 10)


@pytest.mark.parametrize("temps", [[1.0, 1.0], [1.05, 0.95]])
def test_one_hot_rows_keep_their_tiny_entropy(temps):
    # Near-deterministic rows, where 1 + eps rounds to 1 in float32, so the top-1 term
    # of the softmax sum must stay out of it (ModelLogits.moments). Row 0: both entropies
    # near the 1e-9 of the entropy weights (H ≈ 0.9e-9 and 2.5e-9 at T = 1), where
    # keeping the top-1 term (eps = (1 + x) − 1 = 0, so H = a x / T without its log1p(x))
    # would move α by ~2e-3. Row 1: H ≈ 8e-11 and 5e-5 (one weight near 1).
    V = 30
    peaks = torch.tensor([[27.5, 26.5], [30.0, 16.0]], dtype=torch.float64)   # [P, N]
    tokens = (3, 7)                                                           # each model's peak token
    logits = [torch.zeros(2, V) for _ in tokens]
    for m, t in enumerate(tokens):
        logits[m][:, t] = peaks[:, m].float()
    assert torch.equal(torch.stack([z[:, t] for z, t in zip(logits, tokens)], 1).double(), peaks)  # exact in float32
    targets = torch.tensor([3, 7])
    for kind in ("entropy", "gap"):
        s = setting(kind, 2, temps)
        got = score_each_position(logits, targets, V, [s])
        ref = fuse64(logits, targets, V, s, raw=one_hot_raw(peaks, V, temps, kind))
        close(got.weights[0], ref.alpha, ref.alpha_err, (kind, temps, "weights"))
        close(got.fusion_nll[0], ref.nll, nll_allowed(ref, got.weights[0]), (kind, temps, "nll"))
    h = one_hot_raw(peaks, V, temps, "entropy")[1]
    assert 0.5e-9 < float(h[0].min()) and float(h[0].max()) < 5e-9           # the rows are what they claim


def test_padded_vocabulary_fuses_over_the_tokenizer_vocabulary():
    V, pad = 40, 13
    logits = random_logits(2, 6, V + pad, seed=3)
    logits[1] = logits[1][:, :V].clone()                              # model 2 is not padded
    targets = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(2))
    settings = all_settings(2)
    got = score_each_position(logits, targets, V, settings)
    base = reference_base(logits[0], targets)                         # base: the whole output layer
    close(got.model_nll[0], base, log_softmax_error(logits[0].double(), base), "padded model")
    for k, s in enumerate(settings):
        ref = fuse64(logits, targets, V, s)                            # fusion: [:V]
        close(got.fusion_nll[k], ref.nll, nll_allowed(ref, got.weights[k]), s)
    with pytest.raises(ValueError, match="output rows"):
        score_each_position(logits, targets, V + 1, settings)


def test_low_precision_logits_are_scored_in_float32():
    logits = [z.to(torch.bfloat16) for z in random_logits(2, 5, 64, seed=4)]
    targets = torch.arange(5)
    settings = all_settings(2)
    got = score_each_position(logits, targets, 64, settings)
    # the references see the same bfloat16 values, exactly widened
    check_against_reference([z.float() for z in logits], targets, 64, settings, got, "bfloat16")


def test_blocking_does_not_change_results_and_sums_are_sums():
    logits = random_logits(2, 11, 97, seed=5)
    targets = torch.randint(0, 97, (11,), generator=torch.Generator().manual_seed(3))
    settings = all_settings(2)
    big = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=1 << 22))
    tiny = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=3 * 97))
    odd = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=1))
    for run in (big, tiny, odd):                       # each within its bound of the reference,
        check_against_reference(logits, targets, 97, settings, run)   # so within twice of each other
    for k, s in enumerate(settings):
        allowed = 2 * nll_allowed(fuse64(logits, targets, 97, s), big.weights[k])
        close(tiny.fusion_nll[k], big.fusion_nll[k], allowed, s)
        close(odd.fusion_nll[k], big.fusion_nll[k], allowed, s)
    sums = score_positions(logits, targets, 97, settings, FusionConfig(block_elems=3 * 97))
    assert sums.positions == 11
    assert torch.equal(sums.fusion_nll, tiny.fusion_nll.sum(1))
    assert torch.equal(sums.model_nll, tiny.model_nll.sum(1))
    assert torch.equal(sums.fusion_weights, tiny.weights.sum(1))


def test_a_sweep_equals_one_setting_at_a_time():
    # the shape of a real sweep: every strategy × a 5 × 5 temperature grid, and mix over
    # a grid of weights too (one of them giving the second model no say)
    grid = [0.7, 0.85, 1.0, 1.15, 1.3]
    settings = [setting(t, 2, [a, b], id_=f"{t}-{a}-{b}") for t in STRATEGIES for a in grid for b in grid]
    settings += [setting("mix", 2, [a, 1.0], weights=[w, 1 - w], id_=f"mix-{a}-w{w}") for a in grid for w in (1.0, 0.8, 0.3)]
    assert len(settings) == 25 * len(STRATEGIES) + 15
    logits = random_logits(2, 8, 300, seed=6)
    targets = torch.randint(0, 300, (8,), generator=torch.Generator().manual_seed(4))
    together = score_each_position(logits, targets, 300, settings)
    for k, s in enumerate(settings):
        alone = score_each_position(logits, targets, 300, [s])
        # both within nll_allowed of the reference, so within twice of each other
        close(together.fusion_nll[k], alone.fusion_nll[0],
              2 * nll_allowed(fuse64(logits, targets, 300, s), alone.weights[0]), s["id"])
        assert torch.equal(together.weights[k], alone.weights[0]), s["id"]
        if s["type"] == "mix":
            # its own path: the same float32 log_softmax per (model, T) whatever else is fused
            assert torch.equal(together.fusion_nll[k], alone.fusion_nll[0]), s["id"]


# ----------------------------------------------------------------------------- mix: its own path

@pytest.mark.parametrize("n,P,V,pad,temps,weights", [
    (2, 9, 50, 0, [1.0, 1.0], [0.5, 0.5]),
    (2, 7, 40, 13, [0.7, 1.3], [0.7, 0.3]),
    (3, 6, 33, 5, [1.0, 0.8, 1.2], [0.2, 0.0, 0.8]),         # a zero weight
    (3, 5, 17, 0, [2.0, 0.5, 1.0], [3.0, 1.0, 2.0]),         # weights that do not sum to 1
    (4, 4, 64, 7, [0.9, 1.1, 1.0, 0.6], [0.0, 0.0, 1e-3, 5.0]),
])
def test_mix_is_the_log_of_the_weighted_mixture_of_probabilities(n, P, V, pad, temps, weights):
    logits = random_logits(n, P, V + pad, seed=10 * n + P)
    for z in logits:
        z[:, V:] += 40.0                       # padding rows that would dominate if they were fused
    targets = torch.randint(0, V, (P,), generator=torch.Generator().manual_seed(n))
    s = setting("mix", n, temps, weights=weights)
    got = score_each_position(logits, targets, V, [s])
    ref = mix64(logits, targets, V, s)
    close(got.fusion_nll[0], ref.nll, nll_allowed(ref, got.weights[0]), (n, temps, weights))
    # the reported weights are the normalized w, the same at every position
    close(got.weights[0], ref.alpha, ref.alpha_err, (n, weights, "weights"))
    assert torch.equal(got.weights[0][0] == 0, torch.tensor(weights) == 0)


@pytest.mark.parametrize("case", ["offset", "spread", "all-improbable"])
def test_mix_is_stable_for_huge_logits(case):
    """Logits where exp in float32 overflows (offset 3e4), where the models disagree by
    hundreds of nats (spread), and where every model gives the target a probability below
    float32's smallest (e^-150), so a mixture of float32 probabilities would be 0."""
    P, V = 6, 40
    g = torch.Generator().manual_seed(11)
    logits = [torch.randn(P, V, generator=g) * 3, torch.randn(P, V, generator=g) * 3]
    targets = torch.randint(0, V, (P,), generator=g)
    at = torch.arange(P)
    if case == "offset":
        logits = [logits[0] + 3e4, logits[1] - 2e4]
    elif case == "spread":
        logits = [logits[0] * 60, logits[1]]
    else:
        for z in logits:
            z[at, targets] = z.max(-1).values - 150.0
    s = setting("mix", 2, [1.0, 0.9], weights=[0.6, 0.4])
    got = score_each_position(logits, targets, V, [s])
    ref = mix64(logits, targets, V, s)
    assert bool(torch.isfinite(got.fusion_nll).all())
    close(got.fusion_nll[0], ref.nll, nll_allowed(ref, got.weights[0]), case)
    if case == "all-improbable":               # the case is what it says: float32 probabilities vanish
        naive = sum(w * torch.softmax(z / t, -1) for w, z, t in zip([0.6, 0.4], logits, [1.0, 0.9]))
        assert bool((naive[at, targets] == 0).all())


def test_a_zero_weight_gives_that_model_exactly_no_say():
    P, V = 7, 30
    logits = random_logits(3, P, V, seed=12)
    logits[1] = logits[1] * 1e4                # wild logits: any share of them would show
    targets = torch.randint(0, V, (P,), generator=torch.Generator().manual_seed(5))
    three = score_each_position(logits, targets, V, [setting("mix", 3, [0.8, 1e-3, 1.2], weights=[0.6, 0.0, 0.4])])
    two = score_each_position([logits[0], logits[2]], targets, V, [setting("mix", 2, [0.8, 1.2], weights=[0.6, 0.4])])
    assert torch.equal(three.fusion_nll, two.fusion_nll)
    assert torch.equal(three.weights[0][:, 1], torch.zeros(P, dtype=torch.float64))
    assert torch.equal(three.weights[0][:, [0, 2]], two.weights[0])
    # one model with all the weight is that model alone at its temperature
    one = score_each_position(logits, targets, V, [setting("mix", 3, [1.0, 1.0, 0.7], weights=[0, 0, 2])])
    alone = -torch.log_softmax(logits[2].double() / 0.7, -1)[torch.arange(P), targets]
    close(one.fusion_nll[0], alone, mix64(logits, targets, V, setting("mix", 3, [1.0, 1.0, 0.7], weights=[0, 0, 2])).mix_err,
          "one model")


def test_mix_weights_are_normalized_and_a_model_mixed_with_itself_is_itself():
    logits = random_logits(2, 6, 25, seed=13)
    targets = torch.randint(0, 25, (6,), generator=torch.Generator().manual_seed(6))
    scaled = score_each_position(logits, targets, 25, [setting("mix", 2, [0.9, 1.1], weights=[2.0, 6.0]),
                                                       setting("mix", 2, [0.9, 1.1], weights=[0.25, 0.75])])
    assert torch.equal(scaled.fusion_nll[0], scaled.fusion_nll[1])      # 2/8 and 6/8 are 0.25 and 0.75 exactly
    assert torch.equal(scaled.weights[0], scaled.weights[1])
    same = score_each_position([logits[0], logits[0]], targets, 25, [setting("mix", 2, weights=[0.3, 0.7])])
    ref = mix64([logits[0], logits[0]], targets, 25, setting("mix", 2, weights=[0.3, 0.7]))
    close(same.fusion_nll[0], same.model_nll[0], 2 * ref.mix_err, "itself")   # Σ w p = p


@pytest.mark.parametrize("weights,problem", [
    ([-0.1, 1.1], "weights must be >= 0"), ([0.0, 0.0], "weights need at least one > 0"),
    ([0.5], "weights must list one finite number per model (2)"), (None, "weights must list one finite number per model (2)"),
    ([0.5, float("nan")], "weights must list one finite number per model (2)"),
    ([1e308, 1e308], "weights must have a finite sum"),
])
def test_mix_weights_are_checked(weights, problem):
    message = refusal([{"id": "m", "type": "mix", "temperatures": [1.0, 1.0], "betas": None, "weights": weights}])
    assert f"setting m: {problem}" in message
    assert "mix takes no betas" in refusal([setting("mix", 2, betas=[0.5, 0.5], id_="m")])


# ----------------------------------------------------------------------------- settings

def test_registry_declares_each_strategys_parameters():
    assert {name: s.params for name, s in STRATEGIES.items()} == {
        "average": (), "poe": ("betas",), "entropy": (), "gap": (), "mix": ("weights",)}


def refusal(settings, n: int = 2) -> str:
    with pytest.raises(ValueError) as e:
        check_settings(settings, n)
    return str(e.value)


@pytest.mark.parametrize("t", [0.0, -0.0, -1.0, -1e-300])
def test_temperatures_at_or_below_zero_are_refused(t):
    message = refusal([setting("entropy", 2, [1.0, t], id_="cold")])
    assert "setting cold" in message and "temperatures must be > 0" in message


def test_the_smallest_positive_temperature_is_accepted():
    check_settings([setting("gap", 2, [math.nextafter(0.0, 1.0), 1.0])], 2)   # the boundary: > 0 holds
    check_settings([setting("poe", 3, [1, 2, 3], [0, 0.5, 2])], 3)           # ints are numbers too


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, True])
def test_temperatures_must_be_finite_numbers(bad):
    assert "temperatures must list one finite number per model (2)" in refusal(
        [setting("average", 2, [1.0, 1.0], id_="x") | {"temperatures": [1.0, bad]}])


@pytest.mark.parametrize("temps", [[1.0], [1.0, 1.0, 1.0], [], None, 1.0])
def test_one_temperature_per_model(temps):
    message = refusal([{"id": "x", "type": "average", "temperatures": temps, "betas": None}])
    assert "temperatures must list one finite number per model (2)" in message and repr(temps) in message


@pytest.mark.parametrize("betas", [None, [0.5], [0.5, 0.5, 0.5], [0.5, float("nan")], [0.5, float("inf")]])
def test_poe_needs_one_finite_beta_per_model(betas):
    # the controller always resolves poe's default betas: null is refused, not defaulted
    message = refusal([{"id": "p", "type": "poe", "temperatures": [1.0, 1.0], "betas": betas}])
    assert "setting p: betas must list one finite number per model (2)" in message


@pytest.mark.parametrize("kind", ["average", "entropy", "gap"])
def test_parameters_a_strategy_does_not_declare_must_be_null(kind):
    check_settings([{"id": "x", "type": kind, "temperatures": [1, 1], "betas": None}], 2)
    check_settings([{"id": "x", "type": kind, "temperatures": [1, 1]}], 2)
    message = refusal([{"id": "x", "type": kind, "temperatures": [1, 1], "betas": [0.5, 0.5]}])
    assert f"setting x: {kind} takes no betas (only temperatures)" in message
    assert "takes no weights" in refusal([{"id": "x", "type": kind, "temperatures": [1, 1], "weights": [1, 1]}])


@pytest.mark.parametrize("kind", ["median", None, "", ["poe"]])
def test_unknown_strategy_types_list_the_known_ones(kind):
    message = refusal([setting("average", 2, id_="m") | {"type": kind}])
    assert f"setting m: unknown strategy type {kind!r}" in message
    assert f"(known: {', '.join(STRATEGIES)})" in message


def test_the_public_entry_points_check_the_settings():
    logits = random_logits(2, 2, 5, seed=7)
    t = torch.tensor([0, 1])
    for score in (score_positions, score_each_position):
        with pytest.raises(ValueError, match="unknown strategy type 'median'"):
            score(logits, t, 5, [setting("median", 2)])
        with pytest.raises(ValueError, match="temperatures"):
            score(logits, t, 5, [setting("average", 3)])
        with pytest.raises(ValueError, match="betas"):
            score(logits, t, 5, [setting("poe", 2, betas=[1.0])])


# ----------------------------------------------------------------------------- non-finite logits

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise_numerical_error_naming_the_model(bad):
    logits = random_logits(3, 4, 8, seed=8)
    logits[2][3, 5] = bad
    with pytest.raises(NumericalError) as e:
        score_positions(logits, torch.zeros(4, dtype=torch.long), 8, [setting("entropy", 3)])
    assert e.value.model_index == 2 and e.value.position == 3


@pytest.mark.parametrize("bad_rows", [[3], [7, 9], [9], [4, 8]])
def test_non_finite_logits_in_a_later_block_name_their_own_position(bad_rows):
    # 2 rows per block (block_elems = 2 V): position 3 is in the second block, 7 and 9 in
    # the fourth and fifth; the first bad row in stream order is the one named
    V = 8
    logits = random_logits(2, 11, V, seed=9)
    for row in bad_rows:
        logits[1][row, row % V] = float("nan")
    with pytest.raises(NumericalError) as e:
        score_positions(logits, torch.zeros(11, dtype=torch.long), V, [setting("gap", 2)],
                        FusionConfig(block_elems=2 * V))
    assert e.value.model_index == 1 and e.value.position == min(bad_rows)
    assert f"position {min(bad_rows)}" in str(e.value)


# ----------------------------------------------------------------------------- the golden file

def on_ci() -> bool:
    """CI as the usual CI=true convention says (any value but empty, "false" or "0")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


def golden_cases(path: Path = GOLDEN) -> list[dict]:
    """The golden cases; on CI a missing file is a failure (CI runs with ../shared beside
    the clone, SPEC §8), elsewhere a skip."""
    if not path.is_file():
        where = f"no golden file at {path.resolve()} (../shared/golden/strategies.json beside the repository)"
        if on_ci():
            pytest.fail(f"CI={os.environ['CI']!r}: {where}; CI must run with ../shared present", pytrace=False)
        pytest.skip(where)
    return json.loads(path.read_text())["cases"]


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                         ("", pytest.skip.Exception), ("false", pytest.skip.Exception),
                                         ("0", pytest.skip.Exception), (None, pytest.skip.Exception)])
def test_a_missing_golden_file_fails_on_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci, outcome):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as e:
        golden_cases(tmp_path / "strategies.json")
    assert e.type is outcome and str(tmp_path / "strategies.json") in str(e.value)


def test_golden_strategies():
    cases = golden_cases()
    assert cases
    for case in cases:
        logits = [torch.tensor(z, dtype=torch.float32) for z in case["logits"]]
        n, V = len(logits), logits[0].shape[1]
        targets = torch.tensor(case["targets"])
        # resolved as the controller resolves a config entry: defaults T = 1, betas 1/N
        settings = [setting(s["type"], n, s.get("temperatures"), s.get("betas"), id_=str(i))
                    for i, s in enumerate(case["strategies"])]
        got = score_each_position(logits, targets, V, settings)
        for m, z in enumerate(logits):
            base = torch.tensor(case["base_nll"][m], dtype=torch.float64)
            close(got.model_nll[m], base, log_softmax_error(z.double(), base), (case["name"], m))
        for k, s in enumerate(case["strategies"]):
            ref = fuse64(logits, targets, V, settings[k])     # for the bound's quantities
            close(got.fusion_nll[k], torch.tensor(s["nll"], dtype=torch.float64),
                  nll_allowed(ref, got.weights[k]), (case["name"], s["type"]))


# ----------------------------------------------------------------------------- memory

def test_scoring_leaves_no_reference_cycles():
    # A cycle would keep every chunk's float32 logits alive until the cyclic GC runs,
    # so a long text would grow the worker's peak memory.
    import gc

    torch.manual_seed(0)
    logits = [torch.randn(16, 40), torch.randn(16, 40)]
    targets = torch.randint(0, 40, (16,))
    settings = [setting(t, 2, [0.9, 1.1]) for t in STRATEGIES]
    gc.collect()
    gc.disable()
    try:
        score_positions(logits, targets, 40, settings)
        assert gc.collect() == 0
    finally:
        gc.enable()
