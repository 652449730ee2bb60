#!/usr/bin/env python3
"""Cold start: wall time from process start to the first image written, per backend.

What a serverless replica pays on every scale-up: interpreter and imports, loading the model
(tokenizers, text encoders, VAE; the transformer too unless the engine holds it), creating the
ONNX Runtime session or loading the AOTInductor package, and one generation. Each arm is a fresh
``amo-engine generate`` process; arms are interleaved round-robin, and ``imports`` (a process that
only imports the command line and torch) is the floor every arm pays. ``ort-stages`` runs an engine
exported with ``--stages``: prompt encoders and VAE decoder on ONNX Runtime too, no model class
loaded. The engine folders are made once beforehand and are not part of the cold start.

    python bench/cold_start.py --rounds 5 --out bench/results    # glyph, eager / ort / aoti
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a dark sign that says 'HAPPY'"


def arms(engine: Path, stages: Path, out: Path, model: str, sampler: str) -> dict[str, list[str]]:
    generate = [sys.executable, "-m", "amo_engine.cli", "generate", "--model", model, "--prompt", PROMPT,
                "--sampler", sampler, "--seed", "0", "--quiet"]
    found = {"imports": [sys.executable, "-c", "import torch, amo_engine.cli"]}
    for backend in ("eager", "ort", "aoti"):
        engine_args = [] if backend == "eager" else ["--backend", backend, "--engine", str(engine)]
        found[backend] = generate + engine_args + ["--out", str(out / f"{backend}.png")]
    found["ort-stages"] = generate + ["--backend", "ort", "--engine", str(stages), "--out", str(out / "stages.png")]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glyph")
    parser.add_argument("--sampler", default="amo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engine", type=Path, default=None, help="an engine folder with onnx and aoti (default: export one)")
    parser.add_argument("--stages-engine", type=Path, default=None,
                        help="an engine folder exported with --stages (default: export one)")
    parser.add_argument("--out", type=Path, default=None, help="folder for cold_start-MODEL.json/.md (default: print only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine = args.engine
        if engine is None:
            engine = tmp / "engine"
            subprocess.run([sys.executable, "-m", "amo_engine.cli", "export", "--model", args.model, "--out", str(engine),
                            "--aoti"], check=True, stdout=subprocess.DEVNULL)
        stages = args.stages_engine
        if stages is None:
            stages = tmp / "stages"
            subprocess.run([sys.executable, "-m", "amo_engine.cli", "export", "--model", args.model, "--out", str(stages),
                            "--stages"], check=True, stdout=subprocess.DEVNULL)
        commands = arms(engine, stages, tmp, args.model, args.sampler)
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(args.rounds):
            for name, cmd in commands.items():
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                samples[name].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()),
                  flush=True)
        from amo_engine.engine.folder import read_manifest

        files = read_manifest(engine, check_hashes=False).files
    from amo_engine import timing

    env = timing.environment(None)
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    result = {"model": args.model, "sampler": args.sampler, "p50_s": p50, "samples_s": samples, "env": env,
              "engine_bytes": {k: v.bytes for k, v in files.items()}}
    cpu = env["cpu"]
    lines = [f"### cold start: {args.model}, {args.sampler}, process start to first image written", "",
             f"Machine: {cpu['name']} (family {cpu['family']} model {cpu['model']}), {cpu['cores']} cores, GEMM "
             f"{env['gemm_gflops']:.0f} GFLOP/s; torch {env['torch']}, onnxruntime {env['onnxruntime']}; {env['time']}, "
             f"git {env['git']}. {args.rounds} rounds, arms interleaved.", "",
             "| arm | p50 s | above imports s | samples s |", "|---|---|---|---|"]
    for k, v in samples.items():
        lines.append(f"| {k} | {p50[k]:.2f} | {p50[k] - p50['imports']:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"cold_start-{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"cold_start-{args.model}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
