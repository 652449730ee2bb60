"""The scene model (glyph-scene): textured grounds rendered on the fly, the texture measures and their
ceilings on clean renders, a training smoke run that starts from glyph's weights, and the eval on a
few words writing every output with the texture measures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amo_engine.eval.texture import ceiling, fit_reference, high_frequency, reference_images
from amo_engine.model.glyph.render import render
from amo_engine.model.glyph.textures import PATTERNS
from amo_engine.model.glyph.variants import GLYPH_SCENE


def test_the_canvas_is_mostly_ground_and_every_texture_varies():
    rng = np.random.default_rng(0)
    for texture in GLYPH_SCENE.textures:
        image, box = render("COFFEE", "dark", rng, GLYPH_SCENE, texture)
        assert image.shape == (48, 128) and (box.top, box.bottom) == (16, 32)
        assert 1 - (box.bottom - box.top) * (box.right - box.left) / image.size >= 0.6
        other = render("COFFEE", "dark", rng, GLYPH_SCENE, texture)[0]
        assert texture == "plain" or not np.array_equal(image[:16], other[:16])  # random phase, scale, contrast
    assert set(PATTERNS) == set(GLYPH_SCENE.textures)
    with pytest.raises(ValueError, match="holds at most 14: quote a shorter word"):
        render("SUPERCALIFRAGILISTIC", "dark", rng, GLYPH_SCENE, "bricks")
    with pytest.raises(ValueError, match="draws grounds of bricks, stripes"):
        render("CAT", "dark", rng, GLYPH_SCENE, "marble")


def test_texture_measures_on_clean_renders_equal_their_ceilings():
    """The classifier is fitted on one set of clean renders and checked on another: >= 95% per class;
    HF ratio and spectral distance of clean renders are 1 by construction (within sampling)."""
    top = ceiling("glyph-scene")
    assert top["texture_acc"] >= 0.95 and min(top["per_class"].values()) >= 0.9, top
    assert abs(top["hf_ratio"] - 1) < 0.05 and abs(top["spectral_distance"] - 1) < 0.1, top
    ref = fit_reference("glyph-scene")
    grey, texture, tone = next(reference_images(GLYPH_SCENE, seed=5, n=1))
    m = ref.measure(grey, texture, tone)
    assert m["texture_read"] == texture and m["hf_ratio"] == pytest.approx(
        high_frequency(grey, GLYPH_SCENE.sign_rows) / ref.clean_hf[texture, tone])
    smooth = grey.astype(np.float32)
    smooth[:16] = smooth[:16].mean()  # a ground smoothed flat loses its class and its high frequencies
    smooth[32:] = smooth[32:].mean()
    flat = ref.measure(smooth.astype(np.uint8), texture, tone)
    assert flat["hf_ratio"] < 0.05 and flat["spectral_distance"] > 2 and flat["texture_read"] == "plain"


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    """A 6-step glyph-scene training run started from glyph's weights (a loadable, untrained folder)."""
    from amo_engine.cli import main

    run = tmp_path_factory.mktemp("scene") / "run"
    assert main(["train-glyph", "--model", "glyph-scene", "--init-from", "glyph", "--run-dir", str(run), "--steps",
                 "6", "--batch", "4", "--check-every", "6", "--checkpoint-every", "3", "--quiet"]) == 0
    return run


