"""The typed engine manifest: format 2 written and read back whole, each missing or mistyped key named,
format-1 engines still open and run, a format from the future refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from amo_engine.engine.backends import open_backend
from amo_engine.engine.folder import open_engine, read_manifest
from amo_engine.engine.manifest import FORMAT_VERSION, EngineError, Manifest
from amo_engine.model.backbone import HookConfig
from amo_engine.model.inputs import sample_feeds


@pytest.fixture
def swap_engine(exported):
    """tiny-sd3 with the K/V swap inputs, two images a call (shared: conftest.exported)."""
    return exported("sd3", batch=2, exporter="torchscript", kv_swap=True)


def as_format_1(data: dict) -> dict:
    """The same engine as format 1 wrote it: hook keys at the top, no identity fills in ``io``."""
    old = {k: v for k, v in copy.deepcopy(data).items() if k != "hook"}
    hook = data["hook"]
    old.update(format=1, hooked_blocks=hook["hooked_blocks"], max_span_tokens=hook["max_span_tokens"],
               kv_swap=hook["kv_swap"], modulation=hook["modulation"])
    for t in old["io"]["inputs"]:
        t.pop("fill", None)
    return old


def test_format_2_round_trips(swap_engine):
    data = json.loads((swap_engine / "manifest.json").read_text())
    assert data["format"] == FORMAT_VERSION == 2 and "hooked_blocks" not in data
    manifest = Manifest.from_json(data)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.hook == HookConfig(hooked_blocks=(0, 1, 2, 3), kv_swap=True)
    assert manifest.io.tensor("kv_donor_index").fill == "row_index" and manifest.onnx.exporter == "torchscript"
    assert read_manifest(swap_engine) == manifest


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("family"), "lacks 'family'"),
    (lambda d: d.pop("files"), "lacks 'files'"),
    (lambda d: d["hook"].pop("max_span_tokens"), r"manifest.json.hook lacks 'max_span_tokens'"),
    (lambda d: d.update(rows="2"), "'rows' should be an integer, not '2'"),
    (lambda d: d["hook"].update(kv_swap=1), "'kv_swap' should be true or false, not 1"),
    (lambda d: d["onnx"].update(opset=None), r"manifest.json.onnx: 'opset' should be an integer, not None"),
    (lambda d: d["files"]["model.onnx"].pop("sha256"), r"files.model.onnx lacks 'sha256'"),
    (lambda d: d.pop("onnx"), r"lacks an artifact section \(onnx or trt or aoti\)"),
    (lambda d: d.update(io={"inputs": 3}), "'io' is not an IOSpec"),
    (lambda d: d.update(format=3), "has format 3, this amo-engine reads formats 1, 2"),
])
def test_each_bad_key_is_named(swap_engine, tmp_path, edit, message):
    data = json.loads((swap_engine / "manifest.json").read_text())
    edit(data)
    with pytest.raises(EngineError, match=message):
        Manifest.from_json(data)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((swap_engine / "model.onnx").read_bytes())
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match=message + ".*re-export the engine"):
        read_manifest(folder)


def test_a_format_1_engine_opens_and_runs_as_before(swap_engine, models, tmp_path):
    old = tmp_path / "format-1"
    old.mkdir()
    (old / "model.onnx").write_bytes((swap_engine / "model.onnx").read_bytes())
    data = json.loads((swap_engine / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(as_format_1(data)))
    engine = open_engine(old, models["sd3"])
    assert engine.manifest.format == 1 and engine.hook == HookConfig(hooked_blocks=(0, 1, 2, 3), kv_swap=True)
    assert engine.spec == read_manifest(swap_engine).io  # fills from the input declarations
    buffers = engine.spec.allocate("inputs")
    assert torch.equal(buffers["kv_donor_index"], torch.arange(4))  # each row its own donor: the plain graph
    feeds = sample_feeds(engine.spec)
    with open_backend("ort", engine, models["sd3"]) as old_run, open_backend("ort", swap_engine, models["sd3"]) as new_run:
        assert torch.equal(old_run(feeds)["velocity"], new_run(feeds)["velocity"])


def test_a_build_or_measure_rewrites_the_manifest_in_format_2(swap_engine, tmp_path):
    from amo_engine.engine.folder import write_manifest
    from amo_engine.engine.manifest import DefaultBackend

    old = tmp_path / "format-1"
    old.mkdir()
    (old / "model.onnx").write_bytes((swap_engine / "model.onnx").read_bytes())
    (old / "manifest.json").write_text(json.dumps(as_format_1(json.loads((swap_engine / "manifest.json").read_text()))))
    manifest = read_manifest(old).replace(default_backend=DefaultBackend("ort", {"ort": 1.0, "aoti": 2.0}, 5, "cpu"))
    write_manifest(old, manifest)
    data = json.loads((old / "manifest.json").read_text())
    assert data["format"] == 2 and data["hook"]["kv_swap"] and data["default_backend"]["backend"] == "ort"
    assert read_manifest(old).default_backend == manifest.default_backend
