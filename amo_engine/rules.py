"""Rules a generation request must meet, each stated once and torch-free, so the command line (before
anything heavy loads), the pipeline and the HTTP schema refuse the same things in the same words.
"""

from __future__ import annotations

import math

SAMPLERS = ("euler", "overshoot", "amo")


def check_sampler(sampler) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def check_count(label: str, value, least: int = 1) -> None:
    """``value`` an integer of at least ``least``; ``label`` names it as the caller's user wrote it
    (``--steps`` on the command line, ``steps`` in Python)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{label} must be >= {least}, got {value!r}")


def check_strength(label: str, c) -> None:
    """The overshoot strength ``c``: a finite number >= 0 (0 is Euler)."""
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c >= 0):
        raise ValueError(f"{label} must be a finite number >= 0, got {c!r}")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` in pixels (the OpenAI images API's ``size``) -> (width, height)."""
    try:
        w, h = (int(v) for v in str(text).strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT in pixels, e.g. 128x48; got {text!r}") from None
    return w, h


def check_size(width: int | None, height: int | None, factor: int, largest: int | None = None,
               model: str = "this model") -> None:
    """Refuse a size ``model`` cannot draw, in pixels: each side a positive multiple of ``factor``
    (pixels per image token side) and at most ``largest`` (its position table's reach; None: any)."""
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if value <= 0 or value % factor:
            near = max(factor, value - value % factor)
            raise ValueError(f"{name} {value} px: {model} draws sizes in multiples of {factor} px (e.g. {near})")
        if largest is not None and value > largest:
            raise ValueError(f"{name} {value} px: {model} draws at most {largest} px a side (its position table "
                             f"holds {largest // factor} image tokens a side); ask for {largest} or less")
