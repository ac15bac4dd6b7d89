"""Fitting (fit.py): EM for mix never raises the dev NLL and stops at a stationary point;
Newton's optimum of the log-linear rule has a ~zero (projected) gradient and beats every
point of a grid around it, evaluated by an independent float64 implementation; the fit's
objective and its replay of the fitted setting are the evaluation pass's fused NLL of poe
with betas = c; the memory budget refuses before any window runs; byte space.

Tolerances come from error analyses written next to them; test_fusion.py's (1)–(2) for the
float32 fused NLL are reused (log_softmax_error, UB)."""
from __future__ import annotations

import math

import pytest
import torch

from kotara_worker import evaluate as ev
from kotara_worker import fit as F
from kotara_worker import protocol
from kotara_worker.fusion import FusionConfig
from kotara_worker.windows import plan_windows
from test_byte_eval import byte_dirs, load, text_file  # noqa: F401  (byte_dirs: a fixture)
from test_evaluate import assert_windows_add_up, fake_stream, fakes
from test_fusion import U64, UB, log_softmax_error, setting

pytestmark = pytest.mark.usefixtures("one_thread")


def options(**kw) -> F.FitOptions:
    base = dict(fits=("mix", "loglinear"), mix_temperatures=(1.0,), memory_budget_bytes=1 << 30, max_iterations=50,
                tolerance=1e-8, em_max_iterations=100_000, em_tolerance=1e-10)
    base.update(kw)
    return F.FitOptions(**base)


def synthetic(n_models: int, P: int, V: int, c_true, seed: int, noise: float = 0.0):
    """Random logits per model [P, V] float32 and targets drawn from softmax(Σ c_true z_m):
    a log-linear rule is then the right model, with its optimum near c_true."""
    g = torch.Generator().manual_seed(seed)
    z = [3.0 * torch.randn(P, V, generator=g) for _ in range(n_models)]
    f = sum(c * x.double() for c, x in zip(c_true, z))
    targets = torch.multinomial(torch.softmax(f, -1), 1, generator=g).view(P)
    return z, targets


def objective64(z, targets, c) -> torch.Tensor:
    """The log-linear dev NLL, independently: float64 log_softmax of the stacked fused logits
    (an entry ≤ -1e29, the byte floor, is -inf: ruled out for any c_m > 0)."""
    zz = [torch.where(x.double() <= -1e29, -math.inf, x.double()) for x in z]
    f = sum(cm * x for cm, x in zip(c, zz))
    return -torch.log_softmax(f, -1).gather(1, targets.view(-1, 1)).sum()


def rounding_of_objective(z, targets, c) -> float:
    """Bound on the float64 rounding of L(c) = Σ_p (LSE(f_p) − f_p,t): test_fusion's (1)+(2)
    at u = 2^-53 per position (V terms, N products), plus P·2^-53·|L| for the sum over p."""
    f = sum(float(cm) * x.double() for cm, x in zip(c, z))
    f = torch.where(f <= -1e20, torch.zeros_like(f), f)                        # ruled-out entries add 0
    nll = -torch.log_softmax(f, -1).gather(1, targets.view(-1, 1)).view(-1)
    g = sum((float(cm) * x.double()).abs().clamp(max=1e20) for cm, x in zip(c, z)).max(-1).values
    per = log_softmax_error(f, nll, 2 * U64) + 2 * (len(z) + 1) * 2 * U64 * g
    return float(per.sum() + len(nll) * 2 * U64 * nll.sum())


# ----------------------------------------------------------------------------- EM

