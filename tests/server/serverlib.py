"""Shared by the end-to-end server tests: a tiny model made at run time, the real `mixattn serve`
on a free loopback port, plain HTTP with the standard library, and server-sent events.

The model: a small text -> `mixattn data` (a SentencePiece tokenizer) -> `mixattn init` (random
weights of a tiny MixAttention preset) -> the tokenizer copied beside the weights, as `generate`
and `serve` look for DIR/tokenizer.model.
"""
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

WORDS = ("the river was cold and clear in the morning they walked along old road toward town "
         "where market stood bread costs twelve coins she said nothing more than that a small "
         "house on hill with green door").split()


class Checks:
    """Counts passed checks and collects failures, so one run reports every problem."""

    def __init__(self):
        self.passes = 0
        self.failures = []

    def check(self, condition, what):
        if condition:
            self.passes += 1
        else:
            self.failures.append(what)
            print(f"FAIL: {what}", flush=True)
        return condition

    def exit_code(self, name):
        print(f"{name}: {self.passes} checks passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def make_model(mixattn, workdir, max_position=8192, chat_template=None):
    """A model directory with a trained tokenizer and random weights; returns its path."""
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    corpus = os.path.join(workdir, "corpus.txt")
    rng = random.Random(1)
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(150):
            for _ in range(rng.randint(2, 6)):
                f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize()
                        + ".\n")
            f.write("\n")
    data, model = os.path.join(workdir, "data"), os.path.join(workdir, "model")
    run(mixattn, "data", "--in", corpus, "--out", data, "--vocab-size", "320")
    run(mixattn, "init", "--preset", "ma", "--layers", "8", "--hidden", "64", "--heads", "2",
        "--kv-heads", "1", "--head-dim", "32", "--ffn", "128", "--vocab", "320", "--window", "64",
        "--max-position", str(max_position), "--out", model)
    shutil.copy(os.path.join(data, "tokenizer.model"), model)
    if chat_template is not None:
        with open(os.path.join(model, "chat_template.json"), "w", encoding="utf-8") as f:
            json.dump(chat_template, f)
    return model


# The tests share two cores with their own clients. OpenMP's barriers make a two-thread engine
# tens of times slower when another process takes one of the cores, so the servers and `generate`
# here run the engine on one thread: these tests are about the server, not kernel speed.
ENGINE_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*argv, check=True):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENGINE_ENV)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def generate(mixattn, model, *args):
    """`mixattn generate --json` with `args`; returns its JSON."""
    return json.loads(run(mixattn, "generate", "--model", model, "--json", *args).stdout)


class Server:
    """`mixattn serve` on a free loopback port. Its stderr is collected; the port is read from
    the line it prints once it listens."""

    def __init__(self, mixattn, model, *flags, api_key=None, kv_memory="64MiB"):
        self.api_key = api_key
        argv = [mixattn, "serve", "--model", model, "--port", "0", "--kv-memory", kv_memory,
                *flags]
        if api_key:
            argv += ["--api-key", api_key]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=ENGINE_ENV)
        self.lines = []
        self.port = None
        listening = threading.Event()

        def read_stderr():
            for line in self.process.stderr:
                self.lines.append(line)
                if self.port is None and " at http://127.0.0.1:" in line:
                    self.port = int(line.split(" at http://127.0.0.1:")[1].split()[0])
                    listening.set()
            listening.set()  # the process ended

        self.reader = threading.Thread(target=read_stderr, daemon=True)
        self.reader.start()
        listening.wait(timeout=60)
        if self.port is None:
            self.process.kill()
            raise RuntimeError("the server did not start: " + "".join(self.lines))

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, auth=True, extra=None):
        headers = {"Content-Type": "application/json"}
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def request(self, method, path, body=None, auth=True, headers=None, raw=None):
        """One request on a fresh connection: (status, headers dict, body bytes). `body` is
        JSON-encoded; `raw` bytes go as they are."""
        connection = self.connection()
        try:
            payload = raw if raw is not None else (None if body is None else json.dumps(body))
            connection.request(method, path, payload, self.headers(auth, headers))
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def json(self, method, path, body=None, **kwargs):
        status, headers, data = self.request(method, path, body, **kwargs)
        return status, headers, json.loads(data)

    def open_stream(self, path, body):
        """Starts a streaming request; returns (connection, response) with the headers read."""
        connection = self.connection()
        connection.request("POST", path, json.dumps(body), self.headers())
        return connection, connection.getresponse()

    def tokens_per_second(self, seconds):
        """A number of tokens one request takes about `seconds` to generate on this server (the
        sanitizer build is ten times slower than the release build)."""
        started = time.monotonic()
        status, _, data = self.json("POST", "/v1/completions",
                                    {"prompt": "x", "max_tokens": 200, "ignore_eos": True})
        assert status == 200, data
        return int(200 / (time.monotonic() - started) * seconds)

    def metrics(self):
        """/metrics as {name with labels: float}."""
        status, _, data = self.request("GET", "/metrics")
        assert status == 200, status
        values = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def wait_for_metrics(self, predicate, timeout=30):
        """Polls /metrics until `predicate(metrics)` holds; returns the last metrics and whether
        it held before `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.metrics()
            if predicate(values):
                return values, True
            if time.monotonic() > deadline:
                return values, False
            time.sleep(0.02)

    def rss_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def sanitized(self):
        """True when the server runs under AddressSanitizer, whose quarantine of freed memory
        makes its resident size say nothing about leaks (LeakSanitizer checks those at exit)."""
        with open(f"/proc/{self.process.pid}/maps") as f:
            return "libasan" in f.read()

    def terminate(self, timeout=60):
        """SIGTERM, then the exit code (None if it did not exit in time; it is then killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self.reader.join(timeout=5)
        return code

    def stderr(self):
        return "".join(self.lines)


def kv_blocks_used(metrics):
    return (metrics['mixattn:kv_blocks_used{kind="full"}']
            + metrics['mixattn:kv_blocks_used{kind="sliding"}'])


def engine_idle(metrics):
    return (metrics["mixattn:num_requests_running"] == 0
            and metrics["mixattn:num_requests_waiting"] == 0 and kv_blocks_used(metrics) == 0)


def read_events(response, limit=None):
    """Server-sent events of `response` as a list of parsed JSON objects, "[DONE]" as the string
    itself; stops after `limit` events if given."""
    events = []
    while limit is None or len(events) < limit:
        line = response.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
        if data == "[DONE]":
            break
    return events
