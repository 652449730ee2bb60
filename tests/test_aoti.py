"""AOTInductor engines on the CPU: the package beside the ONNX graph in one engine folder, parity
with eager under the float32 gates (weights embedded or taken from the model), the glyph model's
main job through it, and the refusals (no package, another torch, another device, CUDA graphs
without CUDA)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from amo_engine.engine.aoti import cpp_compiler
from amo_engine.engine.backends import BackendUnavailable, open_backend
from amo_engine.engine.folder import check_runtime, open_engine, read_manifest
from amo_engine.engine.manifest import AotiSection, EngineError
from amo_engine.model.glyph.words import prompt_for
from amo_engine.model.load import load_model
from amo_engine.engine.export import ExportConfig, export_engine
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig
from amo_engine.engine.verify import engine_parity, judge_parity

from conftest import pasted_export

pytestmark = [pytest.mark.slow,  # AOTInductor compiles C++: minutes
              pytest.mark.skipif(cpp_compiler() is None, reason="AOTInductor needs a C++ compiler (apt-get install g++)")]


@pytest.fixture(scope="module")
def flux_aoti(models, tmp_path_factory):
    """tiny-flux exported with an embedded-weights AOTInductor package beside its ONNX graph."""
    folder = tmp_path_factory.mktemp("aoti") / "tiny-flux"
    manifest = export_engine(models["flux"], ExportConfig(out=folder, aoti=True, log=False))
    return folder, manifest


@pytest.fixture(scope="module")
def glyph():
    return load_model("glyph")


@pytest.fixture(scope="module")
def glyph_aoti(glyph, tmp_path_factory):
    """The glyph model's engine through the command line, its package holding code alone."""
    from amo_engine.cli import main

    folder = tmp_path_factory.mktemp("aoti") / "glyph"
    assert main(["export", "--model", "glyph", "--out", str(folder), "--aoti", "--aoti-weights", "model"]) == 0
    return folder


def test_package_sits_beside_the_graph_and_matches_eager(models, flux_aoti):
    folder, manifest = flux_aoti
    assert manifest.aoti == AotiSection(device="cpu", torch=torch.__version__, weights="embedded", file="model.pt2")
    assert set(manifest.files) == {"model.onnx", "model.pt2"} and manifest.timings["aoti_compile_s"] > 0
    assert open_engine(folder).artifacts == ["onnx", "aoti"]
    p = engine_parity(models["flux"], folder, "aoti")
    ok, detail = judge_parity(p, "float32")
    assert ok, detail


def test_package_without_weights_runs_on_the_models_own(glyph, glyph_aoti, capsys):
    from amo_engine.cli import main

    manifest = json.loads((glyph_aoti / "manifest.json").read_text())
    assert manifest["aoti"]["weights"] == "model" and manifest["format"] == 2
    assert manifest["files"]["model.pt2"]["bytes"] < 4 * 1024**2  # code only: the weights are ~7 MB in fp16
    assert main(["inspect", str(glyph_aoti), "--verify", "--backend", "aoti"]) == 0
    assert "PASS" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds no weights: open it with the model"):
        open_backend("aoti", open_engine(glyph_aoti))


def generate_on(kind: str, engine, model, config):
    with warnings.catch_warnings(), open_backend(kind, engine, model) as backend:
        warnings.simplefilter("ignore")
        return AmoPipeline(model, engine.hook, backend)(config)


def test_main_job_through_the_aoti_engine_equals_ort(glyph, glyph_aoti):
    """The README's main job (AMO, seed 0) through both runtimes of one engine folder; OCR reads it."""
    engine = open_engine(glyph_aoti, glyph)
    config = GenerateConfig([prompt_for("HAPPY", "dark")], sampler="amo", seed=0)
    results = {kind: generate_on(kind, engine, glyph, config) for kind in ("aoti", "ort")}
    assert torch.allclose(results["aoti"].latents, results["ort"].latents, atol=1e-3)
    assert torch.allclose(results["aoti"].attn_map, results["ort"].attn_map, atol=1e-4)
    from amo_engine.ocr import Reader

    assert Reader("rapidocr")(results["ort"].images) == ["HAPPY"]  # the README's demo reads right


