"""Backends: one transformer evaluation over named tensors (eager torch, ONNX Runtime, TensorRT).

Contract::

    backend.spec: IOSpec
    backend(feeds: Mapping[str, Tensor]) -> Mapping[str, Tensor]   # "velocity", "attn"
    backend.close()

Feeds stay on the device; returned tensors belong to the backend and are overwritten by the next
call. Heavy runtimes are imported lazily, only when their backend is asked for.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import torch

from ..spec import IOSpec

BACKENDS = ("eager", "ort", "trt")


class Backend(Protocol):
    spec: IOSpec

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]: ...

    def close(self) -> None: ...
