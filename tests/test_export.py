"""Export, graph hygiene, manifest, and one conformance test over every available backend."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from onnx import TensorProto, helper

from amo_engine.model.families import make_backbone
from amo_engine.engine.backends import open_backend
from amo_engine.cli import main
from amo_engine.engine.folder import export_lock, open_engine, read_manifest
from amo_engine.engine.manifest import EngineError
from amo_engine.engine.checks import check_graph, trt_supported_ops
from amo_engine.engine.export import ExportConfig, export_engine
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig
from amo_engine.model.inputs import sample_feeds
from amo_engine.engine.verify import engine_parity

from conftest import FAMILY_NAMES, pasted_export
from test_backbone import explicit_reference_scores, stock_velocity


def _trt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


BACKENDS = [
    "eager",
    "ort",
    pytest.param("openvino", marks=pytest.mark.skipif(not _openvino_available(),
                                                      reason="OpenVINO is not installed (pip install -e '.[openvino]')")),
    pytest.param("trt", marks=[pytest.mark.gpu, pytest.mark.trt,
                               pytest.mark.skipif(not _trt_available(), reason="TensorRT and an NVIDIA GPU are not present")]),
]
PROMPT = "A street sign saying 'No Parking Anytime'"


class _Engines:
    """``engines[family, exporter]``: the shared engine (conftest.exported), exported when first asked."""

    def __init__(self, exported):
        self.exported = exported

    def __getitem__(self, key):
        family, exporter = key
        return self.exported(family, exporter=exporter)


@pytest.fixture
def engines(exported):
    return _Engines(exported)


@pytest.mark.parametrize("exporter", ["dynamo", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_export_and_inspect_verify(engines, family, exporter, preset_cache, capsys):
    folder = engines[family, exporter]
    manifest = read_manifest(folder)
    assert manifest.family == FAMILY_NAMES[family] and manifest.onnx.exporter == exporter
    assert manifest.graph["trt_ok"] and manifest.graph["fusion_ok"]
    assert manifest.graph["float64"] == []
    assert manifest.graph["score_softmax"] == len(manifest.hook.hooked_blocks)
    assert manifest.io.output_names == ["velocity", "attn"]
    assert "span_mask" in manifest.io.input_names
    assert main(["inspect", str(folder), "--verify", "--cache-dir", str(preset_cache)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "compatible" in printed and "attention fusion: kept" in printed


def _open(kind, model, engine, device):
    """The backend under test; eager is our hooked backbone behind the EagerBackend runner."""
    if kind == "eager":
        return open_backend("eager", model=model, hook=engine.hook)
    return open_backend(kind, engine, model, device=device)


@pytest.mark.parametrize("kind", BACKENDS)
def test_backend_conformance(models, engines, family, kind):
    """Every backend against independent references on the same feeds: velocity vs the stock
    diffusers transformer (<= 1e-4), attn vs an explicit full-softmax reference (<= 1e-6); engines
    also run a 4-step AMO generation that agrees with the eager pipeline."""
    model, engine = models[family], open_engine(engines[family, "dynamo"])
    device = "cuda" if kind == "trt" else "cpu"
    backend = _open(kind, model, engine, device)
    feeds = sample_feeds(engine.spec, device, seed=0)
    out = {k: v.float().cpu().clone() for k, v in backend(feeds).items()}
    stock = model.pipe.transformer
    cpu_feeds = {k: v.cpu() for k, v in feeds.items()}
    velocity_err = (out["velocity"] - stock_velocity(stock, cpu_feeds).float()).abs().max().item()
    reference_backbone = make_backbone(stock, engine.hook, model.pipe.vae_scale_factor)
    attn_err = (out["attn"] - explicit_reference_scores(reference_backbone, stock, cpu_feeds)).abs().max().item()
    print(f"{family} {kind}: velocity vs stock {velocity_err:.2e}, attn vs explicit softmax {attn_err:.2e}")
    assert velocity_err <= 1e-4 and attn_err <= 1e-6
    if kind == "eager":
        return
    cfg = GenerateConfig([PROMPT], steps=4, sampler="amo", seed=7)
    reference = AmoPipeline(model, engine.hook)(cfg)
    result = AmoPipeline(model, engine.hook, backend)(cfg)
    err = (result.latents - reference.latents).abs().max().item()
    print(f"{family} {kind}: 4-step AMO latents max abs diff vs eager {err:.2e}")
    assert torch.allclose(result.latents, reference.latents, rtol=0, atol=1e-4)


def test_cli_generate_through_the_engine_hashes_each_file_once(engines, preset_cache, tmp_path, monkeypatch):
    """generate --backend ort and inspect --verify open the engine once: every artifact is hashed
    exactly once per command (a 24 GB FLUX engine must not be read three times)."""
    import amo_engine.engine.folder as engine_module

    folder = engines["flux", "torchscript"]
    hashed = []
    real = engine_module.sha256_file
    monkeypatch.setattr(engine_module, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a))
    artifacts = sorted(read_manifest(folder, check_hashes=False).files)
    out = tmp_path / "ort.png"
    code = main(["generate", "--model", "tiny-flux", "--cache-dir", str(preset_cache), "--backend", "ort",
                 "--engine", str(folder), "--prompt", PROMPT, "--steps", "3", "--out", str(out), "--quiet"])
    assert code == 0 and out.is_file()
    assert sorted(hashed) == artifacts
    hashed.clear()
    assert main(["inspect", str(folder), "--verify", "--cache-dir", str(preset_cache)]) == 0
    assert sorted(hashed) == artifacts


def test_graph_check_flags_unsupported_ops_and_exposed_softmax():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    probs = helper.make_tensor_value_info("p", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"]),
        helper.make_node("MatMul", ["p", "w"], ["m"]),
        helper.make_node("Bernoulli", ["m"], ["y"]),
    ]
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.1] * 6)
    graph = helper.make_graph(nodes, "g", [x], [probs, y], initializer=[w])
    report = check_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert report.unsupported_ops == ["Bernoulli"] and not report.trt_ok
    assert report.softmax_outputs and not report.fusion_ok
    assert "Softmax" in trt_supported_ops() and "Attention" not in trt_supported_ops()


def test_manifest_validation_errors(engines, models, tmp_path):
    src = engines["sd3", "dynamo"]
    with pytest.raises(EngineError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        read_manifest(broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(EngineError, match="no manifest.json"):
        read_manifest(broken)
    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="truncated"):
        read_manifest(truncated)
    corrupted = tmp_path / "corrupted"
    shutil.copytree(src, corrupted)
    (corrupted / "model.onnx").write_bytes(data[:-8] + b"\0" * 8)
    with pytest.raises(EngineError, match="corrupted"):
        read_manifest(corrupted)
    other = tmp_path / "other"
    shutil.copytree(src, other)
    m = json.loads((other / "manifest.json").read_text())
    m["weights_fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="other weights"):
        open_backend("ort", other, model=models["sd3"])
    with pytest.raises(EngineError, match="is a sd3 model"):
        open_backend("ort", src, model=models["flux"])


def test_interrupted_export_keeps_the_previous_engine(models, engines, tmp_path, monkeypatch):
    folder = tmp_path / "engine"
    shutil.copytree(engines["sd3", "dynamo"], folder)
    before = read_manifest(folder)

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr("amo_engine.engine.export._cleanup", boom)
    with pytest.raises(KeyboardInterrupt):
        export_engine(models["sd3"], ExportConfig(out=folder, exporter="torchscript", log=False))
    assert read_manifest(folder) == before  # old engine intact and valid
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".engine.tmp")] == []


def test_concurrent_export_is_refused(models, tmp_path):
    folder = tmp_path / "engine"
    with export_lock(folder):
        with pytest.raises(EngineError, match="another export or build is writing"):
            export_engine(models["flux"], ExportConfig(out=folder, log=False))
    assert not folder.exists()


def test_build_without_tensorrt_says_so(engines, capsys):
    if _trt_available():
        pytest.skip("TensorRT is present: the real build runs in the GPU tests")
    code = main(["build", str(engines["sd3", "dynamo"])])  # default bf16: the missing TensorRT is said first
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "TensorRT" in err[0]


@pytest.mark.slow
def test_external_data_export(models, tmp_path, monkeypatch):
    """Weights above the protobuf limit go to model.onnx.data (limit lowered to exercise the path)."""
    monkeypatch.setattr("amo_engine.engine.export.EXTERNAL_DATA_BYTES", 1000)
    folder = tmp_path / "ext"
    manifest = export_engine(models["flux"], ExportConfig(out=folder, log=False))
    assert (folder / "model.onnx.data").is_file() and "model.onnx.data" in manifest.files
    assert manifest.onnx.folded is False and manifest.graph["trt_ok"]
    p = engine_parity(models["flux"], folder, "ort")
    assert p["velocity_max_abs"] <= 1e-4 and p["attn_max_abs"] <= 1e-6


@pytest.mark.slow
def test_dynamic_batch_graph_runs_at_other_batches(models, tmp_path):
    import numpy as np
    import onnxruntime as ort

    folder = tmp_path / "dyn"
    export_engine(models["flux"], ExportConfig(out=folder, dynamic_batch=True, log=False))
    spec = read_manifest(folder).io
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for batch in (1, 3):
        feeds = {t.name: np.random.rand(*[batch if d == "batch" else spec.dims.get(d, d) if isinstance(d, str) else d
                                          for d in t.shape]).astype(np.float32)
                 for t in spec.inputs if t.name in names}
        velocity, attn = session.run(None, feeds)
        assert velocity.shape[0] == batch and attn.shape == (batch, spec.dims["image_tokens"])
    with pytest.raises(ValueError, match="--dynamic-batch needs --exporter dynamo"):
        export_engine(models["flux"], ExportConfig(out=tmp_path / "x", dynamic_batch=True, exporter="torchscript", log=False))


def test_fixed_batch_engine_pads_fewer_images_and_batch_mates_change_nothing(models, exported):
    """An engine exported for 2 images serves 1 (a filler row, dropped), and that image is
    bit-identical to the same prompt and seed beside another one."""
    model = models["sd3"]
    folder = exported("sd3", batch=2)
    with open_backend("ort", folder, model) as backend:
        pipe = AmoPipeline(model, open_engine(folder).hook, backend)
        assert pipe.images_per_call(model.default_guidance) == 2
        alone = pipe(GenerateConfig([PROMPT], steps=3, seed=4))
        beside = pipe(GenerateConfig(["plain grass", PROMPT], steps=3, seed=[9, 4]))
    assert len(alone.images) == 1 and torch.equal(alone.latents[0], beside.latents[1])


def test_verify_gates_follow_the_engine_dtype():
    """A healthy fp16 engine (cosine 0.99995, 0.4% relative error) passes its gates, though its
    absolute errors would fail the fp32 gates; a broken one fails."""
    from amo_engine.engine.verify import judge_parity

    healthy_fp16 = {"velocity_max_abs": 3e-3, "attn_max_abs": 2e-4, "velocity_cosine": 0.99995,
                    "velocity_rel": 0.004, "attn_cosine": 0.99998}
    assert judge_parity(healthy_fp16, "float16")[0]
    assert not judge_parity(healthy_fp16, "float32")[0]
    broken = {**healthy_fp16, "velocity_cosine": 0.95, "velocity_rel": 0.3}
    ok, detail = judge_parity(broken, "bfloat16")
    assert not ok and "velocity cosine 0.95 (>= 0.995)" in detail


def test_cli_ort_threads_and_optimisation_level_reach_the_session(engines, preset_cache, tmp_path, monkeypatch,
                                                                  capsys):
    import onnxruntime as ort

    from amo_engine.engine.backends.ort import OrtBackend

    seen = []
    real_init = OrtBackend.__init__

    def spying_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        options = self.session.get_session_options()
        seen.append((options.intra_op_num_threads, options.graph_optimization_level))

    monkeypatch.setattr(OrtBackend, "__init__", spying_init)
    threads = torch.get_num_threads()
    try:
        assert main(["generate", "--model", "tiny-flux", "--cache-dir", str(preset_cache), "--backend", "ort",
                     "--engine", str(engines["flux", "dynamo"]), "--prompt", PROMPT, "--steps", "2", "--threads", "1",
                     "--ort-opt-level", "basic", "--out", str(tmp_path / "o.png"), "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert seen == [(1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)]
    assert main(["generate", "--model", "tiny-flux", "--prompt", PROMPT, "--ort-opt-level", "basic"]) == 2
    assert "--ort-opt-level applies to --backend ort" in capsys.readouterr().err


def test_export_aoti_without_a_cpp_compiler_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("amo_engine.engine.aoti.cpp_compiler", lambda: None)  # a machine without g++
    assert main(["export", "--model", "glyph", "--out", str(tmp_path / "e"), "--aoti"]) == 2
    assert "finds no compiler: apt-get install -y g++" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_stock_graph_has_no_tap_matches_the_transformer_and_is_refused_for_generation(models, exported):
    """The bench's stock engine (the same exporter, score tap off): no span_mask input and no attn
    output, its velocity the hooked engine's; a generation asked of it names the export that fits."""

    model = models["flux"]
    stock, hooked = exported("flux", score_tap=False), exported("flux")
    engine = open_engine(stock, model)
    assert "span_mask" not in engine.spec.input_names and engine.spec.output_names == ["velocity"]
    assert not engine.hook.score_tap and open_engine(hooked).hook.score_tap
    feeds = sample_feeds(open_engine(hooked).spec)
    with open_backend("ort", engine, model) as plain, open_backend("ort", hooked, model) as tapped:
        assert (plain(feeds)["velocity"] - tapped(feeds)["velocity"]).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="exported without the score tap.*re-export it with: ") as err:
            AmoPipeline(model, engine.hook, plain)(GenerateConfig([PROMPT], steps=2))
    assert pasted_export(str(err.value)).out == stock