def test_em_never_raises_the_dev_nll_and_stops_at_a_stationary_point():
    g = torch.Generator().manual_seed(3)
    P, N = 4000, 3
    # three components of different quality, each best somewhere: an interior optimum
    log_p = (torch.log_softmax(torch.randn(P, N, generator=g, dtype=torch.float64) * 2.0
                               + torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64), -1) - 1.0).T.contiguous()   # [N, P]
    run = F.em(log_p, torch.full((N,), 1 / N, dtype=torch.float64), 100_000, 1e-10)
    assert run.gap <= 1e-10 and run.iterations > 5
    # monotone: EM cannot raise L; the float64 values may wiggle by their rounding only. Per
    # position −LSE_m(a_m) is within 2^-53(5·max|a| + 3N + 3) (test_fusion's (4)), the mean
    # over P within P·2^-53 relative more; two evaluations: twice that.
    a_max = float((log_p.abs().max() + math.log(1e6)))
    slack = 2 * U64 * (5 * a_max + 3 * N + 3 + abs(run.history[0]) * P) * 2
    steps = torch.tensor(run.history, dtype=torch.float64).diff()
    assert float(steps.max()) <= slack, (float(steps.max()), slack)
    assert float(steps.sum()) < -1e3 * slack                                     # and it did descend
    # stationarity: s_m = mean_p p_pm / mix_p ≤ 1 + gap for every m; with Σ_m w_m s_m = 1 that
    # forces s_m ≥ 1 − gap (1 − w_m)/w_m where w_m > 0 (the fixed-point condition of EM)
    w = run.weights
    mix = torch.logsumexp(log_p + torch.log(w)[:, None], 0)
    s = torch.exp(log_p - mix).mean(1)
    assert abs(float((w * s).sum()) - 1) <= 1e-12
    assert bool((s <= 1 + 1e-10 + 1e-12).all())
    assert bool((s >= 1 - 1e-10 * (1 - w) / w - 1e-12).all()), (s, w)


def test_em_weights_beat_every_point_of_a_fine_simplex_grid():
    g = torch.Generator().manual_seed(5)
    P = 3000
    log_p = torch.stack([torch.randn(P, generator=g) * 1.5 - 3, torch.randn(P, generator=g) * 1.0 - 3.2])
    run = F.em(log_p, torch.tensor([0.5, 0.5], dtype=torch.float64), 100_000, 1e-12)
    L = lambda w: -float(torch.logsumexp(log_p + torch.log(torch.tensor([w, 1 - w], dtype=torch.float64))[:, None], 0).sum())
    # the gap bounds how far the mean NLL is above the optimum over w (convexity):
    # L(w_em) − min L ≤ P · gap; plus the rounding of two evaluations of L (as above)
    slack = P * run.gap + 4 * U64 * (P * abs(run.history[-1]) + 5 * P * 12)
    for k in range(1, 1000):
        assert run.nll <= L(k / 1000) + slack, k / 1000


def test_a_useless_component_gets_a_vanishing_weight():
    g = torch.Generator().manual_seed(9)
    P = 2000
    good = torch.randn(P, generator=g) - 2.0
    log_p = torch.stack([good, good - 5.0])            # model 2 always 148× less likely: w_2 → 0
    run = F.em(log_p, torch.tensor([0.5, 0.5], dtype=torch.float64), 100_000, 1e-9)
    assert run.weights[1] < 1e-6 and run.gap <= 1e-9


# ----------------------------------------------------------------------------- Newton

@pytest.mark.parametrize("n_models,c_true", [(2, [0.7, 0.4]), (3, [0.5, 0.3, 0.25])])
def test_newton_finds_a_zero_gradient_and_beats_a_grid_around_it(n_models, c_true):
    z, targets = synthetic(n_models, 800, 40, c_true, seed=n_models)
    run = F.newton(z, targets, 0.0, options())
    assert run.converged and run.gradient_norm <= 1e-8 and 1 <= run.iterations <= 20, run
    c = run.c
    # the gradient, independently (autograd of the float64 objective) ≈ 0: Newton's own
    # gradient is ≤ 1e-8; the two differ by float64 rounding of sums of P terms ~|z| ≤ 20
    cc = c.clone().requires_grad_(True)
    objective64(z, targets, cc).backward()
    assert float(cc.grad.abs().max()) / len(targets) <= 1e-8 + 1e-12
    # a grid around c (independent evaluation), at two scales
    best = float(objective64(z, targets, c))
    slack = 2 * rounding_of_objective(z, targets, c) + len(targets) * 1e-12   # + what |∇| ≤ 1e-8 can leave
    for delta in (0.05, 0.002):
        for point in torch.cartesian_prod(*[torch.arange(-2, 3, dtype=torch.float64)] * n_models):
            if bool((point == 0).all()):
                continue
            other = (c + delta * point).clamp(min=0)
            assert best <= float(objective64(z, targets, other)) + slack, (delta, point.tolist())
    # the coefficients it found are those the targets were drawn with, up to sampling noise
    assert float((c - torch.tensor(c_true, dtype=torch.float64)).abs().max()) < 0.15, c
    # and its value agrees with the independent objective (both float64)
    assert abs(run.nll - best) <= slack


