"""Euler, Overshooting and AMO samplers for rectified-flow models: small pure functions.

Convention (diffusers): ``x_sigma = (1 - sigma) * x0 + sigma * eps``, sigma=1 is noise, the model
returns ``u = dx/dsigma``. A sampler sees only ``fn(x, sigma) -> StepOut`` and a host list of
sigmas ending in 0; control flow runs on host floats, so the loop never waits on the device.
Updates are computed in float32 and cast back to the latent dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StepOut:
    velocity: torch.Tensor  # same shape as x
    attn: torch.Tensor | None = None  # [B, N_img] span->image attention mass, or None
    group_attn: torch.Tensor | None = None  # [B, G, N_img] each entity group's map (modulation engines only)


VelocityFn = Callable[[torch.Tensor, float], StepOut]
StepCallback = Callable[[int, torch.Tensor], None]  # (step index, x after the step)

FLAT_EPS = 1e-12  # a map whose max - min is below this counts as flat (m = 1)


def _check_grid(sigmas: Sequence[float]) -> None:
    if len(sigmas) < 2:
        raise ValueError("sigmas needs at least two values (start and end)")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError("sigmas must be strictly decreasing")
    if sigmas[-1] < 0 or sigmas[0] > 1:
        raise ValueError("sigmas must lie in [0, 1]")


def _check_c(c: float) -> None:
    if not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"overshoot strength c must be a finite number >= 0, got {c}")


def overshoot_coefficients(sigma: float, sigma_next: float, c: float) -> tuple[float, float, float]:
    """Host-side (sigma_o, a, b) of one overshooting step from ``sigma`` to ``sigma_next``.

    Move to ``sigma_o = max(sigma_next - c * delta, 0)``, then ``x_next = a * x_o + b * noise``.
    """
    delta = sigma - sigma_next
    sigma_o = max(sigma_next - c * delta, 0.0)
    a = (1.0 - sigma_next) / (1.0 - sigma_o)
    b = math.sqrt(max(sigma_next**2 - (a * sigma_o) ** 2, 0.0))
    return sigma_o, a, b


def _move(x: torch.Tensor, u: torch.Tensor, dt) -> torch.Tensor:
    """fp32 Euler move ``x + dt * u`` (dt a float or a broadcastable tensor)."""
    return x.float() + dt * u.float()


def _noise(x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise like ``x``: from one generator, or one generator per row (each row
    then draws exactly what a batch of one would draw from it)."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.randn((1, *x.shape[1:]), generator=g, device=x.device, dtype=torch.float32)
                          for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)


def _renoises(c: float, sigma_next: float) -> bool:
    """Whether a step draws noise: b > 0 exactly when c > 0 and sigma_next > 0."""
    return c > 0 and sigma_next > 0


def sample_euler(
    fn: VelocityFn, x: torch.Tensor, sigmas: Sequence[float], callback: StepCallback | None = None
) -> torch.Tensor:
    """Plain Euler on the given grid."""
    _check_grid(sigmas)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        u = fn(x, s).velocity
        x = _move(x, u, s_next - s).to(x.dtype)
        if callback is not None:
            callback(i, x)
    return x


def sample_overshoot(
    fn: VelocityFn,
    x: torch.Tensor,
    sigmas: Sequence[float],
    c: float = 2.0,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Overshooting sampler with scalar strength ``c`` (c = 0 is Euler, bit for bit)."""
    _check_grid(sigmas)
    _check_c(c)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        u = fn(x, s).velocity
        sigma_o, a, b = overshoot_coefficients(s, s_next, c)
        x_o = _move(x, u, sigma_o - s)
        if _renoises(c, s_next):
            x_o = a * x_o + b * _noise(x, generator)
        x = x_o.to(x.dtype)
        if callback is not None:
            callback(i, x)
    return x


