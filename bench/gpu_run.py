#!/usr/bin/env python3
"""The one prepared GPU run: the compiled engine against eager and torch.compile on released-size
architectures (random weights, bf16), arm by arm, most valuable first, each written to
``OUT/gpu_run.jsonl`` the moment it finishes (a run cut short keeps what it measured).

On the device (an H200: torch and triton there, no diffusers), from the repository root, with the
wheels of ``bench/gpu_carry.txt`` in ``.whl/`` (see that file for the download command)::

    bash bench/gpu_run.sh COMMIT           # device tool: carry [".whl"], timeout_s 600

On a CPU, every arm at tiny scale (the test suite runs this; nothing is timed against anything)::

    python bench/gpu_run.py --smoke --out /tmp/gpu-smoke

Arms, in order (``ARMS``), per architecture — FLUX.1-dev at 1024² (B=1), then SD3-medium at 1024²
with classifier-free-guidance rows (B=2):

* ``eager-stock``: the diffusers transformer as users run it; ``compile-stock``: ``torch.compile``
  of it (the public anchor), compile seconds recorded;
* ``aoti-hook``: our AOTInductor package of the hooked backbone (code only, weights read in place
  from the model: what ``--backend aoti`` runs), compile seconds recorded; ``aoti-hook-graph``: that
  package replayed from a CUDA graph over its own static inputs (CUDA only);
* ``loops``: 28-step loops — ``compile-euler`` (the anchor), ``aoti-graph-euler`` and
  ``aoti-graph-amo`` (the graphed package, Euler ignoring its map, AMO using it; on a CPU the
  package without a graph);
* then ``fp8-compile-stock`` (FLUX only): torchao's float8 dynamic quantisation of the stock
  transformer, compiled — the one lossy arm: its velocity cosine against bf16 eager is recorded.

Per call: median of ``--calls`` (10) after ``--warmup`` (3), each timed to a device sync; peak GPU
memory per arm. Each arm runs under its own time limit (``ARMS``), never past the whole run's
``--budget``: an arm that cannot fit is written as skipped with the reason, one that overruns as
timed out, one that fails with its error; the next arm still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gpu_scale import loop_runners  # noqa: E402  (the loops the earlier GPU run used)

from amo_engine.bench.zoo import ARCHITECTURES, build_transformer, released_text_tokens, stock_feeds  # noqa: E402
from amo_engine.model.backbone import HookConfig  # noqa: E402
from amo_engine.model.families import family_named  # noqa: E402
from amo_engine.model.inputs import sample_feeds  # noqa: E402

FAMILIES = ("flux", "sd3")  # FLUX.1-dev first: the moonshot's architecture
ARMS = {  # arm -> its own time limit, seconds (released sizes on an H200)
    "setup": 90, "eager-stock": 45, "compile-stock": 150, "aoti-hook": 180, "aoti-hook-graph": 45, "loops": 90,
    "fp8-compile-stock": 150,
}
MIN_ARM_S = 5  # an arm with less time than this left is skipped, not started
SMOKE = dict(scale="tiny", size=64, text_tokens=16, calls=2, warmup=1, steps=3, budget=600)


class ArmTimeout(Exception):
    pass


class Skip(Exception):
    """An arm this machine cannot run (said in its record, not counted as a failure)."""


@dataclass
class Run:
    out: Path
    budget: float
    device: str
    scale: str
    size: int
    calls: int
    warmup: int
    steps: int
    text_tokens: int | None
    start: float = field(default_factory=time.perf_counter)

    @property
    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def write(self, record: dict) -> None:
        with open(self.out / "gpu_run.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = {k: v for k, v in record.items() if k not in ("samples_ms", "trace")}
        print(json.dumps(shown), flush=True)

    def arm(self, family: str, name: str, fn) -> dict | None:
        """Run one arm under its limit (and the budget left); write its record; return what it measured."""
        limit = min(ARMS[name], self.left)
        record = {"arm": name, "family": family}
        if limit < MIN_ARM_S:
            self.write({**record, "status": "skipped", "note": f"budget spent ({self.budget:.0f} s)"})
            return None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(limit)))
        try:
            measured = fn() or {}
            status = "ok"
        except ArmTimeout:
            measured, status = {}, "timeout"
            record["note"] = f"over its {limit:.0f} s limit"
        except Skip as why:
            measured, status = {}, "skipped"
            record["note"] = str(why)
        except Exception as err:  # an arm that breaks is reported; the next arm still runs
            measured, status = {}, "failed"
            record["note"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            record["trace"] = traceback.format_exc()[-2000:]
        finally:
            signal.alarm(0)
        record.update(status=status, seconds=time.perf_counter() - start, **measured)
        if self.cuda:
            record["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.write(record)
        return measured if status == "ok" else None

    def per_call(self, fn) -> dict:
        for _ in range(self.warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(self.calls):
            start = time.perf_counter()
            fn()
            self.sync()
            samples.append(1000 * (time.perf_counter() - start))
        return {"p50_ms": statistics.median(samples), "samples_ms": samples}


def _alarm(signum, frame):
    raise ArmTimeout()


def environment(run: Run, commit: str | None) -> dict:
    env = {"arm": "env", "commit": commit, "torch": torch.__version__, "python": platform.python_version(),
           "device": run.device, "scale": run.scale, "size": run.size, "calls": run.calls, "warmup": run.warmup,
           "steps": run.steps, "budget_s": run.budget}
    if run.cuda:
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        from amo_engine.timing import cpu_facts

        env["cpu"] = cpu_facts()["name"]
    for name in ("diffusers", "torchao", "triton"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


def family_arms(run: Run, name: str) -> None:
    family = family_named(name)
    dtype = torch.bfloat16 if run.cuda else torch.float32
    ctx: dict = {}

    def setup():
        model = build_transformer(family, run.scale, device=run.device, dtype=dtype)
        backbone = family.backbone(model, HookConfig(), 8)
        rows = family.rows(1, family.batches_cfg)
        text = run.text_tokens or released_text_tokens(family)
        spec = backbone.io_spec(rows, run.size, run.size, text, dtype)
        feeds = sample_feeds(spec, run.device)
        ctx.update(model=model, backbone=backbone, spec=spec, feeds=feeds, plain=stock_feeds(feeds),
                   stock_procs=dict(model.attn_processors))
        return {"params_b": sum(p.numel() for p in model.parameters()) / 1e9, "rows": rows,
                "image_tokens": spec.dims["image_tokens"], "text_tokens": text}

    if run.arm(name, "setup", setup) is None:
        return
    model, backbone, feeds, plain = ctx["model"], ctx["backbone"], ctx["feeds"], ctx["plain"]

    def stock_call(transformer):
        def call():
            with torch.no_grad():
                return transformer(**plain, return_dict=False)[0]
        return call

    eager = run.arm(name, "eager-stock", lambda: run.per_call(stock_call(model)))

    def compile_stock():
        compiled = torch.compile(model)
        start = time.perf_counter()
        stock_call(compiled)()
        run.sync()
        ctx["compiled"] = compiled
        return {"compile_s": time.perf_counter() - start, **run.per_call(stock_call(compiled))}

    compiled = run.arm(name, "compile-stock", compile_stock)

    def aoti_hook():
        from amo_engine.engine.aoti import compile_package, load_package

        start = time.perf_counter()
        package = compile_package(backbone, feeds, Path(tempfile.mkdtemp()) / "backbone.pt2", embed_weights=False)
        runner = load_package(package, weights_from=backbone)
        ctx["runner"] = runner
        return {"compile_s": time.perf_counter() - start, **run.per_call(lambda: runner(**feeds))}

    aoti = run.arm(name, "aoti-hook", aoti_hook)

    def aoti_graph():
        from amo_engine.engine.aoti import CudaGraphCall

        if not run.cuda:
            raise Skip("a CUDA graph needs a CUDA device (this run has none)")
        inputs = {k: v.clone() for k, v in feeds.items()}  # the graph's own static inputs
        start = time.perf_counter()
        graph = CudaGraphCall(ctx["runner"], inputs)
        ctx["graph"], ctx["graph_inputs"] = graph, inputs
        return {"capture_s": time.perf_counter() - start, **run.per_call(graph)}

    if aoti is not None:
        run.arm(name, "aoti-hook-graph", aoti_graph)

    def loops():
        result = {}
        if compiled is not None:
            euler, _ = loop_runners(family, feeds, run.steps, ctx["spec"].dims["image_tokens"], run.device,
                                    family.latent_patch(model.config))
            result["compile-euler"] = _loop_ms(run, lambda: euler(stock_call(ctx["compiled"])))  # plain: views of feeds
        if "runner" in ctx:
            engine_feeds = ctx.get("graph_inputs", feeds)
            engine = ctx["graph"] if "graph" in ctx else (lambda: ctx["runner"](**engine_feeds))
            euler, amo = loop_runners(family, engine_feeds, run.steps, ctx["spec"].dims["image_tokens"], run.device,
                                      family.latent_patch(model.config))
            label = "aoti-graph" if "graph" in ctx else "aoti"
            result[f"{label}-euler"] = _loop_ms(run, lambda: euler(engine))
            result[f"{label}-amo"] = _loop_ms(run, lambda: amo(engine))
            result["amo_over_euler"] = result[f"{label}-amo"]["p50_ms"] / result[f"{label}-euler"]["p50_ms"]
            if compiled is not None:
                result["amo_over_compile_euler"] = (result[f"{label}-amo"]["p50_ms"]
                                                    / result["compile-euler"]["p50_ms"])
        if not result:
            raise RuntimeError("no compiled arm finished: nothing to loop over")
        return {"steps": run.steps, "loops": result}

    run.arm(name, "loops", loops)
    if eager is not None and compiled is not None:
        summary = {"arm": "summary", "family": name, "compile_over_eager": eager["p50_ms"] / compiled["p50_ms"]}
        if aoti is not None:
            summary["aoti_over_eager"] = eager["p50_ms"] / aoti["p50_ms"]
        run.write(summary)
    if name == "flux":
        run.arm(name, "fp8-compile-stock", lambda: _fp8(run, model, plain))
    ctx.clear()
    if run.cuda:
        torch.cuda.empty_cache()


def _loop_ms(run: Run, loop) -> dict:
    samples = []
    loop()  # warm-up
    run.sync()
    for _ in range(3):
        start = time.perf_counter()
        loop()
        run.sync()
        samples.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": statistics.median(samples), "samples_ms": samples}


def _fp8(run: Run, model, plain) -> dict:
    """Float8 dynamic activation and weight quantisation (torchao) of a copy of the stock transformer,
    compiled; the lossy arm: its velocity's cosine against bf16 eager."""
    import copy

    if not run.cuda or torch.cuda.get_device_capability() < (8, 9):
        raise Skip("float8 matmuls need an sm_89+ GPU (Ada, Hopper); this run has none")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as err:
        raise Skip(f"torchao is not importable here ({err}): carry its wheel (bench/gpu_carry.txt)") from None

    with torch.no_grad():
        reference = model(**plain, return_dict=False)[0].float()
    quantised = copy.deepcopy(model)
    quantize_(quantised, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    compiled = torch.compile(quantised)
    start = time.perf_counter()
    with torch.no_grad():
        out = compiled(**plain, return_dict=False)[0].float()
    run.sync()
    compile_s = time.perf_counter() - start
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0).item()

    def call():
        with torch.no_grad():
            return compiled(**plain, return_dict=False)[0]

    return {"compile_s": compile_s, "velocity_cosine_vs_bf16": cosine, "lossy": True, **run.per_call(call)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-run-out")))
    parser.add_argument("--budget", type=float, default=520, help="seconds for the whole run (default 520)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=28, help="steps of the timed loops (default 28)")
    parser.add_argument("--commit", default=None, help="the commit measured (recorded with the results)")
    parser.add_argument("--smoke", action="store_true",
                        help="every arm on the CPU at tiny scale, fp32 (a check of this script, not a measurement)")
    args = parser.parse_args(argv)
    if args.smoke:
        run = Run(args.out, SMOKE["budget"], "cpu", SMOKE["scale"], SMOKE["size"], SMOKE["calls"], SMOKE["warmup"],
                  SMOKE["steps"], SMOKE["text_tokens"])
    else:
        if not torch.cuda.is_available():
            print("gpu_run: no CUDA GPU here; check the script on a CPU with --smoke", file=sys.stderr)
            return 3
        run = Run(args.out, args.budget, "cuda", "released", 1024, args.calls, args.warmup, args.steps, None)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "gpu_run.jsonl").unlink(missing_ok=True)
    run.write(environment(run, args.commit))
    for name in args.families.split(","):
        if (name, run.scale) not in ARCHITECTURES:
            print(f"gpu_run: no {run.scale} architecture for {name!r}", file=sys.stderr)
            return 2
        family_arms(run, name)
    run.write({"arm": "end", "seconds": time.perf_counter() - run.start, "budget_left_s": run.left})
    return 0


if __name__ == "__main__":
    sys.exit(main())
