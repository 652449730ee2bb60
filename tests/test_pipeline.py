"""Pipeline on the offline presets: whole generations, equivalence with diffusers, CFG rows, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amo_engine.model.families.sd3 import SD3
from amo_engine.model.load import LoadedModel, load_model
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig, row_seeds
from amo_engine.model.presets import ModelSettings, build_tiny_sd3

PROMPT = "A poster with the slogan 'Adventure Awaits, Pack Your Bags'"


def run(model, **kw):
    kw.setdefault("steps", 4)
    return AmoPipeline(model)(GenerateConfig(prompts=kw.pop("prompts", [PROMPT]), **kw))


@pytest.mark.parametrize("sampler", ["euler", "overshoot", "amo"])
def test_whole_generation(models, family, sampler):
    result = run(models[family], sampler=sampler)
    assert result.sampler == sampler
    assert len(result.images) == 1 and result.images[0].size == (128, 128)
    assert torch.isfinite(result.latents).all()
    assert result.attn_map.shape == (1, 8, 8)
    assert result.span_mask.sum() > 0


def test_samplers_differ_and_overshoot_c0_is_euler(models, family):
    euler = run(models[family], sampler="euler").latents
    over0 = run(models[family], sampler="overshoot", c=0.0).latents
    over = run(models[family], sampler="overshoot").latents
    amo = run(models[family], sampler="amo").latents
    assert torch.equal(euler, over0)
    assert not torch.allclose(euler, over) and not torch.allclose(over, amo)


def test_euler_matches_the_diffusers_pipeline(models, family):
    """Our Euler loop (hooked backbone, own buffers, own sigma grid) == the stock diffusers pipeline."""
    model = models[family]
    ours = run(model, sampler="euler", seed=3).latents
    pipe = model.pipe
    kwargs = dict(prompt=PROMPT, num_inference_steps=4, height=128, width=128, output_type="latent",
                  generator=torch.Generator().manual_seed(3), max_sequence_length=64)
    kwargs["guidance_scale"] = model.default_guidance
    with torch.inference_mode():
        theirs = pipe(**kwargs).images
    err = (ours - theirs).abs().max().item()
    print(f"{family}: euler vs diffusers pipeline max abs diff {err:.2e}")
    assert ours.shape == theirs.shape
    assert err <= 1e-4


def test_preset_build_is_deterministic_and_round_trips(models, tmp_path):
    """A second build (fresh cache) and a save_pretrained -> load of the loaded preset give the
    identical image; the never-saved in-memory build agrees to fp32 rounding."""
    reference = run(models["sd3"], sampler="amo", seed=5)
    rebuilt = load_model("tiny-sd3", cache_dir=tmp_path / "other-cache")
    assert torch.equal(run(rebuilt, sampler="amo", seed=5).latents, reference.latents)

    rebuilt.pipe.save_pretrained(tmp_path / "resaved", safe_serialization=True)
    (tmp_path / "resaved" / "amo_engine.json").write_text((rebuilt.folder / "amo_engine.json").read_text())
    again = run(load_model(str(tmp_path / "resaved")), sampler="amo", seed=5)
    assert torch.equal(again.latents, reference.latents)
    assert torch.equal(again.attn_map, reference.attn_map)

    fresh = LoadedModel(build_tiny_sd3(), SD3, "memory", None, ModelSettings(64, 128, 128))
    in_memory = run(fresh, sampler="amo", seed=5)
    assert torch.allclose(in_memory.latents, reference.latents, rtol=0, atol=1e-4)


def test_amo_maps_come_from_conditional_rows_only(models):
    """One step: the map is read before CFG mixes anything, so the negative prompt cannot move it."""
    a = run(models["sd3"], steps=1, negative_prompt="")
    b = run(models["sd3"], steps=1, negative_prompt="blurry, low quality, watermark")
    assert torch.equal(a.attn_map, b.attn_map)
    assert not torch.allclose(a.latents, b.latents)  # the negative prompt did change the velocity


def test_batch_of_two_prompts_gives_two_maps(models, family):
    prompts = ["A sign that says 'OPEN'", "A banner reading 'Grand Opening Sale Today'"]
    result = run(models[family], prompts=prompts, steps=2)
    assert result.attn_map.shape[0] == 2
    assert not torch.allclose(result.attn_map[0], result.attn_map[1])
    single = run(models[family], prompts=prompts[:1], steps=2)
    assert result.latents.shape[0] == 2 and single.latents.shape[0] == 1


def test_amo_without_quotes_falls_back_to_overshoot(models, family):
    with pytest.warns(UserWarning, match="falls back to the overshoot sampler"):
        amo = run(models[family], prompts=["a plain photo of a cat"], sampler="amo")
    over = run(models[family], prompts=["a plain photo of a cat"], sampler="overshoot")
    assert amo.sampler == "overshoot"
    assert torch.equal(amo.latents, over.latents)


def test_num_images_per_prompt(models):
    result = run(models["flux"], num_images_per_prompt=2, steps=2)
    assert len(result.images) == 2
    assert not torch.equal(result.latents[0], result.latents[1])  # different noise per image


def images_equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("sampler", ["overshoot", "amo"])
def test_batch_mates_never_change_an_image(models, family, sampler):
    """The batching invariant the service relies on: at one call batch (pad_images_to), an image is
    bit-identical whether its request ran alone (filler rows) or beside other prompts and seeds;
    a request of n images from seed s equals n requests with seeds s..s+n-1."""
    model, kw = models[family], dict(steps=3, sampler=sampler, pad_images_to=4)
    alone = run(model, seed=7, **kw)
    mates = run(model, prompts=[PROMPT, "a sign that says 'CAT'", "plain grass", PROMPT], seed=[7, 3, 9, 11], **kw)
    assert torch.equal(alone.latents[0], mates.latents[0]) and images_equal(alone.images[0], mates.images[0])
    assert torch.equal(alone.attn_map[0], mates.attn_map[0])
    assert not torch.equal(mates.latents[0], mates.latents[3])  # same prompt, other seed: other image
    two = run(model, seed=7, num_images_per_prompt=2, **kw)
    second = run(model, seed=8, **kw)
    assert len(two.images) == 2 and torch.equal(two.latents[0], alone.latents[0])
    assert torch.equal(two.latents[1], second.latents[0])


def test_sd35_defaults_and_its_fp16_note(models):
    assert models["sd3"].default_guidance == 7.0 and models["sd35"].default_guidance == 4.5  # Medium-like preset
    large = {"qk_norm": "rms_norm", "num_layers": 38, "dual_attention_layers": []}
    assert SD3.default_guidance(large) == 3.5
    assert "use --dtype bf16" in SD3.precision_notes(large, torch.float16)[0]
    assert SD3.precision_notes(large, torch.bfloat16) == [] and SD3.precision_notes({"num_layers": 24}, torch.float16) == []


def test_row_seeds():
    assert row_seeds(7, 2, 2) == [7, 8, 9, 10]
    assert row_seeds([7, 3], 2, 2) == [7, 8, 3, 4]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sampler="heun"), "unknown sampler"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(c=-0.5), "c must be a finite number >= 0"),
        (dict(height=120), "height 120 px: this model draws sizes in multiples of 16 px"),
        (dict(prompts=[]), "non-empty list"),
        (dict(seed=[1, 2]), r"one int per prompt \(1\)"),
        (dict(pad_images_to=0), "pad_images_to must be >= 1"),
    ],
)
def test_invalid_options(models, kw, match):
    with pytest.raises(ValueError, match=match):
        run(models["sd3"], **kw)


def test_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        load_model("not-a-model")
    with pytest.raises(ValueError, match="no model_index.json"):
        load_model(str(tmp_path))


def test_given_initial_noise_is_used(models, family):
    """GenerateConfig.latents replaces the seeded draw (how CPU and GPU runs share their noise)."""
    seeded = run(models[family], sampler="euler", steps=1)
    noise = torch.randn(seeded.latents.shape, generator=torch.Generator().manual_seed(11))
    a = run(models[family], sampler="euler", latents=noise)
    b = run(models[family], sampler="euler", latents=noise.clone())
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, run(models[family], sampler="euler").latents)


def test_preset_size_factors_match_the_loaded_pipelines(models, preset_cache):
    """The early size check's facts (config JSON only) equal what the loaded pipelines say."""
    from amo_engine.model.folders import size_limits
    from amo_engine.model.presets import PRESET_SIZE_FACTORS

    loaded = {**{f"tiny-{f}": m for f, m in models.items()}, "glyph": load_model("glyph")}
    for name, model in loaded.items():
        pipe = AmoPipeline(model)
        assert pipe.patch_factor == PRESET_SIZE_FACTORS[name], name
        tokens = pipe.family.max_tokens_per_side(model.pipe.transformer.config)
        assert size_limits(name, preset_cache) == (pipe.patch_factor, tokens * pipe.patch_factor if tokens else None)
    assert size_limits("glyph") == (8, 96)  # its position table: 12 tokens a side
