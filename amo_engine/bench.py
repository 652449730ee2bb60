"""Latency benchmarks versus eager PyTorch, measured side by side in one run.

Arms share weights, feeds, steps and seed. Scopes: one backbone call (arms interleaved round-robin
so machine noise hits all alike), the denoise loop (arms interleaved per round) and end-to-end
(prompt encoding + loop + VAE decode). Memory: each arm's resident-memory rise above the level at
its calls' start (sampled every 2 ms), and the process peak. Warm-ups are excluded; p50 is the headline, with mean, p90, min and raw samples. Results: JSON
lines (with the environment), a markdown table and a PNG plot.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backbone import ScoreConfig, make_backbone
from .engine import FORMAT_VERSION, MANIFEST, ONNX_FILE, file_records, write_json_atomic
from .onnx_export import ExportConfig, export_engine
from .spec import sample_feeds
from .samplers import StepOut, sample_amo, sample_euler
from .schedules import flow_match_sigmas

CONFIGS = ("tiny-sd3", "tiny-flux", "medium-sd3", "medium-flux")
MEDIUM_SIZE = 512  # pixels: 1024 image tokens


def medium_transformer(family: str, joint_attention_dim: int, pooled_projection_dim: int):
    """~70 M-parameter random-init SD3 / FLUX architectures (one eager call ~0.5-1.5 s on 2 cores).

    The text-side widths match the tiny presets' encoders so the medium configs run whole
    pipelines (encode + loop + decode) with the same code path."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    if family == "sd3":
        return SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, num_layers=8,
                                     attention_head_dim=64, num_attention_heads=8,
                                     joint_attention_dim=joint_attention_dim, caption_projection_dim=512,
                                     pooled_projection_dim=pooled_projection_dim, out_channels=16,
                                     pos_embed_max_size=96).eval()
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8,
                                  attention_head_dim=64, num_attention_heads=8, joint_attention_dim=joint_attention_dim,
                                  pooled_projection_dim=pooled_projection_dim, guidance_embeds=True,
                                  axes_dims_rope=(8, 28, 28)).eval()


def bench_model(config: str, cache_dir=None):
    """The LoadedModel a bench config runs: a tiny preset, or a tiny preset's encoders and VAE
    around a medium random-init transformer."""
    from .models import LoadedModel, load_model
    from .presets import ModelSettings

    family = config.split("-")[1]
    model = load_model(f"tiny-{family}", cache_dir=cache_dir)
    if config.startswith("tiny"):
        return model
    tiny = model.pipe.transformer.config
    model.pipe.transformer = medium_transformer(family, tiny.joint_attention_dim, tiny.pooled_projection_dim)
    settings = ModelSettings(model.settings.max_sequence_length, MEDIUM_SIZE, MEDIUM_SIZE)
    return LoadedModel(model.pipe, family, config, None, settings)


# ---------------------------------------------------------------- reference-style AMO (the cost users pay today)


class ReferenceScoreProcessor:
    """As the official AMO release: explicit full softmax(QK^T) in the hooked block, the text->image
    quadrant summed over span rows, one map shared by the whole batch."""

    def __init__(self, family: str, sink: list, span_mask: torch.Tensor):
        self.family, self.sink, self.span_mask = family, sink, span_mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kw):
        from diffusers.models.embeddings import apply_rotary_emb

        n_img, n_txt = hidden_states.shape[1], encoder_hidden_states.shape[1]

        def proj(layer, x, norm):
            y = layer(x).unflatten(-1, (attn.heads, -1))  # [B, L, H, D]
            return norm(y) if norm is not None else y

        q_i, k_i, v_i = proj(attn.to_q, hidden_states, attn.norm_q), proj(attn.to_k, hidden_states, attn.norm_k), \
            proj(attn.to_v, hidden_states, None)
        q_t, k_t, v_t = proj(attn.add_q_proj, encoder_hidden_states, attn.norm_added_q), \
            proj(attn.add_k_proj, encoder_hidden_states, attn.norm_added_k), proj(attn.add_v_proj, encoder_hidden_states, None)
        first_img = self.family == "sd3"
        q = torch.cat([q_i, q_t] if first_img else [q_t, q_i], 1)
        k = torch.cat([k_i, k_t] if first_img else [k_t, k_i], 1)
        v = torch.cat([v_i, v_t] if first_img else [v_t, v_i], 1)
        if image_rotary_emb is not None:
            q, k = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1), apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
        probs = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # [B, H, L, L]
        out = probs @ v
        txt, img = (slice(n_img, None), slice(0, n_img)) if first_img else (slice(0, n_txt), slice(n_txt, None))
        quadrant = probs[:, :, txt, img]  # [B, H, T, N]
        self.sink.append((quadrant * self.span_mask[:, None, :, None]).sum(2).mean((0, 1)))  # one map per batch
        out = out.transpose(1, 2).flatten(2)
        t_out, i_out = (out[:, n_img:], out[:, :n_img]) if first_img else (out[:, :n_txt], out[:, n_txt:])
        i_out = attn.to_out[1](attn.to_out[0](i_out))
        if getattr(attn, "context_pre_only", False) and self.family == "sd3":
            return i_out, t_out
        return i_out, attn.to_add_out(t_out)


# ---------------------------------------------------------------- arms


@dataclass
class Arm:
    name: str
    call: Callable[[dict], tuple[torch.Tensor, torch.Tensor | None]]  # feeds -> (velocity, attn)
    sampler: str  # euler | amo


def _stock_call(stock, family):
    names = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")

    def call(feeds):
        with torch.inference_mode():
            return stock(**{k: v for k, v in feeds.items() if k in names}, return_dict=False)[0], None

    return call


def _reference_call(transformer, family, blocks):
    sink: list = []
    procs = []
    for i in blocks:
        p = ReferenceScoreProcessor(family, sink, None)
        transformer.transformer_blocks[i].attn.set_processor(p)
        procs.append(p)
    stock = _stock_call(transformer, family)

    def call(feeds):
        sink.clear()
        for p in procs:
            p.span_mask = feeds["span_mask"]
        v, _ = stock(feeds)
        shared = torch.stack(sink).mean(0)  # [N]: one map for the batch, as the official code
        return v, shared.expand(v.shape[0], -1)

    return call


def _backend_call(backend):
    def call(feeds):
        out = backend(feeds)
        return out["velocity"], out.get("attn")

    return call


def _export_stock_engine(stock, spec, folder: Path) -> None:
    """Engine folder for the stock transformer (no score branch, no attn output): prices the scores."""
    from .spec import IOSpec

    names = [t.name for t in spec.inputs if t.name != "span_mask"]

    class Stock(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args)), return_dict=False)[0]

    io = IOSpec(tuple(t for t in spec.inputs if t.name != "span_mask"), spec.outputs[:1], spec.dims)
    feeds = sample_feeds(io)
    folder.mkdir(parents=True, exist_ok=True)
    prog = torch.onnx.export(Stock(stock).eval(), tuple(feeds[n] for n in names), input_names=names,
                             output_names=["velocity"], opset_version=18, dynamo=True, verbose=False)
    prog.save(str(folder / ONNX_FILE))
    manifest = {"format": FORMAT_VERSION, "family": "stock", "io": io.to_json(), "onnx": {"file": ONNX_FILE},
                "files": file_records(folder)}
    write_json_atomic(folder / MANIFEST, manifest)


def _stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": statistics.median(s), "mean": statistics.fmean(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
            "min": s[0], "n": len(s), "samples": samples}


def _environment(config: str) -> dict:
    import diffusers
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"config": config, "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "git": rev, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def matmul_peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def forward_gflop(call, feeds) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call(feeds)
    return counter.get_total_flops() / 1e9


@dataclass
class BenchConfig:
    config: str = "medium-sd3"
    calls: int = 10  # timed backbone calls per arm
    loops: int = 3  # timed denoise loops per arm
    steps: int = 8
    warmup: int = 2
    compile: bool = True
    out_dir: Path = Path("bench/results")
    cache_dir: Path | None = None


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    from .backends.ort import OrtBackend

    if cfg.config not in CONFIGS:
        raise ValueError(f"unknown bench config {cfg.config!r}; choose one of {', '.join(CONFIGS)}")
    model = bench_model(cfg.config, cfg.cache_dir)
    family, transformer = model.family, model.pipe.transformer
    height, width = model.default_size
    rows = 2 if family == "sd3" else 1  # SD3: one image = [uncond ; cond] rows (CFG)
    text_len = (77 if family == "sd3" else 0) + model.max_sequence_length
    stock = copy.deepcopy(transformer)
    reference = copy.deepcopy(transformer)
    backbone = make_backbone(transformer, ScoreConfig())
    spec = backbone.io_spec(rows, height, width, text_len)
    feeds = sample_feeds(spec)
    env = _environment(cfg.config)
    log(f"bench {cfg.config}: {sum(p.numel() for p in stock.parameters()) / 1e6:.1f} M params, "
        f"{spec.dims['image_tokens']} image + {text_len} text tokens, {rows} row(s), fp32, {env['threads']} threads")

    arms = [Arm("eager-stock-euler", _stock_call(stock, family), "euler")]
    notes = []
    compiled = None
    if cfg.compile:
        try:
            compiled = torch.compile(copy.deepcopy(stock))
            call = _stock_call(compiled, family)
            t = time.perf_counter()
            call(feeds)
            notes.append(f"torch.compile warm-up {time.perf_counter() - t:.1f} s")
            arms.append(Arm("eager-compile-euler", call, "euler"))
        except Exception as err:  # compile support varies by platform
            compiled = None
            notes.append(f"torch.compile skipped: {type(err).__name__}: {str(err)[:120]}")
    arms.append(Arm("eager-hook-amo", _backend_call(_eager(backbone, spec)), "amo"))
    arms.append(Arm("reference-amo", _reference_call(reference, family, backbone.hooked_blocks), "amo"))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_engine(model, ExportConfig(out=Path(tmp) / "amo", height=height, width=width, log=False))
        notes.append(f"ONNX export {time.perf_counter() - t:.1f} s")
        _export_stock_engine(stock, spec, Path(tmp) / "stock")
        ort_amo = OrtBackend(Path(tmp) / "amo")
        ort_stock = OrtBackend(Path(tmp) / "stock")
        arms += [Arm("ort-euler", _backend_call(ort_amo), "euler"), Arm("ort-amo", _backend_call(ort_amo), "amo"),
                 Arm("ort-noattn-euler", _backend_call(ort_stock), "euler")]
        notes.append(_trt_note())
        results = _measure(arms, feeds, spec, family, cfg, log)
        e2e = _measure_end_to_end(model, stock, compiled, ort_amo, cfg, log)
    peak = matmul_peak_gflops()
    gflop = forward_gflop(_stock_call(stock, family), feeds)
    base = results["eager-stock-euler"]
    out = []
    for arm in arms:
        r = results[arm.name]
        call_p50 = r["call"]["p50"]
        out.append({
            "env": env, "arm": arm.name, "sampler": arm.sampler, "call_s": r["call"], "loop_s": r["loop"],
            "e2e_s": e2e.get(arm.name), "steps": cfg.steps, "rows": rows,
            "speedup_call_vs_eager": base["call"]["p50"] / call_p50,
            "speedup_loop_vs_eager": base["loop"]["p50"] / r["loop"]["p50"],
            "gflop_per_call": gflop, "matmul_peak_gflops": peak, "utilisation": gflop / call_p50 / peak,
            "peak_rss_delta_mb": r["rss_mb"],
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "notes": notes,
        })
    _write(out, cfg)
    return out


def _trt_note() -> str:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt arms skipped: TensorRT is not installed here"
    return "tensorrt arms skipped: this bench measures CPU arms; time TensorRT with inspect/generate on the GPU"


class _RssWatch:
    """Peak resident memory above the level at start, sampled every 2 ms on a thread (Linux)."""

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_kb = self.peak_kb = self._rss_kb()

    @staticmethod
    def _rss_kb() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * (resource.getpagesize() // 1024)
        except OSError:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._rss_kb())
            self._stop.wait(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._rss_kb())

    @property
    def delta_mb(self) -> float:
        return (self.peak_kb - self.start_kb) / 1024