@pytest.mark.slow
def test_training_smoke_starts_from_glyph_and_writes_a_loadable_scene_folder(scene_run):
    from amo_engine.train.glyph import glyph_settings
    from amo_engine.model.load import load_model

    meta = json.loads((scene_run / "checkpoint.json").read_text())
    assert meta["step"] == 6 and meta["config"]["model"] == "glyph-scene" and meta["config"]["init_from"] == "glyph"
    check = [json.loads(line) for line in (scene_run / "log.jsonl").read_text().splitlines()][-1]
    assert check["step"] == 6 and 0 <= check["ocr_exact"] <= 1  # the OCR check ran on sign crops
    model = load_model(str(scene_run / "model"))
    assert model.settings == glyph_settings(GLYPH_SCENE) and model.default_size == (48, 128)
    tokens = model.pipe.tokenizer_3.tokenize("a dark sign that says 'CAT' on gravel")
    assert tokens[-2:] == ["▁on", "▁gravel"] and tokens[5:10] == ["▁'", "C", "A", "T", "'"]
    glyph = load_model("glyph").pipe
    # warm start: glyph's CLIPs unchanged (frozen), its token table kept for the tokens it had
    a, b = glyph.text_encoder.state_dict(), model.pipe.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = glyph.text_encoder_3.shared.weight.shape[0]
    assert model.pipe.text_encoder_3.shared.weight.shape[0] == rows + 1 + len(GLYPH_SCENE.textures)


@pytest.mark.slow
def test_eval_on_a_few_words_writes_every_output_with_the_texture_measures(scene_run, tmp_path):
    from amo_engine.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(scene_run / "model"), "--out-dir", str(out), "--max-words", "3", "--seeds",
                 "1", "--steps", "2", "--batch", "3", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    for r in rows:
        assert r["texture"] in GLYPH_SCENE.textures and r["texture_read"] in GLYPH_SCENE.textures
        assert {"hf_ratio", "spectral_distance", "texture_right", "image_right"} <= set(r)
        assert r["image_right"] == (r["exact"] and r["texture_right"])
    for name in ("summary.md", "summary.json", "plot.png", "grid.png", "grid-s2-c2.png", "figure.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["texture_ceiling"]["texture_acc"] >= 0.95 and summary["comparisons"]
    assert {c["a"] + "/" + c["b"] for c in summary["comparisons"]} == {"amo/overshoot", "amo/euler", "overshoot/euler"}
    assert "texture class" in (out / "summary.md").read_text()


@pytest.fixture(scope="module")
def scene():
    from amo_engine.model.load import load_model

    return load_model("glyph-scene")


def test_shipped_scene_weights_load_offline_through_the_ordinary_loader(scene, monkeypatch):
    from amo_engine.train.glyph import glyph_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert type(scene.pipe).__name__ == "StableDiffusion3Pipeline" and scene.family.name == "sd3"
    assert scene.default_size == (48, 128) and scene.settings.textures == GLYPH_SCENE.textures
    assert scene.settings == glyph_settings(GLYPH_SCENE)
    files = [p for p in scene.folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 1024**2
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_shipped_scene_renders_a_known_word_on_a_recognised_ground(scene):
    """A known case (fixed weights and seed): AMO draws HAPPY on bricks; OCR reads the sign and the
    texture classifier recognises the ground. How often it comes out right is what the eval measures."""
    from amo_engine.model.glyph.locate import read_words
    from amo_engine.ocr import Reader
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    result = AmoPipeline(scene)(GenerateConfig(["a dark sign that says 'HAPPY' on bricks"], sampler="amo", seed=0))
    assert read_words(Reader("rapidocr"), result.images, scene.settings) == ["HAPPY"]
    grey = np.asarray(result.images[0].convert("L"))
    assert fit_reference("glyph-scene").measure(grey, "bricks", "dark")["texture_read"] == "bricks"
    assert result.attn_map.shape == (1, 6, 16)


def test_an_unknown_texture_renders_something_and_says_so(scene):
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    with pytest.warns(UserWarning, match="'marble' is not one of this model's 7 ground textures"):
        result = AmoPipeline(scene)(GenerateConfig(["a dark sign that says 'HAPPY' on marble"], steps=2))
    assert len(result.images) == 1 and result.images[0].size == (128, 48)


def test_a_word_longer_than_the_canvas_fails_before_any_work(capsys):
    from amo_engine.cli import main

    assert main(["generate", "--model", "glyph-scene", "--prompt",
                 "a dark sign that says 'ABCDEFGHIJKLMNOP' on bricks"]) == 2
    assert "holds at most 14: quote a shorter word" in capsys.readouterr().err
