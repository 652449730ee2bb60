"""What a backend is: the ``Backend`` protocol (see the package's contract) and the ``with`` behaviour
every backend shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol

if TYPE_CHECKING:
    import torch

    from amo_engine.spec import IOSpec


class Backend(Protocol):
    spec: IOSpec | None

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]: ...

    def input_buffers(self, spec: IOSpec, device) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


class ClosingBackend:
    """What every backend shares: ``with`` closes it, and ``input_buffers`` keeps one set of input
    tensors per IOSpec across requests, so an engine bound to them by pointer (ONNX Runtime's
    IOBinding, TensorRT's tensor addresses, a captured CUDA graph) stays bound."""

    KEPT_SHAPES = 4  # input buffer sets kept, most recently used first (eager runs any shape)

    def input_buffers(self, spec: IOSpec, device) -> dict[str, torch.Tensor]:
        """The input tensors for ``spec`` on ``device``: allocated (at their identity fills) on the
        first request of that shape, the same tensors for every later one. Callers write every input
        a request sets; what a request leaves alone keeps the previous request's values unless the
        caller refills it (``IOSpec.refill``)."""
        from collections import OrderedDict

        kept = self.__dict__.setdefault("_input_buffers", OrderedDict())
        key = (spec.signature(), str(device))
        if key in kept:
            kept.move_to_end(key)
        else:
            kept[key] = spec.allocate("inputs", device)
            while len(kept) > self.KEPT_SHAPES:
                kept.popitem(last=False)
        return kept[key]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass
