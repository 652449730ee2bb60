"""Clean renders of the glyph model's images: one word on a sign that covers part of a grey canvas.

The sign's place jitters (up to 16 pixels left or right of the centre, 3 up or down); its tone (dark sign with light letters on a light ground, or light sign
with dark letters on a dark ground) is the one attribute besides the word that the prompt sets.
The font is DejaVu Sans Bold from matplotlib's wheel (a dependency), so no system font is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 32, 128  # canvas in pixels
FONT_SIZE = 15
PAD_X, PAD_Y = 5, 4  # sign margin around the text box
MARGIN = 2  # smallest gap between the sign and the canvas edge
MAX_SHIFT_X, MAX_SHIFT_Y = 16, 3  # jitter of the sign's place around the centre (pixels)

# grey levels (0..255): ground, sign, letters
TONE_LEVELS = {"dark": (200, 45, 235), "light": (60, 215, 25)}
LEVEL_JITTER = 12


@dataclass(frozen=True)
class SignBox:
    left: int
    top: int
    right: int  # exclusive
    bottom: int  # exclusive


def font_path() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall matplotlib (pip install --force-reinstall matplotlib)")
    return path


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path()), FONT_SIZE)


def sign_size(word: str) -> tuple[int, int]:
    """(width, height) in pixels of the sign around ``word``."""
    left, top, right, bottom = _font().getbbox(word)
    return right - left + 2 * PAD_X, FONT_SIZE - 4 + 2 * PAD_Y


def render(word: str, tone: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, SignBox]:
    """A [HEIGHT, WIDTH] uint8 grey image of ``word`` on a ``tone`` sign, and the sign's box.

    ``rng`` jitters the sign's place and the grey levels; None centres it with the nominal levels.
    """
    from PIL import Image, ImageDraw

    if tone not in TONE_LEVELS:
        raise ValueError(f"unknown tone {tone!r}; choose one of {', '.join(TONE_LEVELS)}")
    font = _font()
    w, h = sign_size(word)
    w, h = min(w, WIDTH - 2 * MARGIN), min(h, HEIGHT - 2 * MARGIN)
    ground, sign, ink = TONE_LEVELS[tone]
    if rng is None:
        left, top = (WIDTH - w) // 2, (HEIGHT - h) // 2
    else:
        cx, cy = (WIDTH - w) // 2, (HEIGHT - h) // 2
        left = int(np.clip(cx + rng.integers(-MAX_SHIFT_X, MAX_SHIFT_X + 1), MARGIN, WIDTH - MARGIN - w))
        top = int(np.clip(cy + rng.integers(-MAX_SHIFT_Y, MAX_SHIFT_Y + 1), MARGIN, HEIGHT - MARGIN - h))
        ground, sign, ink = (int(np.clip(v + rng.integers(-LEVEL_JITTER, LEVEL_JITTER + 1), 0, 255)) for v in (ground, sign, ink))
    image = Image.new("L", (WIDTH, HEIGHT), ground)
    draw = ImageDraw.Draw(image)
    box = SignBox(left, top, left + w, top + h)
    draw.rectangle((box.left, box.top, box.right - 1, box.bottom - 1), fill=sign)
    draw.text(((box.left + box.right) / 2, (box.top + box.bottom) / 2), word, fill=ink, font=font, anchor="mm")
    return np.asarray(image), box


def render_batch(words, tones, rng: np.random.Generator) -> np.ndarray:
    """[B, 1, HEIGHT, WIDTH] float32 in [-1, 1] (the pipeline's pixel range)."""
    images = np.stack([render(w, t, rng)[0] for w, t in zip(words, tones)])  # [B, H, W] uint8
    return (images[:, None].astype(np.float32) / 127.5) - 1.0
