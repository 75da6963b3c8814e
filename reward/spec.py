"""A recipe's ranker, `{reward_model: path}`, `{likelihood: model}`, `{judge: model}`, `{api: endpoint}` or
`{rule: language}`, with its settings: validated
here for every stage that ranks or judges (arbitrage, online DPO, evaluation), then built by `reward.load_ranker`.
`language_penalty` takes that much off a reward model's or a judge's score per failed language-fidelity check, and
`echo_penalty` (on by default) off an answer that restates its prompt (reward.rules), so that answers in the prompt's
language win."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from align.core.config import build_dataclass
from align.core.errors import ConfigError

RULES = ("language",)  # reward.rules.LanguageRanker: answers in the prompt's language win


@dataclass
class RankerSpec:
    """Exactly one of a reward model (any one-output sequence classifier), a chat LM scoring by likelihood
    (reward.likelihood), a judge LM, a judge behind an endpoint or a rule (RULES)."""

    reward_model: str | None = None
    likelihood: str | None = None
    judge: str | None = None
    api: dict | None = None  # a judge behind an OpenAI-compatible endpoint: {base_url, model, api_key_env, ...}
    rule: str | None = None
    language_penalty: float | None = None  # per failed fidelity check; a rule ranker's own penalty (default 1)
    echo_penalty: float | None = None  # per answer that restates its prompt (default reward.rules.ECHO_PENALTY; 0: off)
    batch_size: int = 16
    max_length: int = 1024  # reward model: tokens per (prompt, completion); likelihood: per completion
    max_new_tokens: int = 256  # judge: tokens per verdict
    explain: bool = True  # judge: explain before the verdict
    backend: str | None = None  # judge: generation backend (default: the stage's)

    def loaded_model(self) -> tuple[str, str] | None:
        """(key, model) of the local model this ranker loads, if any."""
        return next(
            (
                (k, v)
                for k, v in (
                    ("reward_model", self.reward_model),
                    ("likelihood", self.likelihood),
                    ("judge", self.judge),
                )
                if v
            ),
            None,
        )

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def parse_ranker(value, source: str | None, key: str = "ranker", *, backend: str | None = None) -> RankerSpec:
    """The spec under `key`, with `backend` (the stage's) for a judge that names none."""
    if not isinstance(value, dict):
        raise ConfigError(
            source,
            key,
            "expected a mapping: {reward_model: path}, {likelihood: model}, {judge: model} or {rule: language}",
        )
    spec = build_dataclass(RankerSpec, value, source, prefix=f"{key}.")
    if sum(v is not None for v in (spec.reward_model, spec.likelihood, spec.judge, spec.api, spec.rule)) != 1:
        raise ConfigError(
            source,
            key,
            f"give exactly one of {key}.reward_model (a reward model), {key}.likelihood "
            f"(a chat LM scoring how much the prompt raises the answer's likelihood), "
            f"{key}.judge "
            f"(a judge LM), {key}.api (a judge behind an OpenAI-compatible endpoint) and "
            f"{key}.rule ({' or '.join(RULES)}: a rule)",
        )
    if spec.api is not None:
        from align.generation.api import APISpec

        build_dataclass(APISpec, spec.api if isinstance(spec.api, dict) else {}, source, prefix=f"{key}.api.")
    if spec.rule is not None and spec.rule not in RULES:
        raise ConfigError(source, f"{key}.rule", f"unknown rule {spec.rule!r} (expected {', '.join(RULES)})")
    for name in ("language_penalty", "echo_penalty"):
        value = getattr(spec, name)
        if value is not None and not value >= 0:
            raise ConfigError(source, f"{key}.{name}", f"must be at least 0, got {value}")
    if spec.batch_size < 1 or spec.max_length < 8 or spec.max_new_tokens < 1:
        bad = "batch_size" if spec.batch_size < 1 else "max_length" if spec.max_length < 8 else "max_new_tokens"
        raise ConfigError(source, f"{key}.{bad}", f"out of range: {getattr(spec, bad)}")
    from align.generation.generate import BACKENDS

    if spec.backend is not None and spec.backend not in BACKENDS:
        raise ConfigError(
            source, f"{key}.backend", f"unknown generation backend {spec.backend!r} (expected {', '.join(BACKENDS)})"
        )
    if spec.backend is None:
        spec.backend = backend
    return spec


KINDS = {
    "reward_model": "reward model",
    "likelihood": "likelihood ranker",
    "judge": "judge LM",
    "api": "judge API",
    "rule": "rule",
}


def describe_ranker(spec: dict | None) -> str:
    """A ranker's kind and model in a few words, for reports."""
    if not spec:
        return "none"
    kind = next((k for k in KINDS if spec.get(k)), None)
    if kind is None:
        return "none"
    value = spec[kind].get("model", "?") if kind == "api" else spec[kind]
    return f"{KINDS[kind]} `{value}`"
