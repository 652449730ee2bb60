"""The engine manifest's format: typed sections, JSON in and out, and the reader for format-1 engines.

``manifest.json`` describes one engine folder: what model and shapes it was exported for, the hook
it carries, one section per artifact (``onnx``, ``aoti``, ``trt``), the other stages, the graph
report, versions, timings, the measured default CPU backend and every file's size and hash. Only
this module reads or writes its keys; everything else reads ``Manifest`` attributes. A missing key
or a value of the wrong type is refused by name. Format 2 keeps the hook in one ``hook`` section
and records each input's identity fill in ``io``; format-1 manifests (hook keys at the top, no
fills) are read as format 2 (the fills from the input declarations).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from amo_engine.spec import IOSpec

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PT2_FILE = "model.pt2"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
ARTIFACT_FILES = {"onnx": ONNX_FILE, "trt": PLAN_FILE, "aoti": PT2_FILE}  # manifest section -> default file
ARTIFACTS = tuple(ARTIFACT_FILES)  # manifest sections, one per artifact format an engine folder can hold
RUNTIME_ARTIFACT = {"ort": "onnx", "openvino": "onnx", "trt": "trt", "aoti": "aoti"}  # the artifact each runtime runs
HOOK_KEYS_V1 = ("hooked_blocks", "max_span_tokens", "kv_swap", "modulation")  # format 1 kept these at the top


class EngineError(ValueError):
    """An engine folder is missing, damaged, or does not fit what is asked of it."""


_REQUIRED = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


def _take(data: Mapping, key: str, kind: type | tuple[type, ...], where: str, default: Any = _REQUIRED):
    """``data[key]``, checked to be of ``kind`` (None is absent when a default is given)."""
    if key not in data or (data[key] is None and default is not _REQUIRED):
        if default is _REQUIRED:
            raise EngineError(f"{where} lacks {key!r}")
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise EngineError(f"{where}: {key!r} should be {wanted}, not {value!r}")
    return value


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "FileRecord":
        return cls(_take(data, "bytes", int, where), _take(data, "sha256", str, where))


@dataclass(frozen=True)
class OnnxSection:
    file: str = ONNX_FILE
    opset: int = 18
    exporter: str = "dynamo"
    dynamic_batch: bool = False
    folded: bool = True

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "OnnxSection":
        return cls(_take(data, "file", str, where, ONNX_FILE), _take(data, "opset", int, where),
                   _take(data, "exporter", str, where), _take(data, "dynamic_batch", bool, where, False),
                   _take(data, "folded", bool, where, True))


@dataclass(frozen=True)
class AotiSection:
    device: str  # the device type it was compiled for: cpu | cuda
    torch: str  # the torch that compiled it (packages are version-specific)
    weights: str = "embedded"  # embedded | model (taken from the model at load)
    file: str = PT2_FILE

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "AotiSection":
        return cls(_take(data, "device", str, where), _take(data, "torch", str, where),
                   _take(data, "weights", str, where, "embedded"), _take(data, "file", str, where, PT2_FILE))


@dataclass(frozen=True)
class TrtSection:
    version: str  # TensorRT's (plans are version-specific)
    gpu: str
    sm: str
    precision: str
    strongly_typed: bool
    opt_level: int
    build_s: float
    file: str = PLAN_FILE

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "TrtSection":
        return cls(_take(data, "version", str, where), _take(data, "gpu", str, where), _take(data, "sm", str, where),
                   _take(data, "precision", str, where), _take(data, "strongly_typed", bool, where),
                   _take(data, "opt_level", int, where), float(_take(data, "build_s", float, where)),
                   _take(data, "file", str, where, PLAN_FILE))


@dataclass(frozen=True)
class StageSection:
    """A prompt encoder or the VAE decoder exported beside the backbone (``export --stages``)."""

    kind: str  # clip | t5 | vae_decoder
    io: IOSpec
    onnx_file: str
    trt_ok: bool
    unsupported_ops: tuple[str, ...] = ()
    trt: TrtSection | None = None

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "StageSection":
        onnx = _take(data, "onnx", dict, where)
        trt = _take(data, "trt", dict, where, None)
        return cls(_take(data, "kind", str, where), _io(data, where), _take(onnx, "file", str, f"{where}.onnx"),
                   _take(data, "trt_ok", bool, where), tuple(_take(data, "unsupported_ops", list, where, [])),
                   None if trt is None else TrtSection.from_json(trt, f"{where}.trt"))

    def to_json(self) -> dict:
        out = {"kind": self.kind, "io": self.io.to_json(), "onnx": {"file": self.onnx_file}, "trt_ok": self.trt_ok,
               "unsupported_ops": list(self.unsupported_ops)}
        return out if self.trt is None else {**out, "trt": dataclasses.asdict(self.trt)}


@dataclass(frozen=True)
class DefaultBackend:
    """``inspect --measure``: the faster CPU runtime of this engine on one machine."""

    backend: str
    p50_ms: Mapping[str, float]
    rounds: int
    machine: str

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "DefaultBackend":
        return cls(_take(data, "backend", str, where), dict(_take(data, "p50_ms", dict, where)),
                   _take(data, "rounds", int, where), _take(data, "machine", str, where))


def _io(data: Mapping, where: str) -> IOSpec:
    from amo_engine.model.inputs import declared_fills

    io = _take(data, "io", dict, where)
    try:
        return IOSpec.from_json(io, declared_fills())
    except (KeyError, TypeError, ValueError) as err:
        raise EngineError(f"{where}: 'io' is not an IOSpec ({err})") from None


def _hook_from_json(data: Mapping, where: str):
    """The HookConfig: span tap settings, each input group's switch (inputs.GROUPS; modulation's and
    LoRA's switch is its settings object, or null)."""
    from amo_engine.model.backbone import HookConfig
    from amo_engine.model.inputs import GROUPS, LORA, MODULATION

    switches = {g.switch: _take(data, g.switch, bool, where, False) for g in GROUPS if g not in (MODULATION, LORA)}
    modulation = _take(data, "modulation", dict, where, None)
    mod_where = f"{where}.modulation"
    blocks = None if modulation is None else _take(modulation, "blocks", list, mod_where, None)
    lora = _take(data, "lora", dict, where, None)
    if lora is not None:
        lora_where = f"{where}.lora"
        switches.update(lora_rank=_take(lora, "rank", int, lora_where),
                        lora_blocks=tuple(_take(lora, "blocks", list, lora_where)),
                        lora_projections=tuple(_take(lora, "projections", list, lora_where)))
    return HookConfig(
        hooked_blocks=tuple(_take(data, "hooked_blocks", list, where)),
        max_span_tokens=_take(data, "max_span_tokens", int, where),
        modulation=modulation is not None,
        max_groups=HookConfig.max_groups if modulation is None else _take(modulation, "max_groups", int, mod_where),
        modulation_path=HookConfig.modulation_path if modulation is None else _take(modulation, "path", str, mod_where),
        modulation_blocks=tuple(blocks) if blocks else None,
        score_tap=_take(data, "score_tap", bool, where, True),
        **switches,
    )


