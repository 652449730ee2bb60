"""Clean renders of the glyph model's images: one word on a sign that covers part of a grey canvas.

The canvas is a grid of 8×8-pixel cells, one cell per latent patch the transformer sees (pixel
unshuffle by 4, then 2×2 patches). Letters are monospace (DejaVu Sans Mono Bold at the size whose
advance is exactly one cell), so letter ``i`` of a word always fills cell ``i + 1`` of its sign; the
sign is one cell wider than the word on each side and two cells tall, on the middle two cell rows.
Its place jitters by one cell left or right of the centre (``MAX_SHIFT``); its tone (dark sign with light
letters on a light ground, or light sign with dark letters on a dark ground) is the one attribute
besides the word that the prompt sets. Cell-aligned letters are what make the model trainable on a
CPU in an hour: what it learns about drawing a letter in a cell holds at every place of the sign.
The font comes from matplotlib's wheel (a dependency), so no system font is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CELL = 8  # pixels per latent patch side
HEIGHT, WIDTH = 4 * CELL, 12 * CELL  # canvas in pixels: 4 × 12 cells
FONT_SIZE = 13.3  # DejaVu Sans Mono's advance is 0.6015 em: 8.0 pixels, one cell
SIGN_TOP = CELL  # the sign spans cell rows 1 and 2
SIGN_CELLS_Y = 2
MAX_SHIFT = 1  # cells the sign's place jitters left or right of the centre

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

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono-Bold.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall matplotlib (pip install --force-reinstall matplotlib)")
    return path


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path()), FONT_SIZE)


def sign_cells(word: str) -> int:
    """The sign's width in cells: one per letter and one margin cell on each side."""
    return len(word) + 2


def sign_places(word: str) -> int:
    """How many cell columns the sign's left edge can take on the canvas."""
    places = WIDTH // CELL - sign_cells(word) + 1
    if places < 1:
        raise ValueError(f"{word!r} has {len(word)} letters; the {WIDTH}-pixel canvas holds at most {WIDTH // CELL - 2}")
    return places


@lru_cache(maxsize=4096)
def _letters_alpha(word: str) -> np.ndarray:
    """[sign rows, sign columns] float32 coverage (0..1) of ``word``'s letters on its sign, letter
    ``i`` centred in cell ``i + 1``. Drawn once per word: rendering a batch is then array arithmetic."""
    from PIL import Image, ImageDraw

    height, width = SIGN_CELLS_Y * CELL, sign_cells(word) * CELL
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for i, letter in enumerate(word):
        draw.text(((i + 1.5) * CELL, height / 2), letter, fill=255, font=_font(), anchor="mm")
    return np.asarray(mask, dtype=np.float32) / 255.0


def render(word: str, tone: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, SignBox]:
    """A [HEIGHT, WIDTH] uint8 grey image of ``word`` on a ``tone`` sign, and the sign's box.

    ``rng`` shifts the sign up to ``MAX_SHIFT`` cells from the centre and jitters the grey levels;
    None centres it (the left of the two middle columns when there is no exact centre) with the
    nominal levels. Letters are blended onto the sign by their anti-aliased coverage.
    """
    if tone not in TONE_LEVELS:
        raise ValueError(f"unknown tone {tone!r}; choose one of {', '.join(TONE_LEVELS)}")
    places = sign_places(word)
    ground, sign, ink = TONE_LEVELS[tone]
    column = (places - 1) // 2
    if rng is not None:
        column = int(np.clip(column + rng.integers(-MAX_SHIFT, MAX_SHIFT + 1), 0, places - 1))
        ground, sign, ink = (int(np.clip(v + rng.integers(-LEVEL_JITTER, LEVEL_JITTER + 1), 0, 255)) for v in (ground, sign, ink))
    box = SignBox(column * CELL, SIGN_TOP, (column + sign_cells(word)) * CELL, SIGN_TOP + SIGN_CELLS_Y * CELL)
    image = np.full((HEIGHT, WIDTH), float(ground), dtype=np.float32)  # [H, W]
    image[box.top : box.bottom, box.left : box.right] = sign + (ink - sign) * _letters_alpha(word)
    return np.rint(image).astype(np.uint8), box


def render_batch(words, tones, rng: np.random.Generator) -> np.ndarray:
    """[B, 1, HEIGHT, WIDTH] float32 in [-1, 1] (the pipeline's pixel range)."""
    images = np.stack([render(w, t, rng)[0] for w, t in zip(words, tones)])  # [B, H, W] uint8
    return (images[:, None].astype(np.float32) / 127.5) - 1.0
