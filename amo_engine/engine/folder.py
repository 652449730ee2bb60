"""Engine folders on disk: read and check once (``open_engine`` -> ``Engine``), fingerprints, export
locks, and publishing a folder atomically.

An engine folder holds ``manifest.json`` (``manifest.Manifest``) and one or more artifacts, each
described by its manifest section: ``onnx`` (``model.onnx``, + ``model.onnx.data`` for > 2 GB
models), ``aoti`` (``model.pt2``, an AOTInductor package, with ``export --aoti``) and, after
``amo-engine build`` on an NVIDIA GPU, ``trt`` (``model.plan``). ``open_engine`` reads the manifest,
checks every file's size and sha256 once, checks the model it will run with, and returns an
``Engine`` that backends take: no backend reads metadata again. Folders are written under a temp
name and renamed into place, so a reader never sees half an engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from amo_engine.atomic import temp_dir_beside, write_json
from amo_engine.engine.hints import export_hint, reexport_command
from amo_engine.engine.manifest import MANIFEST, RUNTIME_ARTIFACT, EngineError, FileRecord, Manifest
from amo_engine.spec import IOSpec

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(folder: Path | None, subfolder: str = "transformer") -> str | None:
    """Cheap identity of a model's transformer weights: per safetensors file its name, size,
    header (tensor names, shapes, offsets) and first/last MiB. Reads a few MiB, not gigabytes."""
    if folder is None:
        return None
    files = sorted((Path(folder) / subfolder).glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(header_len, 100_000_000)))
            h.update(fh.read(1 << 20))
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``folder``'s manifest.json atomically (format 2)."""
    write_json(Path(folder) / MANIFEST, manifest.to_json())


