"""Reliability: bad inputs, damaged artifacts and faults get clear answers; nothing half-written."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import amo_engine
from amo_engine.engine.backends import open_backend
from amo_engine.engine.backends.eager import EagerBackend
from amo_engine.engine.backends.ort import OrtBackend
from amo_engine.cli import main
from amo_engine.engine.folder import check_runtime, open_engine, read_manifest, recover_interrupted
from amo_engine.engine.manifest import EngineError, TrtSection
from amo_engine.model.load import load_model
from amo_engine.engine.export import ExportConfig, export_engine
from amo_engine.model.inputs import sample_feeds
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig, NonFiniteLatentsError
from amo_engine.model.presets import build_clip_tokenizer
from amo_engine.prompts import find_quoted_spans, sd3_layout

from conftest import pasted_export

PROMPT = "A sign that says 'OPEN LATE'"
PACKAGE = Path(amo_engine.__file__).parent


@pytest.fixture
def engine(exported):
    return exported("flux", exporter="torchscript")


def run(model, backend=None, **kw):
    kw.setdefault("steps", 4)
    return AmoPipeline(model, backend=backend)(GenerateConfig(prompts=kw.pop("prompts", [PROMPT]), **kw))


class Faulty(EagerBackend):
    """Eager backend that corrupts its outputs: the map from the first call, the velocity from ``at``."""

    def __init__(self, model, attn=None, velocity_nan_at=None):
        pipe = AmoPipeline(model)
        super().__init__(pipe.backbone())
        self.attn, self.at, self.calls = attn, velocity_nan_at, 0

    def __call__(self, feeds):
        out = dict(super().__call__(feeds))
        if self.attn is not None:
            out["attn"] = torch.full_like(out["attn"], self.attn)
        if self.at is not None and self.calls >= self.at:
            out["velocity"] = torch.full_like(out["velocity"], float("nan"))
        self.calls += 1
        return out


def with_spec(backend, model, **kw):
    """Give a Faulty backend the IOSpec the pipeline will ask for (it passes the spec check)."""
    family = model.family
    rows = family.rows(1, family.uses_cfg_rows(model.default_guidance))
    text = family.text_layout(model.pipe, model.max_sequence_length).length
    backend.spec = AmoPipeline(model).backbone().io_spec(rows, 128, 128, text)
    return backend


# ---------------------------------------------------------------- prompts and maps


def _notes(model, prompt, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, prompts=[prompt], steps=2, **kw)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_quoted_text_past_every_limit_warns_once(models):
    """Cut away by CLIP's 77 and T5's 64 tokens: one note, overshoot, no 'no quoted text'."""
    result, notes = _notes(models["sd3"], "word " * 80 + "'Far Away Text'")
    assert len(notes) == 1 and "lies past CLIP's 77-token and T5's 64-token limit" in notes[0], notes
    assert result.sampler == "overshoot" and torch.isfinite(result.latents).all()


def test_quoted_text_past_clip_only_is_read_from_t5(models):
    result, notes = _notes(models["sd3"], "word " * 80 + "'Far Away Text'", max_sequence_length=256)
    assert notes == ["the quoted text of prompt 0 runs past CLIP's 77-token limit; AMO reads it whole from the "
                     "T5 tokens"], notes
    assert result.sampler == "amo"


def test_quoted_text_cut_everywhere_keeps_its_first_tokens(models):
    prompt = "word " * 60 + "'" + "far away text " * 20 + "end'"
    result, notes = _notes(models["sd3"], prompt)
    assert len(notes) == 1 and "only its first tokens steer AMO" in notes[0], notes
    assert result.sampler == "amo"


def test_empty_prompt_falls_back_to_overshoot(models, family):
    with pytest.warns(UserWarning, match="falls back to the overshoot sampler"):
        result = run(models[family], prompts=[""], steps=2)
    assert result.sampler == "overshoot" and len(result.images) == 1


def test_batch_with_spans_in_some_rows_only(models, family):
    with pytest.warns(UserWarning, match=r"no quoted text in \['a plain cat photo'\]"):
        result = run(models[family], prompts=[PROMPT, "a plain cat photo"], steps=2)
    assert result.sampler == "amo"
    assert result.attn_map[0].abs().sum() > 0 and result.attn_map[1].abs().sum() == 0  # row 1: m = 1 (overshoot)
    assert torch.isfinite(result.latents).all()


@pytest.mark.parametrize("value", [float("nan"), 0.5, float("inf")])
def test_flat_or_nan_map_never_reaches_the_latents(models, family, value):
    model = models[family]
    faulty = with_spec(Faulty(model, attn=value), model)
    amo = run(model, backend=faulty, sampler="amo")
    over = run(model, sampler="overshoot")
    assert torch.isfinite(amo.latents).all()
    assert torch.allclose(amo.latents, over.latents, rtol=0, atol=1e-5)  # m = 1 everywhere: plain overshoot


def test_nan_velocity_stops_with_the_step_index(models, family):
    model = models[family]
    faulty = with_spec(Faulty(model, velocity_nan_at=2), model)
    with pytest.raises(NonFiniteLatentsError, match="NaN/Inf at step 2 of 4"):
        run(model, backend=faulty)


def test_cli_writes_no_image_when_the_loop_breaks(preset_cache, tmp_path, monkeypatch, capsys):
    real = EagerBackend.__call__

    def nan_call(self, feeds):
        out = dict(real(self, feeds))
        out["velocity"] = out["velocity"] * float("nan")
        return out

    monkeypatch.setattr(EagerBackend, "__call__", nan_call)
    out = tmp_path / "img.png"
    code = main(["generate", "--model", "tiny-flux", "--cache-dir", str(preset_cache), "--prompt", PROMPT,
                 "--steps", "3", "--out", str(out), "--quiet"])
    assert code == 2
    assert "NaN/Inf at step 0" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.png"))


@given(st.text(alphabet=st.sampled_from(list("ab '\"\u2018\u2019\u201c\u201d.,!?x1 ")), max_size=60) | st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_span_parser_property(text):
    spans = find_quoted_spans(text)
    last_end = 0
    for sp in spans:
        assert 0 < sp.start < sp.end <= len(text)
        assert sp.start >= last_end  # ordered, non-overlapping
        assert sp.text(text).strip() == sp.text(text) and sp.text(text)
        last_end = sp.end


_CLIP = None


@given(st.text(max_size=120))
@settings(max_examples=40, deadline=None)
def test_span_mask_property(text):
    global _CLIP
    _CLIP = _CLIP or build_clip_tokenizer()
    mask = sd3_layout(_CLIP, _CLIP, 77, 16).span_mask([text])
    assert mask.shape == (1, 93) and set(mask.unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- options


def test_unknown_backend_and_model():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        open_backend("tensorflow", "engines/x")
    with pytest.raises(ValueError, match="unknown model 'tiny-sd4'"):
        load_model("tiny-sd4")
    with pytest.raises(ValueError, match="model folder definitely/not-here-at-all/x does not exist"):
        load_model("definitely/not-here-at-all/x")
    with pytest.raises(ValueError, match="fetch it first with: hf download nobody/not-cached-model"):
        load_model("nobody/not-cached-model")


def test_engine_hints_are_pasteable_commands(tmp_path, models):
    """Each hint names the model and the exact folder, so pasting it makes the right engine."""
    missing = tmp_path / "flux engine"
    with pytest.raises(EngineError, match=r"amo-engine export --model tiny-flux --out '.*flux engine'$"):
        read_manifest(missing, model="tiny-flux")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"not an engine folder; write one with: \(for the default glyph model; name "
                                          rf"yours with --model\) amo-engine export --model glyph --out "
                                          rf"{tmp_path / 'empty'}$"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(EngineError, match=r"is a diffusers model folder, not an engine; export one from it with: "
                                          rf"amo-engine export --model {models['sd3'].folder} --out engines/"):
        read_manifest(models["sd3"].folder)


# ---------------------------------------------------------------- engines


def test_engine_versions_and_exporter_are_checked(engine):
    manifest = read_manifest(engine)
    check_runtime(manifest, "ort", "1.31.1", 23)  # passes
    with pytest.raises(EngineError, match="unknown exporter"):
        check_runtime(manifest.replace(onnx=dataclasses.replace(manifest.onnx, exporter="tf2onnx")), "ort", "1.0", 23)
    with pytest.raises(EngineError, match="implements up to 17"):
        check_runtime(manifest, "ort", "1.14.0", 17)
    with pytest.raises(EngineError, match="no TensorRT plan"):
        check_runtime(manifest, "trt", "10.1.0")
    with pytest.raises(EngineError, match="built with TensorRT 10.0.1, this machine has 10.1.0"):
        check_runtime(manifest.replace(trt=TrtSection("10.0.1", "gpu", "9.0", "bf16", True, 3, 1.0)), "trt", "10.1.0")


def test_engine_opset_too_new_for_onnxruntime(engine, models, tmp_path):
    folder = tmp_path / "newer"
    shutil.copytree(engine, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["onnx"]["opset"] = 99
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="opset 99"):
        open_backend("ort", folder, model=models["flux"])


def test_feed_outside_the_engine_profile(engine, models):
    backend = OrtBackend(open_engine(engine))
    feeds = sample_feeds(backend.spec)
    feeds["hidden_states"] = torch.zeros(1, 16, 64)
    with pytest.raises(ValueError, match="export an engine for this shape"):
        backend(feeds)
    with pytest.raises(ValueError, match="the engine draws 128x128 px, this request asks 128x256") as err:
        run(models["flux"], backend=backend, height=256, steps=1)
    pasted = pasted_export(str(err.value))
    assert (pasted.height, pasted.width, pasted.no_cfg) == (256, 128, False)


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import amo_engine.engine.export as ox
    from amo_engine.model.load import load_model
    ox._cleanup = lambda path: os.kill(os.getpid(), signal.SIGKILL)  # die mid-export
    model = load_model("tiny-flux", cache_dir=sys.argv[1])
    ox.export_engine(model, ox.ExportConfig(out=Path(sys.argv[2]), exporter="torchscript", log=False))
""")


