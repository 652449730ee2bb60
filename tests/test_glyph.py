"""The glyph model trained here: loads offline through diffusers, renders a word OCR reads back;
its training smoke run; the OCR evaluation's outputs, resume and measures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from amo_engine.eval.metrics import outside_text
from amo_engine.stats import mcnemar_exact
from amo_engine.model.glyph.render import render
from amo_engine.model.glyph.words import HELD_OUT_WORDS, TRAIN_WORDS, prompt_for
from amo_engine.model.load import load_model
from amo_engine.ocr import Reader, check_available, ned
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

from conftest import pasted_export



@pytest.fixture(scope="module")
def glyph():
    return load_model("glyph")


@pytest.fixture(scope="module")
def reader():
    return Reader("rapidocr")


def test_shipped_weights_load_offline_through_the_ordinary_loader(glyph, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = glyph.pipe
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and glyph.family.name == "sd3"
    assert type(pipe.vae).__name__ == "PixelUnshuffleAutoencoder" and pipe.vae_scale_factor == 4
    assert glyph.default_size == (32, 96) and glyph.default_guidance == 3.0
    assert glyph.settings.vocabulary == TRAIN_WORDS and glyph.settings.held_out == HELD_OUT_WORDS
    files = [p for p in glyph.folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 1024**2
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_a_folder_saved_before_the_package_layout_still_loads(glyph, tmp_path):
    import shutil

    old = tmp_path / "glyph-0.1"
    shutil.copytree(glyph.folder, old)
    index = json.loads((old / "model_index.json").read_text())
    assert index["vae"][0] == "amo_engine.model.glyph.autoencoder"
    index["vae"][0] = "amo_engine.glyph.autoencoder"  # the module's name in 0.1 folders
    (old / "model_index.json").write_text(json.dumps(index))
    assert type(load_model(str(old)).pipe.vae).__name__ == "PixelUnshuffleAutoencoder"


@pytest.mark.parametrize("tone", ["dark", "light"])
def test_generation_draws_the_asked_tone_and_points_the_amo_map_at_the_sign(glyph, tone):
    """What the shipped weights do, deterministically (fixed weights, fixed seed): a sign of the
    asked tone against its ground, and a quoted-word attention map (4 x 12 cells, one per image
    token) that is higher on the sign's cells than on the ground's."""
    from amo_engine.eval.metrics import ground_region

    result = AmoPipeline(glyph)(GenerateConfig([prompt_for("HAPPY", tone)], sampler="amo", seed=10))
    grey = np.asarray(result.images[0].convert("L")).astype(np.float32)  # [32, 96]
    ground = ground_region(grey.astype(np.uint8))  # [32, 96] bool
    assert 0.2 < ground.mean() < 0.8  # a sign covering part of the canvas
    sign_level, ground_level = np.median(grey[8:24][~ground[8:24]]), np.median(grey[ground])
    assert (sign_level < ground_level) if tone == "dark" else (sign_level > ground_level)
    attn = result.attn_map[0]  # [4, 12] patch grid, 8 px per patch (one cell each)
    assert attn.shape == (4, 12) and torch.isfinite(attn).all() and result.sampler == "amo"
    sign_cells = torch.from_numpy(~ground.reshape(4, 8, 12, 8).mean(axis=(1, 3)).round().astype(bool))  # [4, 12]
    assert attn[sign_cells].mean() > 1.4 * attn[~sign_cells].mean()


def test_shipped_weights_render_a_word_that_ocr_reads_back(glyph, reader):
    """A known case (fixed weights and seed; the README's main command): AMO at the model's defaults
    draws 'HAPPY' legibly. How often words come out right is what ``amo-engine eval`` measures."""
    result = AmoPipeline(glyph)(GenerateConfig([prompt_for("HAPPY", "dark")], sampler="amo", seed=0))
    assert reader(result.images) == ["HAPPY"]


def test_out_of_vocabulary_word_is_named(glyph):
    with pytest.warns(UserWarning, match="'BLUE' is not one of this model's 122 training words"):
        result = AmoPipeline(glyph)(GenerateConfig([prompt_for("BLUE", "light")], steps=2))
    assert len(result.images) == 1


def test_ocr_ceiling_and_missing_ocr(reader, monkeypatch):
    rng = np.random.default_rng(0)
    words = TRAIN_WORDS[:20]
    reads = reader([render(w, "dark" if i % 2 else "light", rng)[0] for i, w in enumerate(words)])
    assert reads == list(words)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ImportError, match="apt-get install -y tesseract-ocr"):
        check_available("tesseract")


def test_measures():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(27, 10) == pytest.approx(0.00763, abs=5e-5)  # the prototype's 27 vs 10: p = 0.008
    assert ned("HELO", "HELLO") == pytest.approx(0.2) and ned("", "") == 0.0
    clean, box = render("ZEBRA", "dark")
    m = outside_text(clean)
    assert m["ground_std"] == 0.0 and m["ground_hf"] == 0.0 and 0.2 < m["ground_share"] < 0.8
    noisy = clean.astype(np.int16) + np.random.default_rng(0).integers(-20, 21, clean.shape)
    assert outside_text(np.clip(noisy, 0, 255).astype(np.uint8))["ground_hf"] > 10


@pytest.mark.slow
def test_eval_on_three_words_writes_all_outputs_and_resumes(tmp_path):
    from amo_engine.cli import main

    out = tmp_path / "eval"
    args = ["eval", "--model", "glyph", "--out-dir", str(out), "--max-words", "3", "--seeds", "1", "--steps", "3",
            "--batch", "2", "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["sampler"] for r in rows} == {"euler", "overshoot", "amo"}
    for name in ("summary.md", "summary.json", "plot.png", "grid.png"):
        assert (out / name).is_file(), name
    assert all((out / r["image"]).is_file() for r in rows)
    # an interrupted eval keeps its rows: cut the last line in half, rerun, nothing is lost or doubled
    text = (out / "rows.jsonl").read_text().splitlines()
    (out / "rows.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:20])
    assert main(args) == 0
    again = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.endswith("}")]
    keys = [(r["word"], r["seed"], r["sampler"]) for r in again]
    assert len(keys) == 9 and len(set(keys)) == 9


@pytest.mark.slow
def test_eval_through_the_ort_engine(glyph, tmp_path):
    from amo_engine.cli import main
    from amo_engine.engine.export import ExportConfig, export_engine

    engine = tmp_path / "engine"
    export_engine(glyph, ExportConfig(out=engine, batch=2, exporter="torchscript", log=False))
    out = tmp_path / "eval"
    assert main(["eval", "--out-dir", str(out), "--max-words", "2", "--seeds", "1", "--steps", "3", "--batch", "2",
                 "--backend", "ort", "--engine", str(engine), "--samplers", "euler,amo", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["ran"] for r in rows} == {"euler", "amo"}


def test_eval_refuses_bad_options_before_work(tmp_path, capsys):
    from amo_engine.cli import main

    assert main(["eval", "--out-dir", str(tmp_path), "--samplers", "euler,heun"]) == 2
    assert "unknown sampler 'heun'; choose one of euler, overshoot, amo" in capsys.readouterr().err
    assert main(["eval", "--out-dir", str(tmp_path), "--backend", "ort"]) == 2
    pasted = pasted_export(capsys.readouterr().err)
    assert pasted.batch == 16 and pasted.model == "glyph" and str(pasted.out) == "engines/glyph"


@pytest.mark.slow
def test_train_glyph_smoke_writes_a_loadable_folder(tmp_path):
    from amo_engine.cli import main

    run = tmp_path / "run"
    args = ["train-glyph", "--run-dir", str(run), "--steps", "10", "--batch", "4", "--check-every", "0",
            "--checkpoint-every", "5", "--quiet"]
    assert main(args) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["step"] == 10 and len((run / "log.jsonl").read_text().splitlines()) == 0  # log every 50
    model = load_model(str(run / "model"))
    assert model.settings.vocabulary == TRAIN_WORDS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = AmoPipeline(model)(GenerateConfig([prompt_for("CAT", "dark")], steps=2))
    assert torch.isfinite(result.latents).all()
    # resume is exact: a run killed at step 7 resumes from its step-5 checkpoint and ends equal
    from amo_engine.train.glyph import TrainConfig, Trainer

    real_loss = Trainer.loss

    def dying_loss(self, step, batch=None):
        if step == 7:
            raise KeyboardInterrupt
        return real_loss(self, step, batch)

    run2 = tmp_path / "run2"
    args2 = [a if a != str(run) else str(run2) for a in args] + ["--workers", "1"]  # workers draw the same batches
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "loss", dying_loss)
        assert main(args2) == 130  # Ctrl-C: one line, status 130, the checkpoint kept
    assert json.loads((run2 / "checkpoint.json").read_text())["step"] == 5
    assert main(args2) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(run / "checkpoint.safetensors")), load_file(str(run2 / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # other settings are refused with the fix; --extend trains a finished run on in a second phase
    longer = [a if a != "10" else "12" for a in args]
    with pytest.raises(ValueError, match="pass --steps 10 --lr 0.0007 to resume, or --extend --steps N"):
        Trainer(TrainConfig(run_dir=run, steps=12, batch=4, check_every=0, checkpoint_every=5)).load_checkpoint()
    assert main(longer + ["--extend"]) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["step"] == 12 and meta["config"]["phases"] == [[10, 0.0007], [12, 0.0007]]


def test_learning_rate_phases():
    from amo_engine.train.glyph import TrainConfig, lr_at

    one = TrainConfig(run_dir=Path("x"), steps=1000, lr=1e-3, warmup=100)
    assert lr_at(0, one) == pytest.approx(1e-5) and lr_at(99, one) == pytest.approx(1e-3)
    assert lr_at(999, one) == pytest.approx(1e-4, rel=1e-3)
    two = TrainConfig(run_dir=Path("x"), steps=1500, lr=5e-4, warmup=100, phases=((1000, 1e-3), (1500, 5e-4)))
    assert [lr_at(s, two) for s in (0, 500, 999)] == [lr_at(s, one) for s in (0, 500, 999)]
    assert lr_at(1049, two) == pytest.approx(5e-4) and lr_at(1499, two) == pytest.approx(5e-5, rel=1e-2)


def test_t5_tokenizer_spells_every_word_letter_by_letter():
    from amo_engine.model.glyph.model import build_t5_letter_tokenizer

    tok = build_t5_letter_tokenizer()
    assert tok.tokenize(prompt_for("HAPPY", "dark")) == ["▁a", "▁dark", "▁sign", "▁that", "▁says", "▁'",
                                                          "H", "A", "P", "P", "Y", "'"]
    for word in TRAIN_WORDS + HELD_OUT_WORDS:  # no unknown pieces, one per letter
        pieces = tok.tokenize(prompt_for(word, "light"))[6:-1]
        assert pieces == list(word) and tok.unk_token_id not in tok.convert_tokens_to_ids(pieces)


def test_render_blends_letters_as_pil_draws_them():
    """The cached-coverage compositing equals PIL drawing the letters straight onto the sign."""
    from PIL import Image, ImageDraw

    from amo_engine.model.glyph.render import CELL, TONE_LEVELS, _font

    for word, tone in (("ZEBRA", "dark"), ("JAZZ", "light")):
        image, box = render(word, tone)
        ground, sign, ink = TONE_LEVELS[tone]
        direct = Image.new("L", image.shape[::-1], ground)
        draw = ImageDraw.Draw(direct)
        draw.rectangle((box.left, box.top, box.right - 1, box.bottom - 1), fill=sign)
        for i, letter in enumerate(word):
            draw.text((box.left + (i + 1.5) * CELL, (box.top + box.bottom) / 2), letter, fill=ink, font=_font(), anchor="mm")
        assert np.abs(image.astype(int) - np.asarray(direct).astype(int)).max() <= 1


def test_prompts_outside_the_trained_form_are_named():
    from amo_engine.train.glyph import glyph_settings
    from amo_engine.model.glyph.variants import GLYPH, GLYPH_SCENE
    from amo_engine.pipeline.generate import vocabulary_notes

    scene, flat = glyph_settings(GLYPH_SCENE), glyph_settings(GLYPH)
    assert vocabulary_notes(scene, ["a dark sign that says 'HAPPY' on bricks"]) == []
    assert vocabulary_notes(flat, ["a dark sign that says 'HAPPY'"]) == []
    [note] = vocabulary_notes(scene, ["a dark sign that says 'HAPPY' on marble"])
    assert note.startswith("'marble' is not one of this model's 7 ground textures (bricks, stripes")
    [note] = vocabulary_notes(flat, ["a red apple next to a sign 'OPEN'"])
    assert "is not in the one form this model was trained on" in note and note.endswith("expect noise")
    [note] = vocabulary_notes(scene, ["a dark sign that says 'HAPPY'"])  # no texture named
    assert "texture one of bricks, stripes, checks, dots, waves, gravel, plain" in note
    [note] = vocabulary_notes(flat, ["a blue sign that says 'HAPPY'"])
    assert note.startswith("'blue' is not a sign tone this model knows (dark, light)")
