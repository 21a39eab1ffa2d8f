#!/usr/bin/env python3
"""End-to-end checks of `mixattn serve`, the real binary over loopback HTTP.

  - every bad input of issue 5 gets its status and OpenAI's error shape
    {"error": {"message", "type", "param", "code"}}, and the server keeps serving after each;
  - responses, streams (SSE, usage, finish reasons), stop strings and seeds behave as OpenAI's
    API documents, and the text equals `mixattn generate` with the same seed;
  - a client that disconnects mid-stream has its request cancelled and its KV blocks freed;
  - too many waiting requests get 429 with Retry-After;
  - SIGTERM: new requests get 503, requests in flight finish (or, past the deadline, end with an
    error event), and the process exits 0;
  - with --admission optimistic and little KV memory, concurrent requests are preempted and
    recomputed, and each gets the text it gets alone;
  - bad flags exit 1 with a message naming the problem.

Usage: test_server_api.py --mixattn PATH --workdir DIR
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

from serverlib import (WORDS, Checks, Server, engine_idle, generate, kv_blocks_used, make_model,
                       read_events, run)

API_KEY = "test-key-123"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
CONTEXT = 4096  # the main server's --max-context
ANY = object()  # "do not check this field"


def expect_error(checks, what, result, status, param=ANY, code=ANY):
    """Checks an error response: the status and OpenAI's error object."""
    got_status, headers, body = result
    checks.check(got_status == status,
                 f"{what}: status {got_status}, expected {status}: {body[:300]!r}")
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        checks.check(False, f"{what}: the body is not an OpenAI error object: {body[:300]!r}")
        return None
    checks.check(sorted(error) == ["code", "message", "param", "type"],
                 f"{what}: error fields are message, type, param, code: {sorted(error)}")
    checks.check(isinstance(error.get("message"), str) and error["message"] != "",
                 f"{what}: a message")
    checks.check(isinstance(error.get("type"), str) and error["type"] != "", f"{what}: a type")
    checks.check(error.get("param") is None or isinstance(error["param"], str),
                 f"{what}: param is a string or null")
    checks.check(error.get("code") is None or isinstance(error["code"], str),
                 f"{what}: code is a string or null")
    if param is not ANY:
        checks.check(error.get("param") == param, f"{what}: param {error.get('param')!r}, "
                     f"expected {param!r} ({error.get('message')})")
    if code is not ANY:
        checks.check(error.get("code") == code,
                     f"{what}: code {error.get('code')!r}, expected {code!r}")
    return error


def still_serving(checks, server, after):
    status, _, body = server.request("GET", "/health")
    checks.check(status == 200, f"still serving after {after}: /health {status} {body[:200]!r}")


