"""Errors shared by the layers that raise them and the command line that turns them into one line
(a leaf module: the AOTInductor compiler and the backends both raise ``BackendUnavailable``)."""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A runtime this machine cannot provide (no TensorRT, no GPU, no CUDA provider, no C++ compiler)."""
