"""Golden latent slices (tests/golden/): every model x sampler still produces the stored numbers,
within a cosine and a max-abs gate, so a numerical drift is caught by name."""

from __future__ import annotations

import json

import pytest
import torch

from golden.latents import COSINE_AT_LEAST, FILE, MAX_ABS, MODELS, SAMPLERS, latents, slice_of

STORED = json.loads(FILE.read_text())["cases"]


@pytest.mark.parametrize("model", MODELS)
def test_latents_match_the_golden_slices(model, preset_cache):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order the slices were stored with
    try:
        for sampler in SAMPLERS:
            got = torch.tensor(slice_of(latents(model, sampler, None if model == "glyph" else preset_cache)))
            want = torch.tensor(STORED[f"{model}/{sampler}"])
            assert got.shape == want.shape, f"{model}/{sampler}"
            cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
            worst = (got - want).abs().max().item()
            assert cosine >= COSINE_AT_LEAST and worst <= MAX_ABS, \
                f"{model}/{sampler} drifted: cosine {cosine:.6f}, max abs {worst:.3g} (regenerate with " \
                "tests/golden/latents.py only if the change is meant to move the numbers)"
    finally:
        torch.set_num_threads(threads)