def check_bad_inputs(checks, server):
    ok = {"prompt": "the river", "max_tokens": 2}
    long_text = "the river was cold and clear in the morning " * 600  # > 4096 tokens
    big_body = json.dumps({"prompt": "x" * (70 << 10), "max_tokens": 1}).encode()
    message = {"role": "user", "content": "hello"}
    cases = [
        # (what, method, path, request keyword arguments, status, param, code)
        ("no API key", "POST", COMPLETIONS, dict(body=ok, auth=False), 401, None,
         "invalid_api_key"),
        ("a wrong API key", "POST", COMPLETIONS,
         dict(body=ok, auth=False, headers={"Authorization": "Bearer wrong"}), 401, None,
         "invalid_api_key"),
        ("no API key on /v1/models", "GET", "/v1/models", dict(auth=False), 401, None, ANY),
        ("no API key on /tokenize", "POST", "/tokenize", dict(body={"prompt": "x"}, auth=False),
         401, None, ANY),
        ("malformed JSON", "POST", COMPLETIONS, dict(raw=b'{"prompt": "x",'), 400, None,
         "invalid_json"),
        ("a JSON array body", "POST", COMPLETIONS, dict(raw=b"[1, 2]"), 400, None, "invalid_json"),
        ("an empty body", "POST", CHAT, dict(raw=b""), 400, None, "invalid_json"),
        ("invalid UTF-8", "POST", COMPLETIONS, dict(raw=b'{"prompt": "caf\xc3(\xff"}'), 400, None,
         "invalid_encoding"),
        ("a lone surrogate escape", "POST", COMPLETIONS, dict(raw=b'{"prompt": "\\ud800"}'), 400,
         None, "invalid_json"),
        ("deeply nested JSON", "POST", COMPLETIONS, dict(raw=b"[" * 50000), 400, None,
         "invalid_json"),
        ("prompt of the wrong type", "POST", COMPLETIONS, dict(body={"prompt": 5}), 400, "prompt",
         "invalid_type"),
        ("max_tokens a string", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "max_tokens": "10"}), 400, "max_tokens", "invalid_type"),
        ("temperature a string", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "temperature": "hot"}), 400, "temperature", "invalid_type"),
        ("stream a string", "POST", COMPLETIONS, dict(body={"prompt": "x", "stream": "yes"}), 400,
         "stream", "invalid_type"),
        ("stop a number", "POST", COMPLETIONS, dict(body={"prompt": "x", "stop": 5}), 400, "stop",
         "invalid_type"),
        ("seed a fraction", "POST", COMPLETIONS, dict(body={"prompt": "x", "seed": 1.5}), 400,
         "seed", "invalid_type"),
        ("messages a string", "POST", CHAT, dict(body={"messages": "hi"}), 400, "messages",
         "invalid_type"),
        ("a message role of the wrong type", "POST", CHAT,
         dict(body={"messages": [{"role": 7, "content": "x"}]}), 400, "messages[0].role",
         "invalid_type"),
        ("message content of the wrong type", "POST", CHAT,
         dict(body={"messages": [{"role": "user", "content": 5}]}), 400, "messages[0].content",
         "invalid_type"),
        ("a missing prompt", "POST", COMPLETIONS, dict(body={"max_tokens": 3}), 400, "prompt",
         "missing_required_parameter"),
        ("missing messages", "POST", CHAT, dict(body={"max_tokens": 3}), 400, "messages",
         "missing_required_parameter"),
        ("empty messages", "POST", CHAT, dict(body={"messages": []}), 400, "messages", ANY),
        ("a message without a role", "POST", CHAT, dict(body={"messages": [{"content": "x"}]}),
         400, "messages[0].role", "missing_required_parameter"),
        ("a prompt longer than the context", "POST", COMPLETIONS,
         dict(body={"prompt": long_text, "max_tokens": 1}), 400, "prompt",
         "context_length_exceeded"),
        ("a chat longer than the context", "POST", CHAT,
         dict(body={"messages": [{"role": "user", "content": long_text}]}), 400, "messages",
         "context_length_exceeded"),
        ("max_tokens zero", "POST", COMPLETIONS, dict(body={"prompt": "x", "max_tokens": 0}), 400,
         "max_tokens", "invalid_value"),
        ("max_tokens negative", "POST", COMPLETIONS, dict(body={"prompt": "x", "max_tokens": -5}),
         400, "max_tokens", "invalid_value"),
        ("max_tokens beyond the context", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "max_tokens": 10 ** 6}), 400, "max_tokens",
         "context_length_exceeded"),
        ("max_tokens beyond 64 bits", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "max_tokens": 10 ** 30}), 400, "max_tokens", "invalid_value"),
        ("max_completion_tokens zero", "POST", CHAT,
         dict(body={"messages": [message], "max_completion_tokens": 0}), 400,
         "max_completion_tokens", "invalid_value"),
        ("n = 2", "POST", COMPLETIONS, dict(body={"prompt": "x", "n": 2}), 400, "n",
         "unsupported_value"),
        ("n = 2 on chat", "POST", CHAT, dict(body={"messages": [message], "n": 2}), 400, "n",
         "unsupported_value"),
        ("stream_options without stream", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "stream_options": {"include_usage": True}}), 400,
         "stream_options", ANY),
        ("temperature out of range", "POST", COMPLETIONS,
         dict(body={"prompt": "x", "temperature": 3}), 400, "temperature", "invalid_value"),
        ("top_p zero", "POST", COMPLETIONS, dict(body={"prompt": "x", "top_p": 0}), 400, ANY, ANY),
        ("the tool role", "POST", CHAT, dict(body={"messages": [{"role": "tool", "content": "x"}]}),
         400, "messages[0].role", "unsupported_value"),
        ("an image part", "POST", CHAT,
         dict(body={"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400,
         "messages[0].content[0].type", ANY),
        ("an empty stop string", "POST", COMPLETIONS, dict(body={"prompt": "x", "stop": [""]}),
         400, "stop", ANY),
        ("a token id outside the vocabulary", "POST", COMPLETIONS,
         dict(body={"prompt": [1, 5, 100000], "max_tokens": 1}), 400, ANY, ANY),
        ("detokenize of an id outside the vocabulary", "POST", "/detokenize",
         dict(body={"tokens": [5, 99999]}), 400, ANY, ANY),
        ("tokenize without a prompt", "POST", "/tokenize", dict(body={}), 400, "prompt", ANY),
        ("a body over the size limit", "POST", COMPLETIONS, dict(raw=big_body), 413, None,
         "request_too_large"),
        ("an unknown route", "POST", "/v1/nothing", dict(body=ok), 404, None, ANY),
        ("an unknown GET route", "GET", "/", dict(), 404, None, ANY),
    ]
    for what, method, path, kwargs, status, param, code in cases:
        expect_error(checks, what, server.request(method, path, **kwargs), status, param, code)
        still_serving(checks, server, what)

    for method, path, allowed in (("GET", COMPLETIONS, "POST"), ("DELETE", "/v1/models", "GET"),
                                  ("POST", "/health", "GET"), ("PUT", CHAT, "POST")):
        result = server.request(method, path, body=ok if method != "GET" else None)
        expect_error(checks, f"{method} {path}", result, 405, None, ANY)
        checks.check(result[1].get("Allow") == allowed,
                     f"{method} {path}: Allow: {result[1].get('Allow')}, expected {allowed}")
        still_serving(checks, server, f"{method} {path}")

    # Errors do not spoil a keep-alive connection: the next request on it is answered.
    connection = server.connection()
    for body, status in ((b'{"prompt": ', 400), (json.dumps({"prompt": "x", "n": 3}), 400),
                         (json.dumps(ok), 200)):
        connection.request("POST", COMPLETIONS, body, server.headers())
        response = connection.getresponse()
        response.read()
        checks.check(response.status == status,
                     f"keep-alive connection: {response.status}, expected {status}")
    connection.close()


def completion(server, **body):
    status, _, data = server.json("POST", COMPLETIONS, {"prompt": "the river", **body})
    assert status == 200, (status, data)
    return data


def check_responses(checks, server, mixattn, model):
    # A completion: OpenAI's shape, usage, and the text `mixattn generate` gives for the seed.
    data = completion(server, max_tokens=6, seed=11, temperature=0.8, ignore_eos=True)
    checks.check(data["object"] == "text_completion" and data["id"].startswith("cmpl-"),
                 f"completion object and id: {data['object']} {data['id']}")
    checks.check(data["model"] == "model", f"model name is the directory's: {data['model']}")
    choice = data["choices"][0]
    checks.check(choice["index"] == 0 and choice["finish_reason"] == "length",
                 f"finish_reason length: {choice}")
    status, _, tokenized = server.json("POST", "/tokenize", {"prompt": "the river"})
    checks.check(data["usage"] == {"prompt_tokens": tokenized["count"], "completion_tokens": 6,
                                   "total_tokens": tokenized["count"] + 6},
                 f"usage counts the prompt with BOS and the 6 tokens: {data['usage']}")
    expected = generate(mixattn, model, "--prompt", "the river", "--max-tokens", "6", "--seed",
                        "11", "--temperature", "0.8", "--ignore-eos")
    checks.check(choice["text"] == expected["text"],
                 f"text equals mixattn generate with the same seed: {choice['text']!r} vs "
                 f"{expected['text']!r}")
    greedy = completion(server, max_tokens=8, temperature=0)
    expected = generate(mixattn, model, "--prompt", "the river", "--max-tokens", "8",
                        "--temperature", "0")
    checks.check(greedy["choices"][0]["text"] == expected["text"],
                 "temperature 0 equals mixattn generate's greedy text")

    # Seeds: the same seed gives the same text, another seed another text.
    a = completion(server, max_tokens=16, seed=5, ignore_eos=True)["choices"][0]["text"]
    b = completion(server, max_tokens=16, seed=5, ignore_eos=True)["choices"][0]["text"]
    c = completion(server, max_tokens=16, seed=6, ignore_eos=True)["choices"][0]["text"]
    checks.check(a == b and a != c, f"seed 5 twice the same, seed 6 different: {a!r} {b!r} {c!r}")

    # A stop string cuts the text before its first occurrence and finishes with "stop".
    full = completion(server, max_tokens=40, seed=5, ignore_eos=True)["choices"][0]["text"]
    stop = full[10:12]
    cut = completion(server, max_tokens=40, seed=5, ignore_eos=True, stop=[stop, "never seen"])
    checks.check(cut["choices"][0]["text"] == full[:full.find(stop)]
                 and cut["choices"][0]["finish_reason"] == "stop",
                 f"stop {stop!r}: {cut['choices'][0]} from {full!r}")

    # Unknown fields are ignored, as OpenAI does.
    status, _, data = server.json("POST", COMPLETIONS, {"prompt": "x", "max_tokens": 2,
                                                        "frobnicate": {"a": 1}, "user": "u"})
    checks.check(status == 200, f"unknown fields are ignored: {status} {data}")

    # Streaming a completion: SSE chunks with usage: null, a finish chunk, a usage chunk, [DONE].
    body = {"prompt": "the river", "max_tokens": 6, "seed": 11, "temperature": 0.8,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    connection, response = server.open_stream(COMPLETIONS, body)
    checks.check(response.status == 200 and
                 response.getheader("Content-Type", "").startswith("text/event-stream"),
                 f"stream: 200 text/event-stream ({response.status})")
    events = read_events(response)
    connection.close()
    checks.check(events and events[-1] == "[DONE]", "the stream ends with [DONE]")
    chunks = [e for e in events if isinstance(e, dict)]
    streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    non_stream = completion(server, max_tokens=6, seed=11, temperature=0.8, ignore_eos=True)
    checks.check(streamed == non_stream["choices"][0]["text"],
                 f"streamed text equals the whole response: {streamed!r}")
    checks.check(all(c["object"] == "text_completion" for c in chunks), "chunk objects")
    checks.check(all("usage" in c and c["usage"] is None for c in chunks[:-1]),
                 "every chunk but the last has usage: null")
    checks.check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6,
                 f"the last chunk carries the usage: {chunks[-1]}")
    checks.check(chunks[-2]["choices"][0]["finish_reason"] == "length",
                 f"the chunk before it finishes with length: {chunks[-2]}")

    # Chat, whole and streamed.
    chat_body = {"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Where is the market?"}],
                 "max_completion_tokens": 5, "seed": 3, "ignore_eos": True}
    status, _, chat = server.json("POST", CHAT, chat_body)
    checks.check(status == 200 and chat["object"] == "chat.completion"
                 and chat["id"].startswith("chatcmpl-"), f"chat response: {status} {chat}")
    message = chat["choices"][0]["message"]
    checks.check(message["role"] == "assistant" and isinstance(message["content"], str),
                 f"chat message: {message}")
    connection, response = server.open_stream(CHAT, {**chat_body, "stream": True})
    events = read_events(response)
    connection.close()
    chunks = [e for e in events if isinstance(e, dict)]
    checks.check(events[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"].get("role") ==
                 "assistant", f"chat stream: role first, [DONE] last: {events[:2]} {events[-1:]}")
    checks.check(all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks),
                 "chat chunks, no usage without include_usage")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    checks.check(streamed == message["content"], f"streamed chat equals the whole: {streamed!r}")
    checks.check(chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"),
                 f"chat finish reason: {chunks[-1]}")

    # Models, tokenize / detokenize, health and metrics.
    status, _, models = server.json("GET", "/v1/models")
    checks.check(status == 200 and models["object"] == "list" and
                 [m["id"] for m in models["data"]] == ["model"], f"/v1/models: {models}")
    status, _, tokenized = server.json("POST", "/tokenize",
                                       {"prompt": "the river", "add_special_tokens": False})
    status, _, detokenized = server.json("POST", "/detokenize", {"tokens": tokenized["tokens"]})
    checks.check(detokenized == {"prompt": "the river"}, f"detokenize(tokenize(x)) = x: "
                 f"{detokenized}")
    status, headers, _ = server.request("GET", "/metrics", auth=False)
    checks.check(status == 200 and headers.get("Content-Type", "").startswith("text/plain"),
                 "/metrics needs no key and is text")
    metrics = server.metrics()
    for name in ("mixattn:num_requests_running", "mixattn:num_requests_waiting",
                 "mixattn:prompt_tokens_total", "mixattn:generation_tokens_total",
                 "mixattn:num_preemptions_total", "mixattn:time_to_first_token_seconds_count",
                 "mixattn:inter_token_latency_seconds_count",
                 "mixattn:e2e_request_latency_seconds_count",
                 'mixattn:kv_blocks_used{kind="full"}', 'mixattn:kv_blocks_used{kind="sliding"}',
                 "mixattn:kv_blocks_free", "mixattn:kv_standard_attention_bytes"):
        checks.check(name in metrics, f"/metrics has {name}")


