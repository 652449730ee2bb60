"""Text K/V swaps as a request: which image takes which image's text keys and values, at which
joint blocks, from which step (Paper A, ``../shared/spec/text_controls.md`` §A).

A ``TextSwap`` is host data; ``with_text_swap`` turns it into the backbone's ``kv_donor_index``
[rows] and, per step, ``kv_swap_gate`` [n_blocks] feeds. Images are the pipeline's batch; every family
lays its backbone rows out segment-major (SD3 with CFG: [uncond images ; cond images], FLUX:
[images]), so a row's donor row is the donor image's row in the same segment.

Images joined by a swap must start from the same noise and renoise alike: ``noise_groups`` gives
each image its noise stream (images in one group draw identical noise from the request's seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TextSwap:
    donors: tuple[int, ...]  # per image: the image whose text K/V it takes (its own index: none)
    blocks: tuple[int, ...]  # the joint blocks where the swap is on
    start_step: int = 0  # the first loop step (0-based) with the swap on
    noise_groups: tuple[int, ...] | None = None  # per image; None: every image in group 0

    def check(self, images: int, n_blocks: int, steps: int) -> None:
        """One clear line for a swap that cannot run on this request and model."""
        if len(self.donors) != images:
            raise ValueError(f"the text swap names donors for {len(self.donors)} images but the request has {images}")
        bad = [d for d in self.donors if not 0 <= d < images]
        if bad:
            raise ValueError(f"donor index {bad[0]} out of range: donors must be image indices 0..{images - 1}")
        if not self.blocks:
            raise ValueError("the text swap names no joint block: pass --edit-blocks, e.g. --edit-blocks 10")
        out = [b for b in self.blocks if not 0 <= b < n_blocks]
        if out:
            raise ValueError(f"edit block {out[0]} out of range: this model has joint blocks 0..{n_blocks - 1} "
                             "(pass --edit-blocks)")
        if not 0 <= self.start_step < steps:
            raise ValueError(f"edit start step {self.start_step} out of range for {steps} steps (use 0..{steps - 1})")
        if self.noise_groups is not None and len(self.noise_groups) != images:
            raise ValueError(f"noise_groups has {len(self.noise_groups)} entries for {images} images")

    def donor_rows(self, rows: int, images: int) -> list[int]:
        """``kv_donor_index`` for ``rows`` backbone rows laid out segment-major over ``images``."""
        if rows % images:
            raise ValueError(f"{rows} backbone rows do not split into segments of {images} images")
        return [segment * images + self.donors[image] for segment in range(rows // images) for image in range(images)]

    def gate(self, n_blocks: int) -> list[float]:
        """``kv_swap_gate`` while the swap is on: 1 at the swap blocks, 0 elsewhere."""
        return [1.0 if b in self.blocks else 0.0 for b in range(n_blocks)]

    def groups(self, images: int) -> tuple[int, ...]:
        return self.noise_groups if self.noise_groups is not None else (0,) * images


def with_text_swap(loop, swap: TextSwap, images: int, sigmas: Sequence[float]):
    """``loop`` (a families.Denoise) with its donor rows set once and its swap gate switched on from
    ``swap.start_step``: the gate buffer is rewritten on the device before each call (no host sync)."""
    import dataclasses

    import torch

    feeds = loop.feeds
    donor, gate = feeds["kv_donor_index"], feeds["kv_swap_gate"]
    donor.copy_(torch.tensor(swap.donor_rows(donor.shape[0], images)))
    gate_on = torch.tensor(swap.gate(gate.shape[0]), dtype=gate.dtype, device=gate.device)  # [n_blocks]
    gate_off = torch.zeros_like(gate_on)
    switch_at = sigmas[swap.start_step]  # sigmas decrease: step i >= start exactly when sigma_i <= this

    def step(x, sigma):
        gate.copy_(gate_on if sigma <= switch_at else gate_off)
        return loop.step(x, sigma)

    return dataclasses.replace(loop, step=step)