def test_newton_matches_the_independent_gradient_and_hessian():
    z, targets = synthetic(2, 300, 30, [0.6, 0.5], seed=11)
    c = torch.tensor([0.45, 0.7], dtype=torch.float64)
    total, g, h = F.loglinear_objective(z, targets, c, 2, rows=37)            # blocks that do not divide P
    cc = c.clone().requires_grad_(True)
    L = objective64(z, targets, cc)
    (grad,) = torch.autograd.grad(L, cc, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[m], cc, retain_graph=True)[0] for m in range(2)])
    # float64 sums of P terms of magnitude ≤ max|z|·… : relative 1e-12 is ~1e4 ulps of room
    assert abs(total - float(L.detach())) <= 1e-12 * abs(float(L.detach()))
    assert torch.allclose(g, grad.detach(), rtol=1e-10, atol=1e-9)
    assert torch.allclose(h, hess.detach(), rtol=1e-10, atol=1e-9)


def test_a_coefficient_that_would_go_negative_is_held_at_zero():
    # model 2 is anti-informative (noise that always pushes the text's token down): the
    # unconstrained optimum has c_2 < 0
    g = torch.Generator().manual_seed(13)
    z1 = 3.0 * torch.randn(600, 30, generator=g)
    targets = torch.multinomial(torch.softmax(0.8 * z1.double(), -1), 1, generator=g).view(-1)
    z2 = 2.0 * torch.randn(600, 30, generator=g) - 4.0 * torch.nn.functional.one_hot(targets, 30).float()
    run = F.newton([z1, z2], targets, 0.0, options())
    assert run.converged and run.at_bound == [False, True] and float(run.c[1]) == 0.0, run
    # KKT: at c_2 = 0 the gradient points outward (≥ 0), and c_1 is the one-model optimum
    _, grad, _ = F.loglinear_objective([z1, z2], targets, run.c, 1)
    assert float(grad[1]) > 0 and abs(float(grad[0])) / 600 <= 1e-8
    best = float(objective64([z1, z2], targets, run.c))
    slack = 2 * rounding_of_objective([z1, z2], targets, run.c) + 600 * 1e-12
    for d1 in (-0.01, -0.001, 0.001, 0.01):
        for c2 in (0.0, 1e-3, 1e-2):
            assert best <= float(objective64([z1, z2], targets, torch.tensor([run.c[0] + d1, c2]))) + slack


# ----------------------------------------------------------------------------- the pass: kept data = the evaluation's

def pass_with_collector(n_models=2, vocab=50, n=900, opts=None, settings=()):
    models = fakes(n_models, vocab)
    ids = fake_stream(n, vocab, 4)
    windows = plan_windows(ids.numel(), 64, 32)
    cfg = ev.EvalConfig(position_chunk=40, fusion=FusionConfig(block_elems=4096))
    c = F.Collector(n_models, vocab, sum(w.n_scored for w in windows), opts or options(), "cpu", cfg.fusion)
    sums = ev.run_pass(models, ids, windows, list(settings), 3, None, vocab, None, lambda s: None, 10**9,
                       lambda: False, cfg, collect=c.add)
    return models, ids, windows, cfg, c, sums


