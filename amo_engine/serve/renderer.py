"""One serving replica's model and its batched render calls (no Ray here; ``app`` wraps it).

Requests that share a ``batch_key`` (size, steps, sampler, c, guidance, negative prompt) are packed
into calls of at most ``batch`` images, whatever LoRA adapters they name (each row carries its own); every call runs at exactly ``batch`` images (filler rows
padded, then dropped), each image from its own seeded generator. One call shape and per-row noise
make an image bit-identical whether its request ran alone or beside others
(tests/test_pipeline.py::test_batch_mates_never_change_an_image, tests/test_serve.py).
"""

from __future__ import annotations

import base64
import io
import threading
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Sequence

from amo_engine.serve.schema import ImageRequest, Limits


@dataclass
class Rendered:
    """One request's answer: its images (``{"b64_json", "seed"[, "attention"]}``), the timings of the
    call it ran in (ms), that call's batch, and notes."""

    images: list[dict]
    timings: dict
    batch: dict
    notes: list[str] = field(default_factory=list)


@dataclass
class RenderError:
    """A request whose call failed: an HTTP status and a one-line message."""

    status: int
    message: str


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pack(requests: Sequence[ImageRequest], batch: int) -> list[list[int]]:
    """Indices of ``requests`` grouped into calls: same batch key, at most ``batch`` images each,
    first come first packed."""
    calls: list[tuple[tuple, list[int], int]] = []  # (key, request indices, images)
    for i, req in enumerate(requests):
        key = req.batch_key()
        for k, (call_key, members, images) in enumerate(calls):
            if call_key == key and images + req.n <= batch:
                calls[k] = (call_key, members + [i], images + req.n)
                break
        else:
            calls.append((key, [i], req.n))
    return [members for _, members, _ in calls]


