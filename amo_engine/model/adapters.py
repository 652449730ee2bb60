"""LoRA adapter files in diffusers' format, read and checked whole before any generation work, and
written into the per-row factor buffers of ``lora.py``.

A file holds ``transformer.<joint blocks>.<i>.attn.<projection>.lora_A.weight`` [r, d_in] and
``... .lora_B.weight`` [d_out, r] (what ``pipe.save_lora_weights`` writes and ``load_lora_weights``
takes), and may carry diffusers' ``lora_adapter_metadata`` with the adapter's ``lora_alpha``
(scale alpha / r; without it, 1). Keys for anything else (text encoders, other layers, DoRA
magnitudes) are refused by name: an adapter is applied whole or not at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from amo_engine.model.lora import PROJECTIONS, LoraLayout, blocks_of, projections_of

if TYPE_CHECKING:
    import torch

NONE = "none"  # generate --lora none: this prompt carries no adapter
_FACTOR = re.compile(r"^transformer\.(?P<path>[A-Za-z_]+)\.(?P<block>\d+)\.attn\.(?P<proj>[A-Za-z_.0-9]+?)"
                     r"\.lora_(?P<ab>[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be applied here; the message is one line naming the fix."""


@dataclass(frozen=True)
class Adapter:
    """One adapter, read: per adapted layer its factors, float32, scale folded into ``up``."""

    name: str  # the file's stem (the service's adapter name)
    path: Path
    factors: dict  # (joint block, projection) -> (down [r, d_in], up [d_out, r])
    scale: float

    @property
    def rank(self) -> int:
        return max(down.shape[0] for down, _ in self.factors.values())

    @property
    def blocks(self) -> tuple[int, ...]:
        return blocks_of(self.factors)

    @property
    def projections(self) -> tuple[str, ...]:
        return projections_of(self.factors)


def parse_choice(text: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` (``none`` for no adapter) -> (file, scale)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def read_adapter(path: Path | str, family, config, scale: float = 1.0) -> Adapter:
    """Read and check ``path`` against a model of ``family`` with transformer ``config``."""
    import math

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"no LoRA file at {path}: give the adapter's .safetensors file (finetune writes "
                           f"RUN_DIR/adapter.safetensors)")
    if not math.isfinite(scale):
        raise AdapterError(f"{path}: the scale must be a finite number, e.g. {path}:0.8")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{path} is not a readable safetensors file (truncated or corrupted? {err}): write it "
                           f"again, e.g. rerun its amo-engine finetune") from None
    alpha = _alpha(metadata, path)
    blocks, others, pairs = family.joint_block_path, [], {}
    n_blocks = family.joint_block_count(config)
    for key, tensor in tensors.items():
        m = _FACTOR.match(key)
        if m is None or m["path"] != blocks or m["proj"] not in PROJECTIONS or int(m["block"]) >= n_blocks:
            others.append(key)
            continue
        pairs.setdefault((int(m["block"]), m["proj"]), {})[m["ab"]] = tensor
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise AdapterError(f"{path} has keys for what this engine does not adapt ({shown}): only the joint blocks' "
                           f"attention projections (transformer.{blocks}.N.attn.PROJECTION.lora_A/B.weight) are "
                           "applied; save the adapter without the others")
    if not pairs:
        raise AdapterError(f"{path} holds no LoRA factors: not a diffusers LoRA file")
    dim = int(config.num_attention_heads * config.attention_head_dim)
    factors = {}
    for (block, proj), ab in sorted(pairs.items()):
        where = f"transformer.{blocks}.{block}.attn.{proj}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {where} has lora_{'AB'.replace(''.join(ab), '')} missing: a truncated "
                               "adapter; write it again")
        down, up = ab["A"], ab["B"]
        if proj not in family.joint_projections(config, block):
            raise AdapterError(f"{path}: joint block {block} of this model has no {proj}: an adapter for another model")
        r = down.shape[0]
        if down.ndim != 2 or up.ndim != 2 or tuple(down.shape) != (r, dim) or tuple(up.shape) != (dim, r):
            raise AdapterError(f"{path}: {where} factors are {tuple(down.shape)} and {tuple(up.shape)}, this model's "
                               f"projections are {dim} wide (rank r: [r, {dim}] and [{dim}, r]): an adapter for "
                               "another model")
        a = alpha.get(f"{blocks}.{block}.attn.{proj}", alpha.get("*", r))  # diffusers' default: alpha = r
        factors[(block, proj)] = (down.float(), up.float() * (scale * a / r))
    return Adapter(path.stem, path, factors, scale)


def _alpha(metadata: dict, path: Path) -> dict:
    """The adapter's lora_alpha from diffusers' metadata: {"*": alpha} (plus per-layer patterns), or {}."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise AdapterError(f"{path}: its lora_adapter_metadata is not JSON: write the adapter again") from None
    if meta.get("transformer.use_dora"):
        raise AdapterError(f"{path} is a DoRA adapter: only plain LoRA factors can be engine inputs")
    out = {}
    if meta.get("transformer.lora_alpha") is not None:
        out["*"] = float(meta["transformer.lora_alpha"])
    out.update({k: float(v) for k, v in (meta.get("transformer.alpha_pattern") or {}).items()})
    return out


def check_fits(adapter: Adapter, layout: LoraLayout | None, fix: str) -> None:
    """Refuse an adapter the engine's slots cannot hold; ``fix`` is the export command that would."""
    if layout is None:
        raise AdapterError(f"this engine was exported without LoRA inputs: re-export it with: {fix}")
    if adapter.rank > layout.rank:
        raise AdapterError(f"{adapter.path} has rank {adapter.rank}, the engine's LoRA slots hold rank "
                           f"{layout.rank}: re-export it with: {fix}")
    missing = [f"{b}:{p}" for b, p in adapter.factors if layout.slot(b, p) is None]
    if missing:
        raise AdapterError(f"{adapter.path} adapts layers the engine has no slots for (block:projection "
                           f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}): re-export it with: {fix}")


def covering(adapters: Sequence[Adapter]) -> dict:
    """The export options (hints.export_command's) whose LoRA slots hold all of ``adapters``."""
    return {"lora_rank": max(a.rank for a in adapters),
            "lora_blocks": tuple(sorted({b for a in adapters for b in a.blocks})),
            "lora_projections": tuple(p for p in PROJECTIONS if any(p in a.projections for a in adapters))}


def fill_rows(down: torch.Tensor, up: torch.Tensor, layout: LoraLayout, per_row: Sequence[Adapter | None]) -> None:
    """Write each row's adapter into the factor buffers (``down`` [rows, layers, R, d], ``up``
    [rows, layers, d, R]); a smaller rank fills the first slots, the rest and rows without one stay 0."""
    down.zero_()
    up.zero_()
    for row, adapter in enumerate(per_row):
        if adapter is None:
            continue
        for (block, proj), (a, b) in adapter.factors.items():
            s, r = layout.slot(block, proj), a.shape[0]
            down[row, s, :r].copy_(a.to(down.dtype))
            up[row, s, :, :r].copy_(b.to(up.dtype))