def file_records(folder: Path, names: list[str] | None = None) -> dict[str, FileRecord]:
    """sha256 and size of every artifact file in ``folder`` (manifest excluded), or of ``names`` only."""
    return {
        p.name: FileRecord(p.stat().st_size, sha256_file(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".") and (names is None or p.name in names)
    }


def read_manifest(folder: Path | str, check_hashes: bool = True, model: str | None = None) -> Manifest:
    """Read and validate an engine folder's manifest against the files beside it.

    ``model``: what the caller will run the engine with, named in the hints when given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not an engine folder" if folder.exists() else "does not exist"
        raise EngineError(f"engine folder {folder} {what}; create it with: {export_hint(folder, model)}")
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / "model_index.json").is_file():
            raise EngineError(f"{folder} is a diffusers model folder, not an engine; export one from it with: "
                              f"{export_hint(Path('engines') / folder.name, str(folder))}")
        raise EngineError(f"{folder} has no {MANIFEST}, so it is not an engine folder; write one with: "
                          f"{export_hint(folder, model)}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineError(f"{path} is not valid JSON ({err}); re-export the engine") from None
    try:
        manifest = Manifest.from_json(data, str(path))
    except EngineError as err:
        raise EngineError(f"{err}: it was not written by this amo-engine; re-export the engine") from None
    for name, rec in manifest.files.items():
        f = folder / name
        if not f.is_file():
            raise EngineError(f"{folder}: {name} is missing; re-export the engine")
        if f.stat().st_size != rec.bytes:
            raise EngineError(f"{folder}: {name} has {f.stat().st_size} bytes, the manifest says {rec.bytes} "
                              "(truncated or replaced); re-export the engine")
        if check_hashes and sha256_file(f) != rec.sha256:
            raise EngineError(f"{folder}: {name} does not match its sha256 in the manifest (corrupted); re-export")
    return manifest


@dataclass(frozen=True)
class Engine:
    """An engine folder, read and checked once by ``open_engine``: what backends take."""

    folder: Path
    manifest: Manifest

    @property
    def spec(self) -> IOSpec:
        return self.manifest.io

    @property
    def stages(self) -> list[str]:
        """The other stages exported beside the backbone (prompt encoders, VAE decoder), by component name."""
        return list(self.manifest.stages)

    def stage_spec(self, stage: str) -> IOSpec:
        return self._stage(stage).io

    def stage_artifact(self, stage: str, section: str = "onnx") -> Path:
        record = self._stage(stage)
        if section == "onnx":
            return self.folder / record.onnx_file
        if section != "trt" or record.trt is None:
            raise EngineError(f"{self.folder}: stage {stage} has no {section} artifact; re-export the engine")
        return self.folder / record.trt.file

    def _stage(self, stage: str):
        if stage not in self.manifest.stages:
            raise EngineError(f"{self.folder} holds no {stage} stage (it has {self.stages or 'none'}); "
                              f"re-export it with: {reexport_command(self.manifest, self.folder, stages=True)}")
        return self.manifest.stages[stage]

    @property
    def family(self) -> str:
        return self.manifest.family

    @property
    def hook(self):
        """The HookConfig the graph was exported with (its hooked blocks, span rows, input groups)."""
        return self.manifest.hook

    def artifact(self, section: str) -> Path:
        """The file of artifact ``section`` (``onnx``, ``aoti`` or ``trt``), refusing folders without it."""
        if getattr(self.manifest, section) is None:
            hint = {"trt": f"build it: amo-engine build {self.folder}",
                    "aoti": f"re-export it with: {reexport_command(self.manifest, self.folder, aoti=True)}"}.get(
                section, f"re-export it with: {reexport_command(self.manifest, self.folder)}")
            raise EngineError(f"{self.folder} holds no {section} artifact (it has {self.artifacts}); {hint}")
        return self.folder / self.manifest.artifact_file(section)

    @property
    def artifacts(self) -> list[str]:
        return self.manifest.artifacts

    def check_model(self, model) -> None:
        """Refuse running this engine with a LoadedModel of another family or other weights."""
        check_model_matches(self.manifest, model.family.name, weights_fingerprint(model.folder), self.folder,
                            model.source)


def open_engine(folder: Path | str, model=None, check_hashes: bool = True, model_name: str | None = None) -> Engine:
    """Read ``folder``'s manifest, check its files (hashing each once) and, given the LoadedModel
    it will run with, that the engine was exported from that model's family and weights.
    ``model_name``: the model to name in hints when no LoadedModel is given yet."""
    named = model.source if model is not None else model_name
    engine = Engine(Path(folder), read_manifest(folder, check_hashes, model=named))
    if model is not None:
        engine.check_model(model)
    return engine


def check_model_matches(manifest: Manifest, family: str, fingerprint: str | None, folder: Path | str = "ENGINE",
                        model: str | None = None) -> None:
    """Refuse an engine exported from another model family or other weights (``model``: the one
    the caller loaded, named in the fix)."""
    if manifest.family != family:
        raise EngineError(f"the engine is a {manifest.family} model but the loaded model is {family}; "
                          f"pass the --model it was exported from ({manifest.model})")
    want = manifest.weights_fingerprint
    if want and fingerprint and want != fingerprint:
        fix = (f"re-export it from this model: {reexport_command(manifest, folder, model)}" if model is not None
               else f"pass --model {manifest.model}, or re-export it from yours")
        raise EngineError("the engine was exported from other weights than the loaded model "
                          f"(manifest model {manifest.model!r}); {fix}")


@contextlib.contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """Exclusive lock for writing engine folder ``out``; a second writer fails at once. The lock file
    is removed by its holder when done (a writer that fails to lock never waits, so none can be left
    holding an unlinked file it still means to use)."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(f"another export or build is writing {out} right now; wait for it to finish") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def recover_interrupted(out: Path) -> None:
    """Remove a killed writer's temp folders; if it died after moving the old engine aside but
    before renaming the new one in, put the old engine back."""
    olds = sorted(out.parent.glob(f".{out.name}.old-*"))
    if olds and not out.exists():
        os.replace(olds.pop(), out)
    for stale in list(out.parent.glob(f".{out.name}.tmp-*")) + olds:
        shutil.rmtree(stale, ignore_errors=True)


def check_runtime(manifest: Manifest, kind: str, runtime_version: str | None, max_opset: int | None = None,
                  device: str | None = None, folder: Path | str = "ENGINE") -> None:
    """Refuse an engine this runtime cannot run faithfully: no artifact for it, an unknown exporter,
    an opset above what the installed ONNX Runtime implements, a TensorRT plan built by another
    TensorRT version, or an AOTInductor package compiled for another torch or device kind."""
    section = RUNTIME_ARTIFACT[kind]
    if getattr(manifest, section) is None:
        if kind == "trt":
            raise EngineError("the engine has no TensorRT plan; build it: amo-engine build ENGINE")
        raise EngineError(f"the engine holds no {section} artifact for the {kind} runtime; re-export it with: "
                          f"{reexport_command(manifest, folder, aoti=kind == 'aoti')}")
    if kind == "aoti":
        built, where = manifest.aoti.torch, manifest.aoti.device
        if built != runtime_version:
            raise EngineError(f"the AOTInductor package was compiled by torch {built}, this is torch {runtime_version}; "
                              f"packages are version-specific: re-export it with: {reexport_command(manifest, folder)}")
        if device is not None and where != torch_device_type(device):
            raise EngineError(f"the AOTInductor package was compiled for {where}, not {device}: run it with --device "
                              f"{where}, or re-export it with: "
                              f"{reexport_command(manifest, folder, device=torch_device_type(device))}")
        return
    if kind == "trt":
        built = manifest.trt.version
        if built != runtime_version:
            raise EngineError(f"the TensorRT plan was built with TensorRT {built}, this machine has {runtime_version}; "
                              "plans are version-specific: rebuild it with amo-engine build")
        return
    exporter = manifest.onnx.exporter
    if exporter not in ("dynamo", "torchscript"):
        raise EngineError(f"the engine was made by an unknown exporter {exporter!r}; re-export it with: "
                          f"{reexport_command(manifest, folder, exporter='dynamo')}")
    opset = manifest.onnx.opset
    if max_opset is not None and opset > max_opset:
        raise EngineError(f"the engine uses ONNX opset {opset} but onnxruntime {runtime_version} implements up to "
                          f"{max_opset}; upgrade onnxruntime or re-export it with: "
                          f"{reexport_command(manifest, folder, opset=max_opset)}")


def torch_device_type(device: str) -> str:
    """'cuda' for 'cuda:1', 'cpu' for 'cpu'."""
    return str(device).split(":")[0]


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out``; on success it replaces ``out`` whole, on failure it is removed
    and any previous ``out`` stays untouched. Call it under ``export_lock``: it first clears what a
    killed writer left (stale temp folders) and restores an engine caught between the two renames."""
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out)
    tmp = temp_dir_beside(out, f".{out.name}.tmp-")
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