@pytest.mark.slow
def test_killed_export_leaves_the_previous_engine_valid(engine, models, preset_cache, tmp_path):
    folder = tmp_path / "engine"
    shutil.copytree(engine, folder)
    before = read_manifest(folder)
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(preset_cache), str(folder)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert read_manifest(folder) == before
    assert list(tmp_path.glob(".engine.tmp-*"))  # the killed writer's leftovers...
    export_engine(models["flux"], ExportConfig(out=folder, exporter="torchscript", log=False))
    assert not list(tmp_path.glob(".engine.tmp-*"))  # ...are cleared by the next writer
    read_manifest(folder)


def test_recover_engine_caught_between_renames(engine, tmp_path):
    out = tmp_path / "engine"
    shutil.copytree(engine, tmp_path / f".engine.old-{os.getpid()}")
    (tmp_path / ".engine.tmp-abc").mkdir()
    recover_interrupted(out)
    read_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_written_folders_follow_the_umask_and_leave_no_lock(models, tmp_path):
    """A shared model folder on a cluster: engine and model folders readable by the group as the
    umask says (mkdtemp alone makes them 0700), and no hidden lock file left beside them."""
    from amo_engine.train.glyph import save_glyph_folder

    umask = os.umask(0o022)
    try:
        export_engine(models["flux"], ExportConfig(out=tmp_path / "engines" / "e", exporter="torchscript", log=False))
        save_glyph_folder(load_model("glyph").pipe, tmp_path / "model")
    finally:
        os.umask(umask)
    for folder in (tmp_path / "engines" / "e", tmp_path / "model"):
        assert folder.stat().st_mode & 0o777 == 0o755, oct(folder.stat().st_mode)
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.rglob("*") if p.is_file())
    assert [p.name for p in (tmp_path / "engines").iterdir()] == ["e"]