def test_the_fit_objective_is_the_evaluation_fused_nll_of_poe_with_betas_c():
    models, ids, windows, cfg, c, _ = pass_with_collector()
    out = F.run_fits(c, options(fits=("loglinear",)), "tokens")
    fitted = out.fits[0]
    assert fitted.setting["type"] == "poe" and fitted.setting["temperatures"] == [1.0, 1.0]
    assert fitted.setting["betas"] == fitted.coefficients and fitted.converged
    # the evaluation pass of the fitted setting, as `kotara run` on the written config does it
    run = ev.run_pass(models, ids, windows, [fitted.setting], 3, None, 50, None, lambda s: None, 10**9,
                      lambda: False, cfg)
    run_windows = torch.tensor(run.window_fusion_nll[0], dtype=torch.float64)
    replay = torch.tensor(F.window_sums(c, fitted.position_nll, len(windows)), dtype=torch.float64)
    # Newton's float64 objective per position, summed per window
    coef = torch.tensor(fitted.coefficients, dtype=torch.float64)
    f = sum(float(cm) * x.double() for cm, x in zip(coef.float().double(), c.z))   # the float32 coefficients
    per64 = -torch.log_softmax(f, -1).gather(1, c.targets.view(-1, 1)).view(-1)
    exact = torch.zeros(len(windows), dtype=torch.float64).index_add_(0, c.window, per64)
    # every float32 per-position NLL is within test_fusion's (1) + (2) of the float64 value of
    # the same float32 logits and coefficients; a window's sum within the sum of its bounds
    g = sum((float(cm) * x.double()).abs() for cm, x in zip(coef.float().double(), c.z)).max(-1).values
    bound = log_softmax_error(f, per64) + 2 * 3 * UB * g
    allowed = torch.zeros(len(windows), dtype=torch.float64).index_add_(0, c.window, bound)
    assert bool(((run_windows - exact).abs() <= allowed).all())
    assert bool(((replay - exact).abs() <= allowed).all())
    # and the float64 objective at c (what Newton minimized) is that same total
    total, _, _ = F.loglinear_objective(c.z, c.targets, coef.float().double(), 0)
    assert abs(total - float(exact.sum())) <= 1e-12 * abs(total)


def test_the_fitted_mix_is_the_evaluation_mix_and_its_temperatures_do_not_lose():
    models, ids, windows, cfg, c, _ = pass_with_collector(opts=options(fits=("mix",), mix_temperatures=(0.6, 0.8, 1.25, 1.6)))
    assert c.z == [] and c.keep is False                                     # mix keeps no logits
    fitted = F.run_fits(c, options(fits=("mix",), mix_temperatures=(0.6, 0.8, 1.25, 1.6)), "tokens").fits[0]
    s = fitted.setting
    assert s["type"] == "mix" and all(t in (0.6, 0.8, 1.0, 1.25, 1.6) for t in s["temperatures"])
    assert abs(sum(s["weights"]) - 1) <= 1e-12 and fitted.converged
    run = ev.run_pass(models, ids, windows, [s], 3, None, 50, None, lambda x: None, 10**9, lambda: False, cfg)
    replay = F.window_sums(c, fitted.position_nll, len(windows))
    # the same target log-probabilities (fusion.ModelLogits on the same chunks) through the
    # same mix_nll: per position identical; per window the float64 sums of the same numbers
    # in the same order, so within P·2^-53·Σ|x| however index_add groups them
    for a, b in zip(replay, run.window_fusion_nll[0]):
        assert abs(a - b) <= 64 * U64 * abs(b)
    # the temperature search never loses to EM at T = 1 (it starts there)
    at1 = F.em(c.logp[:, c.temperatures.index(1.0)], torch.full((2,), 0.5, dtype=torch.float64), 100_000, 1e-10)
    assert float(fitted.position_nll.sum()) <= at1.nll + 1e-9 * abs(at1.nll)
    assert fitted.history == sorted(fitted.history, reverse=True)


