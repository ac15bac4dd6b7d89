"""fusion.py against the formulas of SPEC §3, computed directly here in float64."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kotara_worker.fusion import (STRATEGIES, FusionConfig, NumericalError, score_each_position,
                                  score_positions)

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "strategies.json"
RTOL = 1e-5


# ----------------------------------------------------------------------------- the reference

def reference(logits: list[torch.Tensor], targets: torch.Tensor, vocab: int, setting: dict):
    """Per-position fused NLL [P] and α [P, N], straight from SPEC §3, float64."""
    n = len(logits)
    temps = setting.get("temperatures") or [1.0] * n
    y = [z[:, :vocab].double() / t for z, t in zip(logits, temps)]            # [P, V] each
    p = [torch.softmax(v, -1) for v in y]
    if setting["type"] == "average":
        alpha = torch.full((len(targets), n), 1.0 / n, dtype=torch.float64)
        f = sum(v / n for v in y)
    elif setting["type"] == "poe":
        betas = setting.get("betas") or [1.0 / n] * n
        alpha = torch.tensor(betas, dtype=torch.float64).expand(len(targets), n)
        f = sum(b * torch.log_softmax(v, -1) for b, v in zip(betas, y))
    else:
        if setting["type"] == "entropy":
            h = torch.stack([-(q * torch.log(q.clamp_min(1e-300))).sum(-1) for q in p], 1)   # [P, N]
            raw = 1.0 / (h + 1e-9)
        else:
            top = [q.topk(2, -1).values for q in p]
            raw = torch.stack([t[:, 0] - t[:, 1] for t in top], 1)                          # [P, N]
        total = raw.sum(1, keepdim=True)
        alpha = torch.where(total > 0, raw / total, torch.full_like(raw, 1.0 / n))
        f = sum(alpha[:, m:m + 1] * y[m] for m in range(n))
    nll = -torch.log_softmax(f, -1).gather(1, targets[:, None]).squeeze(1)
    return nll, alpha


def reference_base(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(z.double(), -1).gather(1, targets[:, None]).squeeze(1)


def setting(type_: str, n: int, temps=None, betas=None, id_: str | None = None) -> dict:
    return {"id": id_ or type_, "type": type_, "temperatures": temps or [1.0] * n, "betas": betas}


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * 1e-2)


def random_logits(n: int, P: int, V: int, seed: int, scale: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(P, V, generator=g) for _ in range(n)]


def all_settings(n: int) -> list[dict]:
    t = [0.6 + 0.3 * m for m in range(n)]
    b = [1.0 / (m + 1) for m in range(n)]
    return [setting("average", n), setting("average", n, t), setting("poe", n), setting("poe", n, t, b),
            setting("poe", n, betas=[1.0] * n), setting("poe", n, betas=[-0.3] + [1.0] * (n - 1)),
            setting("entropy", n), setting("entropy", n, t), setting("gap", n), setting("gap", n, t[::-1])]


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n,P,V,scale", [(2, 9, 50, 3.0), (3, 7, 33, 2.0), (2, 5, 40, 60.0), (4, 4, 10, 1.0)])
def test_every_strategy_is_its_formula(n, P, V, scale):
    logits = random_logits(n, P, V, seed=n * 100 + P, scale=scale)
    targets = torch.randint(0, V, (P,), generator=torch.Generator().manual_seed(1))
    settings = all_settings(n)
    got = score_each_position(logits, targets, V, settings)
    for k, s in enumerate(settings):
        nll, alpha = reference(logits, targets, V, s)
        assert close(got.fusion_nll[k], nll), s
        assert close(got.weights[k], alpha), s
    for m in range(n):
        assert close(got.model_nll[m], reference_base(logits[m], targets))


def test_uniform_rows_fall_back_to_equal_weights_and_log_v():
    P, V = 3, 16
    logits = [torch.zeros(P, V), torch.full((P, V), 2.5)]
    targets = torch.tensor([0, 5, 15])
    got = score_each_position(logits, targets, V, all_settings(2))
    expected = torch.log(torch.tensor(float(V), dtype=torch.float64))
    assert close(got.fusion_nll, expected.expand_as(got.fusion_nll))
    gap_k = [k for k, s in enumerate(all_settings(2)) if s["type"] == "gap"]
    assert torch.equal(got.weights[gap_k], torch.full_like(got.weights[gap_k], 0.5))


def test_one_hot_rows_keep_their_tiny_entropy():
    # near-deterministic rows: H ≈ 1e-12..1e-6, where 1 + eps rounds to 1 in float32
    V = 30
    a = torch.zeros(2, V); a[:, 3] = 30.0
    b = torch.zeros(2, V); b[:, 7] = 16.0
    targets = torch.tensor([3, 7])
    s = [setting("entropy", 2), setting("gap", 2)]
    got = score_each_position([a, b], targets, V, s)
    for k in range(2):
        nll, alpha = reference([a, b], targets, V, s[k])
        assert close(got.weights[k], alpha, 1e-4)
        assert close(got.fusion_nll[k], nll)


def test_padded_vocabulary_fuses_over_the_tokenizer_vocabulary():
    V, pad = 40, 13
    logits = random_logits(2, 6, V + pad, seed=3)
    logits[1] = logits[1][:, :V].clone()                              # model 2 is not padded
    targets = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(2))
    settings = all_settings(2)
    got = score_each_position(logits, targets, V, settings)
    assert close(got.model_nll[0], reference_base(logits[0], targets))   # base: the whole output layer
    for k, s in enumerate(settings):
        assert close(got.fusion_nll[k], reference(logits, targets, V, s)[0])   # fusion: [:V]
    with pytest.raises(ValueError, match="output rows"):
        score_each_position(logits, targets, V + 1, settings)


def test_low_precision_logits_are_scored_in_float32():
    logits = [z.to(torch.bfloat16) for z in random_logits(2, 5, 64, seed=4)]
    targets = torch.arange(5)
    got = score_each_position(logits, targets, 64, all_settings(2))
    for k, s in enumerate(all_settings(2)):
        assert close(got.fusion_nll[k], reference([z.float() for z in logits], targets, 64, s)[0])


def test_blocking_does_not_change_results_and_sums_are_sums():
    logits = random_logits(2, 11, 97, seed=5)
    targets = torch.randint(0, 97, (11,), generator=torch.Generator().manual_seed(3))
    settings = all_settings(2)
    big = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=1 << 22))
    tiny = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=3 * 97))
    odd = score_each_position(logits, targets, 97, settings, FusionConfig(block_elems=1))
    for other in (tiny, odd):
        assert close(big.fusion_nll, other.fusion_nll, 1e-6) and close(big.model_nll, other.model_nll, 1e-6)
    sums = score_positions(logits, targets, 97, settings, FusionConfig(block_elems=3 * 97))
    assert sums.positions == 11
    assert torch.equal(sums.fusion_nll, tiny.fusion_nll.sum(1))
    assert torch.equal(sums.model_nll, tiny.model_nll.sum(1))
    assert torch.equal(sums.fusion_weights, tiny.weights.sum(1))


def test_a_sweep_equals_one_setting_at_a_time():
    # the shape of a real sweep: 4 strategies × a 5 × 5 temperature grid
    grid = [0.7, 0.85, 1.0, 1.15, 1.3]
    settings = [setting(t, 2, [a, b], id_=f"{t}-{a}-{b}") for t in STRATEGIES for a in grid for b in grid]
    assert len(settings) == 100
    logits = random_logits(2, 8, 300, seed=6)
    targets = torch.randint(0, 300, (8,), generator=torch.Generator().manual_seed(4))
    together = score_each_position(logits, targets, 300, settings)
    for k, s in enumerate(settings):
        alone = score_each_position(logits, targets, 300, [s])
        assert close(together.fusion_nll[k], alone.fusion_nll[0], 1e-6), s["id"]
        assert torch.equal(together.weights[k], alone.weights[0]), s["id"]


def test_unknown_strategy_and_wrong_lengths_are_refused():
    logits = random_logits(2, 2, 5, seed=7)
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError) as e:
        score_positions(logits, t, 5, [setting("median", 2)])
    assert "median" in str(e.value) and all(name in str(e.value) for name in STRATEGIES)
    with pytest.raises(ValueError, match="temperature"):
        score_positions(logits, t, 5, [setting("average", 3)])
    with pytest.raises(ValueError, match="beta"):
        score_positions(logits, t, 5, [setting("poe", 2, betas=[1.0])])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise_numerical_error_naming_the_model(bad):
    logits = random_logits(3, 4, 8, seed=8)
    logits[2][3, 5] = bad
    with pytest.raises(NumericalError) as e:
        score_positions(logits, torch.zeros(4, dtype=torch.long), 8, [setting("entropy", 3)])
    assert e.value.model_index == 2 and e.value.position == 3


@pytest.mark.skipif(not GOLDEN.is_file(), reason=f"no golden file at {GOLDEN}")
def test_golden_strategies():
    cases = json.loads(GOLDEN.read_text())["cases"]
    assert cases
    for case in cases:
        logits = [torch.tensor(z, dtype=torch.float32) for z in case["logits"]]
        n, V = len(logits), logits[0].shape[1]
        targets = torch.tensor(case["targets"])
        settings = [setting(s["type"], n, s.get("temperatures"), s.get("betas"), id_=str(i))
                    for i, s in enumerate(case["strategies"])]
        got = score_each_position(logits, targets, V, settings)
        base = torch.tensor(case["base_nll"], dtype=torch.float64)
        assert close(got.model_nll, base), case["name"]
        for k, s in enumerate(case["strategies"]):
            assert close(got.fusion_nll[k], torch.tensor(s["nll"], dtype=torch.float64)), (case["name"], s)


def test_scoring_leaves_no_reference_cycles():
    # A cycle would keep every chunk's float32 logits alive until the cyclic GC runs,
    # so a long text would grow the worker's peak memory.
    import gc

    torch.manual_seed(0)
    logits = [torch.randn(16, 40), torch.randn(16, 40)]
    targets = torch.randint(0, 40, (16,))
    settings = [{"id": t, "type": t, "temperatures": [0.9, 1.1], "betas": None} for t in STRATEGIES]
    gc.collect()
    gc.disable()
    try:
        score_positions(logits, targets, 40, settings)
        assert gc.collect() == 0
    finally:
        gc.enable()
