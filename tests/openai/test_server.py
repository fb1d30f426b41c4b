"""`latent serve` through the official `openai` client (and raw HTTP for the error cases).

Run by .ci/run against a real server started as
`latent serve --port 0 --model $LATENT_MODEL --threads 2`; the environment gives
LATENT_URL (http://HOST:PORT), LATENT_BIN (the `latent` binary) and LATENT_MODEL.
"""

import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

URL = os.environ.get("LATENT_URL")
BIN = os.environ.get("LATENT_BIN")
MODEL_PATH = os.environ.get("LATENT_MODEL")
if not URL:
    pytest.skip("LATENT_URL is not set (start `latent serve` first)", allow_module_level=True)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def http():
    with httpx.Client(base_url=URL, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(http):
    r = http.get("/v1/models")
    assert r.status_code == 200
    data = r.json()["data"]
    assert len(data) == 1 and data[0]["object"] == "model"
    return data[0]["id"]


@pytest.fixture(scope="module")
def client():
    return OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=120)


def metrics(http):
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_idle_and_free(http, timeout=30):
    """Waits until nothing runs or waits and every KV block is free."""
    t0 = time.time()
    while True:
        m = metrics(http)
        idle = m["latent_requests_running"] == 0 and m["latent_requests_waiting"] == 0
        if idle and m["latent_kv_blocks_free"] == m["latent_kv_blocks_total"]:
            return m
        assert time.time() - t0 < timeout, f"not idle with all blocks free: {m}"
        time.sleep(0.05)


def complete(client, model, prompt, max_tokens, **kw):
    r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)
    return r.choices[0].text


# --- the endpoints --------------------------------------------------------------------------


def test_health_and_models(http, model):
    r = http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert model == os.path.splitext(os.path.basename(MODEL_PATH or model + ".gguf"))[0]


def test_chat_non_streaming(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == model
    assert r.created > 1_600_000_000
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 10 and 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_chat_streaming_equals_non_streaming(client, model):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Name a color."}]}]
    plain = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=msgs,
            max_completion_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    # include_usage: a last chunk with the usage and no choices; the others carry none.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streaming_equals_non_streaming(client, model):
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
    assert plain.id.startswith("cmpl-") and plain.object == "text_completion"
    assert plain.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_stop_strings(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0)
    full, tokens = r.choices[0].text, r.choices[0].logprobs.tokens
    # A stop string across a token boundary (streaming must hold back its first part), and
    # the first line break.
    k = next(i for i in range(1, len(tokens) - 1) if len(tokens[i].strip()) >= 2 and len(tokens[i + 1].strip()) >= 2)
    across = tokens[k][-2:] + tokens[k + 1][:2]
    for stop in [across, "\n"]:
        assert stop in full
        cut = full[: full.index(stop)]
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "zzzz"])
        assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
        s = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True))
        assert "".join(c.choices[0].text for c in s) == cut
        assert s[-1].choices[0].finish_reason == "stop"
    # Chat too.
    msgs = [{"role": "user", "content": "Count from 1 to 5, separated by commas."}]
    plain = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0).choices[0]
    text = plain.message.content
    if "," in text:
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0, stop=",")
        assert r.choices[0].message.content == text[: text.index(",")] and r.choices[0].finish_reason == "stop"


def test_logprobs(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == r.choices[0].text
    for t, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3 and lpv <= 0
        assert abs(max(top.values()) - lpv) < 1e-5  # greedy: the chosen token is the top one

    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob
        assert isinstance(c.bytes, list)


def test_seed_reproducibility_and_n(client, model):
    def run(seed, n=1):
        r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.9, seed=seed, n=n)
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    a, b = run(1234), run(1234)
    assert a == b
    both = run(1234, n=2)
    assert both[0] == a[0] and both[1] == run(1235)[0]


# --- errors ---------------------------------------------------------------------------------


def post(http, path, body=None, raw=None, headers=None):
    h = {"content-type": "application/json", **(headers or {})}
    return http.post(path, content=raw if raw is not None else json.dumps(body), headers=h)


def check_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    assert e["param"] == param, e
    if code:
        assert e["code"] == code, e
    return e