def test_second_process_export_fails_clearly(models, tmp_path):
    folder = tmp_path / "engine"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from amo_engine.engine.folder import export_lock\n"
         "with export_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EngineError, match="another export or build is writing"):
            export_engine(models["flux"], ExportConfig(out=folder, log=False))
        assert not folder.exists()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- security


def _package_sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_pickle_loads_remote_code_or_shell():
    for path in _package_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), path
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                assert func not in ("torch.load", "eval", "exec", "pickle.load", "pickle.loads"), f"{path}: {func}"
                for kw in node.keywords:
                    if kw.arg == "trust_remote_code":
                        assert isinstance(kw.value, ast.Constant) and kw.value.value is False, path
                    if kw.arg == "shell":
                        assert isinstance(kw.value, ast.Constant) and kw.value.value is False, f"{path}: shell=True"


def test_weights_load_through_safetensors_only():
    tree = ast.parse((PACKAGE / "model" / "load.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("from_pretrained")]
    assert calls
    for call in calls:
        kws = {k.arg: k.value for k in call.keywords}
        assert isinstance(kws.get("use_safetensors"), ast.Constant) and kws["use_safetensors"].value is True


def test_pickle_weights_are_refused(models, tmp_path):
    folder = tmp_path / "pickled"
    models["flux"].pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "transformer")
    models["flux"].pipe.transformer.save_pretrained(folder / "transformer", safe_serialization=False)
    assert list((folder / "transformer").glob("*.bin")) and not list((folder / "transformer").glob("*.safetensors"))
    with pytest.raises(ValueError, match="safetensors weights only"):
        load_model(str(folder))


def test_only_our_own_component_modules_are_imported(tmp_path):
    """A folder may name this package's component classes (the glyph autoencoder); any other
    module it names is never imported by us."""
    from amo_engine.model.load import import_own_components

    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline",
        "vae": ["amo_engine.model.glyph.autoencoder", "PixelUnshuffleAutoencoder"],
        "text_encoder": ["os_helpers_that_do_harm", "Evil"],
    }))
    import_own_components(tmp_path)
    assert "amo_engine.model.glyph.autoencoder" in sys.modules and "os_helpers_that_do_harm" not in sys.modules
