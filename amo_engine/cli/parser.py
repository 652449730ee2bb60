"""The command line's parser: every subcommand, its options and its examples (``--help``). Imports nothing
heavy: ``amo-engine --help`` and bad options answer before torch loads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from amo_engine import __version__
from amo_engine.bench import CONFIGS as BENCH_CONFIGS
from amo_engine.engine.backends import BACKENDS
from amo_engine.model.glyph.variants import VARIANTS as GLYPH_MODELS
from amo_engine.model.inputs import GROUPS as INPUT_GROUPS
from amo_engine.model.lora import PROJECTIONS, parse_projections
from amo_engine.model.lora import parse_blocks as parse_lora_blocks
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


def _checked(parse):
    """An argparse type from a parser that raises ValueError with its own one-line message."""

    def check(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return check


def _count(flag: str):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= 0, e.g. {flag} 8; got {text!r}")
        return value

    return check


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
                   help="where the transformer runs (auto: the engine's measured default CPU engine: ort, openvino "
                        "or aoti)")
    p.add_argument("--engine", type=Path, default=None, help="engine folder for --backend ort/openvino/aoti/trt")
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
    g.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help="a LoRA adapter (diffusers format, e.g. from amo-engine finetune), scale default 1; repeat "
                        "once per --prompt to give each prompt its own (none: no adapter), or give one for all. "
                        "An engine needs export --lora-slots RANK")
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
    for group in INPUT_GROUPS:  # the hook's optional inputs, as declared (model/inputs.py)
        if group.metavar:
            e.add_argument(group.flag, type=_count(group.flag), default=0, dest=group.switch, metavar=group.metavar,
                           help=group.help())
        else:
            e.add_argument(group.flag, action="store_true", dest=group.switch, help=group.help())
    e.add_argument("--lora-blocks", type=_checked(parse_lora_blocks), default="all",
                   help="with --lora-slots: all (default), localized (the model's text-localized blocks) or joint "
                        "block indices, e.g. 4,5")
    e.add_argument("--lora-projections", type=_checked(parse_projections), default=PROJECTIONS,
                   help=f"with --lora-slots: the attention projections with slots (default all: {','.join(PROJECTIONS)})")
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
    be.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO arm (it runs where openvino is installed)")
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
    ft = sub.add_parser("finetune", help="train a LoRA adapter on chosen joint blocks of a glyph model (Paper A)",
                        epilog=FINETUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ft.add_argument("--model", default="glyph", help="a glyph model: glyph, glyph-scene or a train-glyph folder")
    ft.add_argument("--run-dir", type=Path, required=True,
                    help="checkpoints, log.jsonl, finetune.json and at the end adapter.safetensors (reruns resume)")
    ft.add_argument("--words", default="held-out",
                    help="train | held-out (the model's lists; default held-out: words it never saw) | a file, "
                         "one word a line")
    ft.add_argument("--samples-per-word", type=int, default=0,
                    help="renders per word in the data pool (default 0: a new render every draw)")
    ft.add_argument("--blocks", type=_checked(parse_lora_blocks), default="localized",
                    help="joint blocks to adapt: localized (default: the model's text-localized blocks), all, or "
                         "indices such as 4,5")
    ft.add_argument("--projections", type=_checked(parse_projections), default=PROJECTIONS,
                    help=f"their attention projections (default all: {','.join(PROJECTIONS)})")
    ft.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    ft.add_argument("--steps", type=int, default=600, help="optimiser steps (default 600)")
    ft.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    ft.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3; warm-up, cosine decay)")
    ft.add_argument("--ema-decay", type=float, default=0.0, help="EMA of the adapter (default 0: none)")
    ft.add_argument("--seed", type=int, default=0, help="data, noise and init seed (default 0)")
    ft.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ft.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")

    ls = sub.add_parser("lora-study", help="Paper A's LoRA claim on glyph: localized-block vs all-block adapters "
                                           "at three data sizes, OCR on new, unseen and own words, paired tests")
    ls.add_argument("--out-dir", type=Path, required=True, help="rows.jsonl, results.json, table.md")
    ls.add_argument("--run-root", type=Path, default=Path("runs/lora-study"),
                    help="the fine-tunes' run folders (default runs/lora-study; finished ones are kept)")
    ls.add_argument("--quiet", action="store_true", help="no progress bars")

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
    lt.add_argument("--nodes", type=int, default=1,
                    help="start a Ray cluster of this many nodes on this machine (ray start; 1 CPU each unless "
                         "--cpus-per-replica asks more), one replica a node, and test through the head's proxy")
    lt.add_argument("--kill-node-after", type=float, default=None, metavar="S",
                    help="with --nodes 2 or more: after the levels, clients keep sending and a worker node is killed "
                         "whole S seconds in, then started again once Ray marks it dead")
    lt.add_argument("--soak-minutes", type=float, default=None, metavar="M",
                    help="instead of the levels: a soak run, --soak-rate requests a second for M minutes, every image "
                         "checked, each replica's RSS and open files sampled (service on this machine)")
    lt.add_argument("--soak-rate", type=float, default=1.0, help="requests a second in a soak run (default 1)")
    lt.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long (default 600)")
    lt.add_argument("--out", type=Path, default=None, help="write the result JSON here (and the table beside it, .md)")
    return parser


FINETUNE_EPILOG = """\
Only the adapter trains; the model stays as it is. The adapter is written in diffusers' LoRA format,
so stock diffusers loads it too (pipe.load_lora_weights(RUN_DIR, weight_name="adapter.safetensors")).
Use it here with generate --lora RUN_DIR/adapter.safetensors (an engine needs export --lora-slots RANK).
"""

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
  amo-engine loadtest --model glyph --engine engines/glyph --replicas 2 --threads 1 --steps 28 \\
      --soak-minutes 10 --soak-rate 1 --out bench/results/soak-glyph.json
  amo-engine loadtest --model glyph --engine engines/glyph --nodes 2 --replicas 2 --threads 1 \\
      --kill-node-after 5 --out bench/results/loadtest-glyph-2nodes.json
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
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Ray's Prometheus metrics on http://127.0.0.1:PORT/metrics (Ray's, Serve's and amo_* series)")
    p.add_argument("--max-prompt-chars", type=int, default=2000, help="the longest prompt accepted (default 2000)")
    p.add_argument("--max-body-kb", type=int, default=64, help="the largest request body accepted (default 64 KiB)")
    p.add_argument("--api-key-file", type=Path, default=os.environ.get("AMO_ENGINE_API_KEY_FILE"),
                   help="one API key a line: every /v1 request then needs 'Authorization: Bearer KEY' (the openai "
                        "client's api_key); default $AMO_ENGINE_API_KEY_FILE, else no keys")
    p.add_argument("--max-concurrent-per-key", type=int, default=8,
                   help="requests in flight per API key (with --api-key-file); past it: 429 (default 8)")
    p.add_argument("--lora-dir", type=Path, default=None,
                   help="a folder of LoRA adapters (*.safetensors) that requests name in \"lora\" (by file stem); "
                        "requests with different adapters share calls, each row its own. An engine needs export "
                        "--lora-slots covering them")
