"""The CPU latency benchmark: our engine and hook against eager PyTorch, side by side in one run.

Arms share weights, feeds, steps and seed. Three scopes, each interleaved round-robin by the
timing: one backbone **call**, the denoise **loop** (a call per step plus the sampler), and
**end-to-end** (prompt encoding + loop + VAE decode; the baseline is the stock diffusers pipeline).
A call that several loop arms share (``ort-euler`` and ``ort-amo`` run the same engine call) is
timed once and reported once. Every torch arm runs on ``threads`` threads; ORT sessions get the
same count, with spin-waiting off unless asked (spinning ORT threads would take CPU from the torch
arms interleaved with them). Results carry the machine (CPU family/model/flags, GEMM rate), the
contention verdict, and the harness check (an arm alone vs the same arm in the bench).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from amo_engine.model.backbone import HookConfig
from amo_engine import timing
from amo_engine.bench import CONFIGS
from amo_engine.bench.zoo import bench_model, reference_amo, stock_feeds

GOAL = 1.03  # AMO loop / Euler loop and attn / no-attn call: the score branch costs at most 3 %


@dataclass(frozen=True)
class LoopArm:
    name: str  # row name: <call>-<sampler>
    call: str  # which timed call it runs
    sampler: str  # euler | amo


LOOP_ARMS = (
    LoopArm("eager-stock-euler", "eager-stock", "euler"),
    LoopArm("eager-compile-euler", "eager-compile", "euler"),
    LoopArm("eager-hook-amo", "eager-hook", "amo"),
    LoopArm("reference-amo", "reference", "amo"),
    LoopArm("ort-euler", "ort", "euler"),
    LoopArm("ort-amo", "ort", "amo"),
    LoopArm("ort-noattn-euler", "ort-noattn", "euler"),
    LoopArm("aoti-euler", "aoti", "euler"),
    LoopArm("aoti-amo", "aoti", "amo"),
    LoopArm("openvino-euler", "openvino", "euler"),
    LoopArm("openvino-amo", "openvino", "amo"),
)
BASELINE = "eager-stock-euler"
STAGES_ARM = "ort-stages-amo"  # end-to-end only: encoders, loop and VAE all on ONNX Runtime (export --stages)


def default_out_dir() -> Path:
    """Results go outside the repository unless ``--out-dir`` says otherwise."""
    from amo_engine.model.presets import default_cache_dir

    return default_cache_dir() / "bench"


@dataclass
class BenchConfig:
    config: str = "medium-sd3"
    calls: int = 10  # timed rounds of backbone calls
    loops: int = 3  # timed rounds of denoise loops (and of end-to-end runs)
    steps: int = 8
    warmup: int = 2
    compile: bool = True
    aoti: bool = True  # the AOTInductor package of the same engine (compiling it adds minutes)
    openvino: bool = True  # the same ONNX graph on OpenVINO's CPU plugin (where openvino is installed)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    ort_spinning: bool = False
    out_dir: Path | None = None  # default: default_out_dir()
    cache_dir: Path | None = None

    def validate(self) -> None:
        if self.config not in CONFIGS:
            raise ValueError(f"unknown bench config {self.config!r}; choose one of {', '.join(CONFIGS)}")
        for name in ("calls", "loops", "steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    from amo_engine.engine.backends import open_backend
    from amo_engine.engine.folder import open_engine
    from amo_engine.engine.staged_model import load_engine_model
    from amo_engine.engine.export import ExportConfig, export_engine
    from amo_engine.model.inputs import sample_feeds

    cfg.validate()
    timing.set_threads(cfg.threads)
    watch = timing.ContentionWatch(cfg.threads)
    watch.sample_before()
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    model = bench_model(cfg.config, cfg.cache_dir, tmp / "model")  # a folder: the stage engine loads from it
    family, pipe = model.family, model.pipe
    height, width = model.default_size
    rows = family.rows(1, family.uses_cfg_rows(model.default_guidance))  # one image's backbone rows
    text_len = family.text_layout(pipe, model.max_sequence_length).length
    stock = copy.deepcopy(pipe.transformer)
    backbone = family.backbone(pipe.transformer, HookConfig(), pipe.vae_scale_factor)
    spec = backbone.io_spec(rows, height, width, text_len)
    feeds = sample_feeds(spec)
    env = timing.environment(cfg.threads)
    env["config"], env["ort_spinning"] = cfg.config, cfg.ort_spinning
    log(f"bench {cfg.config}: {sum(p.numel() for p in stock.parameters()) / 1e6:.1f} M params, "
        f"{spec.dims['image_tokens']} image + {text_len} text tokens, {rows} row(s), fp32, {cfg.threads} threads; "
        f"{env['cpu']['name']}, GEMM {env['gemm_gflops']:.0f} GFLOP/s")

    notes: list[str] = []
    calls: dict[str, Callable] = {"eager-stock": _stock_call(stock)}
    compiled = _compiled(stock, feeds, notes) if cfg.compile else None
    if compiled is not None:
        calls["eager-compile"] = _stock_call(compiled)
    eager = open_backend("eager", model=model)
    calls["eager-hook"] = _backend_call(eager)
    calls["reference"] = _no_grad(reference_amo(copy.deepcopy(pipe.transformer), family, backbone.hooked_blocks))

    staged_arm = _stages_supported(pipe, height, width, model.max_sequence_length, notes)
    with tmp_dir:
        manifest = export_engine(model, ExportConfig(out=tmp / "amo", height=height, width=width, aoti=cfg.aoti,
                                                     stages=staged_arm, log=False))
        notes.append(f"ONNX export {manifest.timings['export_s']:.1f} s"
                     + (f", AOTInductor compile {manifest.timings['aoti_compile_s']:.1f} s" if cfg.aoti else ""))
        export_engine(model, ExportConfig(out=tmp / "stock", height=height, width=width, log=False),
                      HookConfig(score_tap=False))  # the stock graph: no span_mask input, no attn output
        ort_options = dict(threads=cfg.threads, spinning=cfg.ort_spinning)
        engine = open_engine(tmp / "amo", model)
        staged = (load_engine_model(str(model.folder), engine, threads=cfg.threads, spinning=cfg.ort_spinning)
                  if staged_arm else None)
        with open_backend("ort", engine, model, **ort_options) as ort_amo, \
                open_backend("ort", open_engine(tmp / "stock"), **ort_options) as ort_stock, \
                (open_backend("aoti", engine, model) if cfg.aoti else contextlib.nullcontext()) as aoti, \
                _openvino(engine, cfg, notes) as openvino:
            calls["ort"], calls["ort-noattn"] = _backend_call(ort_amo), _backend_call(ort_stock)
            if aoti is not None:
                calls["aoti"] = _backend_call(aoti)
            if openvino is not None:
                calls["openvino"] = _backend_call(openvino)
                notes.append(_parity_note("openvino", openvino, ort_amo, feeds))
            notes.append(_trt_note())
            loop_arms = [a for a in LOOP_ARMS if a.call in calls]
            call_times = timing.interleaved({k: (lambda c=c: c(feeds)) for k, c in calls.items()}, cfg.calls,
                                             watch, warmup=cfg.warmup)
            alone = timing.alone(lambda: calls["eager-stock"](feeds), cfg.calls)
            memory = timing.memory_pass({k: (lambda c=c: c(feeds)) for k, c in calls.items()})
            loop_times = timing.interleaved({a.name: _loop(a, calls[a.call], feeds, spec, model, cfg.steps)
                                              for a in loop_arms}, cfg.loops, watch, warmup=1)
            engines = {"ort": ort_amo, **({"aoti": aoti} if aoti is not None else {}),
                       **({"openvino": openvino} if openvino is not None else {})}
            e2e_times = timing.interleaved(_end_to_end_runs(model, stock, compiled, engines, staged, cfg.steps),
                                            cfg.loops, watch, warmup=1)
    verdict = watch.verdict()
    contended = set(verdict["contended_rounds"])
    call_s = {k: v.summary(contended) for k, v in call_times.items()}
    loop_s = {k: v.summary(contended) for k, v in loop_times.items()}
    e2e_s = {k: v.summary(contended) for k, v in e2e_times.items()}
    gflop = _forward_gflop(calls["eager-stock"], feeds)
    out, reported = [], {}
    for arm in loop_arms:
        first = arm.call not in reported
        reported.setdefault(arm.call, arm.name)
        c = call_s[arm.call]
        out.append({
            "env": env, "arm": arm.name, "call": arm.call, "sampler": arm.sampler,
            "call_s": c if first else None, "call_same_as": None if first else reported[arm.call],
            "loop_s": loop_s[arm.name], "e2e_s": e2e_s.get(arm.name), "steps": cfg.steps, "rows": rows,
            "speedup_call_vs_eager": call_s["eager-stock"]["p50"] / c["p50"],
            "speedup_loop_vs_eager": loop_s[BASELINE]["p50"] / loop_s[arm.name]["p50"],
            "speedup_e2e_vs_eager": (e2e_s[BASELINE]["p50"] / e2e_s[arm.name]["p50"]) if arm.name in e2e_s else None,
            "gflop_per_call": gflop, "utilisation": gflop / c["p50"] / env["gemm_gflops"],
            "peak_rss_delta_mb": memory[arm.call],
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "harness": {"alone_p50_s": alone["p50"], "in_bench_p50_s": call_s["eager-stock"]["p50"],
                        "in_bench_over_alone": call_s["eager-stock"]["p50"] / alone["p50"]},
            "contention": verdict, "notes": notes,
        })
    if STAGES_ARM in e2e_s:  # end to end only
        out.append({**{k: out[0][k] for k in ("env", "steps", "rows", "gflop_per_call", "process_peak_rss_mb",
                                              "harness", "contention", "notes")},
                    "arm": STAGES_ARM, "call": "ort", "sampler": "amo", "call_s": None, "call_same_as": "ort-euler",
                    "loop_s": None, "e2e_s": e2e_s[STAGES_ARM], "speedup_call_vs_eager": None,
                    "speedup_loop_vs_eager": None,
                    "speedup_e2e_vs_eager": e2e_s[BASELINE]["p50"] / e2e_s[STAGES_ARM]["p50"],
                    "utilisation": None, "peak_rss_delta_mb": None})
    for r in out:
        call = r["call_s"] or call_s[r["call"]]
        loop = f"{r['loop_s']['p50']:7.2f} s" if r["loop_s"] else "      — "
        log(f"  {r['arm']:20s} call p50 {1000 * call['p50']:8.1f} ms   loop p50 {loop}"
            + (f"   e2e p50 {r['e2e_s']['p50']:6.2f} s" if r["e2e_s"] else ""))
    if verdict["contended"]:
        log("  CONTENDED: " + "; ".join(verdict["reasons"]))
    _write(out, cfg, call_s)
    return out


def _no_grad(call):
    def run(feeds):
        with torch.inference_mode():
            return call(feeds)

    return run


def _stock_call(transformer):
    def call(feeds):
        with torch.inference_mode():
            return transformer(**stock_feeds(feeds), return_dict=False)[0], None

    return call


def _backend_call(backend):
    def call(feeds):
        out = backend(feeds)
        return out["velocity"], out.get("attn")

    return call


def _compiled(stock, feeds, notes: list[str]):
    try:
        compiled = torch.compile(copy.deepcopy(stock))
        t = time.perf_counter()
        _stock_call(compiled)(feeds)
        notes.append(f"torch.compile warm-up {time.perf_counter() - t:.1f} s")
        return compiled
    except Exception as err:  # compile support varies by platform
        notes.append(f"torch.compile skipped: {type(err).__name__}: {str(err)[:120]}")
        return None


def _loop(arm: LoopArm, call, feeds, spec, model, steps: int) -> Callable[[], object]:
    """One denoise loop of ``arm``: the family's sigma grid and timestep rule, its own feed copies."""
    from amo_engine.samplers import StepOut, sample_amo, sample_euler

    family, config = model.family, model.pipe.scheduler.config
    sigmas = family.sigmas(config, steps, spec.dims["image_tokens"])
    f = {k: v.clone() for k, v in feeds.items()}

    def fn(x, sigma):
        f["hidden_states"].copy_(x)
        f["timestep"].fill_(family.timestep(sigma, config))
        v, attn = call(f)
        return StepOut(v, attn)

    def run():
        x = torch.randn(spec.shape("hidden_states"), generator=torch.Generator().manual_seed(0))
        if arm.sampler == "amo":
            return sample_amo(fn, x, sigmas, 2.0, torch.Generator().manual_seed(1),
                              patch_size=family.latent_patch(model.pipe.transformer.config))
        return sample_euler(fn, x, sigmas)

    return run


def _end_to_end_runs(model, stock, compiled, engines: dict, staged, steps: int) -> dict[str, Callable[[], object]]:
    """Encode + loop + decode: the diffusers pipeline as users run it today (stock transformer,
    Euler; optionally compiled) and our pipeline (eager AMO; each engine backend, ``engines`` by
    kind, with Euler and AMO; and ``staged``, the model whose encoders and VAE are the engine's ONNX
    stages, around the ORT backbone)."""
    from amo_engine.pipeline.generate import AmoPipeline, GenerateConfig

    pipe = model.pipe
    hooked = pipe.transformer
    prompt = "A poster with the slogan 'Adventure Awaits, Pack Your Bags'"
    height, width = model.default_size
    guidance = model.default_guidance
    kwargs = dict(prompt=prompt, num_inference_steps=steps, height=height, width=width, guidance_scale=guidance,
                  max_sequence_length=model.max_sequence_length, output_type="pil")

    def diffusers_run(transformer):
        def run():
            pipe.transformer = transformer
            try:
                with torch.inference_mode():
                    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
            finally:
                pipe.transformer = hooked
        return run

    def ours(sampler, backend=None, on=model):
        amo = AmoPipeline(on, HookConfig(), backend)
        return lambda: amo(GenerateConfig([prompt], steps=steps, sampler=sampler, guidance=guidance))

    runs = {BASELINE: diffusers_run(stock)}
    if compiled is not None:
        runs["eager-compile-euler"] = diffusers_run(compiled)
    runs["eager-hook-amo"] = ours("amo")
    for kind, backend in engines.items():
        runs[f"{kind}-euler"], runs[f"{kind}-amo"] = ours("euler", backend), ours("amo", backend)
    if staged is not None:
        runs[STAGES_ARM] = ours("amo", engines["ort"], staged)
    return runs


def _stages_supported(pipe, height: int, width: int, max_seq: int, notes: list[str]) -> bool:
    """Whether every component of ``pipe`` exports as a stage (the end-to-end engine arm); a note if not."""
    from amo_engine.model.stages import pipeline_stages

    try:
        pipeline_stages(pipe, 1, height, width, max_seq)
    except ValueError as err:
        notes.append(f"{STAGES_ARM} not run: {err}")
        return False
    return True


def _openvino(engine, cfg: BenchConfig, notes: list[str]):
    """OpenVINO's CPU plugin on the engine's ONNX graph, or a null context (and a note) without it."""
    if not cfg.openvino:
        return contextlib.nullcontext()
    from amo_engine.engine.backends.openvino import OpenVinoBackend
    from amo_engine.errors import BackendUnavailable

    try:
        return OpenVinoBackend(engine, threads=cfg.threads)
    except BackendUnavailable as err:
        notes.append(f"openvino arms skipped: {err}")
        return contextlib.nullcontext()


def _parity_note(kind: str, backend, reference, feeds) -> str:
    """``kind``'s outputs against ORT's on the bench feeds, judged by the fp32 parity gates."""
    from amo_engine.engine.verify import judge_parity

    want = {k: v.clone() for k, v in reference(feeds).items()}
    got = backend(feeds)
    p = {"velocity_max_abs": float((got["velocity"] - want["velocity"]).abs().max()),
         "attn_max_abs": float((got["attn"] - want["attn"]).abs().max())}
    ok, detail = judge_parity(p, "float32")
    return f"{kind} vs ORT parity (fp32 gates): {detail}: {'PASS' if ok else 'FAIL'}"


def _trt_note() -> str:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt arms skipped: TensorRT is not installed here"
    return "tensorrt arms skipped: this bench measures CPU arms; time TensorRT with inspect/generate on the GPU"


def _forward_gflop(call, feeds) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call(feeds)
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------- results


def _flags(s: dict | None) -> list[str]:
    if not s:
        return []
    out = []
    if s["wide"]:
        out.append(f"wide spread {s['spread']:.2f}")
    if s["contended_samples"]:
        out.append(f"{s['contended_samples']}/{s['n']} contended")
    return out


def _write(rows: list[dict], cfg: BenchConfig, call_s: dict) -> Path:
    out = Path(cfg.out_dir) if cfg.out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / cfg.config
    with open(f"{stem}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    Path(f"{stem}.md").write_text(markdown_table(rows, cfg.steps, call_s))
    _plot(call_s, f"{stem}.png", cfg.config)
    return stem


def _goal(name: str, value: float) -> str:
    verdict = "met" if value <= GOAL else "**FAILED**"
    return f"- {name}: {value:.3f} (goal <= {GOAL}: {verdict})"


def markdown_table(rows: list[dict], steps: int, call_s: dict) -> str:
    env, first = rows[0]["env"], rows[0]
    cpu, verdict, h = env["cpu"], first["contention"], first["harness"]
    lines = [f"### {env['config']}", "",
             f"Machine: {cpu['name']} ({cpu['vendor']} family {cpu['family']} model {cpu['model']}; "
             f"{', '.join(cpu['flags']) or 'no AVX'}), {cpu['cores']} cores; {env['threads']} threads per arm; fp32 "
             f"GEMM {env['gemm_gflops']:.0f} GFLOP/s; torch {env['torch']}, onnxruntime {env['onnxruntime']} "
             f"(spinning {'on' if env['ort_spinning'] else 'off'}); {env['time']}, git {env['git']}.", ""]
    if verdict["contended"]:
        lines.append("**CONTENDED: do not trust these numbers.** " + "; ".join(verdict["reasons"]) + ".")
    else:
        lines.append("Contention: none detected (runnable processes before the bench and at every round; a "
                     "calibration GEMM per round).")
    lines += ["", f"| arm | call p50 ms | p90 | min | CPU/wall | loop p50 s ({steps} steps) | end-to-end p50 s | "
                  "x eager (call) | x eager (loop) | x eager (e2e) | util | peak RSS +MB | flags |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, e2e = r["call_s"], r["e2e_s"]
        if c:
            call_cols = f"{1000 * c['p50']:.1f} | {1000 * c['p90']:.1f} | {1000 * c['min']:.1f} | {c['cpu_per_wall']:.2f}"
        else:
            call_cols = f"same call as {r['call_same_as']} | | |"
        def num(value, fmt):
            return "—" if value is None else format(value, fmt)

        e2e_p50 = num(e2e and e2e["p50"], ".2f")
        flags = _flags(c) + [f"loop: {f}" for f in _flags(r["loop_s"])] + [f"e2e: {f}" for f in _flags(e2e)]
        lines.append(f"| {r['arm']} | {call_cols} | {num(r['loop_s'] and r['loop_s']['p50'], '.2f')} | {e2e_p50} | "
                     f"{num(r['speedup_call_vs_eager'], '.2f')} | {num(r['speedup_loop_vs_eager'], '.2f')} | "
                     f"{num(r['speedup_e2e_vs_eager'], '.2f')} | {num(r['utilisation'], '.2f')} | "
                     f"{num(r['peak_rss_delta_mb'], '.0f')} | {', '.join(flags) or '—'} |")
    loop = {r["arm"]: r["loop_s"]["p50"] for r in rows if r["loop_s"]}
    lines += ["", _goal("ORT AMO loop / ORT Euler loop", loop["ort-amo"] / loop["ort-euler"]),
              _goal("ORT call with attn / without", call_s["ort"]["p50"] / call_s["ort-noattn"]["p50"]),
              f"- reference-style AMO / our eager AMO (call): {call_s['reference']['p50'] / call_s['eager-hook']['p50']:.2f}",
              "- ORT vs torch.compile (call, > 1: ORT faster): "
              + (f"{call_s['eager-compile']['p50'] / call_s['ort']['p50']:.2f}" if "eager-compile" in call_s
                 else "n/a (no torch.compile arm)"),
              "- OpenVINO vs ORT / vs torch.compile (call, > 1: OpenVINO faster): "
              + (f"{call_s['ort']['p50'] / call_s['openvino']['p50']:.2f} / "
                 + (f"{call_s['eager-compile']['p50'] / call_s['openvino']['p50']:.2f}" if "eager-compile" in call_s
                    else "n/a")
                 if "openvino" in call_s else "n/a (no OpenVINO arm)"),
              "- AOTInductor vs ORT / vs torch.compile (call, > 1: AOTI faster): "
              + (f"{call_s['ort']['p50'] / call_s['aoti']['p50']:.2f} / "
                 + (f"{call_s['eager-compile']['p50'] / call_s['aoti']['p50']:.2f}" if "eager-compile" in call_s else "n/a")
                 if "aoti" in call_s else "n/a (no AOTInductor arm)"),
              f"- harness check: eager-stock alone p50 {1000 * h['alone_p50_s']:.1f} ms, in the bench "
              f"{1000 * h['in_bench_p50_s']:.1f} ms (x{h['in_bench_over_alone']:.2f})",
              f"- forward {first['gflop_per_call']:.1f} GFLOP per call; util = GFLOP / call p50 / GEMM rate",
              f"- rows per call: {first['rows']}; end-to-end = encode + {steps} steps + VAE decode, baseline = the stock "
              f"diffusers pipeline; {STAGES_ARM}: the whole pipeline on engines (prompt encoders and VAE decoder "
              "exported with --stages, run on ONNX Runtime; no diffusers model code); CPU/wall = process CPU "
              "seconds per wall second during the call",
              f"- peak RSS +MB: resident memory above the level at the call's start, one untimed call per arm; "
              f"process peak {first['process_peak_rss_mb']:.0f} MB",
              f"- flags: wide = (p90 - min) / p50 > {timing.WIDE_SPREAD}; contended = samples from rounds the "
              "contention watch flagged",
              f"- notes: {'; '.join(first['notes'])}", ""]
    return "\n".join(lines)


def _plot(call_s: dict, path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(call_s)
    for i, name in enumerate(names):
        s = call_s[name]
        ax.scatter([1000 * x for x in s["samples"]], [i] * s["n"], s=12, alpha=0.6)
        ax.plot([1000 * s["p50"]] * 2, [i - 0.3, i + 0.3], color="k")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("one backbone call (ms): samples and p50")
    ax.set_title(f"amo-engine bench: {title}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
