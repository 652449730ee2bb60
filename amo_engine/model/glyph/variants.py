"""The models trained here, as facts: canvas, sign rows, prompt, ground textures, text length, package folder.

``glyph``: a word on a sign over a flat ground (32×96 px, 4 × 12 cells of 8 px).
``glyph-scene``: the same recipe on a wider, taller canvas (48×128 px, 6 × 16 cells) whose ground is a
procedural texture named in the prompt (``a dark sign that says 'HAPPY' on bricks``): most of the
image is texture, which a sampler can smooth away; the sign sits on fixed cell rows, so the rows
above and below it are ground by construction (what the eval measures). The sign jitters one cell
about the centre, as glyph's does (a run with the sign anywhere on the row drew textures and signs
after 2000 steps but scrambled the letters: which letter a cell draws then depends on a far edge).

Everything else in ``glyph/`` reads a ``Variant``; nothing else restates these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

CELL = 8  # pixels per latent patch side (pixel unshuffle ×4, then 2×2 patches): one letter per cell


@dataclass(frozen=True)
class Variant:
    name: str  # the preset name
    rows: int  # canvas height in cells
    cols: int  # canvas width in cells
    sign_row: int  # first cell row of the sign (it is SIGN_ROWS tall)
    max_shift: int  # cells the sign jitters left/right of the centre
    text_length: int  # T5 tokens (the CLIPs keep the glyph model's 16)
    template: str
    textures: tuple[str, ...] = ()  # ground texture classes ({texture} in the template); () = flat ground
    folder: str = ""  # package data folder of the shipped weights

    @property
    def height(self) -> int:
        return self.rows * CELL

    @property
    def width(self) -> int:
        return self.cols * CELL

    @property
    def max_letters(self) -> int:
        """The longest word the canvas holds: one cell per letter plus a margin cell each side."""
        return self.cols - 2

    @property
    def sign_rows(self) -> tuple[int, ...]:
        return tuple(range(self.sign_row, self.sign_row + SIGN_ROWS))

    @property
    def ground_rows(self) -> tuple[int, ...]:
        """Cell rows that are ground in every image (above and below the sign)."""
        return tuple(r for r in range(self.rows) if r not in self.sign_rows)


SIGN_ROWS = 2
GLYPH = Variant("glyph", rows=4, cols=12, sign_row=1, max_shift=1, text_length=16,
                template="a {tone} sign that says '{word}'", folder="data/glyph")
GLYPH_SCENE = Variant("glyph-scene", rows=6, cols=16, sign_row=2, max_shift=1, text_length=20,
                      template="a {tone} sign that says '{word}' on {texture}",
                      textures=("bricks", "stripes", "checks", "dots", "waves", "gravel", "plain"),
                      folder="data/glyph-scene")
VARIANTS = {v.name: v for v in (GLYPH, GLYPH_SCENE)}


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown glyph model {name!r}; choose one of {', '.join(VARIANTS)}") from None


def of_settings(settings) -> Variant | None:
    """The glyph model a folder's settings describe (canvas and ground textures), or None for any
    other model (a folder trained here keeps its variant's canvas and textures in amo_engine.json)."""
    key = (settings.height, settings.width, tuple(settings.textures or ()))
    return next((v for v in VARIANTS.values() if (v.height, v.width, v.textures) == key), None)
