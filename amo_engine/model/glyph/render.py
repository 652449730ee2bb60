"""Clean renders of the glyph models' images: one word on a sign over a ground, on a grid of cells.

The canvas is a grid of 8×8-pixel cells, one cell per latent patch the transformer sees (pixel
unshuffle by 4, then 2×2 patches). Letters are monospace (DejaVu Sans Mono Bold at the size whose
advance is exactly one cell), so letter ``i`` of a word always fills cell ``i + 1`` of its sign; the
sign is one cell wider than the word on each side and two cells tall, on the variant's fixed cell
rows. Its place jitters left or right (``Variant.max_shift``); its tone (dark sign with light
letters on a light ground, or light sign with dark letters on a dark ground) is an attribute the
prompt sets, and on the scene model so is the ground's texture (``textures.py``). Cell-aligned
letters are what make the model trainable on a CPU in an hour: what it learns about drawing a
letter in a cell holds at every place of the sign. The font comes from matplotlib's wheel (a
dependency), so no system font is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from amo_engine.model.glyph.textures import ground as texture_ground
from amo_engine.model.glyph.variants import CELL, GLYPH, SIGN_ROWS, Variant

FONT_SIZE = 13.3  # DejaVu Sans Mono's advance is 0.6015 em: 8.0 pixels, one cell

# grey levels (0..255): ground, sign, letters
TONE_LEVELS = {"dark": (200, 45, 235), "light": (60, 215, 25)}
TEXTURED_GROUND_LEVELS = {"dark": 165, "light": 90}  # a texture's mean level: room for its contrast
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


def check_word_fits(word: str, variant: Variant = GLYPH) -> None:
    if len(word) > variant.max_letters:
        raise ValueError(f"{word!r} has {len(word)} letters; the {variant.width}-pixel canvas of {variant.name} holds "
                         f"at most {variant.max_letters}: quote a shorter word")


def sign_places(word: str, variant: Variant = GLYPH) -> int:
    """How many cell columns the sign's left edge can take on the canvas."""
    check_word_fits(word, variant)
    return variant.cols - sign_cells(word) + 1


@lru_cache(maxsize=4096)
def _letters_alpha(word: str) -> np.ndarray:
    """[sign rows, sign columns] float32 coverage (0..1) of ``word``'s letters on its sign, letter
    ``i`` centred in cell ``i + 1``. Drawn once per word: rendering a batch is then array arithmetic."""
    from PIL import Image, ImageDraw

    height, width = SIGN_ROWS * CELL, sign_cells(word) * CELL
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for i, letter in enumerate(word):
        draw.text(((i + 1.5) * CELL, height / 2), letter, fill=255, font=_font(), anchor="mm")
    return np.asarray(mask, dtype=np.float32) / 255.0


def check_texture(texture: str | None, variant: Variant) -> None:
    if variant.textures and texture not in variant.textures:
        raise ValueError(f"{variant.name} draws grounds of {', '.join(variant.textures)}; not {texture!r}")
    if not variant.textures and texture is not None:
        raise ValueError(f"{variant.name} has a flat ground; it takes no texture ({texture!r})")


def ground_image(texture: str | None, tone: str, rng: np.random.Generator | None, variant: Variant = GLYPH,
                 level: float | None = None) -> np.ndarray:
    """[H, W] float32: the ground alone (no sign). Flat at ``level`` (default: the tone's) when the
    variant has no textures or ``texture`` is plain."""
    if tone not in TONE_LEVELS:
        raise ValueError(f"unknown tone {tone!r}; choose one of {', '.join(TONE_LEVELS)}")
    check_texture(texture, variant)
    if texture is None:
        return np.full((variant.height, variant.width), float(TONE_LEVELS[tone][0] if level is None else level),
                       dtype=np.float32)
    level = TEXTURED_GROUND_LEVELS[tone] if level is None else level
    return texture_ground(texture, level, rng if rng is not None else np.random.default_rng(0), variant.height,
                          variant.width)


def render(word: str, tone: str, rng: np.random.Generator | None = None, variant: Variant = GLYPH,
           texture: str | None = None) -> tuple[np.ndarray, SignBox]:
    """A [H, W] uint8 grey image of ``word`` on a ``tone`` sign over the ground, and the sign's box.

    ``rng`` shifts the sign up to ``variant.max_shift`` cells from the centre and jitters the grey
    levels; None centres it (the left of the two middle columns when there is
    no exact centre) with the nominal levels. Letters are blended onto the sign by their
    anti-aliased coverage. ``texture``: the ground's texture class (variants with textures only).
    """
    if tone not in TONE_LEVELS:
        raise ValueError(f"unknown tone {tone!r}; choose one of {', '.join(TONE_LEVELS)}")
    check_texture(texture, variant)
    places = sign_places(word, variant)
    flat, sign, ink = TONE_LEVELS[tone]
    level = flat if texture is None else TEXTURED_GROUND_LEVELS[tone]
    column = (places - 1) // 2
    if rng is not None:
        column = int(np.clip(column + rng.integers(-variant.max_shift, variant.max_shift + 1), 0, places - 1))
        level, sign, ink = (int(np.clip(v + rng.integers(-LEVEL_JITTER, LEVEL_JITTER + 1), 0, 255)) for v in (level, sign, ink))
    top = variant.sign_row * CELL
    box = SignBox(column * CELL, top, (column + sign_cells(word)) * CELL, top + SIGN_ROWS * CELL)
    image = ground_image(texture, tone, rng, variant, level)  # [H, W]
    image[box.top : box.bottom, box.left : box.right] = sign + (ink - sign) * _letters_alpha(word)
    return np.rint(image).astype(np.uint8), box


def render_batch(words, tones, rng: np.random.Generator, variant: Variant = GLYPH, textures=None) -> np.ndarray:
    """[B, 1, H, W] float32 in [-1, 1] (the pipeline's pixel range)."""
    textures = textures if textures is not None else [None] * len(words)
    images = np.stack([render(w, t, rng, variant, x)[0] for w, t, x in zip(words, tones, textures)])  # [B, H, W] uint8
    return (images[:, None].astype(np.float32) / 127.5) - 1.0
