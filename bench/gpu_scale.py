#!/usr/bin/env python3
"""GPU, released-size architectures with random weights: what the AMO score branch costs per
backbone call next to the stock transformer and the reference-style (explicit full softmax) AMO.

    python bench/gpu_scale.py --out results.json      # needs a CUDA GPU with ~40 GB free
    python bench/gpu_scale.py --device cpu --scale medium --size 128 --calls 2   # smoke run on a CPU

Architectures (``amo_engine.bench.zoo``, the shapes of SD3-medium and FLUX.1-dev; weights random,
bf16): SD3-medium 1024x1024 with CFG rows (B=2, 4096 image + 333 text tokens); FLUX.1-dev
1024x1024 (B=1, 4096 image + 512 text tokens). Arms run interleaved by the same harness as the CPU
bench, timed to a device sync; loops use each family's own sigma grid and timestep rule.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from amo_engine.backbone import ScoreConfig
from amo_engine.bench import harness
from amo_engine.bench.zoo import ReferenceScoreProcessor, build_transformer, released_text_tokens, stock_feeds
from amo_engine.families import family_named
from amo_engine.samplers import StepOut, sample_amo, sample_euler
from amo_engine.spec import sample_feeds


def ms(timed: harness.Timed) -> dict:
    s = timed.summary(set())
    return {"p50": 1000 * s["p50"], "samples": [1000 * x for x in s["samples"]], "wide": s["wide"]}


def measure(name: str, calls: int, warmup: int, steps: int, scale: str = "released", size: int = 1024,
            device: str = "cuda") -> dict:
    family = family_named(name)
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_transformer(family, scale, device=device, dtype=dtype)
    stock_procs = dict(model.attn_processors)
    backbone = family.backbone(model, ScoreConfig(), 8)
    rows = family.rows(1, family.batches_cfg)
    text_tokens = released_text_tokens(family)
    spec = backbone.io_spec(rows, size, size, text_tokens, dtype)
    feeds = sample_feeds(spec, device)
    plain = stock_feeds(feeds)
    sync = torch.cuda.synchronize if cuda else None
    sink: list = []
    ref_procs = dict(stock_procs)
    for i in backbone.hooked_blocks:
        ref_procs[f"transformer_blocks.{i}.attn.processor"] = ReferenceScoreProcessor(family, sink, feeds["span_mask"])

    def run_with(procs, fn):
        model.set_attn_processor(dict(procs))  # diffusers pops from the dict
        return fn()

    def stock():
        return run_with(stock_procs, lambda: model(**plain, return_dict=False)[0])

    def hooked():
        return backbone(**feeds)  # installs its processors for the call only, then restores the model's

    def reference():
        sink.clear()
        return run_with(ref_procs, lambda: (model(**plain, return_dict=False)[0], torch.stack(sink).mean(0)))

    arms = {"eager-stock": stock, "eager-hook-amo": hooked, "reference-amo": reference}
    peak = {}
    with torch.inference_mode():
        for arm, fn in arms.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            fn()
            if cuda:
                torch.cuda.synchronize()
            peak[arm] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        times = harness.interleaved(arms, calls, warmup=warmup, sync=sync)
        loops = harness.interleaved(loop_arms(family, backbone, model, stock_procs, feeds, plain, steps,
                                              spec.dims["image_tokens"], device), 3, warmup=1, sync=sync)
    p50 = {k: ms(v)["p50"] for k, v in times.items()}
    loop_ms = {k: ms(v)["p50"] for k, v in loops.items()}
    return {
        "family": name, "scale": scale, "size": size, "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "rows": rows, "image_tokens": spec.dims["image_tokens"], "text_tokens": text_tokens,
        "device": torch.cuda.get_device_name() if cuda else harness.cpu_facts()["name"], "torch": torch.__version__,
        "p50_ms": p50, "samples_ms": {k: ms(v)["samples"] for k, v in times.items()}, "peak_gib": peak,
        "hook_over_stock": p50["eager-hook-amo"] / p50["eager-stock"],
        "reference_over_hook": p50["reference-amo"] / p50["eager-hook-amo"],
        "loop_steps": steps, "loop_ms": loop_ms, "amo_loop_over_euler_loop": loop_ms["hook-amo"] / loop_ms["stock-euler"],
    }


def loop_arms(family, backbone, model, stock_procs, feeds, plain, steps, image_tokens, device) -> dict:
    """Whole denoise loops: stock transformer + Euler vs hooked backbone + AMO (c = 2), on the
    family's sigma grid and timestep rule."""
    config = family.reference_scheduler
    sigmas = family.sigmas(config, steps, image_tokens)
    hidden, timestep = feeds["hidden_states"], feeds["timestep"]

    def stock_fn(x, sigma):
        hidden.copy_(x)
        timestep.fill_(family.timestep(sigma, config))
        return StepOut(model(**plain, return_dict=False)[0])

    def amo_fn(x, sigma):
        hidden.copy_(x)
        timestep.fill_(family.timestep(sigma, config))
        v, attn = backbone(**feeds)
        return StepOut(v, attn)

    def euler_loop():
        model.set_attn_processor(dict(stock_procs))
        return sample_euler(stock_fn, hidden.clone(), sigmas)

    def amo_loop():
        return sample_amo(amo_fn, hidden.clone(), sigmas, 2.0, torch.Generator(device).manual_seed(0),
                          patch_size=family.latent_patch(model.config))

    return {"stock-euler": euler_loop, "hook-amo": amo_loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sd3,flux")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="steps of the timed denoise loops")
    parser.add_argument("--scale", default="released", choices=["released", "medium"],
                        help="architecture scale (medium: the CPU bench's ~70 M-param models)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--device", default="cuda", help="cuda (bf16) or cpu (fp32: a smoke run of this script)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_scale: no CUDA GPU here (a smoke run on the CPU: --device cpu --scale medium --size 128)",
              file=sys.stderr)
        return 3
    results = []
    for name in args.families.split(","):
        r = measure(name, args.calls, args.warmup, args.steps, args.scale, args.size, args.device)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
        print(f"{name}: {r['params_b']:.2f} B params on {r['device']}: " + ", ".join(
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
