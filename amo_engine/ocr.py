"""Offline OCR of single-line text images: rapidocr (models inside its wheel) or Debian's tesseract.

Images are upscaled x3 (bicubic) before reading. rapidocr runs its recogniser only (the image is
one line of text, so detection adds nothing but misses on short words); tesseract runs as one
text line (``--psm 7``). Readings are normalised to upper-case letters and digits.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ENGINES = ("rapidocr", "tesseract")
UPSCALE = 3


def normalise(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def check_available(engine: str) -> None:
    """Raise ImportError naming the install when ``engine`` is missing (call before heavy work)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown OCR engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "rapidocr":
        import importlib.util

        if importlib.util.find_spec("rapidocr") is None:
            raise ImportError("rapidocr is not installed: pip install 'amo-engine[eval]' (or pip install rapidocr)")
    elif shutil.which("tesseract") is None:
        raise ImportError("tesseract is not installed: apt-get install -y tesseract-ocr (or use --ocr rapidocr)")


def _upscaled_rgb(image) -> np.ndarray:
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    return np.asarray(img.resize((img.width * UPSCALE, img.height * UPSCALE), Image.BICUBIC))


class Reader:
    """``Reader("rapidocr")(images) -> list[str]``: one normalised reading per image."""

    def __init__(self, engine: str = "rapidocr"):
        check_available(engine)
        self.engine = engine
        self._rapid = None
        if engine == "rapidocr":
            import logging

            from rapidocr import RapidOCR

            self._rapid = RapidOCR(params={"Global.log_level": "error"})
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def __call__(self, images) -> list[str]:
        return [self.read(image) for image in images]

    def read(self, image) -> str:
        rgb = _upscaled_rgb(image)
        if self._rapid is not None:
            out = self._rapid(rgb, use_det=False, use_cls=False, use_rec=True)
            return normalise(" ".join(out.txts or ()))
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "line.png"
            Image.fromarray(rgb).save(path)
            done = subprocess.run(
                ["tesseract", str(path), "stdout", "--psm", "7", "-c",
                 "tessedit_char_whitelist=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"],
                capture_output=True, text=True, check=False,
            )
        return normalise(done.stdout)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ned(read: str, truth: str) -> float:
    """Normalised edit distance in [0, 1]: 0 = exact."""
    longest = max(len(read), len(truth))
    return edit_distance(read, truth) / longest if longest else 0.0
