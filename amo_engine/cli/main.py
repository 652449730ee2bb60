"""amo-engine command line: subcommands map 1:1 onto the library's config dataclasses."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from amo_engine import __version__
from amo_engine.engine.backends import BACKENDS
from amo_engine.bench import CONFIGS as BENCH_CONFIGS
from amo_engine.model.glyph.variants import VARIANTS as GLYPH_MODELS
from amo_engine.rules import SAMPLERS

EPILOG = """\
examples:
  amo-engine generate --prompt "a dark sign that says 'HAPPY'" --out out.png --ocr rapidocr   # the glyph model
  amo-engine generate --model tiny-sd3 --prompt "A sign that says 'OPEN'" --out out.png
  amo-engine generate --model /models/stable-diffusion-3-medium-diffusers --sampler amo --c 2 \\
      --steps 28 --seed 10 --out sign.png --save-attn sign_attn.png
  amo-engine generate --model black-forest-labs/FLUX.1-dev --dtype bf16 --device cuda ...

Put the text to render in quotes inside the prompt ('...', "...", or curly quotes): AMO
overshoots harder where that text attends. Without quoted text, --sampler amo runs overshoot.
"""


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks takes comma-separated block indices, e.g. 0,1,2; got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="glyph",
                   help="preset (glyph: the small text-rendering model trained here; tiny-sd3, tiny-sd35, tiny-flux, "
                        "tiny-auraflow: random weights, built offline on first use), a diffusers pipeline folder "
                        "(SD3, SD3.5, FLUX, AuraFlow), or an HF model id "
                        "already in the local cache (default: glyph)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="weights/compute dtype (CPU: fp32; FLUX on GPU: bf16)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where presets are built (default: $XDG_CACHE_HOME/amo-engine or ~/.cache/amo-engine)")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """Sampling, size, runtime and output options shared by generate and edit."""
    p.add_argument("--negative-prompt", default=None, help="negative prompt (SD3 classifier-free guidance)")
    p.add_argument("--sampler", default="amo", choices=SAMPLERS,
                   help="euler: plain flow ODE; overshoot: step past the target and renoise back (strength --c); "
                        "amo: overshoot scaled per image patch by the quoted text's attention (default)")
    p.add_argument("--c", type=float, default=2.0, help="overshoot strength c >= 0 (0 = Euler; default 2.0)")
    p.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    p.add_argument("--seed", type=int, default=10, help="seed for the initial noise and the renoising; image i of the batch draws from its own "
                        "generator seeded seed + i, so batch-mates never change an image (default 10)")
    p.add_argument("--guidance", type=float, default=None, help="SD3: CFG scale (default 7.0); FLUX: guidance input (default 3.5)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="image size in pixels, width x height, e.g. 128x48 (as the HTTP API's size; default: the "
                        "model's)")
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    p.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (default: SD3 256, FLUX 512; presets 64)")
    p.add_argument("--blocks", type=_blocks, default=None,
                   help="joint / double-stream blocks that feed AMO's map, e.g. 0,1,2 (default: all; with --engine: "
                        "the engine's)")
    p.add_argument("--max-span-tokens", type=int, default=None,
                   help="span rows the score branch reads (default 64; with --engine: the engine's)")
    p.add_argument("--backend", default="eager", choices=(*BACKENDS, "auto"),
                   help="where the transformer runs (auto: the engine's measured default CPU engine, ort or aoti)")
    p.add_argument("--engine", type=Path, default=None, help="engine folder for --backend ort/aoti/trt")
    p.add_argument("--cuda-graph", action="store_true",
                   help="aoti/trt on CUDA: capture the transformer call in a CUDA graph and replay it")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and, with --backend ort, ONNX Runtime (default: their own choice)")
    p.add_argument("--ort-opt-level", default="all", choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level for --backend ort (default all)")
    p.add_argument("--out", type=Path, default=Path("out.png"),
                   help="output PNG; a batch writes out.png, out_1.png, ... (default out.png)")
    p.add_argument("--save-attn", type=Path, default=None, help="also save AMO's span map as a heat-map overlay PNG")
    p.add_argument("--ocr", default=None, choices=["rapidocr", "tesseract"],
                   help="read each image back with this offline OCR and print what it reads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_edit_block_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edit-blocks", type=_blocks, default=None,
                   help="joint blocks where the text K/V swap acts, e.g. 10 or 9,10 (default: the model's localized "
                        "blocks: amo_engine.json, else SD3-medium's 10)")
    p.add_argument("--edit-start", type=int, default=None,
                   help="first step (0-based) with the swap on (default: the model's, else SD3's 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amo-engine",
        description="Text-to-image with better rendered text: AMO sampler on SD3 / FLUX transformers, "
                    "eager or exported engines.",
    )
    parser.add_argument("--version", action="version", version=f"amo-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate images (Euler / Overshoot / AMO)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(g)
    g.add_argument("--prompt", action="append", required=True,
                   help="prompt; repeat for a batch. Quote the text to render: \"a sign 'OPEN'\"")
    _add_generation_args(g)
    g.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    g.add_argument("--modulate", default=None, metavar="PRESET|FILE.json",
                   help="attention modulation (Paper B; our values): sharpen (early image self-attention "
                        "temperature), separate (each patch attends its own entity's words), emphasise (entity "
                        "words weighted up early), align (all three), or a JSON schedule file")
    g.add_argument("--groups", default=None, metavar='"A|B"',
                   help="entity phrases of the prompt for --modulate, e.g. \"a red apple|a green sign 'OPEN'\" "
                        "(default: the prompt split at 'and', 'with', 'next to', commas)")
    g.add_argument("--safe-text", nargs="?", const="default", default=None, metavar="WORDS.txt",
                   help="replace listed words inside quoted text by benign ones at the text-localized blocks only "
                        "(scene and style stay): a file of WORD or WORD=SUBSTITUTE lines, or 'default' for the "
                        "shipped list")
    _add_edit_block_args(g)

    ed = sub.add_parser("edit", help="edit the rendered text: A's image with B's text (Paper A's K/V swap, one loop)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EDIT_EPILOG)
    _add_model_args(ed)
    ed.add_argument("--prompt", required=True, help="prompt A, with the text to replace in quotes")
    target = ed.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-text", default=None, help="the text B's image shows instead (replaces A's quoted text)")
    target.add_argument("--target-prompt", default=None, help="prompt B in full (its quoted text is the new text)")
    ed.add_argument("--keep-originals", action="store_true",
                    help="also write the plain A (OUT_original.png) and B (OUT_target.png) images of the same seed")
    _add_generation_args(ed)
    _add_edit_block_args(ed)
    ed.set_defaults(num_images=1)  # an edit pairs one image with its target

    lo = sub.add_parser("localize", help="find the joint blocks whose text K/V decide the rendered word (a sweep)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=LOCALIZE_EPILOG)
    _add_model_args(lo)
    lo.add_argument("--words", default="train",
                    help="train | held-out (the model's lists) | a file, one word a line; consecutive words pair up")
    lo.add_argument("--pairs", type=int, default=24, help="word pairs (A, B) to swap (default 24)")
    lo.add_argument("--template", default=None,
                    help="prompt template with {word} (default: the model's, else \"a sign that says '{word}'\")")
    lo.add_argument("--steps", type=int, default=28, help="steps per image (default 28)")
    lo.add_argument("--sampler", default="euler", choices=SAMPLERS, help="sampler (default euler)")
    lo.add_argument("--seed", type=int, default=0, help="seed of every pair (default 0)")
    lo.add_argument("--batch", type=int, default=16, help="pairs per loop (default 16)")
    lo.add_argument("--combine", type=int, default=3, help="also try the best 2..N blocks together (default 3)")
    lo.add_argument("--start-steps", default="0,1,2,4,8", help="start steps tried with the best blocks (default 0,1,2,4,8)")
    lo.add_argument("--ocr", default="rapidocr", choices=["rapidocr", "tesseract"], help="OCR engine (default rapidocr)")
    lo.add_argument("--out-dir", type=Path, required=True, help="results.json, table.md, plot.png, grid.png")
    lo.add_argument("--write-settings", action="store_true",
                    help="write the found blocks and start step into the model folder's amo_engine.json")
    lo.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("export", help="export the transformer (+ AMO score output) to an ONNX engine folder")
    _add_model_args(e)
    e.add_argument("--out", type=Path, required=True, help="engine folder to write, e.g. engines/tiny-sd3")
    e.add_argument("--height", type=int, default=None, help="image height the engine serves (default: the model's)")
    e.add_argument("--width", type=int, default=None, help="image width the engine serves (default: the model's)")
    e.add_argument("--batch", type=int, default=1, help="images per call (SD3 adds the CFG rows; default 1)")
    e.add_argument("--no-cfg", action="store_true", help="SD3: no [uncond ; cond] rows (guidance <= 1)")
    e.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (default: the model's)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT 10 parses <= 20)")
    e.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"], help="torch.onnx exporter")
    e.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension (default: static shapes)")
    e.add_argument("--no-fold", action="store_true", help="skip constant folding")
    e.add_argument("--blocks", type=_blocks, default=None, help="blocks with the score branch (default: all)")
    e.add_argument("--max-span-tokens", type=int, default=64, help="span rows the score branch reads (default 64)")
    e.add_argument("--kv-swap", action="store_true",
                   help="add the text K/V swap inputs (kv_donor_index, kv_swap_gate) that amo-engine edit and "
                        "generate --safe-text need; export --batch 2 for edit (3 with --keep-originals)")
    e.add_argument("--modulation", action="store_true",
                   help="add Paper B's attention-modulation inputs (quadrant_scale, text_bias, text_groups, "
                        "image_groups, group_gate; identity values reproduce the plain graph)")
    e.add_argument("--modulation-blocks", type=_blocks, default=None,
                   help="with --modulation: the joint blocks that modulate, e.g. 0,1,2 (default all; the others "
                        "keep the plain attention call)")
    e.add_argument("--stages", action="store_true",
                   help="also export the prompt encoders and the VAE decoder as ONNX graphs beside the backbone")
    e.add_argument("--aoti", action="store_true",
                   help="also compile an AOTInductor package (model.pt2) for --backend aoti, for --device")
    e.add_argument("--aoti-weights", default="embedded", choices=["embedded", "model"],
                   help="embedded: the package holds the weights; model: code only, weights taken from the model at "
                        "load (released sizes: no second copy on disk or in memory)")

    b = sub.add_parser("build", help="build a TensorRT engine (model.plan) for an exported folder (NVIDIA GPU)")
    b.add_argument("engine", type=Path, help="engine folder written by amo-engine export")
    b.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"], help="engine precision")
    b.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5 (default 3)")
    b.add_argument("--weakly-typed", action="store_true", help="let TensorRT pick precisions (default: strongly typed)")
    b.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to read and update")

    i = sub.add_parser("inspect", help="manifest, I/O table, op census, TensorRT compatibility; --verify runs parity")
    i.add_argument("engine", type=Path, help="engine folder")
    i.add_argument("--verify", action="store_true", help="run the engine and eager on the same random feeds")
    i.add_argument("--measure", action="store_true",
                   help="time ORT against AOTInductor on this CPU (engine exported with --aoti) and record the "
                        "faster as the engine's default here (--backend auto); refused while the machine is busy")
    i.add_argument("--backend", default="ort", choices=[b for b in BACKENDS if b != "eager"],
                   help="runtime for --verify (default ort)")
    i.add_argument("--model", default=None, help="model for --verify (default: the one in the manifest)")
    i.add_argument("--device", default="cpu", help="device for --verify")
    i.add_argument("--cache-dir", type=Path, default=None, help="preset cache (see generate)")

    be = sub.add_parser("bench", help="latency of eager / torch.compile / reference AMO / ORT arms, side by side",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BENCH_EPILOG)
    be.add_argument("--config", default="medium-sd3", choices=list(BENCH_CONFIGS), metavar="CONFIG",
                    help="one of: " + "; ".join(f"{k}: {v}" for k, v in BENCH_CONFIGS.items()))
    be.add_argument("--calls", type=int, default=10, help="timed rounds of backbone calls (interleaved; default 10)")
    be.add_argument("--loops", type=int, default=3, help="timed rounds of denoise loops and end-to-end runs (default 3)")
    be.add_argument("--steps", type=int, default=8, help="steps per loop (default 8)")
    be.add_argument("--threads", type=int, default=None, help="threads of every arm, torch and ORT (default: all cores)")
    be.add_argument("--ort-spinning", action="store_true",
                    help="let ORT's threads spin-wait between calls (faster alone, steals CPU from interleaved arms)")
    be.add_argument("--no-compile", action="store_true", help="skip the torch.compile arm")
    be.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor arm (its compile takes minutes)")
    be.add_argument("--out-dir", type=Path, default=None,
                    help="where JSON lines, table and plot go (default: ~/.cache/amo-engine/bench, outside the repo; "
                         "pass bench/results to update the committed tables)")
    be.add_argument("--cache-dir", type=Path, default=None, help="preset cache (tiny configs)")
    ev = sub.add_parser("eval", help="OCR evaluation: render words x seeds with each sampler, read them, compare",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVAL_EPILOG)
    ev.add_argument("--model", default="glyph", help="model to evaluate (default: glyph, the model trained here)")
    ev.add_argument("--out-dir", type=Path, required=True, help="rows.jsonl, images/, summary.md/json, plot.png, grid.png")
    ev.add_argument("--words", default="train", help="train | held-out (the model's lists) | a file, one word a line")
    ev.add_argument("--max-words", type=int, default=None, help="only the first N words")
    ev.add_argument("--seeds", type=int, default=3, help="seeds per word (default 3)")
    ev.add_argument("--first-seed", type=int, default=0,
                    help="first seed (default 0): seeds FIRST .. FIRST+SEEDS-1, e.g. a split for choosing settings")
    ev.add_argument("--samplers", default="euler,overshoot,amo", help="comma-separated (default euler,overshoot,amo)")
    ev.add_argument("--c", type=float, default=2.0, help="overshoot strength for overshoot and amo (default 2.0)")
    ev.add_argument("--steps", type=int, default=28, help="steps = model evaluations per image (default 28)")
    ev.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    ev.add_argument("--batch", type=int, default=16, help="prompts per call (default 16; an ORT engine must match)")
    ev.add_argument("--ocr", default="rapidocr", choices=["rapidocr", "tesseract"], help="OCR engine (default rapidocr)")
    ev.add_argument("--backend", default="eager", choices=BACKENDS, help="where the transformer runs")
    ev.add_argument("--engine", type=Path, default=None, help="engine folder for --backend ort/aoti/trt")
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ev.add_argument("--cache-dir", type=Path, default=None, help="preset cache (tiny presets)")
    ev.add_argument("--report-only", action="store_true", help="only rebuild the report from rows.jsonl")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train-glyph", help="train a glyph model (a small SD3 pipeline that renders words) on this machine")
    t.add_argument("--run-dir", type=Path, required=True, help="folder for checkpoints, log.jsonl and the trained model/")
    t.add_argument("--model", default="glyph", choices=list(GLYPH_MODELS),
                   help="glyph (flat ground, 32x96) or glyph-scene (textured ground named in the prompt, 48x128); "
                        "default glyph")
    t.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from another glyph model's weights (a folder, or glyph: the shipped one); "
                        "default: random init")
    t.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default 5000, what the shipped weights used)")
    t.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    t.add_argument("--lr", type=float, default=7e-4, help="peak learning rate (default 7e-4)")
    t.add_argument("--seed", type=int, default=0, help="seed of the init and of every batch (default 0)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--device", default="cpu", help="cpu | cuda (default cpu; batches are the same on both)")
    t.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (default 0: none)")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    t.add_argument("--check-every", type=int, default=500, help="steps between OCR checks of samples (0: never)")
    t.add_argument("--export", type=Path, default=None, help="write the trained pipeline here (default RUN_DIR/model)")
    t.add_argument("--extend", action="store_true",
                   help="train a finished run on to --steps in a new phase (warm-up, cosine decay) at --lr")
    t.add_argument("--export-now", action="store_true",
                   help="export the EMA weights of the run's last checkpoint without training further")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    sv = sub.add_parser("serve", help="serve an OpenAI-style image endpoint on Ray Serve (dynamic batching, loopback)",
                        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_serve_args(sv)

    lt = sub.add_parser("loadtest", help="concurrent clients against a service: every image checked, latency table",
                        epilog=LOADTEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    lt.add_argument("--url", default=None, help="a running service (default: start one here with --model/--engine)")
    _add_serve_args(lt)
    lt.add_argument("--concurrency", type=_blocks, default=(1, 2, 4, 8), help="client counts, e.g. 1,2,4,8 (default)")
    lt.add_argument("--requests", type=int, default=16, help="requests per concurrency level (default 16)")
    lt.add_argument("--payloads", type=int, default=8, help="distinct (prompt, seed) requests cycled (default 8)")
    lt.add_argument("--steps", type=int, default=8, help="steps per request (default 8)")
    lt.add_argument("--sampler", default="amo", choices=SAMPLERS)
    lt.add_argument("--kill-replica-after", type=float, default=None, metavar="S",
                    help="after the levels, a fault run: clients keep sending and one renderer replica is SIGKILLed S seconds in (needs the service started here)")
    lt.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long (default 600)")
    lt.add_argument("--out", type=Path, default=None, help="write the result JSON here (and the table beside it, .md)")
    return parser


BENCH_EPILOG = """\
Every arm runs on the same threads; arms are interleaved round-robin; p50 is the headline, with
raw samples in the JSON lines. The table names the machine (CPU family/model/flags, fp32 GEMM
rate) and flags rows whose spread is wide or whose samples came from contended rounds. Contention
(other processes runnable on the cores the arms need, or a calibration GEMM that slowed) makes the
run exit with status 2 and marks the table CONTENDED: rerun on an idle machine.
"""

EDIT_EPILOG = """\
examples:
  amo-engine edit --prompt "a dark sign that says 'HAPPY'" --target-text SMILE --out edit.png --keep-originals \\
      --ocr rapidocr
  amo-engine edit --model /models/sd3-medium --prompt "a neon sign that reads 'OPEN'" --target-text CLOSED \\
      --edit-blocks 10 --edit-start 2 --out closed.png
