"""Input buffers live across requests: an engine is bound to them once and serves every request of
its shape; what one request set (a text swap) never leaks into the next; a captured CUDA graph's own
inputs are the feeds, so a step copies nothing."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from amo_engine.engine.backends import open_backend
from amo_engine.engine.backends.aoti import AotiBackend
from amo_engine.engine.backends.ort import OrtBackend
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig
from amo_engine.pipeline.text_swap import TextSwap

PROMPTS = ["a sign that says 'HELLO'", "a sign that says 'WORLD'"]


@pytest.fixture
def swap_engine(exported):
    """tiny-sd3 with the K/V swap inputs, two images a call (shared: conftest.exported)."""
    return exported("sd3", batch=2, exporter="torchscript", kv_swap=True)


def generate(pipeline, **changes):
    cfg = GenerateConfig(PROMPTS, steps=3, height=128, width=128, seed=5)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return pipeline(cfg)


def test_two_requests_one_binding_and_nothing_leaks(models, swap_engine):
    model = models["sd3"]
    binds = []
    real_bind = OrtBackend._bind
    with mock.patch.object(OrtBackend, "_bind", lambda self, kind, name, t: binds.append((kind, name))
                           or real_bind(self, kind, name, t)):
        with open_backend("ort", swap_engine, model) as backend:
            pipeline = AmoPipeline(model, backend.engine.hook, backend)
            inputs = len(backend.spec.input_names)
            edited = generate(pipeline, text_swap=TextSwap((1, 0), (1,)))  # rows take each other's text K/V
            first = [b for b in binds if b[0] == "input"]
            plain = generate(pipeline)  # same seed, no swap
            again = [b for b in binds if b[0] == "input"]
            buffers = backend.input_buffers(backend.spec, "cpu")
            assert buffers is backend.input_buffers(backend.spec, "cpu")
        with open_backend("ort", swap_engine, model) as fresh_backend:  # a new engine: nothing kept
            alone = generate(AmoPipeline(model, fresh_backend.engine.hook, fresh_backend))
    assert len(first) == inputs and again == first  # bound once, by the first request
    assert torch.equal(buffers["kv_donor_index"], torch.arange(4))  # the swap put back to identity
    assert torch.equal(plain.latents, alone.latents)  # the edit before it left nothing behind
    assert not torch.equal(edited.latents, plain.latents)  # the swap did change the first request


def test_eager_keeps_a_few_shapes_and_reuses_them(models):
    pipeline = AmoPipeline(models["flux"])
    generate(pipeline)
    backend = pipeline._eager_backend(frozenset())
    kept = dict(backend._input_buffers)
    generate(pipeline, seed=11)
    assert backend._input_buffers.keys() == kept.keys()
    assert all(backend._input_buffers[k] is v for k, v in kept.items())
    for size in (64, 96, 160, 192, 224):
        generate(pipeline, height=size, width=size)
    assert len(backend._input_buffers) == backend.KEPT_SHAPES


def test_a_graphed_backend_hands_out_its_captured_inputs_and_copies_nothing(models, swap_engine):
    from amo_engine.engine.folder import open_engine

    engine = open_engine(swap_engine, models["sd3"])
    backend = AotiBackend.__new__(AotiBackend)  # the CUDA-graph state, without CUDA: a recorded replay
    backend.engine, backend.spec, backend.device = engine, engine.spec, torch.device("cpu")
    backend.inputs = engine.spec.allocate("inputs")
    outputs = engine.spec.allocate("outputs")
    backend._graph = lambda: tuple(outputs.values())
    feeds = backend.input_buffers(engine.spec, "cpu")
    assert feeds is backend.inputs
    with mock.patch.object(torch.Tensor, "copy_", side_effect=AssertionError("a copy per step")):
        for _ in range(3):
            assert backend(feeds)["velocity"] is outputs["velocity"]
    other = {k: v.clone() for k, v in feeds.items()}
    other["timestep"].fill_(0.5)
    backend(other)  # feeds that are not its buffers are copied in
    assert float(backend.inputs["timestep"][0]) == 0.5
