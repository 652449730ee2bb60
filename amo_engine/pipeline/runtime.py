"""Open what generations run on — the engine, the model (or its exported stand-ins), the hook and the
backend — from names and paths; the CLI's generate/edit and each serving replica open it the same way."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Runtime:
    """Where generations run: ``generate``'s model and runtime flags, as values."""

    model: str = "glyph"
    backend: str = "eager"  # eager | ort | openvino | aoti | trt | auto (the engine's measured CPU default)
    engine: Path | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    cache_dir: Path | None = None
    threads: int | None = None  # torch's and ONNX Runtime's CPU threads (default: threads.usable_cpus())
    ort_opt_level: str = "all"
    cuda_graph: bool = False
    blocks: tuple[int, ...] | None = None  # eager: the blocks feeding AMO's map (engines carry theirs)
    max_span_tokens: int | None = None

    def backend_options(self) -> dict:
        """What the chosen backend is asked for (and torch's thread count, set here): the cores this
        process may use unless ``threads`` says otherwise."""
        import torch

        from amo_engine.threads import usable_cpus

        threads = self.threads or usable_cpus()
        torch.set_num_threads(threads)
        if self.backend == "ort":
            return {"opt_level": self.ort_opt_level, "threads": threads}
        if self.backend == "openvino":
            return {"threads": threads}
        return {"cuda_graph": True} if self.cuda_graph else {}


def engine_hook(rt: Runtime, engine):
    """The engine's hook configuration, with a note for each setting of ``rt`` that disagrees with it."""
    hook = engine.hook
    if rt.blocks is not None and tuple(sorted(set(rt.blocks))) != hook.hooked_blocks:
        warnings.warn(f"--blocks {','.join(map(str, rt.blocks))} is ignored: the engine computes the map from "
                      f"blocks {','.join(map(str, hook.hooked_blocks))} (re-export with --blocks to change it)")
    if rt.max_span_tokens is not None and rt.max_span_tokens != hook.max_span_tokens:
        warnings.warn(f"--max-span-tokens {rt.max_span_tokens} is ignored: the engine reads "
                      f"{hook.max_span_tokens} span tokens (re-export with --max-span-tokens to change it)")
    return hook


@contextmanager
def open_pipeline(rt: Runtime) -> Iterator:
    """The ``pipeline.AmoPipeline`` that ``rt`` names, its backend open while the block runs.
    ``rt.backend`` "auto" is resolved in place to the engine's measured default."""
    from amo_engine.model.backbone import HookConfig
    from amo_engine.engine.backends import open_backend
    from amo_engine.engine.staged_model import load_engine_model, runs_on_stages, stage_runtime
    from amo_engine.model.load import load_model
    from amo_engine.pipeline.generate import AmoPipeline

    engine = None
    if rt.backend != "eager":
        from amo_engine.engine.folder import open_engine

        engine = open_engine(rt.engine, model_name=rt.model)
        hook = engine_hook(rt, engine)
        if rt.backend == "auto":
            from amo_engine.engine import default_backend

            rt.backend, note = default_backend.resolve(engine.manifest)
            if note:
                warnings.warn(note)
    else:
        span = {} if rt.max_span_tokens is None else {"max_span_tokens": rt.max_span_tokens}
        hook = HookConfig(hooked_blocks=rt.blocks, **span)
    if engine is not None and runs_on_stages(rt.backend, engine):
        model = load_engine_model(rt.model, engine, rt.device, rt.cache_dir,
                                  stage_runtime(rt.backend))  # no model class is loaded
    else:
        model = load_model(rt.model, rt.dtype, rt.device, rt.cache_dir)
        if engine is not None:
            engine.check_model(model)
    with open_backend(rt.backend, engine, model, hook, device=rt.device, **rt.backend_options()) as backend:
        yield AmoPipeline(model, hook, backend)
