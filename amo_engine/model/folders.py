"""Where a model's files are and what their config JSON says, without torch or diffusers: a preset
name, a folder path or a model id already in the Hugging Face cache to its folder; the folder's
family; the sizes it draws. Early argument checks use it before anything heavy is imported."""

from __future__ import annotations

import json
from pathlib import Path

from amo_engine.model.families import Family, by_pipeline_class
from amo_engine.model.presets import PRESET_SIZE_FACTORS, PRESETS, ensure_preset, preset_folder

# modules a saved model_index.json may name from before the package layout (0.1 folders)
MOVED_MODULES = {"amo_engine.glyph.autoencoder": "amo_engine.model.glyph.autoencoder"}


def family_of_folder(folder: Path) -> Family:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    return by_pipeline_class(json.loads(index.read_text()).get("_class_name", ""), where=f"{folder}: ")


def import_own_components(folder: Path) -> None:
    """Import the amo_engine modules a folder's model_index.json names (the glyph autoencoder), so
    diffusers' loader finds their classes. Only this package's own modules; never remote code."""
    import importlib
    import sys

    for entry in json.loads((folder / "model_index.json").read_text()).values():
        if isinstance(entry, list) and entry and isinstance(entry[0], str) and entry[0].startswith("amo_engine."):
            name = MOVED_MODULES.get(entry[0], entry[0])
            module = importlib.import_module(name)
            if name != entry[0]:  # a folder written before the move: diffusers imports the old name
                sys.modules[entry[0]] = module


def resolve_folder(model: str, cache_dir: Path | str | None = None, build: bool = True) -> Path:
    """Local folder for a preset name, a folder path, or a model id already in the HF cache. A tiny
    preset not built yet is built (torch) unless ``build`` is False: then its future folder."""
    if model in PRESETS:
        return ensure_preset(model, cache_dir) if build else preset_folder(model, cache_dir)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{model} is a file; pass the pipeline folder (the one with model_index.json)")
        return path
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_id:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError) as err:
            raise ValueError(
                f"model id {model!r} is not in the local Hugging Face cache and amo-engine never downloads; "
                f"fetch it first with: hf download {model}   (or pass a local folder)"
            ) from err
    if "/" in model or model.startswith((".", "~")):
        raise ValueError(f"model folder {model} does not exist; pass a diffusers pipeline folder "
                         f"(the one with model_index.json) or a preset: {', '.join(PRESETS)}")
    raise ValueError(f"unknown model {model!r}: use a preset ({', '.join(PRESETS)}), a folder path, or an HF model id")


def size_limits(model: str, cache_dir: Path | str | None = None) -> tuple[int, int | None] | None:
    """(pixels per image token side, the largest side in pixels or None) for ``model``, read from
    config JSON only — no diffusers import, no weights, no preset built — so bad sizes fail early.
    None when it cannot be told yet (a model id not in the cache)."""
    try:
        path = resolve_folder(model, cache_dir, build=False)
    except ValueError:
        return None
    if model in PRESETS and not (path / "model_index.json").is_file():
        return PRESET_SIZE_FACTORS[model], None  # a tiny preset not built yet: its limit is told once it is
    try:
        family = family_of_folder(path)
        vae = json.loads((path / "vae" / "config.json").read_text())
        transformer = json.loads((path / "transformer" / "config.json").read_text())
    except (ValueError, OSError):
        return None
    factor = family.pixels_per_token(2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1),
                                     transformer.get("patch_size", 2))
    tokens = family.max_tokens_per_side(transformer)
    return factor, (tokens * factor if tokens else None)
