"""OpenAI-compatible chat endpoints (OpenAI, vLLM's and TGI's servers, `transformers serve`) as a generation backend:
one client for judges, arbitrage teachers, contrast translators and online-DPO rankers.

The key is read from the environment variable the recipe names, when the client is made, and is kept only by the
client: a spec holds the variable's name, so recipes, logs, reprs and config hashes never see the key. Requests of
a batch run concurrently up to `max_concurrency`; the openai client retries refusals (408, 409, 429, 5xx) and lost
connections with exponential backoff (0.5 s doubling to 8 s, less up to 25 % jitter) or the server's Retry-After.
With a `log`, every response is appended and flushed as it arrives and a rerun answers from it, so a killed run
never pays for a request twice, even one whose batch it did not finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from align.core.errors import ConfigError, PolyalignError
from align.core.io import AppendLog
from align.generation.generate import GenerationArgs, Messages

# What the client sends when the server wants no key (vLLM and `transformers serve` accept any).
NO_KEY = "EMPTY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class APIError(PolyalignError):
    """A request the server refused for good (a wrong key, model or URL) or that failed after every retry."""


@dataclass
class APISpec:
    """Where an OpenAI-compatible chat endpoint is and how hard to use it: `api: {base_url, model, api_key_env,
    max_concurrency}` in a recipe."""

    base_url: str  # up to the version, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = None  # the environment variable holding the key; None: the server wants none
    max_concurrency: int = 8  # requests in flight at once
    timeout: float = 120  # seconds per request attempt
    max_retries: int = 5  # retries of a refused or failed request, with backoff

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not re.match(r"https?://", self.base_url):
            raise ConfigError(None, "base_url", "must be an http:// or https:// URL")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(None, "model", "must name the model the endpoint serves")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(str(self.api_key_env)):
            # never echo the value: a key pasted here by mistake must not reach a terminal or a log
            raise ConfigError(
                None,
                "api_key_env",
                "must be the name of an environment variable (letters, digits "
                "and _) that holds the key, not the key itself",
            )
        for key, least in (("max_concurrency", 1), ("max_retries", 0)):
            if getattr(self, key) < least:
                raise ConfigError(None, key, f"must be at least {least}, got {getattr(self, key)}")
        if not self.timeout > 0:
            raise ConfigError(None, "timeout", f"must be positive, got {self.timeout}")
        self.api_key()  # a missing key fails when the recipe is read, not after the first stage has run

    def api_key(self) -> str:
        """The key from the environment, read now (never stored on the spec)."""
        if self.api_key_env is None:
            return NO_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                None,
                "api_key_env",
                f"environment variable {self.api_key_env} is not set (it must hold the endpoint's API key)",
            )
        return key


def request_seed(seed: int, position: int, draw: int) -> int:
    """The seed of one request: a batch's seed told apart by the prompt's place in it and by the draw (a server that
    ignores `n` is asked again for the missing samples)."""
    digest = hashlib.sha256(f"{seed}:{position}:{draw}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class APIBackend:
    """The Backend protocol of align.generation.generate over a chat endpoint: `num_samples` completions per prompt, in input
    order, each prompt's requests in one of `max_concurrency` threads.

    A prompt is first asked for all its samples at once (`n`); a server that returns fewer (`transformers serve`
    ignores `n`) is asked again, one request per missing batch of samples, each with its own seed, until there are
    enough. `requests` counts the requests made (a retry inside the client is not one more). `log`: an append log
    of every response (request hashes and texts; never the key), answered from on a rerun.
    """

    def __init__(self, spec: APISpec, *, log: str | os.PathLike | None = None):
        import openai

        self.spec = spec
        self.requests = 0
        self._client = openai.OpenAI(
            base_url=spec.base_url, api_key=spec.api_key(), max_retries=spec.max_retries, timeout=spec.timeout
        )
        self._lock = threading.Lock()
        self._log = Path(log) if log is not None else None
        self._answered: dict[str, list[str]] = {}
        if self._log is not None:
            with AppendLog(self._log, key=lambda r: r["request"]) as previous:  # cuts a half-written last line
                self._answered = {r["request"]: r["choices"] for r in previous.records}

    def __repr__(self) -> str:
        return f"APIBackend({self.spec!r})"

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]:
        if not prompts:
            return []
        workers = min(self.spec.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api") as pool:
            futures = [pool.submit(self._samples, p, args, seed, i) for i, p in enumerate(prompts)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # requests already sent finish (and are logged); the rest are never sent
                    f.cancel()
                raise

    def _samples(self, prompt: Messages, args: GenerationArgs, seed: int, position: int) -> list[str]:
        """`args.num_samples` completions of one prompt, asking again while the server returns fewer."""
        samples: list[str] = []
        for draw in range(args.num_samples):  # each draw returns at least one sample: bounded
            body = {
                "model": self.spec.model,
                "messages": prompt,
                "max_tokens": args.max_new_tokens,
                "temperature": args.temperature,
                "top_p": args.top_p,
            }
            if args.temperature > 0:  # greedy requests go seedless: the same chat is the same request anywhere
                body["seed"] = request_seed(seed, position, draw)
            samples += self._choices(body, args.num_samples - len(samples))
            if len(samples) >= args.num_samples:
                return samples[: args.num_samples]
        raise APIError(
            f"{self.spec.base_url}: {self.spec.model} returned fewer than {args.num_samples} completions "
            f"in {args.num_samples} requests"
        )

    def _choices(self, body: dict, n: int) -> list[str]:
        """The texts of one request's choices: from the log when an earlier run made it, else from the server."""
        # n is left out of the request's identity: how many samples one request returned does not change what it was
        request = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        if request in self._answered:
            return self._answered[request]
        with self._lock:
            self.requests += 1
        response = self._create(body, n)
        choices = [(c.message.content or "").strip() for c in sorted(response.choices, key=lambda c: c.index)]
        if not choices:
            raise APIError(f"{self.spec.base_url}: {self.spec.model} returned no completion")
        if self._log is not None:
            with self._lock, open(self._log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"request": request, "choices": choices}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._answered[request] = choices
        return choices

    def _create(self, body: dict, n: int):
        import openai

        try:
            return self._client.chat.completions.create(**body, **({"n": n} if n > 1 else {}))
        except openai.APIStatusError as e:
            raise APIError(
                f"{self.spec.base_url}: HTTP {e.status_code} from the chat endpoint ({_first_line(e.message)})"
            ) from None
        except openai.APIConnectionError as e:
            raise APIError(
                f"{self.spec.base_url}: no answer after {self.spec.max_retries} retries ({_first_line(str(e))})"
            ) from None


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no message"


def api_judge_backend(
    spec: APISpec, max_new_tokens: int = 256, *, log: str | os.PathLike | None = None
) -> Callable[[list[Messages]], list[str]]:
    """A reward.judge.JudgeBackend over an endpoint: one greedy reply per chat, every chat's request in flight at
    once up to `max_concurrency` (`PairwiseJudge(backend=api_judge_backend(spec))`)."""
    backend = APIBackend(spec, log=log)
    args = GenerationArgs(max_new_tokens=max_new_tokens, temperature=0.0)

    def ask(chats: list[Messages]) -> list[str]:
        return [replies[0] for replies in backend(chats, args, seed=0)]

    ask.backend = backend  # type: ignore[attr-defined]
    return ask
