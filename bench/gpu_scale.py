#!/usr/bin/env python3
"""GPU, real-size architectures with random weights: what the AMO score branch costs per backbone
call next to the stock transformer and the reference-style (explicit full softmax) AMO.

    python bench/gpu_scale.py --out results.json      # needs a CUDA GPU with ~40 GB free

Architectures (read from the spec of SD3-medium and FLUX.1-dev; weights random, bf16):
SD3-medium 1024x1024 with CFG rows (B=2, 4096 image + 333 text tokens); FLUX.1-dev 1024x1024
(B=1, 4096 image + 512 text tokens). Arms run interleaved; CUDA-event timing; p50 of N calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from amo_engine.backbone import ScoreConfig, make_backbone
from amo_engine.bench import ReferenceScoreProcessor
from amo_engine.spec import sample_feeds


def build(family: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 on the GPU: FLUX is 24 GB, not 48
    try:
        return _construct(family, FluxTransformer2DModel, SD3Transformer2DModel).eval()
    finally:
        torch.set_default_dtype(default)


def _construct(family, FluxTransformer2DModel, SD3Transformer2DModel):
    with torch.device("cuda"):
        if family == "sd3":
            model = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                          attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                          caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                          pos_embed_max_size=192)
        else:
            model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                           attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                           pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return model


def interleaved_ms(arms: dict, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call of each arm, CUDA-event timed, arms interleaved round-robin."""
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return times


def measure(family: str, calls: int, warmup: int, steps: int) -> dict:
    model = build(family)
    stock_procs = dict(model.attn_processors)
    backbone = make_backbone(model, ScoreConfig())
    hooked_procs = dict(model.attn_processors)
    rows, text = (2, 333) if family == "sd3" else (1, 512)
    spec = backbone.io_spec(rows, 1024, 1024, text, torch.bfloat16)
    feeds = sample_feeds(spec, "cuda")
    names = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")
    stock_feeds = {k: v for k, v in feeds.items() if k in names}
    sink: list = []
    ref_procs = dict(stock_procs)
    for i in backbone.hooked_blocks:
        ref_procs[f"transformer_blocks.{i}.attn.processor"] = ReferenceScoreProcessor(family, sink, feeds["span_mask"])

    def stock():
        model.set_attn_processor(dict(stock_procs))  # diffusers pops from the dict
        return model(**stock_feeds, return_dict=False)[0]

    def hooked():
        model.set_attn_processor(dict(hooked_procs))
        return backbone(**feeds)

    def reference():
        model.set_attn_processor(dict(ref_procs))
        sink.clear()
        out = model(**stock_feeds, return_dict=False)[0]
        return out, torch.stack(sink).mean(0)

    arms = {"eager-stock": stock, "eager-hook-amo": hooked, "reference-amo": reference}
    peak = {}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in arms.values():
                fn()
        for name, fn in arms.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
        times = interleaved_ms(arms, calls)
    loops = measure_loops(family, backbone, model, stock_procs, hooked_procs, feeds, stock_feeds, steps, calls=3)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "family": family, "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "rows": rows,
        "image_tokens": spec.dims["image_tokens"], "text_tokens": text, "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "p50_ms": p50, "samples_ms": times, "peak_gib": peak,
        "hook_over_stock": p50["eager-hook-amo"] / p50["eager-stock"],
        "reference_over_hook": p50["reference-amo"] / p50["eager-hook-amo"],
        "loop_steps": steps, "loop_ms": loops,
        "amo_loop_over_euler_loop": loops["hook-amo"] / loops["stock-euler"],
    }
    return result


def measure_loops(family, backbone, model, stock_procs, hooked_procs, feeds, stock_feeds, steps, calls) -> dict:
    """p50 ms of a whole denoise loop: stock transformer + Euler vs hooked backbone + AMO (c = 2)."""
    from amo_engine.samplers import StepOut, sample_amo, sample_euler
    from amo_engine.schedules import flow_match_sigmas

    sigmas = flow_match_sigmas({"shift": 3.0}, steps)
    scale = 1000.0 if family == "sd3" else 1.0
    hidden, timestep = feeds["hidden_states"], feeds["timestep"]

    def stock_fn(x, sigma):
        hidden.copy_(x)
        timestep.fill_(sigma * scale)
        return StepOut(model(**stock_feeds, return_dict=False)[0])

    def amo_fn(x, sigma):
        hidden.copy_(x)
        timestep.fill_(sigma * scale)
        v, attn = backbone(**feeds)
        return StepOut(v, attn)

    def euler_loop():
        model.set_attn_processor(dict(stock_procs))
        return sample_euler(stock_fn, hidden.clone(), sigmas)

    def amo_loop():
        model.set_attn_processor(dict(hooked_procs))
        return sample_amo(amo_fn, hidden.clone(), sigmas, 2.0, torch.Generator("cuda").manual_seed(0), patch_size=2)

    with torch.inference_mode():
        euler_loop(), amo_loop()
        out = interleaved_ms({"stock-euler": euler_loop, "hook-amo": amo_loop}, calls)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sd3,flux")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="steps of the timed denoise loops")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_scale: no CUDA GPU here", file=sys.stderr)
        return 3
    results = []
    for family in args.families.split(","):
        r = measure(family, args.calls, args.warmup, args.steps)
        torch.cuda.empty_cache()
        results.append(r)
        print(f"{family}: {r['params_b']:.2f} B params on {r['gpu']}: " + ", ".join(
            f"{k} {v:.1f} ms (peak {r['peak_gib'][k]:.1f} GiB)" for k, v in r["p50_ms"].items())
              + f"; hook/stock {r['hook_over_stock']:.3f}, reference/hook {r['reference_over_hook']:.2f}; "
              f"{r['loop_steps']}-step loop: Euler {r['loop_ms']['stock-euler']:.0f} ms, AMO {r['loop_ms']['hook-amo']:.0f} ms "
              f"(x{r['amo_loop_over_euler_loop']:.3f})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
