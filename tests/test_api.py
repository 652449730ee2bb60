"""The Python API (``from amo_engine import AmoFlowPipeline``): the same images as the pipeline it
wraps, an engine behind it, a user's own diffusers pipeline left exactly as it was, clear refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from amo_engine import AmoFlowPipeline
from amo_engine.model.load import load_model
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

PROMPT = "a dark sign that says 'HAPPY'"


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_import_stays_light_and_the_front_door_names_the_api():
    code = ("import sys, amo_engine; light = 'torch' not in sys.modules; "
            "print(light, amo_engine.AmoFlowPipeline.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "AmoFlowPipeline"], out.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import amo_engine

        amo_engine.Nope  # noqa: B018


def test_from_pretrained_gives_the_pipelines_own_images_and_maps():
    pipe = AmoFlowPipeline.from_pretrained("glyph")
    out = pipe([PROMPT, "a light sign that says 'OCEAN'"], sampler="amo", c=2.0, seed=3, num_inference_steps=8)
    direct = AmoPipeline(load_model("glyph"))(GenerateConfig([PROMPT, "a light sign that says 'OCEAN'"],
                                                             sampler="amo", c=2.0, seed=3, steps=8))
    assert out.sampler == "amo" and len(out.images) == 2
    for ours, theirs in zip(out.images, direct.images):
        assert np.array_equal(pixels(ours), pixels(theirs))
    assert torch.equal(out.attention_maps, direct.attn_map) and out.attention_maps.shape == (2, 4, 12)


@pytest.mark.slow
def test_from_pretrained_on_an_engine_matches_eager(tmp_path):
    from amo_engine.cli import main

    assert main(["export", "--model", "glyph", "--out", str(tmp_path / "engine")]) == 0
    eager = AmoFlowPipeline.from_pretrained("glyph")(PROMPT, seed=0, num_inference_steps=6)
    with AmoFlowPipeline.from_pretrained("glyph", engine=tmp_path / "engine") as fast:  # ORT by default
        assert type(fast.pipeline._backend).__name__ == "OrtBackend"
        out = fast(PROMPT, seed=0, num_inference_steps=6)
    assert np.abs(pixels(out.images[0]) - pixels(eager.images[0])).max() <= 2  # fp32 engine vs eager
    assert torch.allclose(out.attention_maps, eager.attention_maps, atol=1e-4)


def test_from_diffusers_adds_amo_and_leaves_the_users_pipeline_as_it_was(models):
    pipe = models["sd3"].pipe
    processors = dict(pipe.transformer.attn_processors)

    def stock():
        return pipe("a sign that says 'OPEN'", num_inference_steps=3, height=128, width=128,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    before = stock()
    amo = AmoFlowPipeline.from_diffusers(pipe, blocks=[0])
    out = amo("a sign that says 'OPEN'", num_inference_steps=3, height=128, width=128)
    assert out.sampler == "amo" and out.attention_maps.shape == (1, 8, 8) and out.attention_maps.max() > 0
    assert np.array_equal(stock(), before)  # bit for bit, after our call
    assert dict(pipe.transformer.attn_processors) == processors


def test_refusals_name_the_fix(models):
    with pytest.raises(ValueError, match="pass engine=<folder from amo-engine export>, or backend='eager'"):
        AmoFlowPipeline.from_pretrained("glyph", backend="ort")
    with pytest.raises(ValueError, match="torch_dtype must be one of"):
        AmoFlowPipeline.from_pretrained("glyph", torch_dtype=torch.int8)

    class NotATransformer(torch.nn.Module):
        config = None

    class Pipe:
        transformer = NotATransformer()

    with pytest.raises(ValueError, match="unsupported transformer class NotATransformer"):
        AmoFlowPipeline.from_diffusers(Pipe())
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        AmoFlowPipeline.from_diffusers(models["flux"].pipe)("a sign", sampler="ddim", num_inference_steps=2)
