"""LoRA as graph inputs: which attention projections of which joint blocks an engine adapts, and the
low-rank path beside each one.

An adapted projection computes ``W x + b + up_row (down_row x)``: the fused projection stays as it
is and the adapter is two small batched matmuls beside it, with factors that are inputs **per row**
(``lora_down`` [rows, layers, rank, d_in], ``lora_up`` [rows, layers, d_out, rank], the adapter's
scale folded into ``up``). Zeros are no adapter, so one engine serves any adapter of rank up to its
slots, and batch-mates can carry different ones. ``LoraLayout`` fixes the layers (slot order) from
the model's config alone; ``adapters.py`` turns diffusers LoRA files into these factors.

Imports nothing heavy: the command line checks its LoRA flags from here before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

# a joint block's attention projections, by their diffusers module names (the names LoRA files use)
PROJECTIONS: tuple[str, ...] = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
                                "to_add_out")


def parse_projections(text: str) -> tuple[str, ...]:
    """``--lora-projections``: a comma list of PROJECTIONS names, or "all"."""
    if text.strip() == "all":
        return PROJECTIONS
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in names if p not in PROJECTIONS]
    if bad or not names:
        raise ValueError(f"--lora-projections {text!r}: name some of {','.join(PROJECTIONS)} (or all)")
    return tuple(p for p in PROJECTIONS if p in names)


def parse_blocks(text: str) -> str | tuple[int, ...]:
    """``--lora-blocks``: "all", "localized" (the model's text-localized blocks, ``amo-engine localize``)
    or comma-separated joint block indices."""
    text = text.strip()
    if text in ("all", "localized"):
        return text
    try:
        blocks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        blocks = ()
    if not blocks:
        raise ValueError(f"--lora-blocks {text!r}: give all, localized or joint block indices such as 4,5")
    return blocks


def resolve_blocks(choice: str | tuple[int, ...], edit_blocks: Sequence[int] | None, source: str) -> tuple[int, ...] | None:
    """``parse_blocks``' choice for a model whose text-localized blocks are ``edit_blocks`` (None: all)."""
    if choice == "all":
        return None
    if choice == "localized":
        if not edit_blocks:
            raise ValueError(f"{source} names no text-localized blocks: find them with amo-engine localize --model "
                             f"{source} --out-dir localize --write-settings, or pass --lora-blocks 4,5")
        return tuple(sorted(edit_blocks))
    return tuple(choice)


def blocks_of(layers) -> tuple[int, ...]:
    """The joint blocks among (block, projection) layers, in order."""
    return tuple(sorted({b for b, _ in layers}))


def projections_of(layers) -> tuple[str, ...]:
    """The projections among (block, projection) layers, in PROJECTIONS order."""
    used = {p for _, p in layers}
    return tuple(p for p in PROJECTIONS if p in used)


@dataclass(frozen=True)
class LoraLayout:
    """The adapted layers of one engine, in slot order, and the factors' sizes."""

    layers: tuple[tuple[int, str], ...]  # (joint block, projection name) per slot
    rank: int  # the slots' rank: adapters of this rank or less fit
    dim: int  # every adapted projection maps dim -> dim (the joint blocks' width)

    @property
    def blocks(self) -> tuple[int, ...]:
        return blocks_of(self.layers)

    @property
    def projections(self) -> tuple[str, ...]:
        return projections_of(self.layers)

    @cached_property
    def slots(self) -> dict[tuple[int, str], int]:
        """Each adapted layer's slot, by (block, projection): looked up by every adapted projection of every call."""
        return {layer: i for i, layer in enumerate(self.layers)}

    def slot(self, block: int, projection: str) -> int | None:
        return self.slots.get((block, projection))

    def sizes(self) -> dict[str, int]:
        """The IOSpec dims of the factor inputs (inputs.LORA)."""
        return {"lora_layers": len(self.layers), "lora_rank": self.rank, "lora_dim": self.dim}


def layout_for(family, config, rank: int, blocks: Sequence[int] | None, projections: Sequence[str]) -> LoraLayout:
    """The layers ``blocks`` x ``projections`` that the model has (SD3's last joint block keeps no text
    output, so no ``to_add_out``), from the transformer config alone."""
    n = family.joint_block_count(config)
    chosen = tuple(range(n)) if blocks is None else tuple(sorted(set(blocks)))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n:
        raise ValueError(f"--lora-blocks {','.join(map(str, blocks or ()))} out of range: the model has joint "
                         f"blocks 0..{n - 1}")
    if rank < 1:
        raise ValueError(f"--lora-slots {rank}: give the largest adapter rank the engine takes, e.g. 16")
    layers = tuple((b, p) for b in chosen for p in PROJECTIONS
                   if p in projections and p in family.joint_projections(config, b))
    if not layers:
        raise ValueError("no adapted layer: the chosen blocks have none of the chosen projections")
    return LoraLayout(layers, rank, int(config.num_attention_heads * config.attention_head_dim))


@dataclass
class LoraCall:
    """One call's factors: ``down`` [B, layers, r, d], ``up`` [B, layers, d, r], slot by (block, name)."""

    down: torch.Tensor
    up: torch.Tensor
    layout: LoraLayout

    def project(self, layer, block: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` plus this row's low-rank path when the layer is adapted. x [B, L, d]."""
        import torch

        y = layer(x)
        s = self.layout.slot(block, name)
        if s is None:
            return y
        down = self.down[:, s].to(x.dtype)  # [B, r, d]
        up = self.up[:, s].to(x.dtype)  # [B, d, r]
        return y + torch.matmul(torch.matmul(x, down.transpose(1, 2)), up.transpose(1, 2))  # [B, L, d]