def check_disconnect(checks, server):
    before = server.metrics()
    connection, response = server.open_stream(
        COMPLETIONS, {"prompt": "the river", "max_tokens": CONTEXT - 100, "ignore_eos": True,
                      "stream": True})
    read_events(response, limit=2)
    during = server.metrics()
    checks.check(kv_blocks_used(during) > 0 and during["mixattn:num_requests_running"] == 1,
                 "mid-stream the request holds KV blocks")
    standard = during.get("mixattn:kv_standard_attention_bytes", 0)
    used = (during['mixattn:kv_bytes_used{kind="full"}'] +
            during['mixattn:kv_bytes_used{kind="sliding"}'])
    checks.check(standard > 0, f"standard-attention bytes for the live tokens: {standard}")
    print(f"mid-stream: {used:.0f} KV bytes held, standard attention would hold {standard:.0f}")
    closed_at = time.monotonic()
    response.close()
    connection.close()
    after, idle = server.wait_for_metrics(engine_idle, timeout=30)
    print(f"disconnect -> KV blocks back to zero in {time.monotonic() - closed_at:.3f} s")
    checks.check(idle, f"after the disconnect nothing runs and no KV block is held: {after}")
    aborted = (after['mixattn:request_success_total{finished_reason="abort"}'] -
               before['mixattn:request_success_total{finished_reason="abort"}'])
    generated = (after["mixattn:generation_tokens_total"] -
                 before["mixattn:generation_tokens_total"])
    checks.check(aborted == 1, f"the request was cancelled (abort count +{aborted})")
    checks.check(generated < CONTEXT - 100, f"it stopped early: {generated} tokens generated")


