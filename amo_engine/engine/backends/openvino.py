"""OpenVINO backend: the engine's ONNX graph (score output included) compiled by OpenVINO's CPU plugin.

What CPU users of SD3 and FLUX reach for (optimum-intel). The graph is the same ``model.onnx`` that ONNX
Runtime runs; OpenVINO reads it with its ONNX frontend and compiles it for the CPU in float32
(``INFERENCE_PRECISION_HINT`` f32: on CPUs with bf16 units OpenVINO would otherwise pick bf16, and the
engine's parity gates are fp32). Inputs and outputs are torch tensors shared with OpenVINO by pointer:
outputs bound once at construction, inputs rebound only when a feed's pointer changes. An optional
extra (``pip install -e '.[openvino]'``).
"""

from __future__ import annotations

from typing import Mapping

import torch

from amo_engine.engine.backends.base import ClosingBackend
from amo_engine.engine.folder import Engine
from amo_engine.errors import BackendUnavailable

INSTALL = "pip install openvino (or the extra: pip install -e '.[openvino]')"


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"the openvino backend needs OpenVINO: {INSTALL}") from None
    return openvino


class OpenVinoBackend(ClosingBackend):
    kind = "openvino"

    def __init__(self, engine: Engine, device: str = "cpu", threads: int | None = None):
        ov = import_openvino()
        if torch.device(device).type != "cpu":
            raise BackendUnavailable(f"the openvino backend runs on the CPU here, not {device}: drop --device")
        self._ov = ov
        self.engine = engine
        self.spec = engine.spec
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        graph = engine.artifact("onnx")
        try:
            self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
        except Exception as err:  # OpenVINO raises its own RuntimeError subtypes
            raise ValueError(f"OpenVINO cannot compile {graph}: {str(err).splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        graph_inputs = {port.get_any_name() for port in self.compiled.inputs}
        self._input_names = [n for n in self.spec.input_names if n in graph_inputs]
        self.outputs = self.spec.allocate("outputs")
        for name, buf in self.outputs.items():
            self.request.set_tensor(name, self._shared(buf))
        self._bound: dict[str, tuple[int, tuple[int, ...]]] = {}

    def _shared(self, t: torch.Tensor):
        return self._ov.Tensor(t.numpy(), shared_memory=True)

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        for name in self._input_names:
            t = feeds[name]
            key = (t.data_ptr(), tuple(t.shape))
            if self._bound.get(name) != key:
                if tuple(t.shape) != self.spec.shape(name):
                    raise ValueError(f"feed {name!r} has shape {tuple(t.shape)}, the engine takes "
                                     f"{self.spec.shape(name)}; export an engine for this shape")
                if not t.is_contiguous() or t.device.type != "cpu":
                    raise ValueError(f"feed {name!r} must be a contiguous CPU tensor to share it with OpenVINO")
                self.request.set_tensor(name, self._shared(t))
                self._bound[name] = key
        self.request.infer()
        return self.outputs

    def close(self) -> None:
        self.request = None
        self.compiled = None
