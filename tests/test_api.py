"""Chat endpoints as a backend, against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 with the
embedded model, behind a recording proxy that can refuse requests (as a rate-limited endpoint does)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import free_port

from align.core.errors import ConfigError
from align.generation.api import APIBackend, APIError, APISpec, api_judge_backend
from align.generation.generate import GenerationArgs, generate_logged, plan_batches

STARTUP_DEADLINE = 180  # seconds; the server takes about 10 s on two busy cores
SHORT = GenerationArgs(max_new_tokens=8)
PROMPTS = [
    [{"role": "user", "content": text}]
    for text in (
        "What is the capital of France?",
        "Was ist zwei plus drei?",
        "日本の首都はどこですか？",
        "¿Cuánto es siete por ocho?",
        "Name a colour.",
        "Say hello in Italian.",
    )
]


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(root URL, model name) of `transformers serve` pinned to the embedded model; stopped after the module."""
    from align.models.loading import model_path

    model, port = model_path("smollm2-135m"), free_port()
    logs = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_CACHE": str(logs.parent / "hub"),
    }
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    with open(logs, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{logs.read_text()[-2000:]}")
            try:
                if get(port, "/health") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not up after {STARTUP_DEADLINE} s:\n{logs.read_text()[-2000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}", model
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of the server: records every request and answers the next ones with the
    statuses queued in `refuse` (with a short Retry-After) instead of forwarding them."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.seen: list[dict] = []  # path, authorization, body (JSON), status
        self.refuse: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                proxy.handle(self)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # HTTP/1.0: one request per connection
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self, status: int | None = 200) -> list[dict]:
        return [s for s in self.seen if s["body"] is not None and (status is None or s["status"] == status)]

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        data = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        with self.lock:
            refused = self.refuse.pop(0) if self.refuse else None
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if refused:
                status, body = refused, b'{"error": {"message": "refused by the test"}}'
                extra = {"retry-after-ms": "20"}
            else:
                status, body, extra = *self.forward(request.command, request.path, data), {}
        finally:
            with self.lock:
                self.in_flight -= 1
                self.seen.append(
                    {
                        "path": request.path,
                        "authorization": request.headers.get("Authorization"),
                        "body": json.loads(data) if data else None,
                        "status": status,
                    }
                )
        request.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **extra}.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    def forward(self, method: str, path: str, data: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            connection.request(method, path, body=data or None, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def proxy(server):
    proxy = Proxy(server[0])
    yield proxy
    proxy.stop()


@pytest.fixture
def spec(server, proxy):
    return APISpec(base_url=proxy.url, model=server[1], max_concurrency=4, max_retries=3)


def asked(proxy: Proxy) -> Counter:
    """How many answered requests the server got for each prompt (by its last message)."""
    return Counter(s["body"]["messages"][-1]["content"] for s in proxy.posts())


def test_answers_come_back_in_input_order_from_concurrent_requests(spec, proxy):
    backend = APIBackend(spec)
    answers = backend(PROMPTS[:4], SHORT, seed=0)
    assert len(answers) == 4 and all(len(a) == 1 and a[0] for a in answers)
    assert backend.requests == 4 and asked(proxy) == Counter(p[-1]["content"] for p in PROMPTS[:4])
    assert proxy.most_in_flight > 1
    assert "paris" in answers[0][0].lower()  # the first prompt's answer, not another's


def test_samples_the_server_does_not_return_at_once_are_asked_for_again(spec, proxy):
    """`transformers serve` ignores `n`: the backend asks once more, with another seed, for the missing sample."""
    backend = APIBackend(spec)
    [samples] = backend(PROMPTS[:1], GenerationArgs(max_new_tokens=8, temperature=1.0, num_samples=2), seed=5)
    assert len(samples) == 2 and all(samples)
    first, second = (s["body"] for s in proxy.posts())
    assert first["n"] == 2 and "n" not in second and first["seed"] != second["seed"]
    assert backend.requests == 2


def test_a_refused_request_is_retried_with_backoff(spec, proxy):
    proxy.refuse = [429, 503]
    [[answer]] = APIBackend(spec)(PROMPTS[:1], SHORT, seed=0)
    assert answer
    assert [s["status"] for s in proxy.posts(None)] == [429, 503, 200]
    assert len({json.dumps(s["body"], sort_keys=True) for s in proxy.posts(None)}) == 1  # the same request again


def test_refusals_past_the_retries_are_one_line_errors(spec, proxy):
    proxy.refuse = [503] * 3
    one_retry = APISpec(base_url=spec.base_url, model=spec.model, max_retries=1)
    with pytest.raises(APIError, match="HTTP 503") as error:
        APIBackend(one_retry)(PROMPTS[:1], SHORT, seed=0)
    assert "\n" not in str(error.value) and len(proxy.posts(503)) == 2


class Interrupted(Exception):
    pass


class Killed(APIBackend):
    """A backend whose process dies when it is about to send request number `after + 1`."""

    after = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sending, self.sent = threading.Lock(), 0

    def _create(self, body, n):
        with self.sending:
            self.sent += 1
            number = self.sent
        if number > self.after:
            raise Interrupted
        return super()._create(body, n)


def test_a_teacher_run_killed_mid_batch_resumes_without_sending_a_request_twice(spec, proxy, tmp_path):
    """Batches of 3: the first is logged whole; the kill comes inside the second, after one of its requests was
    answered. The rerun takes that answer from the response log and asks only for the rest."""
    args = GenerationArgs(max_new_tokens=8, batch_size=3)
    records, responses = tmp_path / "teacher.jsonl", tmp_path / "teacher.responses.jsonl"
    with pytest.raises(Interrupted):
        generate_logged(records, PROMPTS, args, lambda: (Killed(spec, log=responses), None), progress=False)
    assert len(records.read_text().splitlines()) == 3
    assert len(responses.read_text().splitlines()) == 4
    rerun = APIBackend(spec, log=responses)
    rows = generate_logged(records, PROMPTS, args, lambda: (rerun, None), progress=False)
    assert [r["index"] for r in rows] == list(range(len(PROMPTS))) and all(r["completions"][0] for r in rows)
    assert rerun.requests == 2
    assert asked(proxy) == Counter(p[-1]["content"] for p in PROMPTS)  # each prompt sent exactly once
    loaded = []
    again = generate_logged(records, PROMPTS, args, lambda: loaded.append(1), progress=False)
    assert again == rows and not loaded and len(proxy.posts()) == len(PROMPTS)


def test_an_api_judge_compares_answers_through_the_server(spec, proxy):
    from reward.judge import JUDGE_SYSTEM, PairwiseJudge

    judge = PairwiseJudge(backend=api_judge_backend(spec, max_new_tokens=8), explain=False)
    [judgement] = judge.compare(["What is the capital of France?"], ["Paris."], ["Berlin."])
    assert judgement.winner in ("a", "b", "tie") and all(judgement.raw)
    judged = proxy.posts()
    assert len(judged) == 2 and all(s["body"]["temperature"] == 0 and "seed" not in s["body"] for s in judged)
    assert judged[0]["body"]["messages"][0]["content"].startswith(JUDGE_SYSTEM[:40])


def test_the_key_comes_from_the_named_variable_and_is_written_nowhere(spec, proxy, tmp_path, monkeypatch):
    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv("POLYALIGN_TEST_API_KEY", secret)
    keyed = APISpec(base_url=spec.base_url, model=spec.model, api_key_env="POLYALIGN_TEST_API_KEY")
    backend = APIBackend(keyed, log=tmp_path / "responses.jsonl")
    rows = generate_logged(tmp_path / "log.jsonl", PROMPTS[:1], SHORT, lambda: (backend, None), progress=False)
    assert rows[0]["completions"][0]
    assert [s["authorization"] for s in proxy.seen] == [f"Bearer {secret}"]
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert written and secret not in written
    assert secret not in repr(keyed) and secret not in repr(backend) and secret not in repr(vars(keyed))
    unkeyed = APIBackend(spec)(PROMPTS[:1], SHORT, seed=0)  # no variable named: a placeholder the server ignores
    assert unkeyed[0][0] and proxy.seen[-1]["authorization"] == "Bearer EMPTY"


def test_a_missing_key_variable_is_a_one_line_error_naming_it(monkeypatch):
    from align.core.config import build_dataclass

    monkeypatch.delenv("POLYALIGN_UNSET_KEY", raising=False)
    raw = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "POLYALIGN_UNSET_KEY"}
    with pytest.raises(ConfigError) as error:
        build_dataclass(APISpec, raw, "recipe.yaml", "judge.api.")
    assert str(error.value) == (
        "recipe.yaml: 'judge.api.api_key_env': environment variable POLYALIGN_UNSET_KEY is "
        "not set (it must hold the endpoint's API key)"
    )
    pasted = "sk-live-abcdef0123456789"  # a key where the variable's name belongs is refused without echoing it
    with pytest.raises(ConfigError) as error:
        APISpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=pasted)
    assert pasted not in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"base_url": "127.0.0.1:8000"}, "base_url"),
        ({"model": ""}, "model"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_spec_values_are_checked(raw, key):
    with pytest.raises(ConfigError) as error:
        APISpec(**{"base_url": "http://127.0.0.1:9/v1", "model": "m", **raw})
    assert error.value.key == key


def test_batches_without_a_tokenizer_are_planned_by_characters():
    prompts = [[{"role": "user", "content": "x" * n}] for n in (5, 50, 20, 50, 1)]
    batches = plan_batches(prompts, None, batch_size=2)
    assert [i for b in batches for i in b] == [1, 3, 2, 0, 4] and all(len(b) <= 2 for b in batches)


def api_config(spec: APISpec) -> dict:
    return {
        "base_url": spec.base_url,
        "model": spec.model,
        "max_concurrency": spec.max_concurrency,
        "max_retries": spec.max_retries,
    }


def test_an_api_teacher_in_arbitrage_beside_a_checkpoint(spec, proxy, tmp_path, tokenizer):
    """An endpoint is a teacher like a checkpoint: asked once per prompt, ranked and routed with the other."""
    from conftest import scaled_teacher, tiny_reward_model, write_jsonl

    from align.stages.arbitrage import run_arbitrage

    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": p[0]["content"], "lang": lang, "id": f"p{i}"}
            for i, (p, lang) in enumerate(zip(PROMPTS[:4], "en de ja es".split()))
        ],
    )
    raw = {
        "prompts": str(prompts),
        "output_dir": str(tmp_path / "arbitrage"),
        "max_new_tokens": 8,
        "dtype": "fp32",
        "teachers": [
            {"name": "endpoint", "api": api_config(spec)},
            {"name": "local", "model": str(scaled_teacher(tmp_path / "t", tokenizer, seed=1))},
        ],
        "ranker": {"reward_model": str(tiny_reward_model(tmp_path / "rm", tokenizer))},
    }
    out = run_arbitrage(raw)
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert sum(c["model"] == "endpoint" for c in candidates) == 4 and all(c["completion"] for c in candidates)
    assert sum(asked(proxy).values()) == 4
    routing = json.loads((out / "routing.json").read_text())
    assert routing["all"]["teachers"]["endpoint"]["wins"] + routing["all"]["teachers"]["local"]["wins"] == 4
    assert not list(out.glob("api.*"))  # the response logs are work files: gone from the output


