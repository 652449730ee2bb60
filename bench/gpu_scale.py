#!/usr/bin/env python3
"""GPU, released-size architectures with random weights: what the AMO score branch costs per
backbone call next to the stock transformer and the reference-style (explicit full softmax) AMO.

    python bench/gpu_scale.py --out results.json      # needs a CUDA GPU with ~40 GB free
    python bench/gpu_scale.py --device cpu --scale medium --size 128 --calls 2   # smoke run on a CPU
    python bench/gpu_scale.py --compiled --steps 28 --out results.json   # + torch.compile and AOTInductor arms

Architectures (``amo_engine.bench.zoo``, the shapes of SD3-medium and FLUX.1-dev; weights random,
bf16): SD3-medium 1024x1024 with CFG rows (B=2, 4096 image + 333 text tokens); FLUX.1-dev
1024x1024 (B=1, 4096 image + 512 text tokens). Arms run interleaved by the same harness as the CPU
bench, timed to a device sync; loops use each family's own sigma grid and timestep rule.

``--compiled`` adds the compiled arms: ``compile-stock`` (torch.compile of the stock transformer,
the public anchor), ``aoti-hook`` (the AOTInductor package of the hooked backbone, what ``--backend
aoti`` runs) and ``aoti-hook-graph`` (that package replayed from a CUDA graph on static buffers),
and the loops ``compile-euler`` (stock compiled, Euler), ``aoti-graph-euler`` and ``aoti-graph-amo``
(the graphed package, Euler ignoring its map / AMO using it). Compile times are recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from amo_engine.model.backbone import HookConfig
from amo_engine import timing
from amo_engine.bench.zoo import ReferenceScoreProcessor, build_transformer, released_text_tokens, stock_feeds
from amo_engine.model.families import family_named
from amo_engine.samplers import StepOut, sample_amo, sample_euler
from amo_engine.model.inputs import sample_feeds


def ms(timed: timing.Timed) -> dict:
    s = timed.summary(set())
    return {"p50": 1000 * s["p50"], "samples": [1000 * x for x in s["samples"]], "wide": s["wide"]}


def measure(name: str, calls: int, warmup: int, steps: int, scale: str = "released", size: int = 1024,
            device: str = "cuda", compiled: bool = False, reference_arm: bool = True) -> dict:
    family = family_named(name)
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_transformer(family, scale, device=device, dtype=dtype)
    stock_procs = dict(model.attn_processors)
    backbone = family.backbone(model, HookConfig(), 8)
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

    arms = {"eager-stock": stock, "eager-hook-amo": hooked}
    if reference_arm:
        arms["reference-amo"] = reference
    loop_fns = loop_arms(family, backbone, model, stock_procs, feeds, plain, steps, spec.dims["image_tokens"], device)
    compile_s = {}
    if compiled:
        compiled_arms, compiled_loops, compile_s = compiled_arms_of(family, backbone, model, stock_procs, feeds, plain,
                                                                    steps, spec.dims["image_tokens"], device)
        arms.update(compiled_arms)
        loop_fns.update(compiled_loops)
    peak = {}
    with torch.no_grad():
        for arm, fn in arms.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            fn()
            if cuda:
                torch.cuda.synchronize()
            peak[arm] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        times = timing.interleaved(arms, calls, warmup=warmup, sync=sync)
        loops = timing.interleaved(loop_fns, 3, warmup=1, sync=sync)
    p50 = {k: ms(v)["p50"] for k, v in times.items()}
    loop_ms = {k: ms(v)["p50"] for k, v in loops.items()}
    return {
        "family": name, "scale": scale, "size": size, "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "rows": rows, "image_tokens": spec.dims["image_tokens"], "text_tokens": text_tokens,
        "device": torch.cuda.get_device_name() if cuda else timing.cpu_facts()["name"], "torch": torch.__version__,
        "p50_ms": p50, "samples_ms": {k: ms(v)["samples"] for k, v in times.items()}, "peak_gib": peak,
        "hook_over_stock": p50["eager-hook-amo"] / p50["eager-stock"],
        "reference_over_hook": p50["reference-amo"] / p50["eager-hook-amo"] if reference_arm else None,
        "loop_steps": steps, "loop_ms": loop_ms, "loop_samples_ms": {k: ms(v)["samples"] for k, v in loops.items()},
        "amo_loop_over_euler_loop": loop_ms["hook-amo"] / loop_ms["stock-euler"],
        "compile_s": compile_s,
        "speedup_over_eager_stock": {k: p50["eager-stock"] / v for k, v in p50.items()},
    }


def loop_runners(family, feeds, steps, image_tokens, device, patch):
    """(euler, amo): whole denoise loops on the family's sigma grid and timestep rule over a call
    that reads the static ``feeds``; each step writes x and the timestep into them first.
    ``call() -> velocity`` or ``(velocity, attn)``; AMO uses c = 2."""
    config = family.reference_scheduler
    sigmas = family.sigmas(config, steps, image_tokens)
    hidden, timestep = feeds["hidden_states"], feeds["timestep"]

    def step_fn(call):
        def fn(x, sigma):
            hidden.copy_(x)
            timestep.fill_(family.timestep(sigma, config))
            out = call()
            return StepOut(*out) if isinstance(out, (tuple, list)) else StepOut(out)
        return fn

    def euler(call):
        return sample_euler(step_fn(call), hidden.clone(), sigmas)

    def amo(call):
        return sample_amo(step_fn(call), hidden.clone(), sigmas, 2.0, torch.Generator(device).manual_seed(0),
                          patch_size=patch)

    return euler, amo


def loop_arms(family, backbone, model, stock_procs, feeds, plain, steps, image_tokens, device) -> dict:
    """Whole denoise loops: stock transformer + Euler vs hooked backbone + AMO."""
    euler, amo = loop_runners(family, feeds, steps, image_tokens, device, family.latent_patch(model.config))

    def euler_loop():
        model.set_attn_processor(dict(stock_procs))
        return euler(lambda: model(**plain, return_dict=False)[0])

    return {"stock-euler": euler_loop, "hook-amo": lambda: amo(lambda: backbone(**feeds))}


def compiled_arms_of(family, backbone, model, stock_procs, feeds, plain, steps, image_tokens, device):
    """The compiled arms and loops (see the module doc), and each compilation's seconds."""
    from amo_engine.engine.aoti import CudaGraphCall, compile_package, load_package

    cuda = device == "cuda"
    seconds = {}
    model.set_attn_processor(dict(stock_procs))
    compiled_stock = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        compiled_stock(**plain, return_dict=False)
    if cuda:
        torch.cuda.synchronize()
    seconds["compile-stock"] = time.perf_counter() - start
    start = time.perf_counter()
    # code alone in the package, weights read in place from the model: a released FLUX embedded in the
    # package is 24 GB written and then unpacked again (a first GPU run filled the disk that way)
    package = compile_package(backbone, feeds, Path(tempfile.mkdtemp()) / "backbone.pt2", embed_weights=False)
    runner = load_package(package, weights_from=backbone)
    seconds["aoti-hook"] = time.perf_counter() - start

    def compiled_stock_call():
        return compiled_stock(**plain, return_dict=False)[0]

    arms = {"compile-stock": compiled_stock_call, "aoti-hook": lambda: runner(**feeds)}
    engine = arms["aoti-hook"]
    if cuda:
        start = time.perf_counter()
        engine = arms["aoti-hook-graph"] = CudaGraphCall(runner, feeds)
        seconds["aoti-hook-graph capture"] = time.perf_counter() - start
    euler, amo = loop_runners(family, feeds, steps, image_tokens, device, family.latent_patch(model.config))
    engine_name = "aoti-graph" if cuda else "aoti"
    loops = {
        "compile-euler": lambda: euler(compiled_stock_call),
        f"{engine_name}-euler": lambda: euler(engine),
        f"{engine_name}-amo": lambda: amo(engine),
    }
    return arms, loops, seconds


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
    parser.add_argument("--compiled", action="store_true", help="add the torch.compile and AOTInductor arms")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference (explicit softmax) AMO arm")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_scale: no CUDA GPU here (a smoke run on the CPU: --device cpu --scale medium --size 128)",
              file=sys.stderr)
        return 3
    results = []
    for name in args.families.split(","):
        r = measure(name, args.calls, args.warmup, args.steps, args.scale, args.size, args.device, args.compiled,
                    not args.no_reference)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        results.append(r)
        print(f"{name}: {r['params_b']:.2f} B params on {r['device']}: " + ", ".join(
            f"{k} {v:.1f} ms (peak {r['peak_gib'][k]:.1f} GiB)" for k, v in r["p50_ms"].items())
              + f"; hook/stock {r['hook_over_stock']:.3f}; {r['loop_steps']}-step loops: "
              + ", ".join(f"{k} {v:.0f} ms" for k, v in r["loop_ms"].items())
              + (f"; compile s: {r['compile_s']}" if r["compile_s"] else ""), flush=True)
        if args.out:  # after every family: a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
