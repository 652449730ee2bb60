"""Where things are in a glyph model's image: the sign (to read the word) and the ground band (to
measure the texture), from the model's settings and the pixels alone.

On a textured ground the sign sits on fixed cell rows (``ModelSettings.sign_rows``), so the other
rows are ground by construction. The sign's columns are found in its rows: a column belongs to
the sign when most of its pixels lie far from the ground band's mean level (the sign and its
letters contrast with the ground; a texture swings around its mean by less). OCR then reads the
sign alone: its recogniser reads texture as letters when given the whole canvas. A flat-ground
model (glyph) is read whole, as its eval always was.
"""

from __future__ import annotations

import numpy as np

from amo_engine.model.glyph.variants import CELL

SIGN_LEVEL_DIFF = 60  # grey levels from the ground's mean that a sign pixel lies beyond
SIGN_COLUMN_SHARE = 0.4  # share of a column's pixels in the sign rows that must be that far


def longest_run(cols: np.ndarray, max_gap: int) -> np.ndarray:
    """The longest run of True in ``cols`` after closing gaps of up to ``max_gap`` False values."""
    closed = cols.copy()
    idx = np.flatnonzero(cols)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            closed[a:b] = True
    best, start, out = 0, None, np.zeros_like(cols)
    for i, v in enumerate(list(closed) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best:
                best, out = i - start, np.zeros_like(cols)
                out[start:i] = True
            start = None
    return out


def sign_rows_slice(sign_rows) -> slice:
    return slice(min(sign_rows) * CELL, (max(sign_rows) + 1) * CELL)


def ground_mask(shape: tuple[int, int], sign_rows) -> np.ndarray:
    """[H] bool: the pixel rows that are ground by construction (every cell row but the sign's)."""
    rows = np.ones(shape[0], dtype=bool)
    rows[sign_rows_slice(sign_rows)] = False
    return rows


def sign_crop(grey: np.ndarray, sign_rows) -> np.ndarray:
    """The sign's pixels: its cell rows, and the columns that contrast with the ground (one pixel
    of margin); the whole band of sign rows when no column does."""
    g = grey.astype(np.float32)
    band = g[sign_rows_slice(sign_rows)]
    level = g[ground_mask(g.shape, sign_rows)].mean()
    cols = longest_run((np.abs(band - level) > SIGN_LEVEL_DIFF).mean(axis=0) > SIGN_COLUMN_SHARE, max_gap=3)
    idx = np.flatnonzero(cols)
    if len(idx) == 0:
        return grey[sign_rows_slice(sign_rows)]
    return grey[sign_rows_slice(sign_rows), max(idx[0] - 1, 0) : idx[-1] + 2]


def read_words(reader, images, settings) -> list[str]:
    """OCR readings of generated images: the sign alone on a textured model, the whole image else."""
    if not settings.sign_rows:
        return reader(images)
    return reader([sign_crop(np.asarray(image.convert("L") if hasattr(image, "convert") else image),
                             settings.sign_rows) for image in images])
