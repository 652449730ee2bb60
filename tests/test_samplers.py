"""Sampler invariants: Euler/overshoot/AMO relations, reference coefficients, marginals, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from amo_engine.samplers import (
    StepOut,
    amo_modulation,
    overshoot_coefficients,
    sample_amo,
    sample_euler,
    sample_overshoot,
)
from amo_engine.schedules import flow_match_sigmas

from test_schedules import FLUX_CONFIG, SD3_CONFIG


def toy_fn(attn_fn=None):
    """A smooth nonlinear velocity over any latent shape, with an optional map [B, N]."""

    def fn(x, sigma):
        u = torch.tanh(x * 0.7 + sigma) - 0.3 * x
        return StepOut(u, attn_fn(x) if attn_fn else None)

    return fn


def packed_map(x):  # FLUX-like [B, N, C] -> a map over the N tokens
    return x.float().pow(2).mean(-1)


def grid_map(x, p=2):  # SD3-like [B, C, H, W] -> a map over the (H/p)*(W/p) tokens
    pooled = torch.nn.functional.avg_pool2d(x.float().abs().mean(1, keepdim=True), p)
    return pooled.flatten(1)


SIGMAS = flow_match_sigmas(SD3_CONFIG, 12)


@pytest.mark.parametrize("shape", [(2, 16, 8), (2, 4, 8, 8)])
def test_overshoot_c0_is_euler_bit_for_bit(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    euler = sample_euler(toy_fn(), x, SIGMAS)
    over = sample_overshoot(toy_fn(), x, SIGMAS, c=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(euler, over)


@pytest.mark.parametrize("shape,attn", [((2, 16, 8), "packed"), ((2, 4, 8, 8), "grid")])
def test_amo_with_constant_map_equals_overshoot(shape, attn):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    flat = (lambda z: torch.ones(z.shape[0], 16)) if attn == "packed" else (lambda z: torch.full((z.shape[0], 16), 0.25))
    over = sample_overshoot(toy_fn(), x, SIGMAS, c=2.0, generator=torch.Generator().manual_seed(5))
    amo = sample_amo(toy_fn(flat), x, SIGMAS, c=2.0, generator=torch.Generator().manual_seed(5))
    err = (over - amo).abs().max().item()
    print(f"AMO(m=1) vs overshoot {shape}: max abs diff {err:.2e}")
    assert err <= 1e-5


def test_amo_c0_is_euler():
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    euler = sample_euler(toy_fn(), x, SIGMAS)
    amo = sample_amo(toy_fn(packed_map), x, SIGMAS, c=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(euler, amo)


def test_reference_coefficients_flux_dev_1024():
    sigmas = flow_match_sigmas(FLUX_CONFIG, 28, image_seq_len=4096)  # mu = 1.15
    _, a0, b0 = overshoot_coefficients(sigmas[0], sigmas[1], 2.0)
    assert a0 == pytest.approx(1 / 3, abs=1e-6)
    assert b0 == pytest.approx(0.93458, abs=5e-5)
    so26, a26, b26 = overshoot_coefficients(sigmas[26], sigmas[27], 2.0)
    assert so26 == 0.0
    assert a26 == pytest.approx(0.8953, abs=5e-5) and a26 == pytest.approx(1 - sigmas[27], abs=1e-12)
    assert b26 == pytest.approx(0.1047, abs=5e-5) and b26 == pytest.approx(sigmas[27], abs=1e-12)
    so27, a27, b27 = overshoot_coefficients(sigmas[27], sigmas[28], 2.0)
    assert (so27, a27, b27) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0, 5.0])
def test_renoise_preserves_the_marginal(c):
    """a*(1-sigma_o) == 1-sigma_next (data part) and a^2 sigma_o^2 + b^2 == sigma_next^2 (noise part)."""
    sigmas = flow_match_sigmas(FLUX_CONFIG, 28, image_seq_len=1024)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_o, a, b = overshoot_coefficients(s, s_next, c)
        assert a * (1 - sigma_o) == pytest.approx(1 - s_next, abs=1e-12)
        assert (a * sigma_o) ** 2 + b**2 == pytest.approx(s_next**2, abs=1e-12)


def gaussian_velocity(mu0: float, s0: float):
    """Exact velocity E[eps - x0 | x_sigma] for data x0 ~ N(mu0, s0^2) per coordinate."""

    def fn(x, sigma):
        v = (1 - sigma) ** 2 * s0**2 + sigma**2
        centred = x - (1 - sigma) * mu0
        e_x0 = mu0 + (1 - sigma) * s0**2 / v * centred
        e_eps = sigma / v * centred
        return StepOut(e_eps - e_x0)

    return fn


def analytic_chain_std(mu0: float, s0: float, sigmas, c: float) -> float:
    """Exact std of the discrete overshoot chain on the Gaussian toy (every map is affine in x)."""
    var = 1.0
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        slope = (s - (1 - s) * s0**2) / ((1 - s) ** 2 * s0**2 + s**2)  # du/dx
        sigma_o, a, b = overshoot_coefficients(s, s_next, c)
        var = (a * (1 + (sigma_o - s) * slope)) ** 2 * var + b**2
    return math.sqrt(var)


MU0, S0, N_TOY = 2.0, 0.5, 200_000
TOY_SIGMAS = flow_match_sigmas(SD3_CONFIG, 50)


def run_toy(sampler: str, c: float) -> torch.Tensor:
    x = torch.randn(1, N_TOY, 1, generator=torch.Generator().manual_seed(0))  # [B=1, N tokens, C=1]
    fn = gaussian_velocity(MU0, S0)
    g = torch.Generator().manual_seed(1)
    if sampler == "euler":
        return sample_euler(fn, x, TOY_SIGMAS)
    return sample_overshoot(fn, x, TOY_SIGMAS, c=c, generator=g)


@pytest.mark.parametrize("sampler,c", [("euler", 0.0), ("overshoot", 1.0), ("overshoot", 2.0)])
def test_gaussian_toy_marginal(sampler, c):
    """Mean exact (affine velocity keeps it exact at every step); std equals the analytic std of
    the discrete chain within Monte Carlo error."""
    out = run_toy(sampler, c)
    mean, std = out.mean().item(), out.std().item()
    analytic_spread = analytic_chain_std(MU0, S0, TOY_SIGMAS, c)
    print(f"{sampler} c={c}: mean {mean:.4f} (want {MU0}), std {std:.4f} (analytic {analytic_spread:.4f}, continuous {S0})")
    assert abs(mean - MU0) < 5 * S0 / math.sqrt(N_TOY)
    assert abs(std - analytic_spread) < 0.005


def test_gaussian_toy_amo_per_token_marginal():
    """A fixed map with m in {0, .25, .5, .75, 1}: each token follows its own c*m chain, so the
    mean stays exact and the variance is the average of the analytic per-strength variances."""
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    fixed_map = levels.repeat(N_TOY // 5)[None]  # [1, N]
    fn = gaussian_velocity(MU0, S0)
    x = torch.randn(1, N_TOY, 1, generator=torch.Generator().manual_seed(0))
    out = sample_amo(
        lambda z, s: StepOut(fn(z, s).velocity, fixed_map), x, TOY_SIGMAS, c=2.0, generator=torch.Generator().manual_seed(1)
    )
    mean, std = out.mean().item(), out.std().item()
    want = math.sqrt(sum(analytic_chain_std(MU0, S0, TOY_SIGMAS, 2.0 * float(m)) ** 2 for m in levels) / len(levels))
    print(f"amo c=2 fixed map: mean {mean:.4f} (want {MU0}), std {std:.4f} (analytic {want:.4f})")
    assert abs(mean - MU0) < 5 * S0 / math.sqrt(N_TOY)
    assert abs(std - want) < 0.005


def test_determinism_under_seed():
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    runs = [sample_amo(toy_fn(packed_map), x, SIGMAS, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    other = sample_amo(toy_fn(packed_map), x, SIGMAS, generator=torch.Generator().manual_seed(8))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("shape,attn", [((3, 16, 8), packed_map), ((3, 4, 8, 8), grid_map)])
def test_batch_rows_independent(shape, attn):
    """Row i of a batch run equals a run on row i alone with the same noise."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    full = sample_amo(toy_fn(attn), x, SIGMAS, c=2.0, generator=torch.Generator().manual_seed(3))
    perturbed = x.clone()
    perturbed[0] = torch.randn(shape[1:], generator=torch.Generator().manual_seed(9))
    again = sample_amo(toy_fn(attn), perturbed, SIGMAS, c=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(full[1:], again[1:])  # other rows untouched by row 0's change
    assert not torch.equal(full[0], again[0])


def test_amo_tokens_with_zero_map_follow_euler():
    """Tokens with m = 0 take the Euler step (a = 1, b = 0; equal up to fp32 rounding of dt)."""
    x = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    sig = [1.0, 0.6, 0.3, 0.0]
    m = torch.tensor([[0.0, 1.0, 0.0, 0.5]])

    def fn(z, s):
        return StepOut(-z * 0.1, m)

    euler = sample_euler(fn, x, sig)
    amo = sample_amo(fn, x, sig, c=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(amo[:, [0, 2]], euler[:, [0, 2]], rtol=0, atol=1e-6)
    assert not torch.allclose(amo[:, 1], euler[:, 1])


def test_modulation_flat_and_nan_guards():
    attn = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [float("nan"), 1.0, 2.0]])
    m = amo_modulation(attn)
    assert torch.equal(m[0], torch.ones(3))  # flat map -> plain overshoot
    assert torch.allclose(m[1], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(m[2], torch.ones(3))  # NaN -> plain overshoot for that row
    assert torch.isfinite(m).all()


def test_sd3_upsampling_of_the_target():
    """One hot token on a 4x4 grid spreads bilinearly over its 2x2 latent patch and neighbours."""
    from amo_engine.samplers import amo_target_sigma

    x = torch.zeros(1, 16, 8, 8)
    m = torch.zeros(1, 16)
    m[0, 5] = 1.0  # token (1, 1)
    target = amo_target_sigma(m, x, sigma_next=0.5, c_delta=0.4, patch_size=2)
    assert target.shape == (1, 1, 8, 8)
    assert target[0, 0, 2:4, 2:4].min() < 0.5 and target[0, 0, 0, 7] == 0.5
    assert target.min() >= 0.1 - 1e-7


def test_sampler_errors():
    x = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="c must be a finite number >= 0"):
        sample_overshoot(toy_fn(), x, SIGMAS, c=-1.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_euler(toy_fn(), x, [0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match="attn=None"):
        sample_amo(toy_fn(), x, SIGMAS)
    with pytest.raises(ValueError, match="tokens but latents have"):
        sample_amo(toy_fn(lambda z: torch.ones(1, 7)), x, SIGMAS)


def _float64_amo_reference(fn, x, sigmas, c, noises):
    """AMO re-derived independently in float64 (packed latents), with the run's noise draws."""
    x = x.double()
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        out = fn(x.float(), s)
        r = out.attn.double()
        m = (r - r.amin(1, keepdim=True)) / (r.amax(1, keepdim=True) - r.amin(1, keepdim=True))  # [B, N]
        sigma_o = (s_next - c * (s - s_next) * m).clamp(min=0.0)[:, :, None]  # [B, N, 1]
        x = x + (sigma_o - s) * out.velocity.double()
        if s_next > 0:
            a = (1 - s_next) / (1 - sigma_o)
            b = (s_next**2 - (a * sigma_o) ** 2).clamp(min=0.0).sqrt()
            x = a * x + b * noises[i].double()
    return x


def test_amo_agrees_with_a_float64_derivation_on_the_flux_dev_grid():
    """FLUX-dev 1024² grid, 28 steps, c = 2: tokens with m = 0 follow Euler exactly; the whole run
    matches a float64 re-derivation (the renoise coefficients carry no float32 cancellation)."""
    sigmas = flow_match_sigmas(FLUX_CONFIG, 28, image_seq_len=4096)
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    base = torch.linspace(0.0, 1.0, 64)
    base[:8] = 0.0  # the map's minimum: m = 0 on these tokens, every step

    def fn(z, sigma):
        u = torch.tanh(z * 0.7 + sigma) - 0.3 * z
        return StepOut(u, base[None].expand(z.shape[0], -1) * (1.0 + sigma))

    out = sample_amo(fn, x, sigmas, c=2.0, generator=torch.Generator().manual_seed(3))
    euler = sample_euler(fn, x, sigmas)
    assert (out[:, :8] - euler[:, :8]).abs().max() <= 1e-6

    draws, gen = [], torch.Generator().manual_seed(3)
    for s_next in sigmas[1:]:
        draws.append(torch.randn(x.shape, generator=gen) if s_next > 0 else None)
    reference = _float64_amo_reference(fn, x, sigmas, 2.0, draws)
    assert (out.double() - reference).abs().max() <= 1e-5
