"""Texture measures on the ground band of a textured glyph model's image (the cell rows above and
below the sign, ground by construction): which texture class it shows, how much of the class's
high-frequency energy survives, and how far its spectrum lies from the class's.

- **Features**: the log power spectrum of each band strip (mean removed), pooled into radial ×
  orientation bins and averaged over the strips above and below the sign.
- **Class**: linear discriminant (shared covariance, shrunk) fitted on clean renders of every class
  and tone; its accuracy on other clean renders is the ceiling.
- **HF ratio**: mean |Laplacian| of the band over the mean of clean renders of the same class and
  tone: 1.0 = as sharp as the clean class, < 1 smoothed (undefined for ``plain``, which has none).
- **Spectral distance**: RMS distance of the features to the class's clean centroid, in units of
  the mean distance of clean renders to theirs: about 1.0 for a clean render.

Everything here is numpy on uint8 grey images; references are rendered from fixed seeds, so the
measures of an image never depend on what else is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from amo_engine.model.glyph.locate import ground_mask

RADIAL_EDGES = (0.0, 1 / 32, 1 / 16, 1 / 10, 1 / 8, 1 / 6, 1 / 5, 1 / 4, 1 / 3, 0.5, 0.75)  # cycles per pixel
ORIENTATIONS = 4  # bins of the frequency's direction over [0, pi)
POWER_FLOOR = 1e-2  # grey levels^2 per bin: what a flat ground's log power bottoms out at
REFERENCE_RENDERS = 60  # clean renders per (class, tone) that fit the classifier and the references
CHECK_SEED, FIT_SEED = 1, 0  # the ceiling is measured on renders the classifier was not fitted on
SHRINK = 0.1


def ground_strips(grey: np.ndarray, sign_rows) -> list[np.ndarray]:
    """The ground band as its contiguous strips of pixel rows (above and below the sign), float32."""
    rows = ground_mask(grey.shape, sign_rows)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(np.int8), [0]])))
    return [grey[a:b].astype(np.float32) for a, b in zip(edges[::2], edges[1::2])]


@lru_cache(maxsize=8)
def _bins(h: int, w: int) -> tuple[np.ndarray, int]:
    """[h, w//2+1] bin index of each rfft2 coefficient (-1: the DC term), and the number of bins."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    angle = np.mod(np.arctan2(fy, fx), np.pi)
    r = np.clip(np.digitize(radius, RADIAL_EDGES[1:-1]), 0, len(RADIAL_EDGES) - 2)
    a = np.minimum((angle / np.pi * ORIENTATIONS).astype(int), ORIENTATIONS - 1)
    index = r * ORIENTATIONS + a
    index[0, 0] = -1
    return index, (len(RADIAL_EDGES) - 1) * ORIENTATIONS


def spectrum_features(grey: np.ndarray, sign_rows) -> np.ndarray:
    """[bins] log mean power per (radius, orientation) bin over the ground strips."""
    total, count = None, None
    for strip in ground_strips(grey, sign_rows):
        index, n = _bins(*strip.shape)
        power = np.abs(np.fft.rfft2(strip - strip.mean())) ** 2 / strip.size
        keep = index >= 0
        sums = np.bincount(index[keep], power[keep], minlength=n)
        counts = np.bincount(index[keep], minlength=n)
        total = sums if total is None else total + sums
        count = counts if count is None else count + counts
    return np.log(total / np.maximum(count, 1) + POWER_FLOOR)


def high_frequency(grey: np.ndarray, sign_rows) -> float:
    """Mean |4-neighbour Laplacian| over the ground strips' inner pixels (grey levels)."""
    values = []
    for s in ground_strips(grey, sign_rows):
        if s.shape[0] >= 3 and s.shape[1] >= 3:
            lap = 4 * s[1:-1, 1:-1] - s[:-2, 1:-1] - s[2:, 1:-1] - s[1:-1, :-2] - s[1:-1, 2:]
            values.append(np.abs(lap).ravel())
    return float(np.concatenate(values).mean()) if values else float("nan")


@dataclass(frozen=True)
class TextureReference:
    """What clean renders of a textured glyph model look like on the ground band, and a classifier."""

    classes: tuple[str, ...]
    sign_rows: tuple[int, ...]
    mean: np.ndarray  # [F] feature standardisation
    scale: np.ndarray  # [F]
    weights: np.ndarray  # [K, F] linear discriminant
    bias: np.ndarray  # [K]
    centroids: np.ndarray  # [K, F] class means of the raw features
    clean_hf: dict  # (class, tone) -> mean HF of clean renders
    distance_unit: float  # mean RMS distance of clean renders to their class centroid

    def classify(self, features: np.ndarray) -> np.ndarray:
        """[N] class indices for [N, F] features."""
        z = (features - self.mean) / self.scale
        return np.argmax(z @ self.weights.T + self.bias, axis=1)

    def measure(self, grey: np.ndarray, texture: str, tone: str) -> dict:
        """The texture measures of one image whose prompt asked for ``texture`` on a ``tone`` sign."""
        f = spectrum_features(grey, self.sign_rows)
        predicted = self.classes[int(self.classify(f[None])[0])]
        k = self.classes.index(texture)
        clean = self.clean_hf[texture, tone]
        hf = high_frequency(grey, self.sign_rows)
        return {
            "texture_read": predicted,
            "texture_right": predicted == texture,
            "ground_hf": hf,
            "hf_ratio": hf / clean if clean > 0 else float("nan"),
            "spectral_distance": float(np.sqrt(np.mean((f - self.centroids[k]) ** 2)) / self.distance_unit),
        }


def reference_images(variant, seed: int, n: int = REFERENCE_RENDERS):
    """Clean renders, ``n`` per (texture, tone), words drawn from the vocabulary: (grey, texture, tone)."""
    from amo_engine.model.glyph.render import render
    from amo_engine.model.glyph.words import TONES, TRAIN_WORDS

    for texture in variant.textures:
        for tone in TONES:
            rng = np.random.default_rng([seed, variant.textures.index(texture), TONES.index(tone)])
            for i in range(n):
                word = TRAIN_WORDS[int(rng.integers(len(TRAIN_WORDS)))]
                yield render(word, tone, rng, variant, texture)[0], texture, tone


@lru_cache(maxsize=4)
def fit_reference(variant_name: str) -> TextureReference:
    """The classifier and clean references for a textured glyph model, from FIT_SEED renders."""
    from amo_engine.model.glyph.variants import variant

    v = variant(variant_name)
    if not v.textures:
        raise ValueError(f"{variant_name} has a flat ground: no texture measures")
    feats, labels, hfs = [], [], {}
    for grey, texture, tone in reference_images(v, FIT_SEED):
        feats.append(spectrum_features(grey, v.sign_rows))
        labels.append(v.textures.index(texture))
        hfs.setdefault((texture, tone), []).append(high_frequency(grey, v.sign_rows))
    x, y = np.stack(feats), np.array(labels)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    k = len(v.textures)
    mu = np.stack([z[y == c].mean(axis=0) for c in range(k)])  # [K, F]
    within = z - mu[y]
    cov = within.T @ within / len(z)
    cov = (1 - SHRINK) * cov + SHRINK * np.eye(len(cov)) * np.trace(cov) / len(cov)
    weights = np.linalg.solve(cov, mu.T).T  # [K, F]
    bias = -0.5 * np.sum(weights * mu, axis=1)
    centroids = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    unit = float(np.mean(np.sqrt(np.mean((x - centroids[y]) ** 2, axis=1))))
    return TextureReference(v.textures, v.sign_rows, mean, scale, weights, bias, centroids,
                            {key: float(np.mean(vals)) for key, vals in hfs.items()}, unit)


def ceiling(variant_name: str) -> dict:
    """The texture measures on clean renders the classifier was not fitted on (CHECK_SEED): class
    accuracy (overall and per class), mean HF ratio and spectral distance — the best a sampler can do."""
    from amo_engine.model.glyph.variants import variant

    ref, v = fit_reference(variant_name), variant(variant_name)
    rows = [ref.measure(grey, texture, tone) | {"texture": texture}
            for grey, texture, tone in reference_images(v, CHECK_SEED)]
    return summarise_texture(rows) | {
        "per_class": {t: float(np.mean([r["texture_right"] for r in rows if r["texture"] == t])) for t in v.textures}}


def summarise_texture(rows: list[dict]) -> dict:
    """Mean texture measures of rows (HF ratio over the textured classes only)."""
    hf = [r["hf_ratio"] for r in rows if r["hf_ratio"] == r["hf_ratio"]]
    return {"n": len(rows), "texture_acc": float(np.mean([r["texture_right"] for r in rows])),
            "hf_ratio": float(np.mean(hf)) if hf else float("nan"),
            "spectral_distance": float(np.mean([r["spectral_distance"] for r in rows]))}