def test_the_memory_budget_refuses_before_any_window_runs(tiny, tmp_path):
    from test_server import FakeChannel, evaluate_message
    from conftest import spec
    from kotara_worker import server
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["gpt2-b"])], "tokenizer": None,
                "max_length": 64, "bos_per_window": False, "space": "tokens", "bytes": {"beam": 8, "prune": 0.0}})
    s.channel.sent.clear()
    message = {**evaluate_message(tiny["text"], [setting("average", 2)]), "type": "fit",
               "options": {"fits": ["loglinear"], "mix_temperatures": [1.0], "memory_budget_bytes": 1 << 16,
                           "max_iterations": 50, "tolerance": 1e-6, "em_max_iterations": 100, "em_tolerance": 1e-9}}
    del message["resume"]
    s.dispatch(message)
    error = s.channel.sent[-1]
    assert error["type"] == "error" and error["code"] == "bad_request", error
    assert "over the memory budget of 0.1 MiB" in error["message"] and "scored positions fit" in error["message"]
    assert not [m for m in s.channel.sent if m["type"] == "progress"]          # no window ran
    # mix alone keeps no logits: the same budget passes
    message["options"] = {**message["options"], "fits": ["mix"]}
    s.channel.sent.clear()
    s.dispatch(message)
    fitted = s.channel.sent[-1]
    assert fitted["type"] == "fitted", fitted
    assert protocol.schema_errors({**fitted, "seq": 0}, "from_worker") == []
    assert fitted["kept_bytes"] < 1 << 16 and fitted["fits"][0]["kind"] == "mix"


def test_the_server_fits_and_its_dev_sums_are_those_evaluate_gives(tiny):
    from test_server import FakeChannel, evaluate_message
    from conftest import spec
    from kotara_worker import server
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["llama"])], "tokenizer": None,
                "max_length": 64, "bos_per_window": False, "space": "tokens", "bytes": {"beam": 8, "prune": 0.0}})
    base = [setting("average", 2), setting("entropy", 2)]
    message = {**evaluate_message(tiny["text"], base), "type": "fit", "progress_every": 1,
               "options": {"fits": ["loglinear", "mix"], "mix_temperatures": [0.8, 1.25], "memory_budget_bytes": 1 << 30,
                           "max_iterations": 50, "tolerance": 1e-7, "em_max_iterations": 20000, "em_tolerance": 1e-9}}
    del message["resume"]
    s.channel.sent.clear()
    s.dispatch(message)
    fitted = s.channel.sent[-1]
    assert fitted["type"] == "fitted", fitted
    for m in s.channel.sent:
        assert protocol.schema_errors({**m, "seq": 0}, "from_worker") == [], m
    sums = fitted["sums"]
    windows = plan_windows(fitted["tokens"], 64, 32)
    assert_windows_add_up(sums, windows)
    assert [f["setting"]["id"] for f in fitted["fits"]] == ["fitted-poe", "fitted-mix"]
    assert len(sums["fusion_nll"]) == len(base) + 2 and all(f["converged"] for f in fitted["fits"])
    # the fitted log-linear rule is no worse on dev than average (c = 1/2, 1/2 is a point of its family)
    assert sums["fusion_nll"][2] <= sums["fusion_nll"][0]
    # evaluate with every setting: the same dev numbers (float32 of another block layout for poe:
    # relative 1e-6 is ~ten float32 ulps of a mean NLL, far above test_fusion's bound at these sizes)
    s.channel.sent.clear()
    s.dispatch({**evaluate_message(tiny["text"], base + [f["setting"] for f in fitted["fits"]]), "progress_every": 10**6})
    result = s.channel.sent[-1]
    assert result["type"] == "result"
    assert result["sums"]["model_nll"] == sums["model_nll"]
    for k in range(len(base) + 2):
        a, b = result["sums"]["fusion_nll"][k], sums["fusion_nll"][k]
        assert abs(a - b) <= 1e-6 * abs(b), (k, a, b)


# ----------------------------------------------------------------------------- byte space

