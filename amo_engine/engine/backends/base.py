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

    def close(self) -> None: ...


class ClosingBackend:
    """Context-manager behaviour every backend shares: ``with`` closes it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass
