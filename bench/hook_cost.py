#!/usr/bin/env python3
"""What the hook's features cost per backbone call, eager and on ONNX Runtime, arms interleaved by
the bench harness on one medium config (the contention watch marks bad rounds).

* ``--feature edit`` (Paper A): a plain engine; the same call with the K/V swap inputs at identity
  (the swap ops in every joint block, gate 0); an edit call (A's and B's rows together, the swap on
  at one block).
* ``--feature modulation`` (Paper B): a plain engine; the knobs at identity; the knobs on (scales,
  token bias, group mask in every block) by each path of modulation.py: two SDPA calls (``split``),
  one SDPA call on doubly wide Q/K (``augmented``), explicit L x L logits (``explicit``); and the
  split path in the first two joint blocks only (``export --modulation-blocks 0,1``).
* ``--feature lora`` (Paper A's adapters as inputs): a plain engine; the LoRA slots (rank
  ``--lora-rank``, every attention projection of every joint block) at zeros, i.e. no adapter; the
  same slots carrying an adapter in every row; both again with slots in two joint blocks only (a
  localized adapter's engine, ``export --lora-blocks 0,1``). Beside the calls: switching adapters in the loaded
  engine (reading the file and filling the factor buffers, ms) against re-exporting (s).

    python bench/hook_cost.py --feature edit --config medium-sd3 --out bench/results         # ~6 min
    python bench/hook_cost.py --feature modulation --config medium-sd3 --out bench/results   # ~7 min
    python bench/hook_cost.py --feature lora --config medium-sd3 --out bench/results         # ~5 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

LORA_GOALS = {"LoRA slots at zeros": 1.03, "LoRA slots carrying an adapter": 1.06,  # x plain, per call (issue 26)
              "LoRA slots at zeros, blocks 0-1 only": 1.03, "LoRA slots carrying an adapter, blocks 0-1 only": 1.06}


def variants(feature: str, lora_rank: int = 16):
    """(name, images per call, HookConfig, feeds -> feeds) per arm; the first is the baseline."""
    from amo_engine.model.backbone import HookConfig
    from amo_engine.model.inputs import GROUPS
    from amo_engine.pipeline.text_swap import TextSwap

    def identity(feeds, spec):
        return {**feeds, **{k: v for k, v in spec.allocate("inputs").items() if k in feeds and
                            any(k in g.names for g in GROUPS)}}

    def edit(feeds, spec):
        rows, n_blocks = feeds["kv_donor_index"].shape[0], feeds["kv_swap_gate"].shape[0]
        swap = TextSwap((1, 1), (n_blocks // 2,))  # one localized block, as SD3-medium's 10 of 24
        return {**feeds, "kv_donor_index": torch.tensor(swap.donor_rows(rows, 2)),
                "kv_swap_gate": torch.tensor(swap.gate(n_blocks))}

    def on(feeds, spec):
        return feeds  # sample_feeds sets every knob away from identity

    if feature == "lora":
        every, two = HookConfig(lora_rank=lora_rank), HookConfig(lora_rank=lora_rank, lora_blocks=(0, 1))
        return [("plain", 1, HookConfig(), on), ("LoRA slots at zeros", 1, every, identity),
                ("LoRA slots carrying an adapter", 1, every, on),
                ("LoRA slots at zeros, blocks 0-1 only", 1, two, identity),
                ("LoRA slots carrying an adapter, blocks 0-1 only", 1, two, on)]
    if feature == "edit":
        return [("plain", 1, HookConfig(), on), ("swap inputs at identity", 1, HookConfig(kv_swap=True), identity),
                ("edit (2x rows)", 2, HookConfig(kv_swap=True), edit)]
    return [("plain", 1, HookConfig(), on), ("knobs at identity (split)", 1, HookConfig(modulation=True), identity),
            *((f"knobs on, {path}", 1, HookConfig(modulation=True, modulation_path=path), on)
              for path in ("split", "augmented", "explicit")),
            ("knobs on, split, blocks 0-1 only", 1, HookConfig(modulation=True, modulation_blocks=(0, 1)), on)]


def adapter_switch(model, engine, path: Path, export_s: float, n: int = 20) -> dict:
    """Time a switch of adapters in a loaded engine: read a diffusers LoRA file of the engine's full
    rank and layers, and fill the per-row factor buffers; ``export_s`` is what a re-export costs."""
    import time

    from safetensors.torch import save_file

    from amo_engine import timing
    from amo_engine.model.adapters import fill_rows, read_adapter
    from amo_engine.model.lora import layout_for

    hook, config = engine.hook, model.pipe.transformer.config
    layout = layout_for(model.family, config, hook.lora_rank, hook.lora_blocks, hook.lora_projections)
    g = torch.Generator().manual_seed(0)
    prefix = f"transformer.{model.family.joint_block_path}"
    tensors = {}
    for block, proj in layout.layers:
        tensors[f"{prefix}.{block}.attn.{proj}.lora_A.weight"] = 0.01 * torch.randn(layout.rank, layout.dim, generator=g)
        tensors[f"{prefix}.{block}.attn.{proj}.lora_B.weight"] = 0.01 * torch.randn(layout.dim, layout.rank, generator=g)
    save_file(tensors, str(path))
    buffers = engine.spec.allocate("inputs")
    reads, fills = [], []
    for _ in range(n):
        t = time.perf_counter()
        adapter = read_adapter(path, model.family, config)
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        fill_rows(buffers["lora_down"], buffers["lora_up"], layout, [adapter] * buffers["lora_down"].shape[0])
        fills.append(time.perf_counter() - t)
    return {"read_ms": 1000 * timing.stats(reads)["p50"], "fill_ms": 1000 * timing.stats(fills)["p50"], "n": n,
            "export_s": export_s, "layers": len(layout.layers), "rank": layout.rank}


def main(argv: list[str] | None = None) -> int:
    from amo_engine.engine.backends import open_backend
    from amo_engine import timing
    from amo_engine.bench.zoo import bench_model
    from amo_engine.engine.folder import open_engine
    from amo_engine.engine.export import ExportConfig, export_engine
    from amo_engine.model.inputs import sample_feeds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature", default="edit", choices=["edit", "modulation", "lora"])
    parser.add_argument("--lora-rank", type=int, default=16, help="--feature lora: the slots' rank (default 16)")
    parser.add_argument("--config", default="medium-sd3", choices=["tiny-sd3", "tiny-flux", "medium-sd3", "medium-flux"])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for FEATURE_cost-CONFIG.json/.md (default: print only)")
    args = parser.parse_args(argv)

    timing.set_threads(args.threads)
    watch = timing.ContentionWatch(args.threads)
    watch.sample_before()
    model = bench_model(args.config)
    height, width = model.default_size
    env = timing.environment(args.threads)
    arms, notes, names, result_extra = {}, [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        backends = []
        for i, (name, images, hook, feeds_of) in enumerate(variants(args.feature, args.lora_rank)):
            folder = Path(tmp) / str(i)
            manifest = export_engine(model, ExportConfig(out=folder, batch=images, height=height, width=width,
                                                         log=False), hook)
            notes.append(f"{name}: {manifest.rows} rows, export {manifest.timings['export_s']:.1f} s")
            engine = open_engine(folder, model)
            feeds = feeds_of(sample_feeds(engine.spec), engine.spec)
            eager = open_backend("eager", model=model, hook=engine.hook)
            ort = open_backend("ort", engine, model, threads=args.threads)
            backends.append(ort)
            arms[f"eager: {name}"] = (lambda b=eager, f=feeds: b(f))
            arms[f"ort: {name}"] = (lambda b=ort, f=feeds: b(f))
            names.append(name)
            if args.feature == "lora" and hook.lora_rank and "switch" not in result_extra:
                result_extra["switch"] = adapter_switch(model, engine, Path(tmp) / "adapter.safetensors",
                                                        manifest.timings["export_s"])
        times = timing.interleaved(arms, args.calls, watch, warmup=2)
        for ort in backends:
            ort.close()
    verdict = watch.verdict()
    s = {k: v.summary(set(verdict["contended_rounds"])) for k, v in times.items()}
    result = {"feature": args.feature, "config": args.config, "env": env, "calls_s": s, "contention": verdict,
              "notes": notes, **result_extra}
    cpu = env["cpu"]
    lines = [f"### {args.feature} cost: {args.config}", "",
             f"Machine: {cpu['name']} (family {cpu['family']} model {cpu['model']}), {cpu['cores']} cores, "
             f"{args.threads} threads; GEMM {env['gemm_gflops']:.0f} GFLOP/s; torch {env['torch']}, onnxruntime "
             f"{env['onnxruntime']}; {env['time']}, git {env['git']}. {args.calls} interleaved calls per arm.", "",
             ("**CONTENDED: do not trust these numbers.** " + "; ".join(verdict["reasons"])) if verdict["contended"]
             else "Contention: none detected.", "",
             "| arm | eager p50 ms | x plain | ORT p50 ms | x plain |", "|---|---|---|---|---|"]
    for name in names:
        e, o = s[f"eager: {name}"]["p50"], s[f"ort: {name}"]["p50"]
        lines.append(f"| {name} | {1000 * e:.1f} | {e / s['eager: plain']['p50']:.3f} | {1000 * o:.1f} | "
                     f"{o / s['ort: plain']['p50']:.3f} |")
    if args.feature == "lora":
        for name, goal in LORA_GOALS.items():
            ratio = s[f"ort: {name}"]["p50"] / s["ort: plain"]["p50"]
            lines.append(f"- ORT {name} / plain: {ratio:.3f} (goal <= {goal}: {'met' if ratio <= goal else '**FAILED**'})")
        sw = result_extra["switch"]
        lines.append(f"- switching adapters in the loaded engine: read the file {sw['read_ms']:.1f} ms + fill the "
                     f"factor buffers {sw['fill_ms']:.2f} ms (p50 of {sw['n']}), against re-exporting the engine "
                     f"{sw['export_s']:.1f} s ({sw['layers']} adapted layers, rank {sw['rank']})")
    lines += ["", f"- samples in the JSON; notes: {'; '.join(notes)}", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.feature}_cost-{args.config}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{args.feature}_cost-{args.config}.md").write_text(text)
    return 2 if verdict["contended"] else 0


if __name__ == "__main__":
    sys.exit(main())
