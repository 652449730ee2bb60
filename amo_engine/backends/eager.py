"""Eager PyTorch backend: the backbone module itself behind the Backend contract."""

from __future__ import annotations

from typing import Mapping

import torch

from ..spec import IOSpec


class EagerBackend:
    """Runs the backbone in PyTorch. Returns fresh tensors (no copy into static outputs)."""

    kind = "eager"

    def __init__(self, backbone: torch.nn.Module, spec: IOSpec):
        self.backbone = backbone.eval()
        self.spec = spec

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        with torch.inference_mode():
            velocity, attn = self.backbone(**feeds)
        return {"velocity": velocity, "attn": attn}

    def close(self) -> None:
        pass