def _measure_end_to_end(model, stock, compiled, ort_backend, cfg, log) -> dict:
    """Encode + loop + decode, interleaved: the diffusers pipeline as users run it today (stock
    transformer, Euler; optionally compiled) and our pipeline (eager AMO; ORT engine Euler / AMO)."""
    from .pipeline import AmoPipeline, GenerateConfig

    pipe = model.pipe
    hooked = pipe.transformer
    prompt = "A poster with the slogan 'Adventure Awaits, Pack Your Bags'"
    height, width = model.default_size
    guidance = model.default_guidance
    kwargs = dict(prompt=prompt, num_inference_steps=cfg.steps, height=height, width=width, guidance_scale=guidance,
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

    def ours(sampler, backend=None):
        amo = AmoPipeline(model, ScoreConfig(), backend)
        return lambda: amo(GenerateConfig([prompt], steps=cfg.steps, sampler=sampler, guidance=guidance))

    runs = {"eager-stock-euler": diffusers_run(stock), "eager-hook-amo": ours("amo"),
            "ort-euler": ours("euler", ort_backend), "ort-amo": ours("amo", ort_backend)}
    if compiled is not None:
        runs["eager-compile-euler"] = diffusers_run(compiled)
    samples = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(cfg.loops):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    out = {k: _stats(v) for k, v in samples.items()}
    for k, v in out.items():
        log(f"  {k:22s} end-to-end p50 {v['p50']:7.2f} s")
    return out


def _eager(backbone, spec):
    from .backends.eager import EagerBackend

    return EagerBackend(backbone, spec)


def _measure(arms, feeds, spec, family, cfg, log) -> dict:
    results = {a.name: {"call": [], "loop": []} for a in arms}
    for _ in range(cfg.warmup):
        for a in arms:
            a.call(feeds)
    rss = {a.name: 0.0 for a in arms}
    for i in range(cfg.calls):  # interleaved: every round runs every arm once
        for a in arms:
            with _RssWatch() as watch:
                t = time.perf_counter()
                a.call(feeds)
                results[a.name]["call"].append(time.perf_counter() - t)
            rss[a.name] = max(rss[a.name], watch.delta_mb)
    sigmas = flow_match_sigmas({"shift": 3.0}, cfg.steps)
    scale = 1000.0 if family == "sd3" else 1.0
    for _ in range(cfg.loops):
        for a in arms:
            f = {k: v.clone() for k, v in feeds.items()}

            def fn(x, sigma, f=f, a=a):
                f["hidden_states"].copy_(x)
                f["timestep"].fill_(sigma * scale)
                v, attn = a.call(f)
                return StepOut(v, attn)

            x = torch.randn(spec.shape("hidden_states"), generator=torch.Generator().manual_seed(0))
            t = time.perf_counter()
            if a.sampler == "amo":
                sample_amo(fn, x, sigmas, 2.0, torch.Generator().manual_seed(1), patch_size=2)
            else:
                sample_euler(fn, x, sigmas)
            results[a.name]["loop"].append(time.perf_counter() - t)
    for a in arms:
        results[a.name] = {k: _stats(v) for k, v in results[a.name].items()}
        results[a.name]["rss_mb"] = rss[a.name]
        log(f"  {a.name:22s} call p50 {1000 * results[a.name]['call']['p50']:8.1f} ms   "
            f"loop p50 {results[a.name]['loop']['p50']:7.2f} s")
    return results


def _write(rows: list[dict], cfg: BenchConfig) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / cfg.config
    with open(f"{stem}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    by = {r["arm"]: r for r in rows}

    def ratio(a, b):
        return by[a]["call_s"]["p50"] / by[b]["call_s"]["p50"] if a in by and b in by else float("nan")

    lines = [f"### {cfg.config} ({rows[0]['env']['cpu']}, {rows[0]['env']['threads']} threads, {rows[0]['env']['time']})", "",
             "| arm | call p50 ms | mean | p90 | min | loop p50 s (" + str(cfg.steps) + " steps) | end-to-end p50 s | "
             "x eager (call) | x eager (loop) | x eager (e2e) | util | peak RSS +MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base_e2e = by["eager-stock-euler"]["e2e_s"]["p50"]
    for r in rows:
        c = r["call_s"]
        e2e = r["e2e_s"]
        e2e_cols = f"{e2e['p50']:.2f} | " if e2e else "— | "
        e2e_ratio = f"{base_e2e / e2e['p50']:.2f}" if e2e else "—"
        lines.append(f"| {r['arm']} | {1000 * c['p50']:.1f} | {1000 * c['mean']:.1f} | {1000 * c['p90']:.1f} | "
                     f"{1000 * c['min']:.1f} | {r['loop_s']['p50']:.2f} | {e2e_cols}{r['speedup_call_vs_eager']:.2f} | "
                     f"{r['speedup_loop_vs_eager']:.2f} | {e2e_ratio} | {r['utilisation']:.2f} | {r['peak_rss_delta_mb']:.0f} |")
    loop = {r["arm"]: r["loop_s"]["p50"] for r in rows}
    lines += ["", f"- ORT AMO loop / ORT Euler loop: {loop['ort-amo'] / loop['ort-euler']:.3f} (goal <= 1.03)",
              f"- ORT with attn / without (call): {ratio('ort-euler', 'ort-noattn-euler'):.3f} (goal <= 1.03)",
              f"- reference-style AMO / our eager AMO (call): {ratio('reference-amo', 'eager-hook-amo'):.2f}",
              "- ORT vs torch.compile (call): "
              + (f"{ratio('eager-compile-euler', 'ort-euler'):.2f}x" if "eager-compile-euler" in by else "n/a (no torch.compile arm)"),
              f"- forward {rows[0]['gflop_per_call']:.1f} GFLOP; measured fp32 matmul peak {rows[0]['matmul_peak_gflops']:.0f} GFLOP/s",
              f"- rows per call: {rows[0]['rows']} (SD3: [uncond ; cond]); end-to-end = encode + {cfg.steps} steps + VAE decode, "
              "baseline = the stock diffusers pipeline",
              f"- peak RSS +MB: resident memory above the level at the call's start, sampled every 2 ms; "
              f"process peak {rows[0]['process_peak_rss_mb']:.0f} MB",
              f"- notes: {'; '.join(rows[0]['notes'])}", ""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    _plot(rows, f"{stem}.png", cfg.config)


def _plot(rows, path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["arm"] for r in rows]
    for i, r in enumerate(rows):
        ax.scatter([1000 * s for s in r["call_s"]["samples"]], [i] * r["call_s"]["n"], s=12, alpha=0.6)
        ax.plot([1000 * r["call_s"]["p50"]] * 2, [i - 0.3, i + 0.3], color="k")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("one backbone call (ms): samples and p50")
    ax.set_title(f"amo-engine bench: {title}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
