"""Serving: the HTTP schema and batch packing (pure), the renderer's batching invariant (no Ray), and
a live Ray Serve service on loopback (tiny SD3, eager, batch 2): concurrent requests give the
single-request images, bad requests get 4xx with the fix and the service keeps serving, a full
queue answers 503 with Retry-After."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from amo_engine import rules
from amo_engine.serve import schema
from amo_engine.serve.renderer import pack
from amo_engine.serve.schema import BadRequest, Limits, parse_request

LIMITS = Limits(sizes=((128, 128),), max_images=2, max_steps=50, max_body_bytes=2048)


def body(**kw) -> bytes:
    return json.dumps({"prompt": "a sign that says 'OPEN'", **kw}).encode()


def test_schema_defaults_and_openai_fields():
    req = parse_request(body(model="dall-e-3", size="128x128", response_format="b64_json", n=2, seed=5), LIMITS)
    assert (req.width, req.height, req.n, req.seed, req.sampler, req.steps) == (128, 128, 2, 5, "amo", 28)
    assert req.row_seeds() == [5, 6]
    assert schema.check_sampler is rules.check_sampler  # the sampler rule and its list live in rules.py


@pytest.mark.parametrize("raw,status,match", [
    (b"not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"n": 1}).encode(), 400, "\"prompt\" is missing"),
    (body(steps=-3), 400, "\"steps\" must be an integer from 1 to 50"),
    (body(steps=2.5), 400, "\"steps\" must be an integer"),
    (body(sampler="heun"), 400, "unknown sampler 'heun'; choose one of euler, overshoot, amo"),
    (body(size="256x256"), 400, "size 256x256 is not served by this engine: use one of 128x128"),
    (body(size="big"), 400, "\"size\" must be \"WxH\""),
    (body(n=3), 400, "\"n\" must be an integer from 1 to 2"),
    (body(c=float("nan")), 400, "\"c\" must be a number"),
    (body(response_format="url"), 400, "use \"b64_json\""),
    (body(colour="red"), 400, "unknown field 'colour'"),
    (body(prompt="x" * 3000), 413, "over 2048 bytes"),
])
def test_bad_requests_name_the_fix(raw, status, match):
    with pytest.raises(BadRequest, match=match) as err:
        parse_request(raw, LIMITS)
    assert err.value.status == status


def test_pack_groups_same_settings_up_to_the_batch():
    reqs = [parse_request(body(**kw), LIMITS) for kw in
            (dict(seed=1), dict(steps=4), dict(seed=2), dict(seed=3), dict(n=2, steps=4))]
    assert pack(reqs, 2) == [[0, 2], [1], [3], [4]]


@pytest.fixture(scope="module")
def renderer(preset_cache):
    from amo_engine.pipeline.runtime import Runtime
    from amo_engine.serve.renderer import Renderer

    r = Renderer(Runtime(model="tiny-sd3", cache_dir=preset_cache), batch=2, max_steps=8)
    yield r
    r.close()


def test_renderer_batch_mates_never_change_an_image(renderer):
    def ask(**kw):
        return parse_request(body(**{"steps": 2, **kw}), renderer.limits)

    alone = renderer.render([ask(seed=4)])[0]
    mixed = renderer.render([ask(prompt="plain grass", seed=9), ask(seed=4), ask(seed=4, steps=3)])
    assert mixed[1].batch == {"requests": 2, "images": 2, "padded_to": 2}
    assert mixed[1].images[0]["b64_json"] == alone.images[0]["b64_json"]  # same PNG bytes
    assert mixed[2].images[0]["b64_json"] != alone.images[0]["b64_json"]  # other steps: other image
    stopped = renderer.render([ask(seed=4, steps=8)], cancelled=lambda request_id: True)[0]
    assert stopped.status == 499 and "stopped after step 1 of 8" in stopped.message and renderer.cancelled_calls == 1
    assert renderer.render([ask(prompt="no quotes", sampler="amo")])[0].notes == [
        "no quoted text in the prompt: AMO ran as plain overshoot (quote the text to render)"]


def test_renderer_batches_requests_with_different_adapters(models, exported, preset_cache, tmp_path):
    """serve --lora-dir on an engine with LoRA slots: requests naming adapters a, b or none share one
    call (a row each), and each image is the one that request gets alone; an unknown name is a 400
    naming the served ones, and a folder without adapters is refused at start."""
    from amo_engine.pipeline.runtime import Runtime
    from amo_engine.serve.renderer import Renderer
    from test_lora import write_adapter

    write_adapter(models["sd3"], tmp_path, 4, seed=1, name="a.safetensors")
    write_adapter(models["sd3"], tmp_path, 2, seed=2, blocks=(0,), name="b.safetensors")
    engine = exported("sd3", batch=3, lora_rank=4)
    r = Renderer(Runtime(model="tiny-sd3", backend="ort", engine=engine, cache_dir=preset_cache), max_steps=8,
                 lora_dir=str(tmp_path))
    try:
        assert r.describe()["adapters"] == ["a", "b"] and r.limits.adapters == ("a", "b")
        ask = [parse_request(body(steps=2, seed=s, **lora), r.limits)
               for s, lora in ((4, {"lora": "a"}), (5, {"lora": "b"}), (6, {}))]
        assert pack(ask, 3) == [[0, 1, 2]]
        alone = [r.render([q])[0] for q in ask]
        # each request first in its mixed call: the VAE decode (eager torch) rounds a row at another
        # position differently (1 grey level seen); the engine's latents are equal at every row (test_lora)
        mixed = [r.render(ask[i:] + ask[:i])[0] for i in range(3)]
        plain = r.render([parse_request(body(steps=2, seed=4), r.limits)])[0]
        with pytest.raises(BadRequest, match='unknown adapter "c": this service has a, b'):
            parse_request(body(steps=2, lora="c"), r.limits)
    finally:
        r.close()
    assert mixed[0].batch == {"requests": 3, "images": 3, "padded_to": 3}
    assert [m.images[0]["b64_json"] for m in mixed] == [a.images[0]["b64_json"] for a in alone]
    assert plain.images[0]["b64_json"] != alone[0].images[0]["b64_json"]  # adapter a changed the image
    with pytest.raises(BadRequest, match="this service has none .start it with --lora-dir DIR."):
        parse_request(body(lora="a"), LIMITS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .safetensors adapters there"):
        Renderer(Runtime(model="tiny-sd3", cache_dir=preset_cache), batch=1, lora_dir=str(empty))


@pytest.mark.slow
def test_renderer_serves_every_family(preset_cache):
    """The renderer is family-blind: AuraFlow (register tokens, CFG rows) batches bit-identically too."""
    from amo_engine.pipeline.runtime import Runtime
    from amo_engine.serve.renderer import Renderer

    r = Renderer(Runtime(model="tiny-auraflow", cache_dir=preset_cache), batch=2, max_steps=8)
    try:
        ask = [parse_request(body(steps=2, seed=s), r.limits) for s in (3, 5)]
        alone, both = r.render(ask[:1])[0], r.render(ask)
    finally:
        r.close()
    assert both[0].images[0]["b64_json"] == alone.images[0]["b64_json"] and both[0].batch["requests"] == 2


# ------------------------------------------------------------------ the live service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(preset_cache):
    pytest.importorskip("ray.serve", reason="the serve extra: pip install 'amo-engine[serve]'")
    from amo_engine.serve import app

    port = free_port()
    cfg = app.ServiceConfig(runtime={"model": "tiny-sd3", "cache_dir": str(preset_cache), "threads": 1},
                            max_batch=2, batch_wait_ms=300, max_queued=1, max_steps=5000, max_body_bytes=4096,
                            request_timeout_s=8.0)
    app.start(cfg, port=port, num_cpus=4)
    yield f"http://127.0.0.1:{port}"
    app.stop()


def post(url: str, data: bytes, timeout: float = 120):
    request = urllib.request.Request(url + "/v1/images/generations", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def post_retrying(url: str, data: bytes, attempts: int = 10):
    """``post``, sent again after a 503 as its Retry-After says (a well-behaved client)."""
    for _ in range(attempts):
        status, answer, headers = post(url, data)
        if status != 503:
            return status, answer, headers
        time.sleep(int(headers["retry-after"]))
    return status, answer, headers


def images_of(answer) -> list[str]:
    return [item["b64_json"] for item in answer["data"]]


@pytest.mark.slow
def test_service_concurrent_requests_equal_single_requests(service):
    with urllib.request.urlopen(service + "/readyz", timeout=30) as r:
        assert json.loads(r.read())["batch"] == 2
    asks = [body(steps=2, seed=s) for s in (1, 2, 3, 4)]
    alone = [post(service, a) for a in asks]  # one in flight at a time
    assert all(status == 200 for status, _, _ in alone)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: post_retrying(service, a), asks))  # the queue holds 1: some may 503
    assert [images_of(b) for _, b, _ in together] == [images_of(b) for _, b, _ in alone]
    assert max(b["batch"]["images"] for _, b, _ in together) == 2  # some ran as batch-mates
    answer = together[0][1]
    assert set(answer) >= {"created", "data", "timings"} and answer["data"][0]["seed"] == 1
    assert set(answer["timings"]) >= {"queue_ms", "encode_ms", "loop_ms", "decode_ms", "total_ms"}


@pytest.mark.parametrize("raw,status,match", [
    (b"{not json", 400, "not JSON"),
    (json.dumps({"steps": 2}).encode(), 400, "\"prompt\" is missing"),
    (body(steps=-1), 400, "\"steps\" must be an integer from 1 to 5000"),
    (body(sampler="dpm"), 400, "unknown sampler 'dpm'"),
    (body(size="64x64"), 400, "size 64x64 is not served"),
    (body(prompt="y" * 5000), 413, "over 4096 bytes"),
])
@pytest.mark.slow
def test_service_bad_requests_get_4xx_and_it_keeps_serving(service, raw, status, match):
    got, answer, _ = post(service, raw)
    assert got == status and match in answer["error"]["message"]
    assert post(service, body(steps=1))[0] == 200


@pytest.mark.slow
def test_service_full_queue_answers_503_with_retry_after(service):
    # a replica takes 4 requests (2 x batch 2) and 1 may wait for it: a burst of 12 overflows
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda s: post(service, body(steps=40, seed=s)), range(12)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(503) >= 1 and set(statuses) == {200, 503}
    status, answer, headers = next(a for a in answers if a[0] == 503)
    assert "at capacity" in answer["error"]["message"] and int(headers["retry-after"]) >= 1
    assert post(service, body(steps=1))[0] == 200


@pytest.mark.slow
def test_service_timeout_answers_504_and_stops_the_work(service):
    status, answer, _ = post(service, body(steps=5000))  # minutes of work, an 8 s limit
    assert status == 504 and "took over 8 s and was cancelled" in answer["error"]["message"]
    start = time.perf_counter()
    assert post(service, body(steps=1))[0] == 200
    from ray import serve

    info = serve.get_deployment_handle("renderer", app_name="amo-engine").describe.remote().result()
    assert info["cancelled_calls"] >= 1, info  # the timed-out call stopped between steps
    print(f"next request after the timeout answered in {time.perf_counter() - start:.2f} s")


def test_cluster_serve_config_is_ray_serve_schema():
    """The config LocalCluster deploys is valid in Ray Serve's own schema (serve deploy / serve run)."""
    from ray.serve.schema import ServeDeploySchema

    from amo_engine.serve.cluster import serve_config

    config = serve_config({"model": "glyph", "replicas": 2}, port=8123, proxy_location="HeadOnly",
                          max_replicas_per_node=1)
    parsed = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    app = parsed.applications[0]
    assert app.import_path == "amo_engine.serve.app:build_app" and app.args == {"model": "glyph", "replicas": 2}
    assert app.deployments[0].name == "renderer" and app.deployments[0].max_replicas_per_node == 1
    assert parsed.http_options.port == 8123


