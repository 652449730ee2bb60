"""The HTTP API: an OpenAI-compatible ``POST /v1/images/generations`` body, parsed and checked into an
``ImageRequest`` (or a ``BadRequest`` whose one line names the fix), and the response body.

Pure Python: no torch, no Ray, so a bad request costs no model work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from amo_engine.rules import check_sampler, parse_size

# OpenAI image fields clients send that change nothing here (the official client sends what it is given)
OPENAI_IGNORED = ("model", "user", "quality", "style", "background", "moderation", "output_compression",
                  "safety_identifier")
MAX_SEED = 2**63 - 1
MAX_PARTIAL_IMAGES = 3  # OpenAI's range for partial_images: 0-3


class BadRequest(ValueError):
    """A request the service refuses: ``status`` (4xx) and a one-line message naming the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one service accepts: the sizes its engine serves, images per call, steps, body bytes."""

    sizes: tuple[tuple[int, int], ...]  # (width, height) pairs
    max_images: int  # images per request: the replica's batch
    max_steps: int = 100
    max_body_bytes: int = 64 * 1024
    default_steps: int = 28
    adapters: tuple[str, ...] = ()  # the LoRA adapters a request may name (serve --lora-dir)
    max_prompt_chars: int = 2000

    @property
    def size_names(self) -> list[str]:
        return [f"{w}x{h}" for w, h in self.sizes]


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    n: int
    width: int
    height: int
    steps: int
    sampler: str
    c: float
    seed: int
    guidance: float | None  # None: the model's default
    negative_prompt: str | None
    return_attention: bool
    lora: str | None = None  # an adapter of the service's --lora-dir, by name (requests with others share calls)
    stream: bool = False  # server-sent events: partial images, then the image (OpenAI's image streaming)
    partial_images: int = 0  # previews streamed before the image (0-3)
    request_id: str = ""  # set by the gateway; not part of what the image depends on

    def batch_key(self) -> tuple:
        """Requests with equal keys run in one call (one shape, step count and setting)."""
        return (self.width, self.height, self.steps, self.sampler, self.c, self.guidance, self.negative_prompt)

    def row_seeds(self) -> list[int]:
        """Image ``j`` of the request uses ``seed + j`` (as ``generate --num-images``)."""
        return [self.seed + j for j in range(self.n)]


FIELDS = {
    "prompt": "the text to draw from; quote the text to render: \"a sign that says 'OPEN'\"",
    "n": "images, 1 to the service's batch",
    "size": "\"WxH\", one the engine serves",
    "response_format": "\"b64_json\"",
    "negative_prompt": "text to steer away from (SD3 guidance)",
    "sampler": "euler, overshoot or amo",
    "c": "overshoot strength >= 0",
    "steps": "denoising steps",
    "seed": "noise seed; image j of the request uses seed + j",
    "guidance": "guidance scale (default: the model's)",
    "return_attention": "true: each image also carries AMO's quoted-text attention map",
    "lora": "a LoRA adapter of the service, by name (GET /v1/models lists them)",
    "output_format": "\"png\"",
    "stream": "true: server-sent events, partial images then the image (n = 1)",
    "partial_images": "previews streamed before the image, 0 to 3 (with stream)",
}


def parse_request(body: bytes, limits: Limits, content_length: int | None = None) -> ImageRequest:
    """The request in ``body``, or ``BadRequest`` with the first problem found."""
    size = content_length if content_length is not None else len(body)
    if size > limits.max_body_bytes or len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"the request body is over {limits.max_body_bytes} bytes (serve --max-body-kb): send a "
                              "shorter prompt")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f"the body is not JSON ({err.msg if hasattr(err, 'msg') else err}): send "
                              "Content-Type application/json with a body like {\"prompt\": \"a sign that says 'OPEN'\"}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object like {\"prompt\": \"a sign that says 'OPEN'\"}")
    unknown = sorted(set(data) - set(FIELDS) - set(OPENAI_IGNORED))
    if unknown:
        raise BadRequest(400, f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")

    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(400, "\"prompt\" is missing or empty: send {\"prompt\": \"a sign that says 'OPEN'\"}")
    if len(prompt) > limits.max_prompt_chars:
        raise BadRequest(400, f"\"prompt\" has {len(prompt)} characters: the limit is {limits.max_prompt_chars} "
                              "(serve --max-prompt-chars)")
    n = _integer(data, "n", 1, 1, limits.max_images)  # the replica's batch
    width, height = _size(data.get("size"), limits)
    fmt = data.get("response_format", "b64_json")
    if fmt != "b64_json":
        raise BadRequest(400, f"response_format {fmt!r} is not served: use \"b64_json\" (images come inline)")
    sampler = data.get("sampler", "amo")
    try:
        check_sampler(sampler)
    except ValueError as err:
        raise BadRequest(400, str(err)) from None
    steps = _integer(data, "steps", limits.default_steps, 1, limits.max_steps)
    seed = _integer(data, "seed", 0, 0, MAX_SEED)
    c = _number(data, "c", 2.0, 0.0, 10.0)
    guidance = _number(data, "guidance", None, 0.0, 30.0)
    negative = data.get("negative_prompt")
    if negative is not None and (not isinstance(negative, str) or len(negative) > limits.max_prompt_chars):
        raise BadRequest(400, f"\"negative_prompt\" must be a string of at most {limits.max_prompt_chars} characters")
    attention = data.get("return_attention", False)
    if not isinstance(attention, bool):
        raise BadRequest(400, "\"return_attention\" must be true or false")
    lora = data.get("lora")
    if lora is not None and lora not in limits.adapters:
        have = (f"this service has {', '.join(limits.adapters)}" if limits.adapters
                else "this service has none (start it with --lora-dir DIR)")
        raise BadRequest(400, f"unknown adapter {json.dumps(lora)}: {have}")
    output = data.get("output_format", "png")
    if output != "png":
        raise BadRequest(400, f"output_format {json.dumps(output)} is not served: use \"png\"")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, "\"stream\" must be true or false")
    partial = _integer(data, "partial_images", 0, 0, MAX_PARTIAL_IMAGES)
    if partial and not stream:
        raise BadRequest(400, "\"partial_images\" needs \"stream\": true (previews arrive as server-sent events)")
    if stream and n != 1:
        raise BadRequest(400, "a streamed request renders one image: send \"n\": 1, or drop \"stream\"")
    return ImageRequest(prompt, n, width, height, steps, sampler, c, seed, guidance, negative or None, attention, lora,
                        stream, partial)


def _integer(data: dict, name: str, default, lo: int, hi: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(400, f"\"{name}\" must be an integer from {lo} to {hi}, got {json.dumps(value)}")
    return value


def _number(data: dict, name: str, default, lo: float, hi: float):
    value = data.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise BadRequest(400, f"\"{name}\" must be a number from {lo:g} to {hi:g}, got {json.dumps(value)}")
    return float(value)


def _size(value, limits: Limits) -> tuple[int, int]:
    if value is None:
        return limits.sizes[0]
    served = ", ".join(limits.size_names)
    try:
        w, h = parse_size(value)
    except ValueError:
        raise BadRequest(400, f"\"size\" must be \"WxH\", one of {served}; got {json.dumps(value)}") from None
    if (w, h) not in limits.sizes:
        raise BadRequest(400, f"size {w}x{h} is not served by this engine: use one of {served} (or export an "
                              "engine for that size)")
    return w, h


def response_body(created: int, images: list[dict], timings: dict, batch: dict, notes: list[str]) -> dict:
    """The answer: OpenAI's ``created`` and ``data`` (each ``{"b64_json": ...}`` plus our ``seed``),
    then our timings (ms), the batch it ran in, and notes."""
    return {"created": created, "data": images, "timings": timings, "batch": batch, "notes": notes}
