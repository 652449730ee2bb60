"""GPU checks (NVIDIA, CUDA torch): skipped on machines without one."""

from __future__ import annotations

import pytest
import torch

from amo_engine.model.families import make_backbone
from amo_engine.model.load import load_model
from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

from conftest import random_feeds, tiny_transformer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
PROMPT = "A banner with the message 'Grand Opening, Visit Us Today'"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("presets")


def test_backbone_on_cuda_matches_cpu(family):
    cpu = make_backbone(tiny_transformer(family))
    gpu = make_backbone(tiny_transformer(family).cuda())
    feeds = random_feeds(cpu)
    with torch.no_grad():
        v_cpu, a_cpu = cpu(**feeds)
        v_gpu, a_gpu = gpu(**{k: v.cuda() for k, v in feeds.items()})
    assert (v_gpu.cpu() - v_cpu).abs().max() <= 1e-3
    assert (a_gpu.cpu() - a_cpu).abs().max() <= 1e-4


def test_the_pipeline_loop_never_syncs_the_host(family, cache, monkeypatch):
    """The real AmoPipeline loop — feed writes, the text-swap and modulation wrappers, the backbone,
    AMO's update, the step callback — under sync-debug 'error' (the one sync after the loop, reading
    the NaN check, is outside it)."""
    import amo_engine.pipeline.generate as pipeline_module
    from amo_engine.model.backbone import HookConfig
    from amo_engine.pipeline.plans import ModulationPlan, StepKnobs
    from amo_engine.pipeline.text_swap import TextSwap

    model = load_model(f"tiny-{family}", "fp32", "cuda", cache)
    real = pipeline_module.sample_amo

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    steps = 6
    plan = ModulationPlan("probe", (StepKnobs((1.2, 1, 1, 1), (0.3,), 1.0),) * steps, needs_groups=True)
    prompts = ["a red apple and a sign that says 'OPEN'", "a red apple and a sign that says 'SHUT'"]
    pipe = AmoPipeline(model, HookConfig(kv_swap=True, modulation=True))
    pipe(GenerateConfig(prompts, steps=2, sampler="amo", progress=False))  # warm-up: lazy inits may sync once
    monkeypatch.setattr(pipeline_module, "sample_amo", strict)
    result = pipe(GenerateConfig(prompts, steps=steps, sampler="amo", progress=False, modulation=plan,
                                 text_swap=TextSwap((1, 1), (0,))))
    assert result.sampler == "amo" and torch.isfinite(result.latents).all()


def test_ort_cuda_runs_in_the_callers_stream_order(cache):
    """Feeds written by a slow torch kernel just before the call are what ORT reads, and its outputs
    are ready for the caller's next kernel, with Run not syncing the host (NO_HOST_SYNC)."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    from amo_engine.engine.backends import open_backend
    from amo_engine.engine.export import ExportConfig, export_engine
    from amo_engine.model.inputs import sample_feeds

    cpu_model = load_model("tiny-flux", "fp32", "cpu", cache)
    folder = cache / "flux-engine"
    export_engine(cpu_model, ExportConfig(out=folder, log=False))
    model = load_model("tiny-flux", "fp32", "cuda", cache)
    with open_backend("ort", folder, model, device="cuda") as backend:
        feeds = sample_feeds(backend.spec, "cuda", seed=0)
        want = {k: v.clone() for k, v in backend(feeds).items()}
        torch.cuda.synchronize()
        for _ in range(3):
            stale = feeds["hidden_states"].clone()
            feeds["hidden_states"].zero_()
            torch.cuda._sleep(50_000_000)  # the caller's stream is busy for a while ...
            feeds["hidden_states"].copy_(stale)  # ... then writes the feed ORT must read
            got = backend(feeds)
            total = got["velocity"].float().sum()  # queued on the caller's stream after the call
            torch.cuda.synchronize()
            assert torch.equal(got["velocity"], want["velocity"]) and torch.isfinite(total)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_generation_on_cuda(family, dtype, cache):
    model = load_model(f"tiny-{family}", dtype, "cuda", cache)
    result = AmoPipeline(model)(GenerateConfig([PROMPT], steps=8, sampler="amo"))
    assert torch.isfinite(result.latents.float()).all() and result.latents.is_cuda
    assert len(result.images) == 1
    if dtype == "fp32":  # the same initial noise on both devices: values must agree
        cpu_model = load_model(f"tiny-{family}", "fp32", "cpu", cache)
        drawn = AmoPipeline(cpu_model)(GenerateConfig([PROMPT], steps=1, sampler="euler"))
        noise = torch.randn(drawn.latents.shape, generator=torch.Generator().manual_seed(3))
        cpu = AmoPipeline(cpu_model)(GenerateConfig([PROMPT], steps=4, sampler="euler", latents=noise))
        gpu = AmoPipeline(model)(GenerateConfig([PROMPT], steps=4, sampler="euler", latents=noise))
        assert torch.allclose(gpu.latents.cpu(), cpu.latents, rtol=0, atol=1e-4)
        assert torch.allclose(gpu.attn_map, cpu.attn_map, rtol=0, atol=1e-5)