@pytest.mark.slow
def test_two_node_cluster_survives_losing_a_node(tmp_path):
    """A real two-node Ray cluster on this machine (ray start), the service deployed from a Serve
    config with a replica on each node, load through the head's proxy, then the worker node killed
    whole mid-run and started again: every request answered with its own image (the in-flight ones
    retried), none hung, every replica running again, one on the new node."""
    out = tmp_path / "lt.json"
    done = subprocess.run([sys.executable, "-c", "import sys; from amo_engine.cli import main; sys.exit(main())",
                           "loadtest", "--model", "tiny-sd3", "--nodes", "2",
                           "--replicas", "2", "--threads", "1", "--max-batch", "2", "--concurrency", "1,2",
                           "--requests", "4", "--payloads", "4", "--steps", "4", "--kill-node-after", "2",
                           "--port", str(free_port()), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(lv["ok"] == lv["requests"] and lv["image_mismatches"] == 0 for lv in result["levels"])
    kill = result["kill"]
    assert len(kill["replicas_by_node_before"]) == 2  # a replica on each node
    assert kill["killed_node"] in kill["replicas_by_node_before"]
    assert kill["killed_node"] not in kill["replicas_by_node_after"] and len(kill["replicas_by_node_after"]) == 2
    assert kill["recovery_s"] is not None and kill["node_dead_s"] is not None and kill["hung"] == 0
    assert kill["ok"] == kill["requests"] > 0 and kill["image_mismatches"] == 0, kill["errors"]


def test_soak_summary_growth_and_drift():
    """The soak's arithmetic on made-up samples: growth per 1,000 requests from minute 1 on, the
    first and last minute's p50/p99, a mismatched image and an error counted."""
    from amo_engine.serve.loadtest import LoadTest, Outcome
    from amo_engine.serve.soak import Soak, summarise, table

    soak = Soak(LoadTest("http://x", payloads=2), minutes=3, rate=1)
    records = [(t, Outcome(t % 2, 200, 1.0 if t < 60 else 2.0, 1, pixels="ab"[t % 2])) for t in range(180)]
    records[100] = (100, Outcome(0, 200, 1.0, 1, pixels="b"))  # the wrong image
    records[101] = (101, Outcome(1, 503, 1.0, 4, error="busy"))
    samples = [{"t_s": 0, "requests_done": 0, "replicas": {7: {"rss_mib": 500.0, "fds": 40}}},
               {"t_s": 60, "requests_done": 60, "replicas": {7: {"rss_mib": 600.0, "fds": 50}}},
               {"t_s": 180, "requests_done": 180, "replicas": {7: {"rss_mib": 612.0, "fds": 50}, 8: {"rss_mib": 1.0,
                                                                                                     "fds": 3}}}]
    result = summarise(soak, records, samples, {0: "a", 1: "b"})
    assert result["requests"] == 180 and result["ok"] == 179 and result["image_mismatches"] == 1
    assert result["errors"] == [{"status": 503, "error": "busy"}]
    assert result["first_minute"]["p50_s"] == 1.0 and result["last_minute"]["p99_s"] == 2.0
    assert result["p50_drift"] == 2.0
    assert result["growth_from_minute_1"]["7"]["rss_mib_per_1000"] == 100.0  # 12 MiB over 120 requests
    assert result["growth_from_minute_1"]["7"]["fds_per_1000"] == 0.0
    assert "note" in result["growth_from_minute_1"]["8"]  # started after minute 1
    assert "| 7 | 600.0 → 612.0 | 100.0 | 50 → 50 | 0.0 |" in table(result)
