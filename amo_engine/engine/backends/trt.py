"""TensorRT backend (optional; NVIDIA GPUs with the tensorrt package): deserialize model.plan,
bind static buffers by address once, run ``execute_async_v3`` on torch's current CUDA stream,
optionally replay the whole call as a CUDA graph."""

from __future__ import annotations

from typing import Mapping

import torch

from amo_engine.engine.folder import Engine

from amo_engine.engine.manifest import EngineError
from amo_engine.engine.backends.base import ClosingBackend
from amo_engine.errors import BackendUnavailable


def import_tensorrt():
    """The tensorrt module, or a one-line explanation of why it cannot be used here."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'amo-engine[gpu]' on a machine with an "
                           "NVIDIA GPU; its libraries come from NVIDIA's package index)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU, and torch sees none on this machine")
    return tensorrt


class TrtBackend(ClosingBackend):
    kind = "trt"

    def __init__(self, engine: Engine, device: str = "cuda", cuda_graph: bool = False, stage: str | None = None):
        """``stage``: run that exported stage's plan (a prompt encoder or the VAE decoder)."""
        trt = import_tensorrt()
        self.engine = engine
        self.spec = engine.spec if stage is None else engine.stage_spec(stage)
        plan = engine.artifact("trt") if stage is None else engine.stage_artifact(stage, "trt")
        self.device = torch.device(device if device != "cpu" else "cuda")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.cuda_engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.cuda_engine is None:
            raise EngineError(f"TensorRT could not deserialize {plan} (built with another TensorRT or GPU?); rebuild it")
        self.context = self.cuda_engine.create_execution_context()
        names = [self.cuda_engine.get_tensor_name(i) for i in range(self.cuda_engine.num_io_tensors)]
        self._inputs = [n for n in names if self.cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in self._inputs:
            self.context.set_input_shape(name, self.spec.shape(name))
        self.outputs = self.spec.allocate("outputs", self.device)
        for name, buf in self.outputs.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._bound: dict[str, int] = {}
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        rebound = False
        for name in self._inputs:
            t = feeds[name]
            if self._bound.get(name) != t.data_ptr():
                if tuple(t.shape) != self.spec.shape(name) or not t.is_contiguous() or t.device.type != "cuda":
                    raise ValueError(f"feed {name!r} must be a contiguous CUDA tensor of shape {self.spec.shape(name)}")
                self.context.set_tensor_address(name, t.data_ptr())
                self._bound[name] = t.data_ptr()
                rebound = True
        stream = torch.cuda.current_stream(self.device)
        if not self.cuda_graph:
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return self.outputs
        if rebound or self._graph is None:
            self._capture()
        self._graph.replay()
        return self.outputs

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.context.execute_async_v3(side.cuda_stream)  # warm-up outside capture
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        self._graph = graph

    def close(self) -> None:
        self._graph = None
        self.context = None
        self.cuda_engine = None
