"""The Ray Serve application: a light HTTP gateway (FastAPI ingress: parse, check, time, answer) in
front of renderer replicas (each holds the model and engine, batches requests with ``serve.batch``).

Backpressure: each replica takes ``max_ongoing`` requests (a running call plus the next batch
forming); past ``max_queued`` waiting for a replica the gateway answers 503 with Retry-After. A
request past ``request_timeout_s`` is cancelled (dropped from its batch queue if it has not started)
and answered 504. A client that disconnects cancels its request the same way (Ray Serve propagates
the cancellation). A replica that dies mid-request is restarted by Ray; the gateway retries the
request once on another replica (images are deterministic, so a retry returns the same image), then
answers 503.

Keys: with ``api_key_file`` every ``/v1`` route wants ``Authorization: Bearer KEY`` (401 without;
keys compared in constant time, never logged; ``/healthz`` and ``/readyz`` stay open). Each key has at most ``max_concurrent_per_key`` requests in flight: 429 with
Retry-After past it (without keys there is no per-client cap; the queue's 503 still applies). ``"stream": true`` answers with server-sent events, OpenAI's
``image_generation.partial_image`` previews then ``image_generation.completed``.

Local: ``amo-engine serve``. A cluster: ``serve deploy`` a config whose application imports
``amo_engine.serve.app:build_app`` with the same arguments (README, Serving).
"""


import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from amo_engine.serve.renderer import RenderError
from amo_engine.serve.schema import BadRequest, Limits, parse_request, response_body

APP_NAME = "amo-engine"


@dataclass
class ServiceConfig:
    """Everything ``amo-engine serve`` sets: the runtime of each replica and the service's limits."""

    runtime: dict = field(default_factory=dict)  # runtime.Runtime fields
    replicas: int = 1
    max_batch: Optional[int] = None  # images per call for eager (engines carry theirs)
    batch_wait_ms: float = 10.0
    max_ongoing: Optional[int] = None  # requests per replica (default: 2 x its batch)
    max_queued: int = 16  # requests waiting for a replica before 503
    request_timeout_s: float = 300.0
    retry_after_s: int = 2
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_steps: int = 100
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 2000
    lora_dir: Optional[str] = None  # LoRA adapters requests may name ("lora": file stem)
    api_key_file: Optional[str] = None  # one key a line; None: no keys asked
    max_concurrent_per_key: int = 8  # requests in flight per key (with api_key_file)


def _read_keys(path: Optional[str]) -> tuple[str, ...]:
    """The sha256 digests of the keys in ``path`` (one a line; blank lines and # comments skipped).
    Defined before the deployments: Serve captures their globals when the module is imported."""
    if path is None:
        return ()
    keys = [line.strip() for line in Path(path).read_text().splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"--api-key-file {path} holds no key: one key a line")
    return tuple(hashlib.sha256(k.encode()).hexdigest() for k in keys)


def _images(requests) -> int:
    return sum(r.n for r in requests)


@serve.deployment(name="renderer", health_check_period_s=2.0, health_check_timeout_s=30.0)
class RenderReplica:
    """One model + engine per replica; ``render`` batches concurrent requests (in images)."""

    def __init__(self, config: dict):
        from ray.util import metrics

        from amo_engine.pipeline.runtime import Runtime
        from amo_engine.serve.renderer import Renderer

        cfg = ServiceConfig(**config)
        runtime = {**cfg.runtime, "engine": Path(cfg.runtime["engine"]) if cfg.runtime.get("engine") else None}
        self.renderer = Renderer(Runtime(**runtime), cfg.max_batch, cfg.max_steps, cfg.lora_dir)
        self.render.set_max_batch_size(self.renderer.batch)
        self.render.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000)
        self._cancelled: set[str] = set()  # request ids whose caller stopped waiting
        self._batch_images = metrics.Histogram("amo_batch_images", "images per render call (before padding)",
                                               boundaries=[1, 2, 4, 8, 16, 32])
        self._call_ms = metrics.Histogram("amo_render_call_ms", "render call wall time (ms)",
                                          boundaries=[10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000])

    def describe(self) -> dict:
        return {**self.renderer.describe(), "pid": os.getpid(), "calls": self.renderer.calls,
                "rendered_images": self.renderer.rendered_images, "cancelled_calls": self.renderer.cancelled_calls}

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.01, batch_size_fn=_images)
    async def render(self, requests: list) -> list:
        start = time.perf_counter()
        answers = await asyncio.to_thread(self.renderer.render, requests, self._cancelled.__contains__)
        self._cancelled.difference_update(r.request_id for r in requests)
        self._batch_images.observe(_images(requests))
        self._call_ms.observe(1000 * (time.perf_counter() - start))
        return answers

    async def stream(self, request):
        """A streamed request (a call of its own): ("partial", index, png_b64) per preview, then
        ("done", Rendered | RenderError)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_partial(k: int, b64: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("partial", k, b64))

        work = asyncio.ensure_future(asyncio.to_thread(self.renderer.render_streamed, request, on_partial,
                                                       self._cancelled.__contains__))
        try:
            while True:
                item = asyncio.ensure_future(queue.get())
                await asyncio.wait({item, work}, return_when=asyncio.FIRST_COMPLETED)
                if item.done():
                    yield item.result()
                    continue
                item.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                yield ("done", work.result())
                return
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop the call at its next step
            self._cancelled.add(request.request_id)
            raise

    async def __call__(self, request):
        try:
            return await self.render(request)
        except asyncio.CancelledError:  # timed out or its client went away: a running call stops at its next step
            if len(self._cancelled) > 4096:  # ids of requests dropped before their call ran are never removed
                self._cancelled.clear()
            self._cancelled.add(request.request_id)
            raise


api = FastAPI(title="amo-engine", description="text-to-image with better rendered text (AMO sampler)")


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class Gateway:
    """HTTP: parse and check (4xx before any model work), route to a renderer, time, answer."""

    def __init__(self, renderer, config: dict):
        from ray.util import metrics

        self.renderer = renderer
        self.cfg = ServiceConfig(**config)
        self.info: Optional[dict] = None
        self.status_counts: collections.Counter = collections.Counter()
        self.latencies_ms: collections.deque = collections.deque(maxlen=2000)
        self.batch_images: collections.Counter = collections.Counter()
        self.retries = 0  # requests sent again after their replica died
        self._keys = _read_keys(self.cfg.api_key_file)  # sha256 digests; the keys themselves are not kept
        self._in_flight: collections.Counter = collections.Counter()  # requests per key digest / client address
        self._requests = metrics.Counter("amo_requests", "image requests by HTTP status", tag_keys=("status",))
        self._retries = metrics.Counter("amo_retries", "requests sent again after their renderer replica died")
        self._latency = metrics.Histogram("amo_request_latency_ms", "request latency (ms), 200s only",
                                          boundaries=[50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000])

    async def _describe(self, timeout: float) -> dict:
        if self.info is None:
            self.info = await asyncio.wait_for(self.renderer.describe.remote(), timeout)
        return self.info

    def _answer(self, status: int, body: dict, headers: Optional[dict] = None) -> JSONResponse:
        self.status_counts[status] += 1
        self._requests.inc(tags={"status": str(status)})
        return JSONResponse(body, status_code=status, headers=headers)

    def _error(self, status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return self._answer(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _caller(self, request: Request) -> tuple[Optional[str], Optional[JSONResponse]]:
        """(who: a key's digest, None without keys; or the 401 answer)."""
        if not self._keys:
            return None, None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        digest = hashlib.sha256(given.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""
        if not any(hmac.compare_digest(digest, key) for key in self._keys):  # constant time per key
            what = "a wrong API key" if header else "no API key"
            return None, self._error(401, f"{what}: send the header \"Authorization: Bearer YOUR_KEY\" (the openai "
                                          "client's api_key) with a key from the service's --api-key-file",
                                     {"WWW-Authenticate": "Bearer"})
        return digest, None

    @api.post("/v1/images/generations")
    async def generations(self, request: Request):
        who, refused = self._caller(request)
        if refused is not None:
            return refused
        cap = self.cfg.max_concurrent_per_key
        if who is not None and self._in_flight[who] >= cap:
            return self._error(429, f"this key has {self._in_flight[who]} requests in flight, the limit is {cap} "
                                    f"(serve --max-concurrent-per-key): retry after {self.cfg.retry_after_s} s",
                               self._retry())
        self._in_flight[who] += 1
        streaming = False
        try:
            answer = await self._generate(request, who)
            streaming = isinstance(answer, StreamingResponse)
            return answer
        finally:
            if not streaming:  # a stream releases its slot when its last event is sent
                self._release(who)

    def _release(self, who: str | None) -> None:
        self._in_flight[who] -= 1
        if self._in_flight[who] <= 0:
            del self._in_flight[who]

    async def _generate(self, request: Request, who: str | None):
        start = time.perf_counter()
        try:
            info = await self._describe(timeout=30.0)
        except Exception:  # noqa: BLE001 - no replica is up yet
            return self._error(503, "the renderer is not ready yet: retry shortly", self._retry())
        limits = Limits(sizes=tuple(tuple(int(v) for v in s.split("x")) for s in info["sizes"]),
                        max_images=info["batch"], max_steps=self.cfg.max_steps, max_body_bytes=self.cfg.max_body_bytes,
                        adapters=tuple(info.get("adapters", ())), max_prompt_chars=self.cfg.max_prompt_chars)
        length = request.headers.get("content-length")
        try:
            if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
                raise BadRequest(413, f"the request body is over {limits.max_body_bytes} bytes (serve --max-body-kb): "
                                      "send a shorter prompt")
            req = dataclasses.replace(parse_request(await request.body(), limits), request_id=uuid.uuid4().hex)
        except BadRequest as err:
            return self._error(err.status, str(err))
        if req.stream:
            return self._stream(req, start, who)
        answer = None
        for attempt in range(2):  # one retry when a replica dies under the request
            response = self.renderer.remote(req)
            try:
                answer = await asyncio.wait_for(response, self.cfg.request_timeout_s - (time.perf_counter() - start))
                break
            except BackPressureError:
                return self._error(503, f"the service is at capacity ({self.cfg.max_queued} requests queued): retry "
                                        f"after {self.cfg.retry_after_s} s", self._retry())
            except asyncio.CancelledError:  # the client went away: stop its work too
                response.cancel()
                raise
            except (asyncio.TimeoutError, TimeoutError):
                response.cancel()
                return self._error(504, f"the request took over {self.cfg.request_timeout_s:g} s and was cancelled: "
                                        "retry, or ask for fewer steps")
            except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as err:
                if attempt == 1:
                    return self._error(503, f"a renderer replica failed twice under this request "
                                            f"({type(err).__name__}); Ray is restarting it: retry after "
                                            f"{self.cfg.retry_after_s} s", self._retry())
                self.retries += 1
                self._retries.inc()
        if isinstance(answer, RenderError):
            return self._error(answer.status, answer.message)
        total_ms = 1000 * (time.perf_counter() - start)
        spent = answer.timings["encode_ms"] + answer.timings["loop_ms"] + answer.timings["decode_ms"]
        timings = {**answer.timings, "total_ms": total_ms, "queue_ms": max(total_ms - spent, 0.0)}
        self.latencies_ms.append(total_ms)
        self.batch_images[answer.batch["images"]] += 1
        self._latency.observe(total_ms)
        return self._answer(200, response_body(int(time.time()), answer.images, timings, answer.batch, answer.notes))

    def _stream(self, req, start: float, who: str | None) -> StreamingResponse:
        """Server-sent events in OpenAI's image streaming format: a partial_image event per preview,
        then completed with the image (or an error event). Not retried if its replica dies."""
        size = f"{req.width}x{req.height}"
        common = {"size": size, "quality": "auto", "background": "opaque", "output_format": "png"}
        gen = self.renderer.options(stream=True).stream.remote(req)

        def event(kind: str, data: dict) -> str:
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        async def events():
            status = 200
            try:
                deadline = start + self.cfg.request_timeout_s
                while True:  # each event within what is left of the request's time
                    try:
                        item = await asyncio.wait_for(gen.__anext__(), deadline - time.perf_counter())
                    except StopAsyncIteration:
                        return
                    if item[0] == "partial":
                        yield event("image_generation.partial_image", {
                            "type": "image_generation.partial_image", "b64_json": item[2],
                            "created_at": int(time.time()), "partial_image_index": item[1], **common})
                        continue
                    answer = item[1]
                    if isinstance(answer, RenderError):
                        status = answer.status
                        yield event("error", {"error": {"message": answer.message, "type": "server_error",
                                                        "code": answer.status}})
                        return
                    total_ms = 1000 * (time.perf_counter() - start)
                    self.latencies_ms.append(total_ms)
                    self._latency.observe(total_ms)
                    yield event("image_generation.completed", {
                        "type": "image_generation.completed", "b64_json": answer.images[0]["b64_json"],
                        "created_at": int(time.time()), "seed": answer.images[0]["seed"], **common,
                        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                  "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}})
                    return
            except asyncio.TimeoutError:
                gen.cancel()
                status = 504
                yield event("error", {"error": {"message": f"the request took over {self.cfg.request_timeout_s:g} s "
                                                           "and was cancelled", "type": "server_error", "code": 504}})
            finally:
                self.status_counts[status] += 1
                self._requests.inc(tags={"status": str(status)})
                self._release(who)

        return StreamingResponse(events(), media_type="text/event-stream")

    def _retry(self) -> dict:
        return {"Retry-After": str(self.cfg.retry_after_s)}

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        try:
            info = await asyncio.wait_for(self.renderer.describe.remote(), 5.0)
        except Exception as err:  # noqa: BLE001 - not ready, whatever the cause
            return JSONResponse({"ready": False, "reason": type(err).__name__}, status_code=503)
        self.info = info
        return {"ready": True, **{k: info[k] for k in ("model", "family", "batch", "sizes", "max_steps")}}

    @api.get("/v1/models")
    async def models(self, request: Request):
        refused = self._caller(request)[1]
        if refused is not None:
            return refused
        info = await self._describe(timeout=30.0)
        return {"object": "list", "data": [{"id": info["model"], "object": "model", "owned_by": "amo-engine",
                                            "adapters": info.get("adapters", [])}]}

    @api.get("/v1/stats")
    async def stats(self, request: Request):
        refused = self._caller(request)[1]
        if refused is not None:
            return refused
        lat = sorted(self.latencies_ms)

        def q(p: float):
            return lat[min(int(p * len(lat)), len(lat) - 1)] if lat else None

        return {"requests_by_status": {str(k): v for k, v in sorted(self.status_counts.items())},
                "latency_ms": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "count": len(lat)},
                "batch_images": {str(k): v for k, v in sorted(self.batch_images.items())},
                "retries_after_replica_death": self.retries}


def build(cfg: ServiceConfig):
    """The Ray Serve application for ``cfg``."""
    config = asdict(cfg)
    batch = cfg.max_batch or 4
    renderer = RenderReplica.options(
        num_replicas=cfg.replicas,
        max_ongoing_requests=cfg.max_ongoing or 2 * batch,
        max_queued_requests=cfg.max_queued,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    ).bind(config)
    return Gateway.bind(renderer, config)


RUNTIME_ARGS = ("model", "engine", "backend", "device", "dtype", "threads", "cache_dir", "ort_opt_level")  # build_app's


def build_app(args: dict):
    """Ray Serve's application builder (``serve run``/``serve deploy``): ``args`` are ServiceConfig
    fields, the runtime's as ``model``, ``engine``, ``backend``, ``device``, ``dtype``, ``threads``."""
    runtime = {k: args[k] for k in RUNTIME_ARGS if k in args}
    rest = {k: v for k, v in args.items() if k not in RUNTIME_ARGS}
    types = {f: type(v) for f, v in asdict(ServiceConfig()).items() if v is not None}
    rest = {k: (types[k](v) if k in types and isinstance(v, str) else v) for k, v in rest.items()}
    if "threads" in runtime:
        runtime["threads"] = int(runtime["threads"])
    return build(ServiceConfig(runtime=runtime, **rest))


def app_args(cfg: ServiceConfig) -> dict:
    """``build_app``'s arguments for ``cfg`` (a Serve config's ``args``): the runtime's fields flat
    beside the service's, unset ones left out."""
    rest = {k: v for k, v in asdict(cfg).items() if k != "runtime" and v is not None}
    return {**{k: v for k, v in cfg.runtime.items() if v is not None}, **rest}


def start(cfg: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, num_cpus: Optional[int] = None,
          metrics_port: Optional[int] = None):
    """Start Ray (local), Serve's HTTP proxy on ``host:port`` and the application; returns when the
    renderer replicas are up (their model loaded). ``metrics_port``: Ray's Prometheus endpoint
    (``http://127.0.0.1:PORT/metrics``: Ray's, Serve's and our ``amo_*`` series)."""
    import ray

    from amo_engine import quiet

    quiet.install()  # serve.run's "Connecting to existing Serve app" right after serve.start made it
    if not ray.is_initialized():
        metrics = {} if metrics_port is None else {"_metrics_export_port": metrics_port}
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,  # its own Ray,
                 ignore_reinit_error=True, **metrics)  # never another cluster running on this machine
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build(cfg), name=APP_NAME, route_prefix="/")


def stop() -> None:
    import ray

    serve.shutdown()
    ray.shutdown()