Runs prompt A and prompt B as rows of one loop from the same noise; at the edit blocks, from the
start step, A's rows attend to B's text keys and values: A's scene with B's words. On an engine:
export it with --kv-swap --batch 2 (3 with --keep-originals).
"""

LOCALIZE_EPILOG = """\
example (the README's table on the glyph model):
  amo-engine localize --model glyph --pairs 24 --sampler overshoot --combine 6 \\
      --out-dir eval/results/localize-glyph --write-settings
For each joint block alone, swaps B's text K/V into A from step 0 and reads the result: how often
B's word appears (OCR exact match, normalised edit distance) and how much of A's image stays (PSNR
and SSIM against the plain A, whole image and outside the text region = the patches AMO's span map
marks). Then the best blocks together, then the start step.
"""

EVAL_EPILOG = """\
example (the README's table):
  amo-engine eval --model glyph --out-dir eval/results/glyph --seeds 3 --c 2 --steps 28
  amo-engine eval --model glyph --out-dir eval/results/glyph --seeds 3 --c 1 --steps 28 --samplers overshoot,amo
Rows are appended as they come: rerun the same command to finish an interrupted eval.
"""


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _numbered(path: Path, i: int) -> Path:
    return path if i == 0 else path.with_name(f"{path.stem}_{i}{path.suffix}")


def check_model_name(args: argparse.Namespace) -> None:
    """The model names something that exists here (a preset, a folder, a cached model id): judged
    before torch or diffusers are imported, so a typo costs no seconds."""
    from amo_engine.model.folders import resolve_folder

    resolve_folder(args.model, getattr(args, "cache_dir", None), build=False)


def check_generate_args(args: argparse.Namespace) -> None:
    """Everything about generate's options that can be judged before importing or loading anything."""
    import math

    from amo_engine.model.folders import size_limits
    from amo_engine.rules import check_size, parse_size

    check_model_name(args)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not (args.c >= 0 and math.isfinite(args.c)):
        raise ValueError(f"--c must be a finite number >= 0, got {args.c}")
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    if args.max_span_tokens is not None and args.max_span_tokens < 1:
        raise ValueError(f"--max-span-tokens must be >= 1, got {args.max_span_tokens}")
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise ValueError(f"--max-sequence-length must be >= 1, got {args.max_sequence_length}")
    if args.backend != "eager" and args.engine is None:
        raise ValueError(f"--backend {args.backend} needs --engine DIR; make one with: {_engine_for_args(args)} "
                         "(then pass --engine with that folder)")
    if args.ocr is not None:
        from amo_engine.ocr import check_available

        check_available(args.ocr)
    if args.backend == "eager" and args.engine is not None:
        raise ValueError("--engine needs --backend ort, aoti or trt (eager runs the model itself): add --backend ort")
    if args.cuda_graph and (args.backend not in ("aoti", "trt") or not args.device.startswith("cuda")):
        raise ValueError("--cuda-graph needs --backend aoti or trt on --device cuda")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.ort_opt_level != "all" and args.backend != "ort":
        raise ValueError("--ort-opt-level applies to --backend ort: add --backend ort --engine DIR, or drop it")
    if getattr(args, "safe_text", None) not in (None, "default"):
        from amo_engine.pipeline.text_edit import read_word_list

        read_word_list(args.safe_text)
    modulate = getattr(args, "modulate", None)
    if modulate is not None:
        from amo_engine.pipeline.plans import PRESETS, read_plan

        if modulate not in PRESETS:
            read_plan(modulate)
    if getattr(args, "groups", None) is not None and modulate is None:
        raise ValueError("--groups names the entities for --modulate: add --modulate separate (or align)")
    if getattr(args, "safe_text", None) is not None and args.num_images != 1:
        raise ValueError("--safe-text pairs each prompt with its twin: use --num-images 1 (repeat --prompt instead)")
    if getattr(args, "edit_start", None) is not None and not 0 <= args.edit_start < args.steps:
        raise ValueError(f"--edit-start {args.edit_start} must be a step index 0..{args.steps - 1}")
    _check_quoted_words_fit(args)
    if args.size is not None:
        if args.height is not None or args.width is not None:
            raise ValueError("--size sets both sides: drop --height and --width")
        args.width, args.height = parse_size(args.size)
    limits = size_limits(args.model, args.cache_dir)
    if limits is not None:
        check_size(args.width, args.height, *limits, model=args.model)


def _check_quoted_words_fit(args: argparse.Namespace) -> None:
    """On a glyph model (a sign of one letter per cell), every quoted word must fit its canvas."""
    from amo_engine.model.glyph.render import check_word_fits
    from amo_engine.model.glyph.variants import of_settings
    from amo_engine.model.presets import SHIPPED, ModelSettings, ensure_preset
    from amo_engine.prompts import find_quoted_spans

    path = Path(args.model).expanduser()
    if args.model in SHIPPED:
        path = ensure_preset(args.model)
    if not (path / "model_index.json").is_file():
        return  # not readable without building or downloading: the pipeline says what it must
    settings = ModelSettings.read(path)
    variant = of_settings(settings) if settings.vocabulary else None
    if variant is not None:
        for prompt in args.prompt if isinstance(args.prompt, list) else [args.prompt]:
            for span in find_quoted_spans(prompt):
                check_word_fits(span.text(prompt), variant)


def _engine_for_args(args: argparse.Namespace) -> str:
    """The export command of an engine that runs what generate's or edit's flags ask for."""
    from amo_engine.engine.manifest import engine_folder_for, export_command

    edit, safe_text = args.command == "edit", getattr(args, "safe_text", None) is not None
    images = (3 if getattr(args, "keep_originals", False) else 2) if edit else (2 if safe_text else 1) * args.num_images
    return export_command(args.model, engine_folder_for(args.model), batch=images, height=args.height,
                          width=args.width, dtype=args.dtype, max_sequence_length=args.max_sequence_length,
                          blocks=args.blocks, kv_swap=edit or safe_text,
                          modulation=getattr(args, "modulate", None) is not None,
                          aoti=args.backend == "aoti", device=args.device if args.backend == "aoti" else "cpu")


def check_edit_args(args: argparse.Namespace) -> None:
    """edit's options, judged before anything heavy: the generation flags, then the prompts."""
    from amo_engine.pipeline.text_edit import edit_request, swap_target

    check_generate_args(args)
    target = args.target_prompt or swap_target(args.prompt, args.target_text)
    edit_request(args.prompt, target, (0,), 0)  # the prompts' quoted text (blocks are checked on the model)


def runtime_of(args: argparse.Namespace):
    """The runtime.Runtime that generate's model and runtime flags name."""
    from amo_engine.pipeline.runtime import Runtime

    return Runtime(model=args.model, backend=args.backend, engine=args.engine, device=args.device, dtype=args.dtype,
                   cache_dir=args.cache_dir, threads=args.threads, ort_opt_level=args.ort_opt_level,
                   cuda_graph=args.cuda_graph, blocks=args.blocks, max_span_tokens=args.max_span_tokens)


def _run_generation(args: argparse.Namespace, plan):
    """Open the engine (if any), the model and the backend that generate's flags name; ``plan(model)``
    gives the GenerateConfig (it may read the model's settings). Returns (model, config, result)."""
    from amo_engine.pipeline.runtime import open_pipeline

    rt = runtime_of(args)
    with open_pipeline(rt) as pipeline:
        args.backend = rt.backend  # "auto" resolved
        config = plan(pipeline.model)
        result = pipeline(config)
    return pipeline.model, config, result


def _edit_blocks(args: argparse.Namespace, model) -> tuple[tuple[int, ...], int]:
    """--edit-blocks / --edit-start, else the model's localized blocks (text_edit.edit_defaults)."""
    from amo_engine.pipeline.text_edit import edit_defaults

    blocks, start = edit_defaults(model)
    blocks = args.edit_blocks or blocks
    if not blocks:
        raise ValueError(f"{model.source} names no text-localized blocks: pass --edit-blocks (find them with "
                         f"amo-engine localize --model {model.source} --out-dir localize)")
    return tuple(blocks), (args.edit_start if args.edit_start is not None else start)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.safe_text is None:
        model, _, result = _run_generation(args, lambda model: _with_modulation(args, _generate_config(args)))
        _write_generated(args, model, result)
        return 0
    import dataclasses

    from amo_engine.pipeline.text_edit import read_word_list, safe_text_request

    words = read_word_list(None if args.safe_text == "default" else args.safe_text)
    request = None

    def plan(model):
        nonlocal request
        blocks, start = _edit_blocks(args, model)
        request = safe_text_request(args.prompt, words, blocks, start)
        return _with_modulation(args, dataclasses.replace(_generate_config(args), prompts=list(request.prompts),
                                                          text_swap=request.swap))

    model, config, result = _run_generation(args, plan)
    for i, word, substitute in request.replaced:
        print(f"safe text: prompt {i}: {word!r} -> {substitute!r} at joint blocks "
              f"{','.join(map(str, config.text_swap.blocks))} from step {config.text_swap.start_step}")
    if not request.replaced:
        print("safe text: no listed word in the quoted text; nothing replaced")
    _write_generated(args, model, _first_images(result, request.images))
    return 0


def _with_modulation(args: argparse.Namespace, config):
    """``config`` with --modulate's plan (presets sized to the steps; the groups counted from the prompts)."""
    if args.modulate is None:
        return config
    import dataclasses

    from amo_engine.pipeline.plans import group_spans, plan_for

    groups = max(len(group_spans(p, args.groups)) for p in config.prompts)
    return dataclasses.replace(config, modulation=plan_for(args.modulate, config.steps, groups), groups=args.groups)


def _first_images(result, n: int):
    """``result`` cut to its first ``n`` images (the user's; the rest are donor rows)."""
    import dataclasses

    attn = result.attn_map[:n] if result.attn_map is not None else None
    return dataclasses.replace(result, images=result.images[:n], latents=result.latents[:n], attn_map=attn)


def cmd_edit(args: argparse.Namespace) -> int:
    import dataclasses

    from amo_engine.pipeline.text_edit import edit_request, swap_target

    target_prompt = args.target_prompt or swap_target(args.prompt, args.target_text)
    request = None

    def plan(model):
        nonlocal request
        blocks, start = _edit_blocks(args, model)
        request = edit_request(args.prompt, target_prompt, blocks, start, args.keep_originals)
        return dataclasses.replace(_generate_config(args), prompts=list(request.prompts), text_swap=request.swap)

    model, config, result = _run_generation(args, plan)
    outputs = {"edit": args.out, "target": _suffixed(args.out, "target"), "original": _suffixed(args.out, "original")}
    written = [(outputs[role], image) for role, image in zip(request.roles, result.images)
               if role == "edit" or args.keep_originals]
    from amo_engine.pipeline.generate import save_png

    for path, image in written:
        save_png(image, path)
    if args.save_attn is not None:
        from amo_engine.plots import save_attention_overlay

        save_attention_overlay(result.images[0], result.attn_map[0], args.save_attn,
                               title="quoted-text attention of the edited image")
    if args.ocr is not None:
        from amo_engine.model.glyph.locate import read_words
        from amo_engine.ocr import Reader

        reads = read_words(Reader(args.ocr), [image for _, image in written], model.settings)
        for (path, _), read in zip(written, reads):
            print(f"OCR ({args.ocr}) reads {path}: {read or '(nothing)'}")
    swap = config.text_swap
    print(f"edit on {model.family.name} ({args.backend}, {result.sampler}, {result.steps} steps): {args.prompt!r} with "
          f"the text of {target_prompt!r} at joint blocks {','.join(map(str, swap.blocks))} from step "
          f"{swap.start_step} -> {', '.join(str(p) for p, _ in written)}")
    return 0


def _suffixed(path: Path, role: str) -> Path:
    return path.with_name(f"{path.stem}_{role}{path.suffix}")


def _generate_config(args: argparse.Namespace):
    from amo_engine.pipeline.generate import GenerateConfig

    return GenerateConfig(
        prompts=args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        c=args.c,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
        max_sequence_length=args.max_sequence_length,
        progress=not args.quiet,
    )


def _write_generated(args: argparse.Namespace, model, result) -> None:
    """The images, optional attention overlays and OCR readings of one generate call."""
    from amo_engine.pipeline.generate import save_png
    from amo_engine.plots import save_attention_overlay

    for i, image in enumerate(result.images):
        save_png(image, _numbered(args.out, i))
    if args.save_attn is not None and result.attn_map is not None:
        title = ("AMO map m (quoted text -> patches)" if result.sampler == "amo" else
                 f"quoted-text attention (shown only: {result.sampler} does not use it)")
        for i, image in enumerate(result.images):
            save_attention_overlay(image, result.attn_map[i], _numbered(args.save_attn, i), title=title)
    paths = ", ".join(str(_numbered(args.out, i)) for i in range(len(result.images)))
    if args.ocr is not None:
        from amo_engine.model.glyph.locate import read_words
        from amo_engine.ocr import Reader

        for i, read in enumerate(read_words(Reader(args.ocr), result.images, model.settings)):
            print(f"OCR ({args.ocr}) reads {_numbered(args.out, i)}: {read or '(nothing)'}")
    print(
        f"{result.sampler} on {model.family.name} ({args.backend}): {result.steps} steps, "
        f"{1000 * result.seconds_per_step:.1f} ms/step, loop {result.loop_seconds:.2f} s -> {paths}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from amo_engine.model.backbone import HookConfig
    from amo_engine.model.load import load_model
    from amo_engine.engine.export import ExportConfig, export_engine

    if args.aoti:
        from amo_engine.engine.aoti import NO_COMPILER, cpp_compiler
        from amo_engine.engine.backends import BackendUnavailable

        if cpp_compiler() is None:  # before any export work
            raise BackendUnavailable(NO_COMPILER)
    model = load_model(args.model, args.dtype, args.device, args.cache_dir)
    cfg = ExportConfig(
        out=args.out, batch=args.batch, height=args.height, width=args.width, cfg_rows=not args.no_cfg,
        max_sequence_length=args.max_sequence_length, opset=args.opset, exporter=args.exporter,
        dynamic_batch=args.dynamic_batch, fold_constants=not args.no_fold, aoti=args.aoti,
        aoti_weights=args.aoti_weights, stages=args.stages,
    )
    if args.modulation_blocks is not None and not args.modulation:
        raise ValueError("--modulation-blocks applies to --modulation: add --modulation")
    export_engine(model, cfg, HookConfig(args.blocks, args.max_span_tokens, args.kv_swap, args.modulation,
                                         modulation_blocks=args.modulation_blocks))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from amo_engine.engine.backends import BackendUnavailable

    try:
        from amo_engine.engine.trt_build import BuildConfig, build_plan

        manifest = build_plan(BuildConfig(args.engine, args.precision, args.opt_level, not args.weakly_typed,
                                          args.timing_cache))
    except BackendUnavailable as err:  # no TensorRT / no GPU: one line, not a traceback
        print(f"amo-engine build: {err}", file=sys.stderr)
        return 3
    t = manifest["trt"]
    print(f"built {args.engine / 'model.plan'} ({t['precision']}, TensorRT {t['version']}, {t['gpu']}) in {t['build_s']:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from amo_engine.engine.manifest import open_engine

    engine = open_engine(args.engine, model_name=args.model)  # hashes each file once; --verify reuses it
    manifest, spec = engine.manifest, engine.spec
    g = manifest["graph"]
    print(f"engine {args.engine}: {manifest['family']} from {manifest['model']!r}, {manifest['dtype']}, "
          f"{manifest['height']}x{manifest['width']}, rows {manifest['rows']}, hooked blocks {manifest['hooked_blocks']}")
    files = ", ".join(f"{name} ({rec['bytes'] / 1e6:.1f} MB)" for name, rec in manifest["files"].items())
    print(f"artifacts: {', '.join(engine.artifacts)}; files: {files}")
    if "onnx" in manifest:
        o = manifest["onnx"]
        print(f"onnx: opset {o['opset']}, exporter {o['exporter']}, folded {o['folded']}")
    print("\nI/O")
    for kind, tensors in (("in ", spec.inputs), ("out", spec.outputs)):
        for t in tensors:
            print(f"  {kind} {t.name:24s} {t.dtype:9s} {list(spec.shape(t.name))}")
    print("\nop census: " + ", ".join(f"{k} {v}" for k, v in g["census"].items()))
    print(f"\nTensorRT ONNX parser ({g['trt_table']}): {'compatible' if g['trt_ok'] else 'NOT compatible'}"
          + (f"; unsupported {g['unsupported_ops']}" if g["unsupported_ops"] else "")
          + (f"; float64 {g['float64'][:3]}" if g["float64"] else ""))
    for op, note in g["restrictions"].items():
        print(f"  {op}: {note}")
    print(f"attention fusion: {'kept' if g['fusion_ok'] else 'BROKEN'} ({g['main_softmax']} main softmax -> MatMul only, "
          f"{g['score_softmax']} score-branch softmax)")
    if "trt" in manifest:
        print(f"TensorRT plan: {manifest['trt']}")
    for name in engine.stages:
        st, stage_spec = manifest["stages"][name], engine.stage_spec(name)
        io = "; ".join(f"{t.name} {list(stage_spec.shape(t.name))}" for t in stage_spec.inputs + stage_spec.outputs)
        trt = "compatible" if st["trt_ok"] else f"NOT compatible (unsupported {st['unsupported_ops']})"
        print(f"stage {name} ({st['kind']}): {io}; TensorRT parser: {trt}")
    if not (args.verify or args.measure):
        return 0
    from amo_engine.model.load import load_model

    model = load_model(args.model or manifest["model"], manifest["dtype"], args.device, args.cache_dir)
    engine.check_model(model)
    if args.measure:
        return _measure_default_backend(engine, model)
    from amo_engine.engine.verify import engine_parity, judge_parity

    p = engine_parity(model, engine, args.backend, args.device)
    ok, detail = judge_parity(p, manifest["dtype"])
    print(f"\nverify ({args.backend} vs eager, {manifest['dtype']} gates): {detail}: {'PASS' if ok else 'FAIL'}")
    if engine.stages and args.backend == "ort" and args.device == "cpu":
        from amo_engine.engine.verify import STAGE_MAX_ABS, stage_parity

        gate = STAGE_MAX_ABS.get(manifest["dtype"])
        for name, err in stage_parity(model, engine).items():
            good = gate is None or err <= gate
            ok &= good
            verdict = f"(<= {gate:g}): {'PASS' if good else 'FAIL'}" if gate is not None else "(not gated)"
            print(f"verify stage {name} (ort vs eager, {manifest['dtype']}): max abs {err:.3g} {verdict}")
    return 0 if ok else 1


def _measure_default_backend(engine, model) -> int:
    """inspect --measure: ORT against AOTInductor here, recorded in the manifest unless the machine was busy."""
    from amo_engine.engine import default_backend
    from amo_engine.engine.manifest import MANIFEST, EngineError, write_json_atomic

    aoti = engine.manifest.get("aoti")
    if aoti is None or aoti.get("device") != "cpu":
        raise EngineError(f"{engine.folder} holds no CPU AOTInductor package to measure against ORT: export it "
                          f"with amo-engine export --model {engine.manifest['model']} --aoti --out {engine.folder}")
    try:
        record = default_backend.measure(engine, model)
    except default_backend.BusyMachine as err:
        print(f"amo-engine inspect: {err}", file=sys.stderr)
        return 2
    write_json_atomic(engine.folder / MANIFEST, {**engine.manifest, "default_backend": record})
    print(f"\ndefault CPU engine here: {record['backend']} ("
          + ", ".join(f"{k} {v:.1f} ms" for k, v in record["p50_ms"].items()) + f"), recorded for {record['machine']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from amo_engine.bench.cpu import BenchConfig, default_out_dir, run_bench

    threads = {} if args.threads is None else {"threads": args.threads}
    rows = run_bench(BenchConfig(args.config, args.calls, args.loops, args.steps, compile=not args.no_compile,
                                 aoti=not args.no_aoti, ort_spinning=args.ort_spinning, out_dir=args.out_dir, cache_dir=args.cache_dir, **threads))
    out = args.out_dir if args.out_dir is not None else default_out_dir()
    print(f"wrote {out / args.config}.jsonl, .md and .png")
    return 2 if rows[0]["contention"]["contended"] else 0


def _eval_config(args: argparse.Namespace):
    from amo_engine.eval.runner import EvalConfig

    return EvalConfig(model=args.model, out_dir=args.out_dir, words=args.words, max_words=args.max_words,
                      seeds=args.seeds, first_seed=args.first_seed, samplers=tuple(s for s in args.samplers.split(",") if s), c=args.c,
                      steps=args.steps, guidance=args.guidance, batch=args.batch, ocr=args.ocr,
                      backend=args.backend, engine=args.engine, device=args.device, cache_dir=args.cache_dir,
                      progress=not args.quiet)


def check_eval_args(args: argparse.Namespace) -> None:
    from amo_engine.ocr import check_available

    check_model_name(args)
    _eval_config(args).validate()
    check_available(args.ocr)


def cmd_eval(args: argparse.Namespace) -> int:
    from amo_engine.eval.report import write_report
    from amo_engine.eval.runner import run_eval
    from amo_engine.model.folders import resolve_folder
    from amo_engine.model.presets import ModelSettings

    if not args.report_only:
        run_eval(_eval_config(args))
    settings = ModelSettings.read(resolve_folder(args.model, args.cache_dir))
    print(write_report(args.out_dir, settings, args.ocr))
    print(f"wrote {args.out_dir}/rows.jsonl, summary.md, summary.json, plot.png, grid.png, grid-s*-c*.png, figure.png")
    return 0


def cmd_train_glyph(args: argparse.Namespace) -> int:
    from amo_engine.train.glyph import TrainConfig, Trainer

    steps = {} if args.steps is None else {"steps": args.steps}  # default: TrainConfig's
    cfg = TrainConfig(run_dir=args.run_dir, model=args.model, init_from=args.init_from, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                      device=args.device, workers=args.workers,
                      checkpoint_every=args.checkpoint_every, check_every=args.check_every, progress=not args.quiet,
                      extend=args.extend, **steps)
    cfg.validate()
    trainer = Trainer(cfg)
    if args.export_now:
        if not trainer.load_checkpoint():
            raise FileNotFoundError(f"{args.run_dir} has no checkpoint yet; train first (drop --export-now)")
        folder = trainer.export(args.export or args.run_dir / "model")
        print(f"exported the EMA weights of step {trainer.step} -> {folder}")
        return 0
    folder = trainer.run(args.export)
    print(f"trained {args.model} model -> {folder}")
    return 0


def _localize_config(args: argparse.Namespace):
    from amo_engine.eval.localize import LocalizeConfig

    try:
        starts = tuple(int(s) for s in args.start_steps.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--start-steps takes comma-separated step indices, e.g. 0,2,4; got {args.start_steps!r}") from None
    return LocalizeConfig(out_dir=args.out_dir, model=args.model, words=args.words, pairs=args.pairs,
                          template=args.template, steps=args.steps, sampler=args.sampler, seed=args.seed,
                          batch=args.batch, combine=args.combine, start_steps=starts, ocr=args.ocr,
                          write_settings=args.write_settings, cache_dir=args.cache_dir, progress=not args.quiet)


def check_localize_args(args: argparse.Namespace) -> None:
    import importlib.util

    from amo_engine.ocr import check_available

    check_model_name(args)
    _localize_config(args).validate()
    check_available(args.ocr)
    if importlib.util.find_spec("skimage") is None:
        raise ImportError("amo-engine localize measures SSIM with scikit-image: pip install 'amo-engine[eval]'")


def cmd_localize(args: argparse.Namespace) -> int:
    from amo_engine.eval.localize import run_localize

    run_localize(_localize_config(args))
    print(f"wrote {args.out_dir}/results.json, table.md, plot.png, grid.png")
    return 0



SERVE_EPILOG = """examples:
  amo-engine export --model glyph --out engines/glyph --batch 4
  amo-engine serve --model glyph --engine engines/glyph --replicas 2 --port 8000
  curl -s localhost:8000/v1/images/generations -H 'Content-Type: application/json' \\
      -d "{\\"prompt\\": \\"a dark sign that says 'HAPPY'\\", \\"seed\\": 0}"
"""

LOADTEST_EPILOG = """examples:
  amo-engine loadtest --model glyph --engine engines/glyph --replicas 2 --concurrency 1,2,4,8 \\
      --kill-replica-after 5 --out bench/results/loadtest-glyph.json
  amo-engine loadtest --url http://127.0.0.1:8000 --concurrency 1,4
"""


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--engine", type=Path, default=None, help="engine folder (default: none, eager PyTorch)")
    p.add_argument("--backend", default=None, choices=(*BACKENDS, "auto"),
                   help="where the transformer runs (default: ort with --engine, else eager)")
    p.add_argument("--replicas", type=int, default=1, help="renderer replicas, each with its own model (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="images per render call with --backend eager (default 4; an engine renders its export batch)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a call waits for batch-mates (default 10 ms)")
    p.add_argument("--max-queued", type=int, default=16,
                   help="requests waiting for a replica before the service answers 503 (default 16)")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds before a request is cancelled and answered 504 (default 300)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per replica (default: torch's choice)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica (default 1)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray GPUs per replica (default 0)")
    p.add_argument("--max-steps", type=int, default=100, help="the most steps a request may ask for (default 100)")


def check_serve_args(args: argparse.Namespace) -> None:
    """serve / loadtest options judged before Ray starts or a model loads."""
    starts = args.command == "serve" or getattr(args, "url", None) is None
    for name in ("replicas", "max_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queued < 0 or args.request_timeout <= 0 or args.batch_wait_ms < 0:
        raise ValueError("--max-queued must be >= 0, --request-timeout > 0 and --batch-wait-ms >= 0")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    if args.command == "loadtest":
        if args.requests < 1 or args.payloads < 1 or args.steps < 1 or min(args.concurrency) < 1:
            raise ValueError("--requests, --payloads, --steps and every --concurrency must be >= 1")
        if args.kill_replica_after is not None and not starts:
            raise ValueError("--kill-replica-after kills a replica of a service started here: drop --url")
    if not starts:
        return
    check_model_name(args)
    from amo_engine.engine.manifest import engine_folder_for, export_command

    backend = args.backend or ("ort" if args.engine is not None else "eager")
    if backend != "eager" and args.engine is None:
        raise ValueError(f"--backend {backend} needs --engine DIR; make one with: "
                         f"{export_command(args.model, engine_folder_for(args.model), batch=args.max_batch or 4)} "
                         "(then pass --engine with that folder)")
    if args.engine is not None and not (args.engine / "manifest.json").is_file():
        raise ValueError(f"{args.engine} is not an engine folder (no manifest.json); make one with: "
                         f"{export_command(args.model, args.engine, batch=args.max_batch or 4)}")
    if backend == "eager" and args.engine is not None:
        raise ValueError("--engine needs --backend ort, aoti or trt: add --backend ort")
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ImportError("serving needs Ray Serve: pip install 'amo-engine[serve]'") from None


def _service_config(args: argparse.Namespace):
    from amo_engine.serve.app import ServiceConfig

    backend = args.backend or ("ort" if args.engine is not None else "eager")
    runtime = {"model": args.model, "backend": backend, "engine": str(args.engine) if args.engine else None,
               "device": args.device, "dtype": args.dtype, "threads": args.threads,
               "cache_dir": str(args.cache_dir) if args.cache_dir else None}
    return ServiceConfig(runtime=runtime, replicas=args.replicas, max_batch=args.max_batch or
                         (4 if backend == "eager" else None), batch_wait_ms=args.batch_wait_ms,
                         max_queued=args.max_queued, request_timeout_s=args.request_timeout,
                         cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                         max_steps=args.max_steps)


def _ray_cpus(args: argparse.Namespace) -> int:
    """Logical CPUs for the local Ray: the replicas' reservations, the proxy and controller, at least the machine's."""
    import math
    import os

    return max(os.cpu_count() or 1, math.ceil(args.replicas * args.cpus_per_replica) + 1)


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from amo_engine.serve import app

    app.start(_service_config(args), args.host, args.port, num_cpus=_ray_cpus(args))
    url = f"http://{args.host}:{args.port}"
    print(f"serving {args.model} at {url}/v1/images/generations ({args.replicas} replica(s)); health {url}/healthz, "
          f"ready {url}/readyz, stats {url}/v1/stats; Ctrl-C stops", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    app.stop()
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:

    from amo_engine.serve import loadtest

    started = args.url is None
    url = args.url or f"http://{args.host}:{args.port}"
    if started:
        from amo_engine.serve import app

        app.start(_service_config(args), args.host, args.port, num_cpus=_ray_cpus(args))
    try:
        lt = loadtest.LoadTest(url.rstrip("/"), tuple(args.concurrency), args.requests, args.payloads, args.steps,
                               args.sampler, max_seconds=args.max_seconds, kill_replica_after_s=args.kill_replica_after,
                               started_here=started)
        try:
            result = loadtest.run(lt, args.replicas)
        except (RuntimeError, TimeoutError) as err:  # the service is not there, or fails alone
            print(f"amo-engine loadtest: error: {err}", file=sys.stderr)
            return 1
        from amo_engine.timing import cpu_facts

        result["machine"] = cpu_facts()  # the client's; with a service started here, the server's too
    finally:
        if started:
            app.stop()
    text = loadtest.table(result)
    print(text)
    if "kill" in result:
        kill = result["kill"]
        seconds = (lambda v: "not within 120 s" if v is None else f"{v:.1f} s")
        print(f"replica kill ({kill['concurrency']} clients): pid {kill['killed_pid']} killed; {kill['requests']} "
              f"requests, {kill['ok']} ok, {len(kill['errors'])} failed, {kill['retries_after_503']} retried after "
              f"503, {kill['gateway']['retries_after_replica_death']} retried by the gateway, "
              f"{kill['image_mismatches']} image mismatches, {kill['hung']} hung, slowest {kill['max_latency_s']:.2f} s; "
              f"Serve saw the death after {seconds(kill['noticed_s'])}, every replica running again after "
              f"{seconds(kill['recovery_s'])}")
        for error in kill["errors"]:
            print(f"  {error['status']}: {error['error']}")
    if args.out is not None:
        from amo_engine.engine.manifest import write_json_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, result)
        args.out.with_suffix(".md").write_text(text + "\n")
    bad = sum(lv["image_mismatches"] + lv["requests"] - lv["responses"] for lv in result["levels"])
    bad += result["kill"]["image_mismatches"] + result["kill"]["hung"] if "kill" in result else 0
    return 1 if bad else 0


COMMANDS = {"generate": cmd_generate, "edit": cmd_edit, "localize": cmd_localize, "export": cmd_export, "build": cmd_build, "inspect": cmd_inspect, "bench": cmd_bench,
            "train-glyph": cmd_train_glyph, "eval": cmd_eval, "serve": cmd_serve, "loadtest": cmd_loadtest}


PRECHECKS = {"generate": check_generate_args, "edit": check_edit_args, "localize": check_localize_args,
             "export": check_model_name,
             "eval": check_eval_args, "serve": check_serve_args, "loadtest": check_serve_args}


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"amo-engine: warning: {message}\n"


def _unquoted_prompt(argv: list[str], extras: list[str]) -> str | None:
    """The fix for a prompt typed without quotes (its words after the first land in ``extras``):
    the whole prompt quoted, its last word quoted inside as the text to render when nothing is."""
    if "--prompt" not in argv:
        return None
    at = argv.index("--prompt") + 1
    words = []
    for word in argv[at:]:
        if word.startswith("--") or (words and word not in extras):
            break
        words.append(word)
    if len(words) < 2:
        return None
    if not any(q in " ".join(words) for q in "'\"‘’“”"):
        words[-1] = f"'{words[-1]}'"
    return f'--prompt "{" ".join(words)}"'


RESUMABLE = {"eval", "train-glyph"}  # commands that keep what they finished and resume from it


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        fix = _unquoted_prompt(argv, extras)
        if fix is None:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        print(f"amo-engine {args.command}: error: the prompt has spaces: quote it whole, with the text to render "
              f"in quotes inside it: {fix}", file=sys.stderr)
        return 2
    warnings.formatwarning = _plain_warning  # one line per warning, no source-line noise
    warnings.simplefilter("default", UserWarning)
    try:
        try:
            if args.command in PRECHECKS:
                PRECHECKS[args.command](args)  # before diffusers is imported or any model loaded
            from amo_engine.engine.backends import BackendUnavailable
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
            return 2
        _quiet_libraries()
        try:
            return COMMANDS[args.command](args)
        except (ValueError, FileNotFoundError, FloatingPointError, ImportError, BackendUnavailable) as err:
            print(f"amo-engine {args.command}: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        kept = ("what finished is kept: rerun the same command to resume" if args.command in RESUMABLE
                else "nothing written")
        print(f"amo-engine {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
