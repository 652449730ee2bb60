"""Every command a message suggests pastes and runs: built from the facts at hand (model, folder,
batch, the flags the engine already has), parsed here by the CLI's own parser, and run where cheap."""

from __future__ import annotations

import pytest

from amo_engine.cli import main
from amo_engine.engine.folder import check_model_matches, check_runtime
from amo_engine.engine.hints import reexport_command
from amo_engine.engine.manifest import EngineError, Manifest

from conftest import pasted_export

MANIFEST = Manifest.from_json({  # a format-1 manifest (hook keys at the top), read as every engine's is
    "format": 1, "model": "glyph", "family": "sd3", "images_per_call": 2, "height": 32, "width": 96,
    "dtype": "float32", "cfg_rows": True, "max_sequence_length": 16, "hooked_blocks": [0, 2], "max_span_tokens": 32,
    "kv_swap": True, "modulation": None, "weights_fingerprint": "abc", "files": {},
    "io": {"inputs": [], "outputs": [], "dims": {}},
    "onnx": {"opset": 18, "exporter": "torchscript", "dynamic_batch": False},
    "aoti": {"device": "cpu", "weights": "model", "torch": "2.13.0"}})


def test_a_reexport_keeps_every_flag_the_engine_has(tmp_path):
    pasted = pasted_export(reexport_command(MANIFEST, tmp_path / "e", modulation=True))
    assert (pasted.model, pasted.out, pasted.batch, pasted.height, pasted.width) == ("glyph", tmp_path / "e", 2, 32, 96)
    assert pasted.blocks == (0, 2) and pasted.max_span_tokens == 32 and pasted.kv_swap and pasted.modulation
    assert pasted.exporter == "torchscript" and pasted.aoti and pasted.aoti_weights == "model"


def test_runtime_and_model_refusals_suggest_working_commands(tmp_path):
    with pytest.raises(EngineError, match="re-export it with: ") as err:
        check_runtime(MANIFEST, "ort", "1.0", max_opset=17, folder=tmp_path)
    assert pasted_export(str(err.value)).opset == 17
    with pytest.raises(EngineError, match="re-export it with: ") as err:
        check_runtime(MANIFEST, "aoti", None, device="cuda:0", folder=tmp_path)
    with pytest.raises(EngineError, match="re-export it from this model: ") as err:
        check_model_matches(MANIFEST, "sd3", "other", tmp_path, "runs/mine/model")
    pasted = pasted_export(str(err.value))
    assert str(pasted.model) == "runs/mine/model" and pasted.out == tmp_path and pasted.kv_swap


def test_inspect_of_a_missing_folder_suggests_an_export_that_parses(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    pasted = pasted_export(capsys.readouterr().err)
    assert pasted.model == "glyph" and pasted.out == tmp_path / "nope"


@pytest.mark.parametrize("argv, wanted", [
    (["edit", "--prompt", "a dark sign that says 'HAPPY'", "--target-text", "SMILE", "--keep-originals"],
     {"kv_swap": True, "batch": 3}),
    (["generate", "--prompt", "a dark sign that says 'HAPPY'", "--safe-text", "default"], {"kv_swap": True, "batch": 2}),
    (["generate", "--prompt", "a red apple and a sign 'OPEN'", "--modulate", "separate", "--num-images", "2"],
     {"modulation": True, "batch": 2}),
    (["serve"], {"batch": 4}),
])
def test_a_missing_engine_names_the_export_that_runs_the_request(argv, wanted, capsys):
    assert main([*argv, "--backend", "ort"]) == 2
    pasted = pasted_export(capsys.readouterr().err)
    assert all(getattr(pasted, k) == v for k, v in wanted.items()), vars(pasted)


@pytest.mark.slow
def test_the_generate_hint_runs_as_pasted(tmp_path, capsys, monkeypatch):
    """Paste the export it suggests, then generate on what it wrote (the glyph model, 4 steps)."""
    monkeypatch.chdir(tmp_path)
    prompt = ["--prompt", "a dark sign that says 'HAPPY'", "--steps", "4", "--quiet"]
    assert main(["generate", *prompt, "--backend", "ort"]) == 2
    err = capsys.readouterr().err
    command = err[err.index("amo-engine export"):].split(" (then ")[0]
    import shlex

    assert main(shlex.split(command)[1:]) == 0
    pasted = pasted_export(err)
    assert main(["generate", *prompt, "--backend", "ort", "--engine", str(pasted.out), "--out", "o.png"]) == 0
    assert (tmp_path / "o.png").is_file()
    # a size the engine does not draw is said in pixels, with the export that draws it
    assert main(["generate", *prompt, "--backend", "ort", "--engine", str(pasted.out), "--size", "64x32"]) == 2
    err = capsys.readouterr().err
    assert "the engine draws 96x32 px, this request asks 64x32: ask for --size 96x32" in err
    again = pasted_export(err)
    assert (again.width, again.height, again.out) == (64, 32, pasted.out)
    assert main(["generate", *prompt, "--size", "64x32", "--out", "small.png"]) == 0  # eager draws any size it can
    from PIL import Image

    assert Image.open(tmp_path / "small.png").size == (64, 32)