def _hook_to_json(hook) -> dict:
    from amo_engine.model.inputs import GROUPS, LORA, MODULATION

    return {"hooked_blocks": list(hook.hooked_blocks), "max_span_tokens": hook.max_span_tokens,
            "score_tap": hook.score_tap, **{g.switch: g.enabled(hook) for g in GROUPS if g not in (MODULATION, LORA)},
            "modulation": {"max_groups": hook.max_groups, "path": hook.modulation_path,
                           "blocks": sorted(hook.modulation_blocks) if hook.modulation_blocks else None}
            if hook.modulation else None,
            "lora": {"rank": hook.lora_rank, "blocks": list(hook.lora_blocks), "projections": list(hook.lora_projections)}
            if hook.lora_rank else None}


@dataclass(frozen=True)
class Manifest:
    """One engine folder's manifest (format 2). ``hook`` is the backbone's HookConfig with its
    hooked blocks resolved; shapes are the fixed ones the graph was exported at."""

    family: str  # families.Family.name
    io: IOSpec
    hook: Any  # backbone.HookConfig
    files: Mapping[str, FileRecord]
    model: str | None = None  # what the exporter was given (preset, folder or id)
    weights_fingerprint: str | None = None
    rows: int = 1  # backbone rows per call
    images_per_call: int = 1
    cfg_rows: bool = False  # SD3: [uncond ; cond] rows in one call
    height: int | None = None
    width: int | None = None
    max_sequence_length: int | None = None
    dtype: str = "float32"
    onnx: OnnxSection | None = None
    aoti: AotiSection | None = None
    trt: TrtSection | None = None
    stages: Mapping[str, StageSection] = field(default_factory=dict)
    graph: Mapping[str, Any] = field(default_factory=dict)  # checks.GraphReport.to_json()
    versions: Mapping[str, str] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    default_backend: DefaultBackend | None = None
    format: int = FORMAT_VERSION  # the format it was read in (written: always FORMAT_VERSION)

    @property
    def artifacts(self) -> list[str]:
        return [name for name in ARTIFACTS if getattr(self, name) is not None]

    def artifact_file(self, section: str) -> str:
        return getattr(self, section).file

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> "Manifest":
        """Read a format-1 or format-2 manifest; EngineError naming the first missing or mistyped key."""
        if not isinstance(data, dict):
            raise EngineError(f"{where} is not a JSON object")
        version = _take(data, "format", int, where)
        if version not in READABLE_FORMATS:
            raise EngineError(f"{where} has format {version}, this amo-engine reads formats "
                              f"{', '.join(map(str, READABLE_FORMATS))}")
        if not any(data.get(name) is not None for name in ARTIFACTS):
            raise EngineError(f"{where} lacks an artifact section ({' or '.join(ARTIFACTS)})")
        hook_data = {k: data.get(k) for k in HOOK_KEYS_V1} if version == 1 else _take(data, "hook", dict, where)
        files = _take(data, "files", dict, where)
        sections = {name: _take(data, name, dict, where, None) for name in ("onnx", "aoti", "trt", "default_backend")}
        return cls(
            family=_take(data, "family", str, where),
            io=_io(data, where),
            hook=_hook_from_json(hook_data, f"{where} hook" if version == 1 else f"{where}.hook"),
            files={name: FileRecord.from_json(rec, f"{where}.files.{name}") for name, rec in files.items()},
            model=_take(data, "model", str, where, None),
            weights_fingerprint=_take(data, "weights_fingerprint", str, where, None),
            rows=_take(data, "rows", int, where, 1),
            images_per_call=_take(data, "images_per_call", int, where, 1),
            cfg_rows=_take(data, "cfg_rows", bool, where, False),
            height=_take(data, "height", int, where, None),
            width=_take(data, "width", int, where, None),
            max_sequence_length=_take(data, "max_sequence_length", int, where, None),
            dtype=_take(data, "dtype", str, where, "float32"),
            onnx=None if sections["onnx"] is None else OnnxSection.from_json(sections["onnx"], f"{where}.onnx"),
            aoti=None if sections["aoti"] is None else AotiSection.from_json(sections["aoti"], f"{where}.aoti"),
            trt=None if sections["trt"] is None else TrtSection.from_json(sections["trt"], f"{where}.trt"),
            stages={name: StageSection.from_json(s, f"{where}.stages.{name}")
                    for name, s in _take(data, "stages", dict, where, {}).items()},
            graph=dict(_take(data, "graph", dict, where, {})),
            versions=dict(_take(data, "versions", dict, where, {})),
            timings=dict(_take(data, "timings", dict, where, {})),
            default_backend=None if sections["default_backend"] is None
            else DefaultBackend.from_json(sections["default_backend"], f"{where}.default_backend"),
            format=version,  # as read; to_json writes the current format
        )

    def to_json(self) -> dict:
        """The format-2 JSON object (sections that are absent are left out)."""
        out = {
            "format": FORMAT_VERSION, "family": self.family, "model": self.model,
            "weights_fingerprint": self.weights_fingerprint, "io": self.io.to_json(), "hook": _hook_to_json(self.hook),
            "rows": self.rows, "images_per_call": self.images_per_call, "cfg_rows": self.cfg_rows,
            "height": self.height, "width": self.width, "max_sequence_length": self.max_sequence_length,
            "dtype": self.dtype, "graph": dict(self.graph), "versions": dict(self.versions),
            "timings": dict(self.timings), "files": {n: dataclasses.asdict(r) for n, r in self.files.items()},
        }
        for name in ("onnx", "aoti", "trt", "default_backend"):
            section = getattr(self, name)
            if section is not None:
                out[name] = dataclasses.asdict(section)
        if self.stages:
            out["stages"] = {name: stage.to_json() for name, stage in self.stages.items()}
        return out