def test_an_api_judge_in_evaluation(spec, proxy, tmp_path):
    from conftest import write_jsonl

    from align.stages.evaluate import run_evaluate

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is the capital of France?", "lang": "en", "id": "q"}])
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "q", "completion": "Paris is the capital of France."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "q", "completion": "I like trains."}])
    out = run_evaluate(
        {
            "models": {"b": str(b), "a": str(a)},
            "prompts": str(prompts),
            "output_dir": str(tmp_path / "eval"),
            "judge": {"api": api_config(spec), "max_new_tokens": 8, "explain": False},
        }
    )
    counts = json.loads((out / "metrics.json").read_text())["models"]["a"]["vs_baseline"]["all"]
    assert counts["win"] + counts["loss"] + counts["tie"] == 1
    assert sum(asked(proxy).values()) == 2  # both orders, each asked once


def test_an_api_translator_in_contrast(spec, proxy, tmp_path, tokenizer):
    from conftest import scaled_teacher, write_jsonl

    from align.stages.contrast import run_contrast

    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Quelle est la capitale de la France ?", "lang": "fr", "id": "q"}]
    )
    local = str(scaled_teacher(tmp_path / "t", tokenizer, seed=1))
    out = run_contrast(
        {
            "prompts": str(prompts),
            "output_dir": str(tmp_path / "contrast"),
            "strong": local,
            "weak": local,
            "translator": {"api": api_config(spec), "name": "endpoint"},
            "english_prompt": "instruct",
            "check_language": False,
            "max_new_tokens": 8,
            "dtype": "fp32",
        }
    )
    pair = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["translated_by"] == "endpoint" and pair["rejected"][0]["content"]
    assert sum(asked(proxy).values()) == 1  # the weak answer translated once