def test_edit_through_the_aoti_and_ort_engines(glyph, tmp_path_factory):
    """Paper A's edit on one engine exported with --kv-swap for 3 images (edit, target, plain A):
    both runtimes agree; B's and the plain A's words read right, and A's word changed."""
    from amo_engine.cli import main
    from amo_engine.ocr import Reader
    from amo_engine.pipeline.text_edit import edit_defaults, edit_request, swap_target

    folder = tmp_path_factory.mktemp("aoti") / "glyph-edit"
    assert main(["export", "--model", "glyph", "--out", str(folder), "--kv-swap", "--batch", "3", "--aoti",
                 "--aoti-weights", "model"]) == 0
    engine = open_engine(folder, glyph)
    a = prompt_for("HAPPY", "dark")
    request = edit_request(a, swap_target(a, "SMILE"), *edit_defaults(glyph), keep_originals=True)
    config = GenerateConfig(list(request.prompts), sampler="amo", seed=0, text_swap=request.swap)
    results = {kind: generate_on(kind, engine, glyph, config) for kind in ("aoti", "ort")}
    assert torch.allclose(results["aoti"].latents, results["ort"].latents, atol=1e-3)
    edited, target, original = Reader("rapidocr")(results["ort"].images)
    assert (target, original) == ("SMILE", "HAPPY") and edited != "HAPPY"


def test_refusals(models, flux_aoti, exported, tmp_path):
    folder, manifest = flux_aoti
    no_package = exported("flux")  # ONNX only
    with pytest.raises(EngineError, match="re-export it with: ") as err:
        open_backend("aoti", no_package, models["flux"])
    pasted = pasted_export(str(err.value))
    assert pasted.aoti and pasted.out == no_package and pasted.model == "tiny-flux"
    with pytest.raises(EngineError, match="compiled by torch 0.0.1.*re-export it with: ") as err:
        check_runtime(manifest.replace(aoti=dataclasses.replace(manifest.aoti, torch="0.0.1")), "aoti",
                      torch.__version__, folder=folder)
    assert pasted_export(str(err.value)).aoti
    with pytest.raises(EngineError, match="compiled for cpu, not cuda: run it with --device cpu"):
        check_runtime(manifest, "aoti", torch.__version__, device="cuda")
    with pytest.raises(BackendUnavailable, match="--cuda-graph needs a CUDA device"):
        open_backend("aoti", folder, models["flux"], cuda_graph=True)
    with pytest.raises(ValueError, match="drop --dynamic-batch"):
        export_engine(models["flux"], ExportConfig(out=tmp_path / "x", aoti=True, dynamic_batch=True, log=False))


def test_default_cpu_engine_is_measured_on_request_and_picked_by_auto(flux_aoti, glyph_aoti, tmp_path, recwarn,
                                                                      monkeypatch, capsys, preset_cache):
    import json

    from amo_engine.engine import default_backend
    from amo_engine import timing
    from amo_engine.cli import main

    folder, manifest = flux_aoti
    assert manifest.default_backend is None  # export measures nothing
    # a busy machine records nothing: the watch's verdict decides
    busy = {"contended": True, "reasons": ["other processes runnable"]}
    with monkeypatch.context() as m:
        m.setattr(timing.ContentionWatch, "verdict", lambda self: busy)
        m.setattr(timing.ContentionWatch, "sample_before", lambda self, *a, **k: None)
        assert main(["inspect", str(folder), "--measure", "--cache-dir", str(preset_cache)]) == 2
    assert "the machine was busy while measuring" in capsys.readouterr().err
    assert "default_backend" not in json.loads((folder / "manifest.json").read_text())
    idle = {"contended": False, "reasons": []}
    monkeypatch.setattr(timing.ContentionWatch, "verdict", lambda self: idle)  # the suite's machine may be busy
    monkeypatch.setattr(timing.ContentionWatch, "sample_before", lambda self, *a, **k: None)
    assert main(["inspect", str(folder), "--measure", "--cache-dir", str(preset_cache)]) == 0
    manifest = read_manifest(folder)
    record = manifest.default_backend
    assert record.backend in ("ort", "aoti", "openvino") and record.machine == default_backend.machine()
    assert set(record.p50_ms) >= {"ort", "aoti"} and min(record.p50_ms.values()) > 0
    assert record.p50_ms[record.backend] == min(record.p50_ms.values())
    assert default_backend.resolve(manifest) == (record.backend, None)
    elsewhere = manifest.replace(default_backend=dataclasses.replace(record, backend="aoti", machine="another CPU"))
    backend, note = default_backend.resolve(elsewhere)
    assert backend == "ort" and "measured on another CPU, not this CPU" in note
    backend, note = default_backend.resolve(manifest.replace(default_backend=None))
    assert backend == "ort" and "holds no measured default" in note
    out = tmp_path / "auto.png"
    assert main(["generate", "--model", "glyph", "--backend", "auto", "--engine", str(glyph_aoti), "--prompt",
                 prompt_for("CAR", "light"), "--steps", "4", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
