"""Pure measures for the OCR evaluation: what happens outside the text (the paired test is in stats.py)."""

from __future__ import annotations

import numpy as np

from amo_engine.model.glyph.locate import longest_run

GROUND_DIFF = 40  # grey levels from the ground level that count as "not ground"
SIGN_COLUMN_FRACTION = 0.3  # a column may be part of the sign when this share of it is not ground


def ground_region(grey: np.ndarray) -> np.ndarray:
    """[H, W] bool: the columns left and right of the sign (1-pixel margin), i.e. outside the text.

    The ground level is the median of the image border. A column belongs to the sign when more
    than SIGN_COLUMN_FRACTION of it differs from the ground by over GROUND_DIFF; the sign is the
    longest run of such columns (gaps of up to 3 columns closed: letters whose ink is close to the
    ground's level thin a column out). Everything in the other columns is ground.
    """
    g = grey.astype(np.float32)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    level = np.median(border)
    off = np.abs(g - level) > GROUND_DIFF  # [H, W]
    sign_cols = longest_run(off.mean(axis=0) > SIGN_COLUMN_FRACTION, max_gap=3)  # [W]
    if sign_cols.any():  # grow by one pixel each side
        sign_cols = sign_cols | np.roll(sign_cols, 1) | np.roll(sign_cols, -1)
    return np.broadcast_to(~sign_cols[None, :], g.shape)


def outside_text(grey: np.ndarray) -> dict[str, float]:
    """Noise and high-frequency energy on the ground (outside the sign): a clean render has 0 and 0.

    ``ground_std``: standard deviation of the ground pixels (grey levels); ``ground_hf``: mean
    absolute 4-neighbour Laplacian there; ``ground_share``: the share of the image counted as ground.
    """
    g = grey.astype(np.float32)
    region = ground_region(grey)
    lap = np.zeros_like(g)
    lap[1:-1, 1:-1] = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    inner = region.copy()
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    share = float(region.mean())
    return {
        "ground_std": float(g[region].std()) if region.any() else float("nan"),
        "ground_hf": float(np.abs(lap[inner]).mean()) if inner.any() else float("nan"),
        "ground_share": share,
    }
