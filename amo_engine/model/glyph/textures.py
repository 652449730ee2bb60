"""Procedural ground textures for the scene model, drawn with numpy from a generator.

Each class has random phase, scale and contrast inside fixed ranges, so the model has to learn a
family of patterns, not one image; the ranges keep the classes apart (stripes run diagonally,
waves run horizontally with a wiggle, checks are axis-aligned squares). A pattern is zero-mean-ish
in about [-1, 1]; ``ground`` scales it by a random contrast around the tone's ground level.
"""

from __future__ import annotations

import numpy as np

CONTRAST = (22.0, 40.0)  # half-amplitude of a texture in grey levels


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys + 0.5, xs + 0.5


def bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Running-bond bricks: rows of height 5-8 px, bricks 2-3 rows high wide, 1 px mortar lines,
    every other row offset by half a brick, each brick's face a little lighter or darker."""
    bh = int(rng.integers(5, 9))
    bw = int(round(bh * rng.uniform(2.0, 3.0)))
    y0, x0 = rng.uniform(0, bh), rng.uniform(0, bw)
    ys, xs = _grid(h, w)
    row = np.floor((ys + y0) / bh)
    shifted = xs + x0 + (row % 2) * bw / 2
    col = np.floor(shifted / bw)
    mortar = ((ys + y0) % bh < 1.0) | (shifted % bw < 1.0)
    faces = rng.uniform(-0.25, 0.25, size=(64, 64)).astype(np.float32)
    face = 0.45 + faces[row.astype(int) % 64, col.astype(int) % 64]
    return np.where(mortar, -1.0, face).astype(np.float32)


def stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Diagonal stripes (30-60 degrees either way) of period 4-8 px, soft-edged."""
    angle = np.deg2rad(rng.uniform(30, 60) * rng.choice([-1, 1]))
    period, phase = rng.uniform(4.0, 8.0), rng.uniform(0, 2 * np.pi)
    ys, xs = _grid(h, w)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    return np.tanh(3.0 * np.sin(2 * np.pi * t / period + phase)).astype(np.float32)


def checks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An axis-aligned checkerboard of 3-6 px squares."""
    size = rng.uniform(3.0, 6.0)
    y0, x0 = rng.uniform(0, 2 * size, 2)
    ys, xs = _grid(h, w)
    parity = (np.floor((ys + y0) / size) + np.floor((xs + x0) / size)) % 2
    return (2.0 * parity - 1.0).astype(np.float32)


def dots(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Round dots of radius 1.2-2.2 px on a square grid of 5-8 px, anti-aliased."""
    spacing, radius = rng.uniform(5.0, 8.0), rng.uniform(1.2, 2.2)
    y0, x0 = rng.uniform(0, spacing, 2)
    ys, xs = _grid(h, w)
    dy = (ys + y0) % spacing - spacing / 2
    dx = (xs + x0) % spacing - spacing / 2
    cover = np.clip(radius + 0.5 - np.hypot(dy, dx), 0.0, 1.0)
    return (2.0 * cover - 0.6).astype(np.float32)


def waves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Horizontal wavy lines: period 5-8 px across, wiggling 1.5-3 px over 16-32 px along."""
    period, amp, length = rng.uniform(5.0, 8.0), rng.uniform(1.5, 3.0), rng.uniform(16.0, 32.0)
    phase, wphase = rng.uniform(0, 2 * np.pi, 2)
    ys, xs = _grid(h, w)
    t = ys + amp * np.sin(2 * np.pi * xs / length + wphase)
    return np.tanh(2.0 * np.sin(2 * np.pi * t / period + phase)).astype(np.float32)


def gravel(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gravel-like noise: white noise blurred by a Gaussian of 0.7-1.4 px, unit standard deviation."""
    sigma = rng.uniform(0.7, 1.4)
    noise = rng.standard_normal((h, w)).astype(np.float32)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]  # periodic blur: same statistics everywhere
    blurred = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))).real
    return np.clip(blurred / (blurred.std() + 1e-6) * 0.6, -1.0, 1.0).astype(np.float32)


def plain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A flat ground (the glyph model's): no texture at all."""
    return np.zeros((h, w), dtype=np.float32)


PATTERNS = {"bricks": bricks, "stripes": stripes, "checks": checks, "dots": dots, "waves": waves, "gravel": gravel,
            "plain": plain}


def ground(texture: str, level: float, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w] float32 grey levels: ``texture`` around ``level`` at a random contrast in CONTRAST."""
    try:
        pattern = PATTERNS[texture]
    except KeyError:
        raise ValueError(f"unknown texture {texture!r}; choose one of {', '.join(PATTERNS)}") from None
    contrast = rng.uniform(*CONTRAST)
    return np.clip(level + contrast * pattern(rng, h, w), 0.0, 255.0)
