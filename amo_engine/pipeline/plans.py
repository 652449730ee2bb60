"""Host-side plans for Paper B's knobs: entity groups from the prompt, and per-step schedules.

* **Groups**: phrases of the prompt, one per entity (``--groups "red apple|green sign 'OPEN'"``), or
  the heuristic chunker's split at "and", "with", "next to", commas (no parser model can be
  downloaded). Each group's text tokens come from the tokenizers' offsets (the same path as the
  quoted spans). Image patches join the group whose tokens attend to them most, read from the
  score taps at the first steps of the loop, one group per step (``with_modulation``); the group
  mask acts only after them. modulation.py has the knobs.
* **Schedules**: one ``StepKnobs`` per loop step — the quadrant logit scales, a log-weight per group
  added to its tokens' logits, and the group-mask gate. Named presets are our own choices (the
  paper published no values); a JSON file gives any schedule: ``{"blocks": [..] | null, "steps":
  [{"quadrant_scale": [ii, it, ti, tt], "group_weights": [w0, ...], "group_mask": 0 or 1}, ...]}``
  with one entry per step (missing keys: identity).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from amo_engine.prompts import Span

IDENTITY_SCALE = (1.0, 1.0, 1.0, 1.0)
CHUNK_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bwith\b|\bnext to\b|\bbeside\b)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class StepKnobs:
    quadrant_scale: tuple[float, float, float, float] = IDENTITY_SCALE
    group_weights: tuple[float, ...] = ()  # log-weight per group (missing: 0)
    group_mask: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.quadrant_scale == IDENTITY_SCALE and not any(self.group_weights) and not self.group_mask


@dataclass(frozen=True)
class ModulationPlan:
    name: str
    steps: tuple[StepKnobs, ...]
    blocks: tuple[int, ...] | None = None  # None: every joint block the graph modulates
    needs_groups: bool = field(default=False)

    def check(self, steps: int, n_blocks: int, groups: int, modulated: Sequence[int] | None = None) -> None:
        """One clear line for a plan this request and graph cannot run (``modulated``: the graph's
        modulating blocks, None for all)."""
        if len(self.steps) != steps:
            raise ValueError(f"the modulation schedule {self.name!r} has {len(self.steps)} steps but the request runs "
                             f"{steps}: give one entry per step (or use a preset)")
        bad = [b for b in self.blocks or () if not 0 <= b < n_blocks]
        if bad:
            raise ValueError(f"modulation block {bad[0]} out of range: this model has joint blocks 0..{n_blocks - 1}")
        if modulated is not None:
            off = sorted(set(self.blocks or ()) - set(modulated))  # None: the blocks the graph modulates
            if off:
                raise ValueError(f"the schedule modulates joint blocks {off} but the engine modulates only "
                                 f"{sorted(modulated)}: re-export with --modulation-blocks, or list blocks in the "
                                 "schedule file")
        for i, step in enumerate(self.steps):
            if len(step.group_weights) > groups:
                raise ValueError(f"step {i} of {self.name!r} weights {len(step.group_weights)} groups; the request has "
                                 f"{groups}")
        if self.needs_groups and groups >= steps:
            raise ValueError(f"placing {groups} groups takes {groups} probe steps; the request runs {steps}: "
                             "use more steps or fewer groups")
        if self.needs_groups and groups < 2:
            raise ValueError(f"the {self.name!r} modulation separates entities: give two or more groups, e.g. "
                             "--groups \"a red apple|a green sign 'OPEN'\"")


def _ramp(steps: int, until: float, on: StepKnobs) -> tuple[StepKnobs, ...]:
    """``on`` for the first ``until`` fraction of the steps (at least one), identity after."""
    k = max(1, round(until * steps))
    return tuple(on if i < k else StepKnobs() for i in range(steps))


def preset(name: str, steps: int, groups: int) -> ModulationPlan:
    """Our presets (values chosen here, not the paper's): sharpen — image->image logits x1.3 for the
    first 30% of steps (the early self-attention temperature); separate — group mask for the first
    half of the steps (from the step after the groups' probes); emphasise — each group's tokens +log 1.5 early, fading to 0; align —
    all three."""
    import math

    if name == "sharpen":
        return ModulationPlan(name, _ramp(steps, 0.3, StepKnobs(quadrant_scale=(1.3, 1.0, 1.0, 1.0))))
    if name == "separate":
        return ModulationPlan(name, _ramp(steps, 0.5, StepKnobs(group_mask=1.0)), needs_groups=True)
    if name == "emphasise":
        weights = [math.log(1.5) * max(0.0, 1 - i / max(1, steps // 2)) for i in range(steps)]
        return ModulationPlan(name, tuple(StepKnobs(group_weights=(w,) * groups) for w in weights))
    if name == "align":
        parts = [preset(n, steps, groups).steps for n in ("sharpen", "separate", "emphasise")]
        merged = tuple(StepKnobs(a.quadrant_scale, c.group_weights, b.group_mask) for a, b, c in zip(*parts))
        return ModulationPlan(name, merged, needs_groups=True)
    raise ValueError(f"unknown modulation preset {name!r}; choose one of {', '.join(PRESETS)} or give a JSON file")


PRESETS = ("sharpen", "separate", "emphasise", "align")


def read_plan(path: str | Path) -> ModulationPlan:
    """A schedule file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--modulate {path}: no such preset or file; presets: {', '.join(PRESETS)}")
    try:
        data = json.loads(path.read_text())
        steps = tuple(StepKnobs(tuple(float(x) for x in s.get("quadrant_scale", IDENTITY_SCALE)),
                                tuple(float(x) for x in s.get("group_weights", ())), float(s.get("group_mask", 0.0)))
                      for s in data["steps"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a modulation schedule ({err}); expected {{\"steps\": [{{\"quadrant_scale\": "
                         "[1, 1, 1, 1], \"group_weights\": [0], \"group_mask\": 0}}, ...]}}") from None
    if any(len(s.quadrant_scale) != 4 for s in steps):
        raise ValueError(f"{path}: quadrant_scale takes 4 values (image->image, image->text, text->image, text->text)")
    blocks = data.get("blocks")
    return ModulationPlan(path.name, steps, tuple(blocks) if blocks else None, any(s.group_mask for s in steps))


def plan_for(spec: str, steps: int, groups: int) -> ModulationPlan:
    return preset(spec, steps, groups) if spec in PRESETS else read_plan(spec)


# ---------------------------------------------------------------- groups


def group_spans(prompt: str, groups: str | None) -> list[Span]:
    """One character span per entity group: the phrases of ``groups`` ("a|b", each found in the
    prompt, case-insensitive), or the chunker's split of the prompt."""
    if groups is None:
        spans, start = [], 0
        for piece in CHUNK_SPLIT.split(prompt):
            at = prompt.find(piece, start)
            if piece.strip() and at >= 0:
                spans.append(Span(at, at + len(piece)))
                start = at + len(piece)
        return spans
    spans = []
    for phrase in (g.strip() for g in groups.split("|")):
        at = prompt.lower().find(phrase.lower()) if phrase else -1
        if at < 0:
            raise ValueError(f"group {phrase!r} is not in the prompt {prompt!r}: each --groups phrase must appear in it")
        spans.append(Span(at, at + len(phrase)))
    return spans


def group_masks(layout, prompts: Sequence[str], groups: str | None, max_groups: int):
    """[B, T, G] one-hot text-token groups (G = ``max_groups``) and the number of groups used."""
    import torch

    per_prompt = [group_spans(p, groups) for p in prompts]
    used = max((len(s) for s in per_prompt), default=0)
    if used > max_groups:
        raise ValueError(f"{used} groups but the engine takes at most {max_groups}: merge some, or re-export with more")
    masks = torch.zeros(len(prompts), layout.length, max_groups)
    for g in range(used):
        spans = [[s[g]] if g < len(s) else [] for s in per_prompt]
        masks[..., g] = layout.mask_of(prompts, spans)
    taken = masks.cumsum(-1) > 1  # a token in two phrases stays in the first
    return masks * ~taken, used


# ---------------------------------------------------------------- the loop


def with_modulation(loop, plan: ModulationPlan, text_groups, groups: int, images: int, sigmas: Sequence[float]):
    """``loop`` (a families.Denoise) with the knobs of ``plan`` written into its feeds before each
    step, on the device (per-step values stacked once; no host sync). ``text_groups`` [images, T, G]
    fill the conditional rows (the last ``images`` rows; unconditional rows stay ungrouped). For
    the first ``groups`` steps the loop reads group g's map at step g from the backbone's
    ``group_attn`` output (the span mask, and so AMO's map, is never touched); from then on each
    patch belongs to the group whose map is strongest there, relative to that map's mean (patches
    where no map beats its mean stay ungrouped), and the group mask may act."""
    import dataclasses

    import torch

    feeds = loop.feeds
    device = feeds["quadrant_scale"].device
    n_blocks = feeds["quadrant_scale"].shape[0]
    rows = feeds["text_bias"].shape[0]
    blocks = plan.blocks if plan.blocks is not None else tuple(range(n_blocks))
    on = torch.zeros(n_blocks, 1, device=device)
    on[list(blocks)] = 1.0
    scale = torch.tensor([s.quadrant_scale for s in plan.steps], device=device)  # [steps, 4]
    quadrant = 1 + on[None] * (scale[:, None, :] - 1)  # [steps, n_blocks, 4]
    gate = on[None, :, 0] * torch.tensor([s.group_mask for s in plan.steps], device=device)[:, None]  # [steps, n]
    gate[:groups] = 0  # no mask while the probe steps read where each group is drawn
    weights = torch.tensor([list(s.group_weights) + [0.0] * (text_groups.shape[-1] - len(s.group_weights))
                            for s in plan.steps], device=device)  # [steps, G]
    groups_t = text_groups.to(device)  # [images, T, G]
    bias = torch.einsum("itg,sg->sit", groups_t, weights)  # [steps, images, T]
    feeds["text_groups"].zero_()
    feeds["text_groups"][rows - images :].copy_(groups_t)
    probes: list = []
    index = {float(s): i for i, s in enumerate(sigmas)}

    def step(x, sigma):
        i = index[float(sigma)]
        feeds["quadrant_scale"].copy_(quadrant[i])
        feeds["group_gate"].copy_(gate[i])
        feeds["text_bias"][rows - images :].copy_(bias[i])
        if i == groups and groups:
            feeds["image_groups"][rows - images :].copy_(patch_groups(torch.stack(probes, -1), groups_t.shape[-1]))
        out = loop.step(x, sigma)
        if i < groups:  # probe: group i's map from this step
            if out.group_attn is None:
                raise ValueError("placing entity groups needs the backbone's group_attn output: re-export the "
                                 "engine with this amo-engine (export --modulation)")
            probes.append(out.group_attn[:, i].float().clone())  # [images, N]
        return out

    return dataclasses.replace(loop, step=step)


def patch_groups(maps, max_groups: int):
    """[images, N, G] one-hots from per-group maps [images, N, g]: the group whose map, relative to
    its own mean, is strongest at the patch, if that exceeds 1."""
    import torch

    relative = maps / maps.mean(dim=1, keepdim=True).clamp_min(1e-12)  # [images, N, g]
    best, which = relative.max(dim=-1)  # [images, N]
    onehot = torch.nn.functional.one_hot(which, max_groups).to(maps.dtype)  # [images, N, G]
    return onehot * (best > 1).to(maps.dtype)[..., None]