def test_byte_space_fit_keeps_ruled_out_bytes_out_and_matches_evaluate(tiny, byte_dirs, tmp_path, monkeypatch):
    kept: list[F.Collector] = []
    original = F.Collector.__init__

    def spy(self, *a, **kw):
        original(self, *a, **kw)
        kept.append(self)

    monkeypatch.setattr(F.Collector, "__init__", spy)
    s = load([tiny["gpt2-a"], byte_dirs["sp"]], space="bytes")
    path = text_file(tmp_path)
    base = [setting("average", 2)]
    s.channel.sent.clear()
    s.dispatch({"type": "fit", "request_id": "f1", "batch_size": 2, "progress_every": 1, "settings": base,
                "dataset": {"path": path, "max_length": 64, "stride": 64, "bos_per_window": False},
                "options": {"fits": ["loglinear", "mix"], "mix_temperatures": [0.8, 1.25], "memory_budget_bytes": 1 << 30,
                            "max_iterations": 50, "tolerance": 1e-8, "em_max_iterations": 20000, "em_tolerance": 1e-10}})
    fitted = s.channel.sent[-1]
    assert fitted["type"] == "fitted" and fitted["space"] == "bytes", fitted
    assert protocol.schema_errors({**fitted, "seq": 0}, "from_worker") == []
    c = kept[-1]
    assert c.vocab == 257 and len(c.z) == 2 and c.positions == fitted["positions"] == fitted["sums"]["scored_tokens"]
    assert any(bool((x <= -1e29).any()) for x in c.z)                            # some bytes are ruled out
    poe = fitted["fits"][0]
    coef = torch.tensor(poe["coefficients"], dtype=torch.float64)
    assert poe["converged"] and bool((coef >= F.BYTE_SPACE_LOWER).all())
    # Newton's optimum beats a grid around it on the exact objective (ruled-out bytes at -inf)
    best = float(objective64(c.z, c.targets, coef))
    slack = 2 * rounding_of_objective(c.z, c.targets, coef) + c.positions * 1e-12
    for d in torch.cartesian_prod(*[torch.tensor([-0.02, 0.0, 0.02], dtype=torch.float64)] * 2):
        if bool((d == 0).all()):
            continue
        assert best <= float(objective64(c.z, c.targets, (coef + d).clamp(min=1e-9))) + slack, d.tolist()
    # evaluate with the fitted settings: the fit's dev sums (poe: float32 of another block layout)
    s.channel.sent.clear()
    s.dispatch({"type": "evaluate", "request_id": "r2", "batch_size": 2, "progress_every": 10**6, "resume": None,
                "dataset": {"path": path, "max_length": 64, "stride": 64, "bos_per_window": False},
                "settings": base + [f["setting"] for f in fitted["fits"]]})
    result = s.channel.sent[-1]
    assert result["type"] == "result", result
    for k in range(3):
        a, b = result["sums"]["fusion_nll"][k], fitted["sums"]["fusion_nll"][k]
        assert abs(a - b) <= 1e-6 * abs(b), (k, a, b)


def test_bad_fit_options_are_refused():
    with pytest.raises(F.FitError, match="at most once"):
        F.FitOptions(fits=("mix", "mix")).check()
    with pytest.raises(F.FitError, match="mix_temperatures"):
        F.FitOptions(mix_temperatures=(0.0,)).check()
    with pytest.raises(F.FitError, match="tolerances"):
        F.FitOptions(tolerance=0.0).check()


def test_identical_models_get_equal_coefficients_and_the_one_model_optimum():
    # H is singular (L depends on c_1 + c_2 only): the step stays symmetric, and the sum is the
    # one model's optimum (found by brute force over a fine grid of its single coefficient)
    z, targets = synthetic(1, 500, 30, [0.8], seed=17)
    run = F.newton([z[0], z[0].clone()], targets, 0.0, options())
    assert run.converged, run
    assert float(run.c[0]) == float(run.c[1])
    total = float(run.c.sum())
    L = lambda c: float(objective64(z, targets, torch.tensor([c], dtype=torch.float64)))
    slack = 2 * rounding_of_objective(z, targets, [total]) + 500 * 1e-12
    for k in range(-20, 21):
        if k:
            assert L(total) <= L(total + 0.005 * k) + slack, k
