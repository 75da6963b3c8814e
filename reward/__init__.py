"""Reward models for polyalign: Bradley-Terry training, ranking and LLM-as-judge, the rule rankers (language, echo)
and `load_ranker`, where arbitrage, online DPO and evaluation build their ranker. A layer beside merge/, below the
stages: it may import align's training, evaluation, generation, data, models and core, never align.stages."""


def load_ranker(spec: dict, model_args=None, *, log_dir=None):
    """A recipe's ranker: `{reward_model: path}` (a RewardRanker), `{likelihood: model}` (a LikelihoodRanker, no
    training needed), `{judge: model}` (a PairwiseJudge) or
    `{rule: language}` (a LanguageRanker), with batch_size, max_length (reward model), max_new_tokens, explain and
    backend (judge: auto, transformers or vllm). Every model ranker is wrapped in WithRulePenalties: an answer that
    restates its prompt loses `echo_penalty` (default reward.rules.ECHO_PENALTY; 0 turns it off), one in the wrong
    language `language_penalty` per failed check (default 0). `{api: {base_url, model, api_key_env, ...}}` is a
    judge behind an OpenAI-compatible endpoint; its responses are logged under `log_dir` (the stage's partial directory), so a resumed run pays for none twice.
    Arbitrage, online DPO and evaluation all build theirs here."""
    from reward.rules import ECHO_PENALTY, LanguageRanker, WithRulePenalties

    spec = {
        "batch_size": 16,
        "max_length": 1024,
        "max_new_tokens": 256,
        "explain": True,
        "backend": "auto",
        "echo_penalty": ECHO_PENALTY,
        **{k: v for k, v in spec.items() if v is not None},
    }
    if spec.get("rule"):
        return LanguageRanker(penalty=spec.get("language_penalty", 1.0), echo_penalty=spec["echo_penalty"])
    ranker = _model_ranker(spec, model_args, log_dir)
    if not spec.get("language_penalty") and not spec["echo_penalty"]:
        return ranker
    return WithRulePenalties(ranker, spec.get("language_penalty") or 0.0, spec["echo_penalty"])


def _model_ranker(spec: dict, model_args, log_dir):
    from reward.judge import PairwiseJudge
    from reward.likelihood import LikelihoodRanker
    from reward.rank import RewardRanker

    if spec.get("api"):
        from pathlib import Path

        from align.generation.api import APISpec, api_judge_backend

        log = Path(log_dir) / "judge_api.jsonl" if log_dir is not None else None
        return PairwiseJudge(
            backend=api_judge_backend(APISpec(**spec["api"]), spec["max_new_tokens"], log=log), explain=spec["explain"]
        )
    if spec.get("reward_model"):
        return RewardRanker(
            spec["reward_model"], batch_size=spec["batch_size"], max_length=spec["max_length"], model_args=model_args
        )
    if spec.get("likelihood"):
        return LikelihoodRanker(
            spec["likelihood"], batch_size=spec["batch_size"], max_length=spec["max_length"], model_args=model_args
        )
    return PairwiseJudge(
        model=spec["judge"],
        batch_size=spec["batch_size"],
        model_args=model_args,
        max_new_tokens=spec["max_new_tokens"],
        explain=spec["explain"],
        backend_name=spec["backend"],
    )
