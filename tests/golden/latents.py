"""Golden latent slices: what each model x sampler produces, stored so a numerical drift (a library
upgrade, a changed default, a refactor that reorders a reduction) is caught by name.

Each case: a fixed prompt, seed and step count, eager float32 on the CPU; the final latents are
flattened and every ``STRIDE``-th value is kept (at most ``VALUES``). Regenerate after a change
that is meant to move the numbers, and say why in the commit:

    .venv/bin/python tests/golden/latents.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FILE = Path(__file__).with_name("latents.json")
MODELS = ("tiny-sd3", "tiny-sd35", "tiny-flux", "tiny-auraflow", "glyph")
SAMPLERS = ("euler", "overshoot", "amo")
PROMPTS = {"glyph": "a dark sign that says 'HAPPY'"}
PROMPT = "A sign that says 'OPEN'"
STEPS, SEED, VALUES = 4, 7, 256
COSINE_AT_LEAST, MAX_ABS = 0.9999, 1e-4  # the gates (the eager CPU path is deterministic: expect ~1e-6)


def latents(model_name: str, sampler: str, cache_dir=None):
    """The final latents of one case, flattened (float32)."""
    from amo_engine.model.load import load_model
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    model = load_model(model_name, cache_dir=cache_dir)
    result = AmoPipeline(model)(GenerateConfig([PROMPTS.get(model_name, PROMPT)], sampler=sampler, steps=STEPS,
                                               seed=SEED, c=2.0))
    return result.latents.float().flatten()


def slice_of(flat) -> list[float]:
    stride = max(1, flat.numel() // VALUES)
    return [round(float(v), 7) for v in flat[::stride][:VALUES]]


def main(cache_dir=None) -> None:
    import torch

    torch.set_num_threads(1)  # one reduction order, whatever the machine
    cases = {f"{m}/{s}": slice_of(latents(m, s, cache_dir)) for m in MODELS for s in SAMPLERS}
    FILE.write_text(json.dumps({"steps": STEPS, "seed": SEED, "values": VALUES, "cases": cases}, indent=0) + "\n")
    print(f"wrote {len(cases)} cases to {FILE}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
