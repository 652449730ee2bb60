"""IOSpec: the one description of a backbone's tensor inputs and outputs.

Everything that needs tensor names, dtypes, shapes or identity fills derives them from here: the
exporter's input/output names and dynamic axes, runtime buffers, TensorRT profiles and the engine
manifest. Which tensors a backbone has is the model's business (``model/inputs.py`` declares the
hook's optional groups and draws sample feeds).
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


FILLS = ("zeros", "ones", "row_index")  # identity values a buffer starts from (row_index: arange over dim 0)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic dims
    fill: str = "zeros"  # the value that leaves the graph's meaning alone (hook inputs declare theirs)

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

    def signature(self) -> tuple:
        """A hashable identity: two IOSpecs with equal signatures take the same buffers."""
        return self.inputs, self.outputs, tuple(sorted(self.dims.items()))

    def allocate(self, which: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Buffers for ``inputs`` or ``outputs`` at the resolved shapes, each holding its ``fill``."""
        specs = self.inputs if which == "inputs" else self.outputs
        buffers = {t.name: torch.empty(t.resolve(self.dims), dtype=t.torch_dtype, device=device) for t in specs}
        self.refill(buffers, [t.name for t in specs])
        return buffers

    def refill(self, buffers: Mapping[str, torch.Tensor], names) -> None:
        """Put each of ``names``' buffers back to its ``fill`` (the value that changes nothing), in place."""
        for name in names:
            t, buffer = self.tensor(name), buffers[name]
            if t.fill == "ones":
                buffer.fill_(1)
            elif t.fill == "row_index":
                buffer.copy_(torch.arange(buffer.shape[0]).reshape(-1, *[1] * (buffer.dim() - 1)).expand_as(buffer))
            else:
                buffer.zero_()

    def to_json(self) -> dict:
        def enc(ts: tuple[TensorSpec, ...]) -> list[dict]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), **({"fill": t.fill} if t.fill != "zeros" else {})}
                    for t in ts]

        data = {"inputs": enc(self.inputs), "outputs": enc(self.outputs), "dims": dict(self.dims)}
        if self.ranges:
            data["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping, fills: Mapping[str, str] | None = None) -> "IOSpec":
        """``fills``: the fill of inputs written without one (engines exported before fills were recorded)."""
        def dec(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"]), d.get("fill", (fills or {}).get(d["name"], "zeros")))
                         for d in items)

        ranges = {k: tuple(v) for k, v in data.get("ranges", {}).items()}
        return cls(dec(data["inputs"]), dec(data["outputs"]), dict(data["dims"]), ranges)

