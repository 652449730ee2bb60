"""The service as OpenAI's own client sees it (a live tiny service on loopback, with keys): plain and
streamed generations through the official ``openai`` package, 401 without or with a wrong key, the
per-key concurrency cap (429) and the per-request limits, and Ray's Prometheus export scraped."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_serve import free_port

KEY = "sk-test-0123456789"
BODY = {"prompt": "a sign that says 'OPEN'", "seed": 3, "steps": 4}


@pytest.fixture(scope="module")
def keyed(preset_cache, tmp_path_factory):
    """(base url, metrics url): tiny SD3, eager, batch 2, one key, one request in flight per key."""
    pytest.importorskip("ray.serve", reason="the serve extra: pip install 'amo-engine[serve]'")
    from amo_engine.serve import app

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# the test's key\n{KEY}\n")
    port, metrics_port = free_port(), free_port()
    cfg = app.ServiceConfig(runtime={"model": "tiny-sd3", "cache_dir": str(preset_cache), "threads": 1},
                            max_batch=2, batch_wait_ms=10, max_steps=400, max_body_bytes=2048, max_prompt_chars=300,
                            api_key_file=str(keys), max_concurrent_per_key=1, request_timeout_s=60.0)
    app.start(cfg, port=port, num_cpus=4, metrics_port=metrics_port)
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    app.stop()


def client(url: str, key: str = KEY):
    openai = pytest.importorskip("openai", reason="the dev extra pins the official client")
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def post(url: str, body: dict, key: str | None = KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + "/v1/images/generations", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


@pytest.mark.slow
def test_the_openai_client_generates_plain_and_streamed_images_equal_to_direct_ones(keyed):
    url, _ = keyed
    status, direct, _ = post(url, BODY)
    assert status == 200
    extra = {"seed": BODY["seed"], "steps": BODY["steps"]}
    plain = client(url).images.generate(model="tiny-sd3", prompt=BODY["prompt"], n=1, size="128x128",
                                        response_format="b64_json", quality="auto", extra_body=extra)
    assert plain.data[0].b64_json == direct["data"][0]["b64_json"]
    events = list(client(url).images.generate(model="tiny-sd3", prompt=BODY["prompt"], stream=True, partial_images=2,
                                              extra_body=extra))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].b64_json == direct["data"][0]["b64_json"]  # the streamed image is the plain one, bit for bit
    previews = [base64.b64decode(e.b64_json) for e in events[:2]]
    assert all(p.startswith(b"\x89PNG") for p in previews) and previews[0] != previews[1]
    status, answer, _ = post(url, {**BODY, "response_format": "url"})
    assert status == 400 and "use \"b64_json\"" in answer["error"]["message"]
    assert post(url, {**BODY, "background": "auto", "moderation": "low", "output_compression": 100})[0] == 200


@pytest.mark.slow
def test_keys_are_required_on_v1_and_health_stays_open(keyed):
    openai = pytest.importorskip("openai")
    url, _ = keyed
    with pytest.raises(openai.AuthenticationError, match="a wrong API key"):
        client(url, "sk-wrong").images.generate(prompt=BODY["prompt"], extra_body={"steps": 1})
    status, answer, headers = post(url, BODY, key=None)
    assert status == 401 and answer["error"]["message"].startswith("no API key: send the header")
    assert headers["www-authenticate"] == "Bearer" and KEY not in json.dumps(answer)
    with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(url + "/v1/models", timeout=30)


@pytest.mark.slow
def test_a_key_past_its_concurrency_gets_429_and_each_limit_its_4xx(keyed):
    url, _ = keyed
    with ThreadPoolExecutor(2) as pool:  # the cap is one request in flight per key
        long_one = pool.submit(post, url, {**BODY, "steps": 300})
        time.sleep(2.0)
        status, answer, headers = post(url, BODY)
        assert long_one.result()[0] == 200
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert "has 1 requests in flight, the limit is 1 (serve --max-concurrent-per-key)" in answer["error"]["message"]
    for body, code, message in (
            ({**BODY, "prompt": "a sign " + "x" * 400}, 400, "the limit is 300 (serve --max-prompt-chars)"),
            ({**BODY, "negative_prompt": "y" * 2100}, 413, "over 2048 bytes (serve --max-body-kb)"),
            ({**BODY, "steps": 401}, 400, "\"steps\" must be an integer from 1 to 400"),
            ({**BODY, "n": 3}, 400, "\"n\" must be an integer from 1 to 2"),
            ({**BODY, "partial_images": 2}, 400, "\"partial_images\" needs \"stream\": true"),
            ({**BODY, "stream": True, "n": 2}, 400, "a streamed request renders one image"),
            ({**BODY, "output_format": "webp"}, 400, "use \"png\"")):
        status, answer, _ = post(url, body)
        assert (status, message in answer["error"]["message"]) == (code, True), answer


@pytest.mark.slow
def test_ray_exports_our_metrics_to_prometheus(keyed):
    url, metrics = keyed
    assert post(url, BODY)[0] == 200
    wanted = ("amo_requests", "amo_request_latency_ms", "amo_batch_images", "amo_render_call_ms")
    text, deadline = "", time.time() + 60
    while time.time() < deadline and not all(name in text for name in wanted):
        time.sleep(2)  # Ray's agent exports what the processes reported every few seconds
        try:
            with urllib.request.urlopen(metrics, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            continue
    assert all(name in text for name in wanted), [n for n in wanted if n not in text]
    assert any(line.startswith("ray_amo_requests") and 'status="200"' in line for line in text.splitlines())
