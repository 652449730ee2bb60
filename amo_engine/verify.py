"""Parity of an engine against the eager backbone on the same feeds (used by inspect --verify and
the conformance tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from .backbone import ScoreConfig, make_backbone
from .backends import load_backend
from .backends.eager import EagerBackend
from .engine import read_manifest
from .spec import sample_feeds


def score_config_of(manifest: dict) -> ScoreConfig:
    return ScoreConfig(tuple(manifest["hooked_blocks"]), manifest["max_span_tokens"])


def engine_parity(model, engine_dir: Path | str, kind: str = "ort", device: str = "cpu", seed: int = 0) -> dict:
    """Max abs differences (velocity, attn) and velocity cosine between ``kind`` and eager."""
    manifest = read_manifest(engine_dir)
    backend = load_backend(kind, engine_dir, device=device, model=model)
    try:
        feeds = sample_feeds(backend.spec, device, seed)
        eager = EagerBackend(make_backbone(model.pipe.transformer, score_config_of(manifest)), backend.spec)
        want = {k: v.clone() for k, v in eager(feeds).items()}
        got = backend(feeds)
        v_want, v_got = want["velocity"].float().flatten(), got["velocity"].float().flatten()
        return {
            "backend": kind,
            "velocity_max_abs": float((v_got - v_want).abs().max()),
            "attn_max_abs": float((got["attn"].float() - want["attn"].float()).abs().max()),
            "velocity_cosine": float(torch.nn.functional.cosine_similarity(v_got, v_want, dim=0)),
        }
    finally:
        backend.close()
