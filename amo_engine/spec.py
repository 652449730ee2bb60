"""IOSpec: the one description of a backbone's tensor inputs and outputs.

Everything that needs tensor names, dtypes or shapes derives them from here: the exporter's
input/output names and dynamic axes, sample feeds, runtime buffers, TensorRT profiles and the
engine manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; use one of {sorted(DTYPES)}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic dims

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        missing = [d for d in self.shape if isinstance(d, str) and d not in dims]
        if missing:
            raise KeyError(f"{self.name}: no value for symbolic dims {missing}")
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class IOSpec:
    """Inputs and outputs of one backbone evaluation, plus concrete values of its symbolic dims."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, int] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # value range of inputs (timestep)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r}; have {self.input_names + self.output_names}")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensor(name).resolve(self.dims)

    def dynamic_axes(self, dynamic: set[str]) -> dict[str, dict[int, str]]:
        """TorchScript-exporter style dynamic axes for the symbolic dims named in ``dynamic``."""
        axes: dict[str, dict[int, str]] = {}
        for t in self.inputs + self.outputs:
            sel = {i: d for i, d in enumerate(t.shape) if isinstance(d, str) and d in dynamic}
            if sel:
                axes[t.name] = sel
        return axes

    def allocate(self, which: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Buffers for ``inputs`` or ``outputs`` at the resolved shapes: zeros, except inputs whose
        identity value is not zero (``kv_donor_index``: each row its own donor; ``quadrant_scale``: 1)."""
        specs = self.inputs if which == "inputs" else self.outputs
        buffers = {t.name: torch.zeros(t.resolve(self.dims), dtype=t.torch_dtype, device=device) for t in specs}
        if which == "inputs" and "kv_donor_index" in buffers:
            buffers["kv_donor_index"].copy_(torch.arange(buffers["kv_donor_index"].shape[0]))
        if which == "inputs" and "quadrant_scale" in buffers:
            buffers["quadrant_scale"].fill_(1.0)
        return buffers

    def to_json(self) -> dict:
        def enc(ts: tuple[TensorSpec, ...]) -> list[dict]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]

        data = {"inputs": enc(self.inputs), "outputs": enc(self.outputs), "dims": dict(self.dims)}
        if self.ranges:
            data["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "IOSpec":
        def dec(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in items)

        ranges = {k: tuple(v) for k, v in data.get("ranges", {}).items()}
        return cls(dec(data["inputs"]), dec(data["outputs"]), dict(data["dims"]), ranges)


def sample_feeds(spec: IOSpec, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, valid-looking feeds for tracing and parity checks."""
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(spec.dims)
        if t.name == "span_mask":
            v = (torch.rand(shape, generator=g) < 0.15).float()
            v[:, 0] = 1.0
        elif t.name == "timestep":  # the family's range (sigma 0..1 as this model's timestep input)
            lo, hi = spec.ranges.get("timestep", (0.0, 1.0))
            v = lo + torch.rand(shape, generator=g) * (hi - lo)
        elif t.name == "guidance":
            v = torch.full(shape, 3.5)
        elif t.name == "input_ids":  # token ids inside the stage's vocabulary
            v = torch.randint(0, spec.dims.get("vocab", 2), shape, generator=g)
        elif t.name == "kv_donor_index":  # every row takes the next row's text K/V
            v = torch.roll(torch.arange(shape[0]), -1)
        elif t.name == "kv_swap_gate":  # off, on and in between across blocks
            v = torch.tensor([(0.0, 1.0, 0.5)[i % 3] for i in range(shape[0])])
        elif t.name == "quadrant_scale":  # logit scales around 1
            v = 0.5 + torch.rand(shape, generator=g)
        elif t.name in ("text_groups", "image_groups"):  # one-hots, some rows ungrouped
            v = torch.nn.functional.one_hot(torch.randint(0, shape[-1], shape[:-1], generator=g), shape[-1]).float()
            v *= (torch.rand(shape[:-1], generator=g) < 0.7).float()[..., None]
        elif t.name == "group_gate":
            v = torch.tensor([float(i % 2) for i in range(shape[0])])
        elif t.name == "text_bias":
            v = 0.5 * torch.randn(shape, generator=g)
        elif t.name in ("img_ids", "txt_ids"):
            v = torch.randint(0, 16, shape, generator=g).float()
        else:
            v = torch.randn(shape, generator=g)
        feeds[t.name] = v.to(device=device, dtype=t.torch_dtype)
    return feeds
