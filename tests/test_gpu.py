"""GPU checks (NVIDIA, CUDA torch): skipped on machines without one."""

from __future__ import annotations

import pytest
import torch

from amo_engine.backbone import make_backbone
from amo_engine.models import load_model
from amo_engine.pipeline import AmoPipeline, GenerateConfig
from amo_engine.samplers import StepOut, sample_amo

from conftest import HEIGHT, WIDTH, TEXT_LEN, random_feeds, tiny_transformer

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


def test_amo_loop_never_syncs_the_host(family):
    """The whole AMO loop (eager backbone, feed copies, sampler update) under sync-debug 'error'."""
    backbone = make_backbone(tiny_transformer(family).cuda())
    feeds = {k: v.cuda() for k, v in random_feeds(backbone).items()}
    hidden, timestep = feeds["hidden_states"], feeds["timestep"]
    fam = backbone.family
    sigmas = fam.sigmas(fam.reference_scheduler, 8, backbone.io_spec(2, HEIGHT, WIDTH, TEXT_LEN[fam.name]).dims["image_tokens"])

    def fn(x, sigma):
        hidden.copy_(x)
        timestep.fill_(fam.timestep(sigma, fam.reference_scheduler))
        v, attn = backbone(**feeds)
        return StepOut(v, attn)

    x = torch.randn(hidden.shape, device="cuda")
    g = torch.Generator("cuda").manual_seed(0)
    with torch.no_grad():
        fn(x, 1.0)  # warm-up (lazy inits may sync once)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = sample_amo(fn, x, sigmas, c=2.0, generator=g, patch_size=fam.latent_patch(backbone.config))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


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
