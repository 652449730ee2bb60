#!/usr/bin/env python3
"""What a text edit costs: one backbone call of a plain engine, the same call with the K/V swap
inputs at identity (the price of the swap ops in every joint block), and an edit call (A's and
B's rows together, the swap on at the localized block), eager and on ONNX Runtime. Arms are
interleaved by the bench harness on one medium config; the contention watch marks bad rounds.

    python bench/edit_cost.py --config medium-sd3 --out bench/results    # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from amo_engine.backbone import HookConfig
    from amo_engine.backends import open_backend
    from amo_engine.bench import harness
    from amo_engine.bench.zoo import bench_model
    from amo_engine.engine import open_engine
    from amo_engine.onnx_export import ExportConfig, export_engine
    from amo_engine.spec import sample_feeds

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="medium-sd3", choices=["tiny-sd3", "tiny-flux", "medium-sd3", "medium-flux"])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for edit_cost-CONFIG.json/.md (default: print only)")
    args = parser.parse_args(argv)

    harness.set_threads(args.threads)
    watch = harness.ContentionWatch(args.threads)
    watch.sample_before()
    model = bench_model(args.config)
    family, pipe = model.family, model.pipe
    height, width = model.default_size
    n_blocks = pipe.transformer.config.num_layers
    block = n_blocks // 2  # one localized block, as SD3-medium's 10 of 24
    env = harness.environment(args.threads)

    def feeds_for(engine_spec, edit: bool) -> dict:
        """The engine's sample feeds; an edit: the first half of the images take the second half's text."""
        feeds = sample_feeds(engine_spec)
        if "kv_donor_index" in feeds:
            rows = feeds["kv_donor_index"].shape[0]
            images = rows // family.rows(1, family.uses_cfg_rows(model.default_guidance))
            from amo_engine.edits import TextSwap

            half = images // 2
            donors = tuple(half + (i % half) for i in range(images)) if edit else tuple(range(images))
            swap = TextSwap(donors, (block,))
            feeds["kv_donor_index"] = torch.tensor(swap.donor_rows(rows, images))
            feeds["kv_swap_gate"] = torch.tensor(swap.gate(n_blocks)) if edit else torch.zeros(n_blocks)
        return feeds

    arms, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for name, batch, hook in (("plain", 1, HookConfig()), ("swap", 1, HookConfig(kv_swap=True)),
                                  ("edit", 2, HookConfig(kv_swap=True))):
            folder = Path(tmp) / name
            manifest = export_engine(model, ExportConfig(out=folder, batch=batch, height=height, width=width, log=False),
                                     hook)
            notes.append(f"{name} engine: {manifest['rows']} rows, export {manifest['timings']['export_s']:.1f} s")
            engines[name] = open_engine(folder, model)
        backends = {}
        for name, engine in engines.items():
            feeds = feeds_for(engine.spec, edit=name == "edit")
            eager = open_backend("eager", model=model, hook=engine.hook)
            ort = open_backend("ort", engine, model, threads=args.threads)
            backends[name] = (eager, ort)
            arms[f"eager-{name}"] = (lambda b=eager, f=feeds: b(f))
            arms[f"ort-{name}"] = (lambda b=ort, f=feeds: b(f))
        times = harness.interleaved(arms, args.calls, watch, warmup=2)
        for eager, ort in backends.values():
            ort.close()
    verdict = watch.verdict()
    s = {k: v.summary(set(verdict["contended_rounds"])) for k, v in times.items()}
    rows_per_image = family.rows(1, family.uses_cfg_rows(model.default_guidance))
    result = {"config": args.config, "env": env, "block": block, "joint_blocks": n_blocks, "calls_s": s,
              "contention": verdict, "notes": notes, "rows_per_image": rows_per_image}
    cpu = env["cpu"]
    lines = [f"### edit cost: {args.config} ({n_blocks} joint blocks, swap at block {block})", "",
             f"Machine: {cpu['name']} (family {cpu['family']} model {cpu['model']}), {cpu['cores']} cores, "
             f"{args.threads} threads; GEMM {env['gemm_gflops']:.0f} GFLOP/s; torch {env['torch']}, onnxruntime "
             f"{env['onnxruntime']}; {env['time']}, git {env['git']}. {args.calls} interleaved calls per arm.", "",
             ("**CONTENDED: do not trust these numbers.** " + "; ".join(verdict["reasons"])) if verdict["contended"]
             else "Contention: none detected.", "",
             "| runtime | plain call ms | swap inputs at identity ms | x plain | edit call (2x rows) ms | x plain | "
             "edit per image vs plain |", "|---|---|---|---|---|---|---|"]
    for rt in ("eager", "ort"):
        plain, swap, edit = (s[f"{rt}-{k}"]["p50"] for k in ("plain", "swap", "edit"))
        lines.append(f"| {rt} | {1000 * plain:.1f} | {1000 * swap:.1f} | {swap / plain:.3f} | {1000 * edit:.1f} | "
                     f"{edit / plain:.2f} | {edit / 2 / plain:.2f} |")
    lines += ["", f"- rows per image: {rows_per_image}; an edit call runs A's and B's rows (2 images); samples in the "
                  "JSON", f"- notes: {'; '.join(notes)}", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"edit_cost-{args.config}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"edit_cost-{args.config}.md").write_text(text)
    return 2 if verdict["contended"] else 0


if __name__ == "__main__":
    sys.exit(main())
