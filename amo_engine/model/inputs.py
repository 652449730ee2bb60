"""The hook's optional graph inputs, each group declared once.

An ``InputGroup`` is everything the project knows about one set of inputs the attention hook can add
to the graph: the ``HookConfig`` switch and export flag that add it, and per tensor its name, dtype,
shape (IOSpec dims such as ``batch``, ``text_len``, ``image_tokens``, plus the backbone's own
``blocks``, ``groups`` and the LoRA layout's ``lora_layers``, ``lora_rank``, ``lora_dim``), identity fill (the value that reproduces the plain graph) and sample
values (tracing and parity feeds). The backbone's IOSpec, the buffers (``IOSpec.allocate``), the
sample feeds, the engine manifest, the refusal "this engine was exported without ..." and the
export command's flags all read these declarations; the attention code uses the tensors by name.

Imports nothing heavy: the command line builds its flags from here before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from amo_engine.spec import IOSpec, TensorSpec


@dataclass(frozen=True)
class HookInput:
    name: str
    dtype: str  # a key of spec.DTYPES
    shape: tuple[int | str, ...]  # strings are the backbone's own sizes (specs' ``own``) or IOSpec dims
    fill: str  # identity value, a spec.FILLS kind: zeros | ones | row_index
    sample: Callable[[tuple[int, ...], "torch.Generator"], "torch.Tensor"]  # valid-looking values of that shape


@dataclass(frozen=True)
class InputGroup:
    switch: str  # the HookConfig field (and manifest key) that adds the group
    flag: str  # the export option that adds it
    title: str  # what the group is, in a sentence: "the text K/V swap inputs"
    purpose: str  # the export flag's help: what the inputs are for
    inputs: tuple[HookInput, ...]
    metavar: str | None = None  # the flag takes a value (the switch's; 0 is off), e.g. --lora-slots RANK

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def enabled(self, hook) -> bool:
        return bool(getattr(hook, self.switch))

    def specs(self, own: dict[str, int]) -> list[TensorSpec]:
        """The group's TensorSpecs with the backbone's own sizes ``own`` ("blocks": joint blocks, "groups":
        entity groups, the LoRA layout's sizes) resolved; other names stay IOSpec dims."""
        from amo_engine.spec import TensorSpec

        return [TensorSpec(t.name, t.dtype, tuple(own.get(d, d) if isinstance(d, str) else d for d in t.shape), t.fill)
                for t in self.inputs]

    def present_in(self, spec: IOSpec) -> bool:
        return all(name in spec.input_names for name in self.names)

    def help(self) -> str:
        if self.metavar:
            return f"add {self.title} ({', '.join(self.names)}) at {self.metavar}: {self.purpose}"
        return f"add {self.title} ({', '.join(self.names)}; identity values reproduce the plain graph): {self.purpose}"


def _rand(scale: float = 1.0, offset: float = 0.0):
    def sample(shape, g):
        import torch

        return offset + scale * torch.rand(shape, generator=g)

    return sample


def _normal(scale: float):
    def sample(shape, g):
        import torch

        return scale * torch.randn(shape, generator=g)

    return sample


def _cycle(values: tuple[float, ...]):
    def sample(shape, g):
        import torch

        return torch.tensor([values[i % len(values)] for i in range(shape[0])])

    return sample


def _next_row(shape, g):  # every row takes the next row's text K/V
    import torch

    return torch.roll(torch.arange(shape[0]), -1)


def _one_hots(shape, g):  # one group per token or patch, about a third ungrouped
    import torch

    hot = torch.nn.functional.one_hot(torch.randint(0, shape[-1], shape[:-1], generator=g), shape[-1]).float()
    return hot * (torch.rand(shape[:-1], generator=g) < 0.7).float()[..., None]


KV_SWAP = InputGroup(
    "kv_swap", "--kv-swap", "the text K/V swap inputs",
    "what amo-engine edit and generate --safe-text need (Paper A); export --batch 2 for edit (3 with --keep-originals)",
    (HookInput("kv_donor_index", "int64", ("batch",), "row_index", _next_row),  # the row whose text K/V each row takes
     HookInput("kv_swap_gate", "float32", ("blocks",), "zeros", _cycle((0.0, 1.0, 0.5)))),  # per block: 0 own, 1 donor's
)

MODULATION = InputGroup(
    "modulation", "--modulation", "the attention-modulation inputs",
    "what generate --modulate needs (Paper B)",
    (HookInput("quadrant_scale", "float32", ("blocks", 4), "ones", _rand(1.0, 0.5)),  # logit scale per quadrant
     HookInput("text_bias", "float32", ("batch", "text_len"), "zeros", _normal(0.5)),  # log-weight per text token
     HookInput("text_groups", "float32", ("batch", "text_len", "groups"), "zeros", _one_hots),  # entity one-hots
     HookInput("image_groups", "float32", ("batch", "image_tokens", "groups"), "zeros", _one_hots),
     HookInput("group_gate", "float32", ("blocks",), "zeros", _cycle((0.0, 1.0)))),  # per block: group mask on/off
)

LORA = InputGroup(
    "lora_rank", "--lora-slots", "the LoRA factor inputs",
    "what generate --lora needs: per row, low-rank factors beside the adapted attention projections "
    "(--lora-blocks, --lora-projections) of adapters up to this rank; zeros are no adapter",
    (HookInput("lora_down", "float32", ("batch", "lora_layers", "lora_rank", "lora_dim"), "zeros", _normal(0.05)),
     HookInput("lora_up", "float32", ("batch", "lora_layers", "lora_dim", "lora_rank"), "zeros", _normal(0.05))),
    metavar="RANK",
)

GROUPS: tuple[InputGroup, ...] = (KV_SWAP, MODULATION, LORA)


def group_of(name: str) -> InputGroup | None:
    return next((g for g in GROUPS if name in g.names), None)


def hook_input(name: str) -> HookInput | None:
    group = group_of(name)
    return None if group is None else next(t for t in group.inputs if t.name == name)


def declared_fills() -> dict[str, str]:
    """Each declared input's identity fill, by name (for IOSpecs written before fills were recorded)."""
    return {t.name: t.fill for group in GROUPS for t in group.inputs}


def sample_feeds(spec: IOSpec, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, valid-looking feeds for ``spec``'s inputs, for tracing and parity checks: a
    declared hook input by its declaration, the backbone's and stages' own inputs by name."""
    import torch

    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(spec.dims)
        declared = hook_input(t.name)
        feeds[t.name] = (declared.sample(shape, g) if declared is not None
                         else _model_input_sample(t.name, shape, spec, g)).to(device=device, dtype=t.torch_dtype)
    return feeds


def _model_input_sample(name: str, shape: tuple[int, ...], spec: IOSpec, g) -> torch.Tensor:
    import torch

    if name == "span_mask":  # a few span tokens per row, at least one
        v = (torch.rand(shape, generator=g) < 0.15).float()
        v[:, 0] = 1.0
        return v
    if name == "timestep":  # the family's range (sigma 0..1 as this model's timestep input)
        lo, hi = spec.ranges.get("timestep", (0.0, 1.0))
        return lo + torch.rand(shape, generator=g) * (hi - lo)
    if name == "guidance":
        return torch.full(shape, 3.5)
    if name == "input_ids":  # token ids inside the stage's vocabulary
        return torch.randint(0, spec.dims.get("vocab", 2), shape, generator=g)
    if name in ("img_ids", "txt_ids"):
        return torch.randint(0, 16, shape, generator=g).float()
    return torch.randn(shape, generator=g)