class Renderer:
    """The pipeline of one runtime.Runtime, opened once, rendering lists of requests."""

    def __init__(self, rt, batch: int | None = None, max_steps: int = 100, lora_dir: str | None = None):
        from amo_engine.pipeline.runtime import open_pipeline

        self._stack = ExitStack()
        self.pipeline = self._stack.enter_context(open_pipeline(rt))
        model = self.pipeline.model
        try:
            self.adapters = self._open_adapters(lora_dir)
        except ValueError:
            self.close()
            raise
        engine_batch = self.pipeline.images_per_call(model.default_guidance)
        if engine_batch is not None and batch is not None and batch != engine_batch:
            self.close()
            raise ValueError(f"the engine renders {engine_batch} images per call: drop --max-batch or set it to "
                             f"{engine_batch} (export an engine with --batch {batch} for {batch})")
        self.batch = engine_batch or batch or 1
        if rt.engine is not None:  # an engine renders its one size and text length
            from amo_engine.engine.folder import read_manifest

            manifest = read_manifest(rt.engine, check_hashes=False)
            height, width = manifest.height, manifest.width
            self.max_sequence_length = manifest.max_sequence_length
        else:
            height, width = model.default_size
            self.max_sequence_length = None
        self.limits = Limits(sizes=((width, height),), max_images=self.batch, max_steps=max_steps,
                             adapters=tuple(self.adapters))
        self._busy = threading.Lock()  # one pipeline call at a time: calls share the input buffers
        self.rendered_images = 0  # images returned (filler rows not counted)
        self.calls = 0
        self.cancelled_calls = 0  # calls stopped because every request in them was cancelled

    def _open_adapters(self, lora_dir: str | None) -> dict:
        """Every ``*.safetensors`` of ``lora_dir`` by name (its stem), read and checked against the
        model and engine at start; the pipeline's LoRA slots are then fixed (eager: made to hold
        them all), so an image never depends on which adapters its batch-mates carry."""
        if lora_dir is None:
            return {}
        import dataclasses
        from pathlib import Path

        from amo_engine.model.adapters import read_adapter

        files = sorted(Path(lora_dir).glob("*.safetensors")) if Path(lora_dir).is_dir() else []
        if not files:
            raise ValueError(f"--lora-dir {lora_dir}: no .safetensors adapters there (amo-engine finetune writes "
                             "RUN_DIR/adapter.safetensors; copy them in under the names requests will use)")
        model = self.pipeline.model
        adapters = {f.stem: read_adapter(f, model.family, model.pipe.transformer.config) for f in files}
        slots = self.pipeline.check_adapters(list(adapters.values()))
        if not self.pipeline.hook.lora_rank:
            self.pipeline.hook = dataclasses.replace(self.pipeline.hook, **slots)
        return adapters

    def close(self) -> None:
        self._stack.close()

    def describe(self) -> dict:
        model = self.pipeline.model
        return {"model": model.source, "family": model.family.name, "batch": self.batch,
                "sizes": self.limits.size_names, "max_steps": self.limits.max_steps, "adapters": list(self.adapters)}

    def render(self, requests: Sequence[ImageRequest],
               cancelled: Callable[[str], bool] = lambda request_id: False) -> list[Rendered | RenderError]:
        """One answer per request, in order; a failed call fails only its own requests. A call whose
        requests are all ``cancelled`` (by id) stops at its next step."""
        answers: list[Rendered | RenderError | None] = [None] * len(requests)
        for members in pack(requests, self.batch):
            call = [requests[i] for i in members]
            for i, answer in zip(members, self._call(call, cancelled)):
                answers[i] = answer
        return answers

    def render_streamed(self, request: ImageRequest, on_partial: Callable[[int, str], None],
                        cancelled: Callable[[str], bool] = lambda request_id: False) -> Rendered | RenderError:
        """One streamed request, in a call of its own at the replica's batch (so its image is the one
        it gets unstreamed): ``on_partial(index, png_b64)`` gets each of its ``partial_images``
        previews (the clean-image estimate at evenly spaced steps) before the answer returns."""
        return self._call([request], cancelled, lambda k, images: on_partial(k, png_b64(images[0])),
                          request.partial_images)[0]

    def _call(self, call: list[ImageRequest], cancelled: Callable[[str], bool],
              on_preview: Callable[[int, list], None] | None = None, previews: int = 0) -> list[Rendered | RenderError]:
        from amo_engine.pipeline.generate import GenerateConfig, GenerationCancelled, NonFiniteLatentsError

        first = call[0]
        cfg = GenerateConfig(
            prompts=[r.prompt for r in call for _ in range(r.n)],
            seed=[s for r in call for s in r.row_seeds()],
            negative_prompt=first.negative_prompt, height=first.height, width=first.width, steps=first.steps,
            guidance=first.guidance, sampler=first.sampler, c=first.c, max_sequence_length=self.max_sequence_length,
            pad_images_to=self.batch, should_stop=lambda: all(cancelled(r.request_id) for r in call),
            adapters=[self.adapters[r.lora] if r.lora else None for r in call for _ in range(r.n)]
            if any(r.lora for r in call) else None, previews=previews, on_preview=on_preview,
        )
        try:
            with warnings.catch_warnings(), self._busy:
                warnings.simplefilter("ignore")  # notes are made per request below
                result = self.pipeline(cfg)
        except NonFiniteLatentsError as err:
            return [RenderError(500, str(err))] * len(call)
        except GenerationCancelled as err:  # nobody waits for these answers
            self.cancelled_calls += 1
            return [RenderError(499, f"cancelled: {err}")] * len(call)
        except ValueError as err:
            return [RenderError(422, str(err))] * len(call)
        self.calls += 1
        start = time.perf_counter()
        encoded = [png_b64(image) for image in result.images]
        timings = {"encode_ms": 1000 * result.prepare_seconds, "loop_ms": 1000 * result.loop_seconds,
                   "decode_ms": 1000 * (result.decode_seconds + time.perf_counter() - start)}
        batch = {"requests": len(call), "images": len(result.images), "padded_to": self.batch}
        answers, row = [], 0
        for req in call:
            images = []
            for j, seed in enumerate(req.row_seeds()):
                item = {"b64_json": encoded[row + j], "seed": seed}
                if req.return_attention:
                    item["attention"] = [[round(float(v), 6) for v in line] for line in result.attn_map[row + j]]
                images.append(item)
            row += req.n
            self.rendered_images += req.n
            answers.append(Rendered(images, timings, batch, request_notes(req, self.pipeline.model)))
        return answers


def request_notes(req: ImageRequest, model) -> list[str]:
    """What a user should know about this request's prompt (the pipeline's notes, per request)."""
    from amo_engine.pipeline.generate import vocabulary_notes
    from amo_engine.prompts import find_quoted_spans

    notes = vocabulary_notes(model.settings, [req.prompt])
    if req.sampler == "amo" and not find_quoted_spans(req.prompt):
        notes.append("no quoted text in the prompt: AMO ran as plain overshoot (quote the text to render)")
    return notes
