"""Prompt encoders and the VAE decoder exported beside the backbone: one manifest lists every graph
with its IOSpec, each graph matches its eager module under ONNX Runtime, and the refusals."""

from __future__ import annotations

import dataclasses

import pytest

from amo_engine.engine.folder import open_engine

from amo_engine.engine.manifest import EngineError, Manifest, StageSection, TrtSection
from amo_engine.engine.export import ExportConfig, export_engine
from amo_engine.engine.verify import STAGE_MAX_ABS, stage_parity

from conftest import pasted_export


@pytest.mark.parametrize("name,components", [
    ("sd3", {"text_encoder": "clip", "text_encoder_2": "clip", "text_encoder_3": "t5", "vae": "vae_decoder"}),
    ("flux", {"text_encoder": "clip", "text_encoder_2": "t5", "vae": "vae_decoder"}),
])
@pytest.mark.slow
def test_every_stage_is_exported_listed_and_matches_eager(models, tmp_path, name, components):
    model = models[name]
    folder = tmp_path / name
    manifest = export_engine(model, ExportConfig(out=folder, stages=True, log=False))
    assert {k: v.kind for k, v in manifest.stages.items()} == components
    assert set(manifest.files) == {"model.onnx"} | {f"{k}.onnx" for k in components}
    engine = open_engine(folder, model)
    assert engine.stages == list(components)
    vae = engine.stage_spec("vae")
    assert vae.shape("image") == (1, 3, *model.default_size)
    errors = stage_parity(model, engine)
    assert set(errors) == set(components) and max(errors.values()) <= STAGE_MAX_ABS["float32"], errors


@pytest.mark.slow
def test_stage_refusals(models, tmp_path):
    folder = tmp_path / "backbone-only"
    export_engine(models["flux"], ExportConfig(out=folder, log=False))
    engine = open_engine(folder)
    assert engine.stages == []
    with pytest.raises(EngineError, match="holds no vae stage .*re-export it with: ") as err:
        engine.stage_spec("vae")
    pasted = pasted_export(str(err.value))
    assert pasted.stages and pasted.model == "tiny-flux" and pasted.out == folder
    with pytest.raises(ValueError, match="--stages exports the engine's fixed shapes: drop --dynamic-batch"):
        export_engine(models["flux"], ExportConfig(out=tmp_path / "x", stages=True, dynamic_batch=True, log=False))


@pytest.mark.slow
def test_inspect_lists_and_verifies_the_stages(models, preset_cache, tmp_path, capsys):
    from amo_engine.cli import main

    folder = tmp_path / "tiny-flux"
    assert main(["export", "--model", "tiny-flux", "--cache-dir", str(preset_cache), "--out", str(folder),
                 "--stages"]) == 0
    assert main(["inspect", str(folder), "--verify", "--cache-dir", str(preset_cache)]) == 0
    out = capsys.readouterr().out
    assert "stage text_encoder_2 (t5): input_ids [1, 64]" in out
    assert "verify stage vae (ort vs eager, float32): max abs" in out and "FAIL" not in out


@pytest.mark.slow
def test_generate_on_a_whole_pipeline_engine_loads_no_model_class(tmp_path, monkeypatch):
    """generate --backend ort on an engine exported with --stages runs tokenizers and engine graphs
    only: no diffusers or transformers model is constructed, and the image equals the one made with
    the eager encoders and VAE (the README's main job: OCR reads HAPPY)."""
    import diffusers.models.modeling_utils as diffusers_models
    import numpy as np
    import transformers.modeling_utils as transformers_models
    from PIL import Image

    from amo_engine.cli import main
    from amo_engine.ocr import Reader

    engine = tmp_path / "glyph"
    assert main(["export", "--model", "glyph", "--out", str(engine), "--stages"]) == 0
    args = ["generate", "--model", "glyph", "--backend", "ort", "--engine", str(engine), "--prompt",
            "a dark sign that says 'HAPPY'", "--sampler", "amo", "--seed", "0", "--quiet"]
    made = []
    for module, cls in ((diffusers_models, "ModelMixin"), (transformers_models, "PreTrainedModel")):
        real = getattr(module, cls).__init__

        def spy(self, *a, _real=real, **k):
            made.append(type(self).__name__)
            return _real(self, *a, **k)

        monkeypatch.setattr(getattr(module, cls), "__init__", spy)
    assert main(args + ["--out", str(tmp_path / "stages.png")]) == 0
    assert made == []
    monkeypatch.undo()
    from amo_engine.engine.staged_model import runs_on_stages
    from amo_engine.engine.folder import open_engine

    opened = open_engine(engine)
    assert runs_on_stages("ort", opened) and not runs_on_stages("trt", opened)
    plain = tmp_path / "plain"
    assert main(["export", "--model", "glyph", "--out", str(plain)]) == 0
    assert main(args[:6] + [str(plain)] + args[7:] + ["--out", str(tmp_path / "eager.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=int) for n in ("stages", "eager"))
    assert np.abs(a - b).max() <= 2
    assert Reader("rapidocr")([Image.open(tmp_path / "stages.png")]) == ["HAPPY"]


def _manifest(family: str, dtype: str) -> Manifest:
    from amo_engine.model.backbone import HookConfig
    from amo_engine.spec import IOSpec, TensorSpec

    io = IOSpec((), (TensorSpec("out", dtype, (1,)),))
    kinds = {"text_encoder": "clip", "text_encoder_3": "t5", "vae": "vae_decoder"}
    return Manifest(family, io, HookConfig(), {}, dtype=dtype,
                    stages={n: StageSection(k, io, f"{n}.onnx", True) for n, k in kinds.items()})


def test_tensorrt_recipe_keeps_t5_and_the_flux_vae_out_of_float16():
    from amo_engine.engine.trt_build import stage_precisions

    weak = stage_precisions(_manifest("flux", "float32"), "fp16", strongly_typed=False)
    assert weak == {"text_encoder": "fp16", "text_encoder_3": "fp32", "vae": "fp32"}
    assert stage_precisions(_manifest("sd3", "float32"), "fp16", False)["vae"] == "fp16"
    assert set(stage_precisions(_manifest("flux", "bfloat16"), "bf16", True).values()) == {"bf16"}
    with pytest.raises(ValueError, match="stage text_encoder_3: T5 overflows in float16; export with --dtype bf16"):
        stage_precisions(_manifest("sd3", "float16"), "fp16", strongly_typed=True)


def test_stages_run_on_tensorrt_only_when_every_stage_has_a_plan():
    from types import SimpleNamespace

    from amo_engine.engine.staged_model import runs_on_stages, stage_runtime

    manifest = _manifest("sd3", "float32")
    engine = SimpleNamespace(manifest=manifest, stages=list(manifest.stages))
    assert runs_on_stages("ort", engine) and not runs_on_stages("trt", engine)
    plan = TrtSection("10.0", "gpu", "9.0", "bf16", True, 3, 1.0, "x.plan")
    engine.manifest = manifest.replace(stages={n: dataclasses.replace(s, trt=plan) for n, s in manifest.stages.items()})
    assert runs_on_stages("trt", engine) and stage_runtime("trt") == "trt" and stage_runtime("aoti") == "ort"
