"""Sigma grids of diffusers' FlowMatchEulerDiscreteScheduler as host lists.

Reproduces, in numpy, what the SD3 and FLUX pipelines make the scheduler compute (float32
values, a terminal 0 appended), so samplers get plain floats and never touch a scheduler object.
Supported: static shift (SD3) and dynamic exponential/linear shift (FLUX), optional
shift_terminal. Karras/exponential/beta conversions and inverted sigmas are refused.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's mu: linear in the number of image tokens between (base_seq_len, base_shift) and (max, max)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def _static_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_match_sigmas(
    config: Mapping, num_steps: int, image_seq_len: int | None = None, flux_style: bool | None = None
) -> list[float]:
    """Sigma grid (length ``num_steps + 1``, ending in 0.0) for a FlowMatchEulerDiscrete config.

    ``flux_style``: the FLUX pipeline passes explicit sigmas ``linspace(1, 1/n, n)``; the SD3
    pipeline lets the scheduler derive them from its training range. Defaults to FLUX style when
    the config uses dynamic shifting.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise ValueError(f"scheduler option {key}=True is not supported by amo-engine's sigma grid")
    n_train = int(config.get("num_train_timesteps", 1000))
    shift = float(config.get("shift", 1.0))
    dynamic = bool(config.get("use_dynamic_shifting", False))
    flux_style = dynamic if flux_style is None else flux_style

    if flux_style:
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps).astype(np.float32)
    else:
        # The scheduler's training grid, shifted once at construction (float32), gives sigma_max/min.
        train = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy() / n_train
        if not dynamic:
            train = _static_shift(train, np.float32(shift)).astype(np.float32)
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        sigmas = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps) / n_train

    if dynamic:
        if image_seq_len is None:
            raise ValueError("this scheduler uses dynamic shifting: pass image_seq_len (image token count)")
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        if config.get("time_shift_type", "exponential") == "linear":
            sigmas = mu / (mu + (1 / sigmas - 1))
        else:
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    else:
        sigmas = _static_shift(sigmas, shift)

    terminal = config.get("shift_terminal")
    if terminal:
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - terminal))

    out = np.asarray(sigmas).astype(np.float32).tolist()
    return [float(s) for s in out] + [0.0]

