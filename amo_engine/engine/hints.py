"""Pasteable commands for refusals: the ``amo-engine export`` line that makes an engine, or that
makes this engine again with what a request needs."""

from __future__ import annotations

from pathlib import Path

from amo_engine.engine.manifest import Manifest

DTYPE_FLAGS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def export_command(model: str, out: Path | str, *, batch: int = 1, height: int | None = None, width: int | None = None,
                   dtype: str = "fp32", device: str = "cpu", cfg_rows: bool = True, max_sequence_length: int | None = None,
                   opset: int = 18, exporter: str = "dynamo", dynamic_batch: bool = False, blocks=None,
                   max_span_tokens: int = 64, modulation_blocks=None, lora_blocks=None, lora_projections=None,
                   stages: bool = False, aoti: bool = False, aoti_weights: str = "embedded", **groups) -> str:
    """A pasteable ``amo-engine export`` command line; flags at their defaults are left out. Keyword
    names and defaults are export's options (cli/), so a hint built here parses as written;
    ``groups``: the hook's input groups by switch (``kv_swap=True``: ``--kv-swap``; a group whose flag
    takes a value by that value, ``lora_rank=8``: ``--lora-slots 8``; inputs.GROUPS)."""
    import shlex

    from amo_engine.model.inputs import GROUPS

    unknown = sorted(set(groups) - {g.switch for g in GROUPS})
    if unknown:
        raise TypeError(f"export_command: unknown options {unknown}")

    def q(v) -> str:
        return shlex.quote(str(v))

    parts = ["amo-engine export", f"--model {q(model)}", f"--out {q(out)}"]
    parts += [f"--batch {batch}"] if batch != 1 else []
    parts += [f"--height {height}"] if height is not None else []
    parts += [f"--width {width}"] if width is not None else []
    parts += [f"--dtype {dtype}"] if dtype != "fp32" else []
    parts += [f"--device {q(device)}"] if device != "cpu" else []
    parts += ["--no-cfg"] if not cfg_rows else []
    parts += [f"--max-sequence-length {max_sequence_length}"] if max_sequence_length is not None else []
    parts += [f"--opset {opset}"] if opset != 18 else []
    parts += [f"--exporter {exporter}"] if exporter != "dynamo" else []
    parts += ["--dynamic-batch"] if dynamic_batch else []
    parts += [f"--blocks {','.join(map(str, blocks))}"] if blocks is not None else []
    parts += [f"--max-span-tokens {max_span_tokens}"] if max_span_tokens != 64 else []
    parts += [f"{g.flag} {groups[g.switch]}" if g.metavar else g.flag for g in GROUPS if groups.get(g.switch)]
    parts += [f"--modulation-blocks {','.join(map(str, modulation_blocks))}"] if modulation_blocks else []
    if groups.get("lora_rank"):
        from amo_engine.model.lora import PROJECTIONS

        parts += [f"--lora-blocks {','.join(map(str, lora_blocks))}"] if lora_blocks is not None else []
        parts += ([f"--lora-projections {','.join(lora_projections)}"]
                  if lora_projections is not None and tuple(lora_projections) != PROJECTIONS else [])
    parts += ["--stages"] if stages else []
    parts += ["--aoti"] if aoti else []
    parts += ["--aoti-weights model"] if aoti and aoti_weights != "embedded" else []
    return " ".join(parts)


def engine_folder_for(model: str) -> Path:
    """Where a hint suggests exporting ``model``'s engine: engines/<its name>."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model)).name or str(model)).strip("-.") or "engine"
    return Path("engines") / name


def reexport_command(manifest: Manifest, folder: Path | str, model: str | None = None, **changes) -> str:
    """The export command that wrote ``folder`` again, from its manifest, with ``changes`` (export's
    option names, e.g. ``kv_swap=True, batch=2``) and ``model`` (default: the manifest's)."""
    from amo_engine.model.families import family_named
    from amo_engine.model.inputs import GROUPS

    hook, onnx, aoti = manifest.hook, manifest.onnx, manifest.aoti
    flags = dict(
        batch=manifest.images_per_call, height=manifest.height, width=manifest.width,
        dtype=DTYPE_FLAGS.get(manifest.dtype, "fp32"), device=aoti.device if aoti else "cpu",
        cfg_rows=manifest.cfg_rows or not family_named(manifest.family).batches_cfg,  # --no-cfg means nothing to FLUX
        max_sequence_length=manifest.max_sequence_length,
        opset=onnx.opset if onnx else 18, exporter=onnx.exporter if onnx else "dynamo",
        dynamic_batch=onnx.dynamic_batch if onnx else False, blocks=list(hook.hooked_blocks),
        max_span_tokens=hook.max_span_tokens, modulation_blocks=hook.modulation_blocks, stages=bool(manifest.stages),
        aoti=aoti is not None, aoti_weights=aoti.weights if aoti else "embedded",
        lora_blocks=hook.lora_blocks, lora_projections=hook.lora_projections,
        **{g.switch: getattr(hook, g.switch) if g.metavar else g.enabled(hook) for g in GROUPS},
    )
    return export_command(model or manifest.model or "glyph", folder, **{**flags, **changes})


def export_hint(folder: Path, model: str | None) -> str:
    """A pasteable export command for ``folder``: of the model named when the caller knows it, else
    of the default model (glyph), said before the command so the line pastes as it is."""
    if model is not None:
        return export_command(model, folder)
    return f"(for the default glyph model; name yours with --model) {export_command('glyph', folder)}"
