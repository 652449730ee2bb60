"""A diffusers pipeline whose models are an engine folder's graphs.

Tokenizers and the scheduler load from the model folder (they hold no model code); the prompt
encoders, the VAE decoder and the transformer are stand-ins: small ``nn.Module`` objects with no
weights that expose what diffusers' pipeline code reads from the models they replace (``config``,
``dtype``, ``device`` and the call outputs) and run the engine's exported stages. No diffusers or
transformers model class is instantiated: ``generate --backend ort`` on an engine exported with
``--stages`` runs prompt encoding, the loop and decoding on ONNX Runtime.

A stage runs at the engine's fixed batch: more rows are run in chunks, fewer are padded.
Only the CLIP penultimate hidden states are exported (SD3's default; ``clip_skip`` is refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from amo_engine.model.stages import ClipStage


def runs_on_stages(backend: str, engine) -> bool:
    """Whether ``generate`` runs prompt encoding and decoding on the engine's exported stages: an
    engine exported with --stages and an ORT backbone, an AOTInductor one with its weights inside
    (stages on ORT), or a TensorRT one whose build made every stage's plan too (stages on TensorRT)."""
    if not engine.stages:
        return False
    if backend == "trt":
        return all(engine.manifest.stages[name].trt is not None for name in engine.stages)
    return backend == "ort" or (backend == "aoti" and engine.manifest.aoti is not None
                                and engine.manifest.aoti.weights == "embedded")


def stage_runtime(backend: str) -> str:
    """The runtime of the stages beside a backbone on ``backend``: TensorRT beside TensorRT, else ORT."""
    return "trt" if backend == "trt" else "ort"

def _config(folder: Path, component: str) -> SimpleNamespace:
    return SimpleNamespace(**json.loads((folder / component / "config.json").read_text()))


class _StandIn(nn.Module):
    def __init__(self, config, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config, self._dtype, self._device = config, dtype, device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device


def _run_chunked(backend, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run ``backend`` (fixed batch b) over feeds of any batch n: chunks of b, the last padded by
    repeating its final row; outputs copied out of the backend's buffers and cut back to n."""
    b = backend.spec.dims["batch"]
    n = next(iter(feeds.values())).shape[0]
    chunks = []
    for start in range(0, n, b):
        part = {k: v[start : start + b] for k, v in feeds.items()}
        short = b - next(iter(part.values())).shape[0]
        if short:
            part = {k: torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for k, v in part.items()}
        part = {k: v.contiguous() for k, v in part.items()}
        chunks.append({k: v.clone() for k, v in backend(part).items()})
    return {k: torch.cat([c[k] for c in chunks])[:n] for k in chunks[0]}


class _ClipOutput:
    """What diffusers reads from a CLIP text model's output: ``[0]`` / ``text_embeds`` /
    ``pooler_output`` (the pooled embedding) and ``hidden_states[-2]`` (the penultimate layer)."""

    def __init__(self, pooled: torch.Tensor, penultimate: torch.Tensor):
        self.text_embeds = self.pooler_output = pooled
        self.hidden_states = (penultimate, None)

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError("an engine's CLIP stage gives the pooled embedding ([0]) and hidden_states[-2] only")
        return self.text_embeds


class EncoderStandIn(_StandIn):
    """A prompt encoder run by an engine stage (CLIP or T5)."""

    def __init__(self, backend, kind: str, config, dtype, device):
        super().__init__(config, dtype, device)
        self.backend, self.kind = backend, kind

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False, **_):
        out = _run_chunked(self.backend, {"input_ids": input_ids.to(torch.int64)})
        if self.kind == ClipStage.kind:
            return _ClipOutput(out["pooled"], out["hidden"])
        return (out["hidden"],)


class VaeStandIn(_StandIn):
    """The VAE's decoder run by an engine stage (``decode`` only)."""

    def __init__(self, backend, config, dtype, device):
        super().__init__(config, dtype, device)
        self.backend = backend

    def decode(self, latents: torch.Tensor, return_dict: bool = False, **_):
        if return_dict:
            raise ValueError("the engine's VAE stand-in returns tuples only (return_dict=False)")
        return (_run_chunked(self.backend, {"latents": latents.to(self.dtype)})["image"],)


def load_engine_model(model: str, engine, device: str = "cpu", cache_dir=None, runtime: str = "ort",
                      **backend_options):
    """A LoadedModel for ``model`` whose encoders and VAE are ``engine``'s stages (an opened
    ``Engine``, exported with ``--stages``) and whose transformer is a config-only stand-in (the
    backbone runs in the backend the caller opens). The stages run on ``runtime``: ort, or trt
    (plans from amo-engine build)."""
    import diffusers
    import transformers

    from amo_engine.engine.backends.ort import OrtBackend
    from amo_engine.engine.folder import check_model_matches, weights_fingerprint
    from amo_engine.engine.hints import reexport_command
    from amo_engine.engine.manifest import EngineError
    from amo_engine.model.folders import family_of_folder, resolve_folder
    from amo_engine.model.load import LoadedModel
    from amo_engine.model.presets import ModelSettings
    from amo_engine.spec import DTYPES

    folder = resolve_folder(model, cache_dir)
    family = family_of_folder(folder)
    check_model_matches(engine.manifest, family.name, weights_fingerprint(folder), engine.folder, model)
    index = json.loads((folder / "model_index.json").read_text())
    needed = [k for k, v in index.items() if isinstance(v, list) and v[0] and (k.startswith("text_encoder") or k == "vae")]
    missing = [k for k in needed if k not in engine.stages]
    if missing:
        raise EngineError(f"{engine.folder} holds no {', '.join(missing)} stage(s): re-export it with: "
                          f"{reexport_command(engine.manifest, engine.folder, model, stages=True)}")
    device = torch.device(device)
    components = {}
    for name, entry in index.items():
        if not isinstance(entry, list):  # _class_name, _diffusers_version
            continue
        class_name = entry[1]
        if entry[0] is None:
            components[name] = None
        elif name.startswith("tokenizer"):
            components[name] = getattr(transformers, class_name).from_pretrained(folder / name)
        elif name == "scheduler":
            components[name] = getattr(diffusers, class_name).from_pretrained(folder / name)
        elif name in engine.stages:
            spec = engine.stage_spec(name)
            dtype = DTYPES[spec.outputs[0].dtype]
            if runtime == "trt":
                from amo_engine.engine.backends.trt import TrtBackend

                backend = TrtBackend(engine, device=str(device), stage=name, **backend_options)
            else:
                backend = OrtBackend(engine, device=str(device), stage=name, **backend_options)
            if name == "vae":
                components[name] = VaeStandIn(backend, _config(folder, name), dtype, device)
            else:
                kind = engine.manifest.stages[name].kind
                components[name] = EncoderStandIn(backend, kind, _config(folder, name), dtype, device)
        elif name == "transformer":
            components[name] = _StandIn(_config(folder, name), DTYPES[engine.manifest.dtype], device)
        else:
            components[name] = None
    logger = diffusers.utils.logging.get_logger("diffusers.pipelines.pipeline_utils")
    level = logger.level
    logger.setLevel("ERROR")  # the stand-ins are not the classes the pipeline's signature names
    try:
        pipe = family.pipeline_type()(**components)
    finally:
        logger.setLevel(level)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, family, model, folder, ModelSettings.read(folder))