def test_errors(http, model):
    c = "/v1/completions"
    check_error(post(http, c, raw='{"model": '), 400)
    check_error(post(http, c, raw="[1, 2"), 400)
    check_error(post(http, c, {"model": model, "prompt": "x", "max_tokens": "ten"}), 400, "max_tokens")
    check_error(post(http, c, {"prompt": "x"}), 400, "model")
    check_error(post(http, c, {"model": model}), 400, "prompt")
    check_error(post(http, "/v1/chat/completions", {"model": model, "messages": "hi"}), 400, "messages")
    cases = [
        ("temperature", 2.5),
        ("temperature", -1),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("top_p", 0),
        ("top_p", 1.01),
        ("n", 0),
        ("n", 9),
        ("stop", ["a", "b", "c", "d", "e"]),
    ]
    for field, value in cases:
        e = check_error(post(http, c, {"model": model, "prompt": "x", field: value}), 400, field)
        assert e["type"] == "invalid_request_error"
    chat = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    check_error(post(http, "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 21}), 400, "top_logprobs")
    check_error(post(http, "/v1/chat/completions", {**chat, "max_completion_tokens": 0}), 400, "max_completion_tokens")
    check_error(post(http, c, {"model": "no-such-model", "prompt": "x"}), 404, "model", "model_not_found")
    long = "hello " * 9000
    e = check_error(post(http, c, {"model": model, "prompt": long, "max_tokens": 10}), 400, "prompt", "context_length_exceeded")
    assert "context length" in e["message"]
    check_error(post(http, c, {"model": model, "prompt": [1, 2, 3], "max_tokens": 10**6}), 400, "prompt", "context_length_exceeded")
    check_error(post(http, c, raw=b'{"model": "m", "prompt": "' + b"a" * (5 << 20) + b'"}'), 413, None, "request_too_large")
    check_error(http.get("/v1/nothing"), 404, None, "not_found")
    check_error(http.get("/v1/completions"), 405)
    # The server still answers.
    assert post(http, c, {"model": model, "prompt": "ok", "max_tokens": 2}).status_code == 200


def start_server(*args):
    """A second `latent serve` on a free port; returns (process, base URL)."""
    if not BIN or not MODEL_PATH:
        pytest.skip("LATENT_BIN and LATENT_MODEL are needed to start a second server")
    p = subprocess.Popen(
        [BIN, "serve", "--port", "0", "--model", MODEL_PATH, "--threads", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = p.stdout.readline()
    m = re.match(r"listening on (http://\S+)", line)
    assert m, f"unexpected first line {line!r}"
    base = m.group(1)
    t0 = time.time()
    while httpx.get(base + "/health").status_code != 200:
        assert time.time() - t0 < 60 and p.poll() is None, "the second server did not become ready"
        time.sleep(0.05)
    return p, base


def test_api_key_queue_full_and_kv_too_small():
    # 12 MiB of KV: 4 blocks of 64 tokens for SmolLM2 (45 KiB per token); one sequence at a
    # time and one waiting.
    p, base = start_server("--api-key", "sekrit", "--max-seqs", "1", "--max-queue", "1", "--kv-memory", "12M")
    try:
        with httpx.Client(base_url=base, timeout=60) as h:
            assert h.get("/health").status_code == 200  # open without the key
            model = os.path.splitext(os.path.basename(MODEL_PATH))[0]
            body = {"model": model, "prompt": "Hi", "max_tokens": 2}
            check_error(post(h, "/v1/completions", body), 401, None, "invalid_api_key")
            check_error(post(h, "/v1/completions", body, headers={"authorization": "Bearer wrong"}), 401, None, "invalid_api_key")
            check_error(h.get("/v1/models"), 401, None, "invalid_api_key")
            auth = {"authorization": "Bearer sekrit"}
            assert post(h, "/v1/completions", body, headers=auth).status_code == 200
            # Through the openai client too.
            oc = OpenAI(base_url=base + "/v1", api_key="sekrit", max_retries=0)
            assert oc.models.list().data[0].id == model
            # More than the KV pool holds.
            big = {**body, "prompt": "word " * 200, "max_tokens": 100}
            check_error(post(h, "/v1/completions", big, headers=auth), 400, "max_tokens", "kv_cache_too_small")
            # One running (streaming, held open), one waiting, the third refused. Greedy
            # counting runs the whole 150 tokens (no end token).
            long = {**body, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 150, "temperature": 0, "stream": True}
            with h.stream("POST", "/v1/completions", json=long, headers=auth) as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: dropping the iterator may close the stream
                next(lines)  # the first token: it runs
                with h.stream("POST", "/v1/completions", json=long, headers=auth) as second:
                    assert second.status_code == 200
                    t0 = time.time()
                    while True:
                        m = {k: v for k, v in (l.rsplit(" ", 1) for l in h.get("/metrics", headers=auth).text.splitlines() if l and l[0] != "#")}
                        if (m["latent_requests_running"], m["latent_requests_waiting"]) == ("1", "1"):
                            break
                        assert time.time() - t0 < 10, f"expected one running and one waiting: {m}"
                        time.sleep(0.02)
                    r = post(h, "/v1/completions", body, headers=auth)
                    check_error(r, 429, None, "queue_full")
                    assert r.headers["retry-after"] == "1"
    finally:
        p.terminate()
        assert p.wait(timeout=30) == 0


# --- cancellation, concurrency, equality with `latent generate` ------------------------------


def test_disconnect_mid_stream_frees_blocks(http, model):
    # Greedy counting: no end token before the disconnect.
    body = {"model": model, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "temperature": 0, "stream": True}
    before = metrics(http)['latent_requests_finished_total{reason="cancelled"}']
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: {"):
                got += 1
                if got == 3:
                    break
    # The connection is closed: the request is cancelled and its blocks come back.
    m = wait_idle_and_free(http)
    assert m['latent_requests_finished_total{reason="cancelled"}'] >= before + 1


PROMPTS = [f"Question {i}: what is {i} plus {i * 3}? Answer:" for i in range(32)]


def test_32_concurrent_greedy_equal_sequential(client, model, http):
    seq = [complete(client, model, p, 12) for p in PROMPTS]
    stop = threading.Event()

    def bad_requests():
        # Bad requests in between never disturb the others.
        while not stop.is_set():
            assert post(http, "/v1/completions", {"model": model, "prompt": "x", "temperature": 7}).status_code == 400
            time.sleep(0.01)

    t = threading.Thread(target=bad_requests)
    t.start()
    try:
        with ThreadPoolExecutor(32) as ex:
            conc = list(ex.map(lambda p: complete(client, model, p, 12), PROMPTS))
    finally:
        stop.set()
        t.join()
    assert conc == seq
    wait_idle_and_free(http)


def test_generate_cli_equals_completions(client, model):
    if not BIN or not MODEL_PATH:
        pytest.skip("LATENT_BIN and LATENT_MODEL are needed")
    prompt = "The three primary colors are"
    out = subprocess.run(
        [BIN, "generate", "--model", MODEL_PATH, "--threads", "2", "--temperature", "0", "--max-tokens", "20", "--prompt", prompt, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    cli = json.loads(out.stdout)
    # `generate` without --chat tokenizes the prompt raw (BOS where the model asks for it),
    # as /v1/completions does with a string prompt.
    r = client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == cli["text"]
    assert r.usage.prompt_tokens == len(cli["prompt_tokens"])
    assert r.usage.completion_tokens == len(cli["tokens"])
    r = client.completions.create(model=model, prompt=cli["prompt_tokens"], max_tokens=20, temperature=0)
    assert r.choices[0].text == cli["text"]


def test_soak_64_streams_x_8(http, model):
    body = {"model": model, "max_tokens": 8, "stream": True, "temperature": 0.7, "stream_options": {"include_usage": True}}
    errors = []

    def worker(w):
        with httpx.Client(base_url=URL, timeout=300) as c:
            for i in range(8):
                try:
                    req = {**body, "prompt": f"Stream {w}, request {i}:", "seed": w * 100 + i}
                    with c.stream("POST", "/v1/completions", json=req) as r:
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.read()!r}")
                            continue
                        events = [l for l in r.iter_lines() if l.startswith("data: ")]
                    if events[-1] != "data: [DONE]":
                        errors.append(f"no [DONE]: {events[-2:]}")
                        continue
                    chunks = [json.loads(e[6:]) for e in events[:-1]]
                    if any("error" in c for c in chunks):
                        errors.append(f"error event: {events}")
                        continue
                    usage = chunks[-1]["usage"]
                    if not 1 <= usage["completion_tokens"] <= 8:
                        errors.append(f"usage {usage}")
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    errors.append(repr(e))

    with ThreadPoolExecutor(64) as ex:
        list(ex.map(worker, range(64)))
    assert errors == []
    m = wait_idle_and_free(http)
    assert m["latent_requests_running"] == 0