def amo_modulation(attn: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation of an attention map [B, N] into m in [0, 1].

    A flat map (max - min below FLAT_EPS) or one with a non-finite value gives m = 1 for that
    sample (plain overshoot), never NaN. No host synchronisation.
    """
    r = attn.float()  # [B, N]
    finite_each = torch.isfinite(r)  # [B, N]
    finite = finite_each.all(dim=1, keepdim=True)  # [B, 1]
    r = torch.where(finite_each, r, torch.zeros_like(r))
    lo = r.amin(dim=1, keepdim=True)
    span = r.amax(dim=1, keepdim=True) - lo
    ok = finite & (span > FLAT_EPS)
    m = (r - lo) / torch.where(ok, span, torch.ones_like(span))
    return torch.where(ok, m, torch.ones_like(m)).clamp_(0.0, 1.0)


def amo_target_sigma(
    m: torch.Tensor, x: torch.Tensor, sigma_next: float, c_delta: float, patch_size: int
) -> torch.Tensor:
    """Per-token overshoot target ``max(sigma_next - c*delta*m, 0)`` in float64, shaped to broadcast
    over ``x``.

    Packed latents [B, N, C] (FLUX): one value per token -> [B, N, 1].
    Spatial latents [B, C, H, W] (SD3): on the (H/p, W/p) token grid, clamped, then bilinearly
    upsampled (align_corners=False) to [B, 1, H, W].
    """
    sigma_o = (sigma_next - c_delta * m.double()).clamp(min=0.0)  # [B, N] float64
    if x.ndim == 3:
        if m.shape[1] != x.shape[1]:
            raise ValueError(f"attention map has {m.shape[1]} tokens but latents have {x.shape[1]}")
        return sigma_o[:, :, None]  # [B, N, 1]
    if x.ndim == 4:
        h, w = x.shape[2] // patch_size, x.shape[3] // patch_size
        if m.shape[1] != h * w:
            raise ValueError(f"attention map has {m.shape[1]} tokens but the {h}x{w} patch grid needs {h * w}")
        grid = sigma_o.reshape(-1, 1, h, w)  # [B, 1, h, w]
        return F.interpolate(grid, size=x.shape[2:], mode="bilinear", align_corners=False)  # [B, 1, H, W]
    raise ValueError(f"latents must be [B, N, C] or [B, C, H, W], got shape {tuple(x.shape)}")


def amo_coefficients(sigma_o: torch.Tensor, sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token renoise coefficients (a, b) for float64 targets ``sigma_o``, without cancellation.

    ``a = (1 - s') / (1 - so)`` and ``b^2 = s'^2 - a^2 so^2 = (s' - so)(s' + a so) / (1 - so)``:
    a token whose target is ``s'`` itself (m = 0) gets exactly a = 1, b = 0.
    """
    a = (1.0 - sigma_next) / (1.0 - sigma_o)
    b = ((sigma_next - sigma_o) * (sigma_next + a * sigma_o) / (1.0 - sigma_o)).clamp(min=0.0).sqrt()
    return a, b


def sample_amo(
    fn: VelocityFn,
    x: torch.Tensor,
    sigmas: Sequence[float],
    c: float = 2.0,
    generator: torch.Generator | None = None,
    patch_size: int = 2,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Attention-modulated overshooting: per-token strength ``c * m_p`` from this step's map.

    Targets and coefficients are computed in float64 and cast to float32 once, so a token with
    m = 0 takes the Euler step exactly (no spurious noise from float32 rounding of a and b).
    """
    _check_grid(sigmas)
    _check_c(c)
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        out = fn(x, s)
        if out.attn is None:
            raise ValueError("sample_amo needs attention maps: the velocity function returned attn=None")
        m = amo_modulation(out.attn)  # [B, N]
        sigma_o = amo_target_sigma(m, x, s_next, c * (s - s_next), patch_size)  # float64
        x_o = _move(x, out.velocity, (sigma_o - s).float())
        if _renoises(c, s_next):
            a, b = amo_coefficients(sigma_o, s_next)
            x_o = a.float() * x_o + b.float() * _noise(x, generator)
        x = x_o.to(x.dtype)
        if callback is not None:
            callback(i, x)
    return x