def check_overload_and_drain(checks, mixattn, model):
    """One running request and one waiting: the next gets 429. Then SIGTERM while a long
    request streams: /health says draining, a new request gets 503, the stream completes, exit 0."""
    server = Server(mixattn, model, "--max-batch", "1", "--max-waiting", "1", "--drain-timeout",
                    "120")
    long_request = {"prompt": "the river", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    try:
        running = server.open_stream(COMPLETIONS, long_request)
        read_events(running[1], limit=1)
        waiting = server.open_stream(COMPLETIONS, {"prompt": "x", "max_tokens": 3,
                                                   "stream": True, "ignore_eos": True})
        checks.check(waiting[1].status == 200, "the second request is accepted to wait")
        metrics, ok = server.wait_for_metrics(
            lambda m: m["mixattn:num_requests_running"] == 1 and
            m["mixattn:num_requests_waiting"] == 1)
        checks.check(ok, "one running, one waiting")
        result = server.request("POST", COMPLETIONS, {"prompt": "x", "max_tokens": 3})
        error = expect_error(checks, "a third request", result, 429, None, "rate_limit_exceeded")
        checks.check(error is not None and error["type"] == "rate_limit_error", "429 type")
        checks.check(result[1].get("Retry-After") == "1",
                     f"429 has Retry-After: {result[1].get('Retry-After')}")
        running[1].close()
        running[0].close()
        events = read_events(waiting[1])
        waiting[0].close()
        checks.check(events[-1] == "[DONE]" and
                     events[-2]["choices"][0]["finish_reason"] == "length",
                     "the waiting request runs once the first is cancelled")

        # Long enough to be in flight while the checks below run, short enough to finish well
        # within the drain timeout.
        drained_tokens = min(server.tokens_per_second(2), 8000)
        draining = server.open_stream(COMPLETIONS, {**long_request, "max_tokens": drained_tokens,
                                                    "stream_options": {"include_usage": True}})
        read_events(draining[1], limit=1)
        # An idle keep-alive connection must not keep the server from exiting.
        idle = server.connection()
        idle.request("GET", "/health")
        idle.getresponse().read()
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while server.request("GET", "/health")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, _, health = server.json("GET", "/health")
        checks.check(status == 503 and health["status"] == "draining",
                     f"after SIGTERM /health says draining: {status} {health}")
        expect_error(checks, "a request while draining",
                     server.request("POST", COMPLETIONS, {"prompt": "x", "max_tokens": 2}), 503,
                     None, "server_shutting_down")
        events = read_events(draining[1])
        draining[0].close()
        usage = events[-2].get("usage") if len(events) >= 2 else None
        checks.check(events[-1] == "[DONE]" and usage is not None and
                     usage["completion_tokens"] == drained_tokens,
                     f"the request in flight finished in full ({drained_tokens} tokens): "
                     f"{events[-2:]}")
        code = server.process.wait(timeout=60)
        idle.close()
        checks.check(code == 0, f"exit code 0 after SIGTERM: {code} {server.stderr()[-500:]}")
    finally:
        if server.process.poll() is None:
            server.process.kill()

    # With no time to drain, a stream in flight ends with an error event and [DONE].
    server = Server(mixattn, model, "--drain-timeout", "0")
    try:
        connection, response = server.open_stream(COMPLETIONS, long_request)
        read_events(response, limit=1)
        code = server.terminate()
        events = read_events(response)
        connection.close()
        checks.check(len(events) >= 2 and events[-1] == "[DONE]" and "error" in events[-2] and
                     events[-2]["error"]["code"] == "server_shutting_down",
                     f"cancelled at the deadline: error event then [DONE]: {events[-2:]}")
        checks.check(code == 0, f"exit code 0: {code} {server.stderr()[-500:]}")
    finally:
        if server.process.poll() is None:
            server.process.kill()


def kv_blocks_per_request(config, tokens, block_tokens=64, chunk=256):
    """KvPlan::kv_blocks_per_sequence for the engine's default block size and prefill chunk (serve
    keeps both): a full owner holds ceil(T / B) blocks, a sliding one at most
    ceil((W + min(C, T) - 2) / B) + 1 while it writes a chunk. Admission reserves this many."""
    blocks = 0
    for layer, source in enumerate(config["kv_source_layers"]):
        if source != layer:
            continue  # reads another layer's KV
        whole = -(-tokens // block_tokens)
        window = config["sliding_window"][layer]
        blocks += whole if window is None else min(
            whole, -(-(window + min(chunk, tokens) - 2) // block_tokens) + 1)
    return blocks


def check_optimistic_admission(checks, mixattn, model):
    """--admission optimistic with KV memory for one request at --max-context: eight concurrent
    greedy requests run out of blocks, so some are preempted and recomputed, and each still gets
    exactly the text it gets alone (f32 weights and KV: batched and alone logits are equal)."""
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    max_context, max_tokens, requests = 512, 400, 8
    block_bytes = 2 * 64 * config["num_key_value_heads"] * config["head_dim"] * 4  # f32
    # 26 blocks for this model: just what one request at --max-context reserves, so each request
    # (prompt + 400 tokens <= 512) is accepted. Decoding at T tokens a request holds
    # ceil(T / 64) full blocks and 2 per sliding owner (a 64-token window spans 2 blocks), so
    # any three requests past 200 tokens at once need 3 * (4 + 6) = 30 > 26 blocks: unless the
    # eight requests, released together, arrived spread over several request lifetimes, blocks
    # run out and the newest running request is preempted.
    pool_blocks = kv_blocks_per_request(config, max_context)
    server = Server(mixattn, model, "--admission", "optimistic", "--weights-dtype", "f32",
                    "--kv-dtype", "f32", "--max-context", str(max_context),
                    kv_memory=f"{pool_blocks * block_bytes // 1024}KiB")
    try:
        checks.check(f"({pool_blocks} blocks of 64 tokens)" in server.stderr() and
                     "admission optimistic" in server.stderr(),
                     f"the start-up line states the pool and the admission: {server.stderr()}")
        prompts = [" ".join(WORDS[3 * i:3 * i + 3 + i % 3]) for i in range(requests)]

        def complete(prompt):
            return server.json("POST", COMPLETIONS, {"prompt": prompt, "max_tokens": max_tokens,
                                                     "temperature": 0, "ignore_eos": True})

        batched = [None] * requests
        start = threading.Barrier(requests)

        def send(i):
            start.wait()
            batched[i] = complete(prompts[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        preemptions = server.metrics()["mixattn:num_preemptions_total"]
        print(f"optimistic admission: {requests} requests of {max_tokens} tokens in "
              f"{pool_blocks} KV blocks, {preemptions:.0f} preemptions")
        checks.check(preemptions > 0, f"requests were preempted: {preemptions}")
        for i, (status, _, data) in enumerate(batched):
            choice = data.get("choices", [{}])[0]
            checks.check(status == 200 and choice.get("finish_reason") == "length" and
                         data["usage"]["completion_tokens"] == max_tokens,
                         f"batched request {i}: 200, length, {max_tokens} tokens: {status} "
                         f"{str(data)[:300]}")
            status, _, alone = complete(prompts[i])
            checks.check(status == 200 and choice.get("text") == alone["choices"][0]["text"],
                         f"batched request {i} (maybe preempted) gives the text it gives alone: "
                         f"{choice.get('text')!r} vs {alone}")
        checks.check(server.metrics()["mixattn:num_preemptions_total"] == preemptions,
                     "a request alone is not preempted")
        still_serving(checks, server, "preemptions")
        code = server.terminate()
        checks.check(code == 0, f"exit code 0 after SIGTERM: {code}")
    finally:
        if server.process.poll() is None:
            server.process.kill()


def check_flags(checks, mixattn, model, workdir):
    no_tokenizer = os.path.join(workdir, "no_tokenizer")
    os.makedirs(no_tokenizer, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(model, name), "rb") as src, \
                open(os.path.join(no_tokenizer, name), "wb") as dst:
            dst.write(src.read())
    bad_template = os.path.join(workdir, "bad_template")
    os.makedirs(bad_template, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        with open(os.path.join(model, name), "rb") as src, \
                open(os.path.join(bad_template, name), "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(bad_template, "chat_template.json"), "w") as f:
        f.write('{"user": "{content}"}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = str(busy.getsockname()[1])
    cases = [
        (["--port", "70000"], "--port"),
        (["--port", "http"], "--port"),
        (["--port", busy_port], "cannot listen"),
        (["--host", "256.1.1.1"], "cannot listen"),
        (["--kv-memory", "lots"], "--kv-memory"),
        (["--kv-memory", "100"], "KV memory"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-context", "99999"], "max_position_embeddings"),
        (["--max-waiting", "-1"], "--max-waiting"),
        (["--max-body", "10"], "--max-body"),
        (["--drain-timeout", "soon"], "--drain-timeout"),
        (["--kv-dtype", "f16"], "--kv-dtype"),
        (["--admission", "sometimes"], "--admission"),
    ]
    for flags, expected in cases:
        port = [] if "--port" in flags else ["--port", "0"]
        result = run(mixattn, "serve", "--model", model, *port, *flags, check=False)
        checks.check(result.returncode == 1 and expected in result.stderr,
                     f"serve {' '.join(flags)}: exit 1 naming {expected!r} "
                     f"(exit {result.returncode}: {result.stderr.strip()[-300:]})")
    busy.close()
    for model_dir, expected in (("/nonexistent/model", "no model at '/nonexistent/model'"),
                                (no_tokenizer, "tokenizer.model does not exist"),
                                (bad_template, "chat_template.json: missing field")):
        result = run(mixattn, "serve", "--model", model_dir, "--port", "0", check=False)
        checks.check(result.returncode == 1 and expected in result.stderr,
                     f"serve --model {model_dir}: exit 1 with {expected!r} "
                     f"(exit {result.returncode}: {result.stderr.strip()[-300:]})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    checks = Checks()
    started = time.monotonic()
    model = make_model(args.mixattn, args.workdir)
    check_flags(checks, args.mixattn, model, args.workdir)

    server = Server(args.mixattn, model, "--max-context", str(CONTEXT), "--max-body", "64KiB",
                    api_key=API_KEY)
    try:
        check_bad_inputs(checks, server)
        check_responses(checks, server, args.mixattn, model)
        check_disconnect(checks, server)
        code = server.terminate()
        checks.check(code == 0, f"exit code 0 after SIGTERM: {code}")
        checks.check("KV cache" in server.stderr() and "standard attention" in server.stderr(),
                     f"the start-up line states the KV plan: {server.stderr()[:400]}")
    finally:
        if server.process.poll() is None:
            server.process.kill()
    check_overload_and_drain(checks, args.mixattn, model)
    check_optimistic_admission(checks, args.mixattn, model)
    print(f"took {time.monotonic() - started:.1f} s")
    return checks.exit_code("server_api")


if __name__ == "__main__":
    sys.exit(main())
