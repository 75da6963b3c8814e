"""`polyalign score`: score candidates or preference pairs with a reward model."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from align.core.config import build_dataclass
from align.core.errors import ConfigError, InputError
from align.models.loading import ModelArgs, cuda_available, process_state

# ---------------------------------------------------------------------------------------------------- score


@dataclass
class ScoreArgs(ModelArgs):
    """The score recipe: the model keys of align.models.loading.ModelArgs, plus these."""

    input: Any = None  # candidates ({prompt?, completion, ...}) or pairs ({prompt, chosen, rejected, ...})
    output: str | None = None  # required: the JSONL the scored records go to
    prompts: Any = None  # a prompt dataset whose `id`s give candidates without a `prompt` field their prompt
    batch_size: int = 16  # pairs per scoring batch
    max_length: int = 1024  # tokens per scored sequence (longer ones are truncated and counted)
    sort_by_length: bool = True  # score in length-sorted batches (less padding; the output keeps input order)


def parse_score_config(raw: dict, source: str | None) -> ScoreArgs:
    args = build_dataclass(ScoreArgs, raw, source)
    if args.input is None:
        raise ConfigError(
            source, "input", "missing: a JSONL of candidates {prompt, completion} or pairs {prompt, chosen, rejected}"
        )
    if not args.output:
        raise ConfigError(source, "output", "missing: where to write the scored JSONL")
    if args.batch_size < 1:
        raise ConfigError(source, "batch_size", f"must be at least 1, got {args.batch_size}")
    if args.max_length < 8:
        raise ConfigError(source, "max_length", f"must be at least 8 tokens, got {args.max_length}")
    return args


@dataclass
class ScoreInput:
    kind: str  # "pairs" or "candidates"
    rows: list[dict]  # the rows as read, written back with their scores
    prompts: list  # per row: the prompt messages
    completions: list  # per row: [completion] (candidates) or [chosen, rejected] (pairs)
    langs: list


def read_score_input(spec: str, prompts_source: Any = None) -> ScoreInput:
    """Rows of candidates or of pairs (decided by the first row), validated with file:line:field errors."""
    from align.data import load_records
    from align.data.sources import iter_source

    if not isinstance(spec, str):
        raise ConfigError(None, "input", f"expected a path or datasets name, got {type(spec).__name__}")
    by_id = None if prompts_source is None else {r["id"]: r for r in load_records(prompts_source, "prompt")}
    out = ScoreInput("", [], [], [], [])
    for _unit, rows in iter_source(spec):
        for loc, row in rows:
            out.kind = out.kind or ("pairs" if "chosen" in row or "rejected" in row else "candidates")
            prompt, completions, lang = (_pair_row if out.kind == "pairs" else _candidate_row)(loc, row, by_id)
            out.rows.append(row)
            out.prompts.append(prompt)
            out.completions.append(completions)
            out.langs.append(lang if isinstance(lang, str) else None)
    if not out.rows:
        raise InputError(spec, "no records")
    return out


def _pair_row(loc, row: dict, by_id: dict | None) -> tuple[list, list, Any]:
    """(prompt, [chosen, rejected], lang) of a preference-pair row."""
    from align.data.formats import NORMALISERS, detect_format

    for name in ("chosen", "rejected"):
        if name not in row:
            raise loc.error("missing (this file holds preference pairs)", name)
    record = NORMALISERS[detect_format(row)](loc, row)
    return record["prompt"], [record["chosen"], record["rejected"]], row.get("lang") or row.get("language")


def _candidate_row(loc, row: dict, by_id: dict | None) -> tuple[list, list, Any]:
    """(prompt, [completion], lang) of a candidate row; without a prompt, the prompt dataset's record of its id."""
    from align.data.formats import _turn_list

    if "completion" not in row:
        raise loc.error("missing", "completion")
    completion = _turn_list(loc, row["completion"], "completion", "assistant")
    lang = row.get("lang") or row.get("language")
    if "prompt" in row:
        return _turn_list(loc, row["prompt"], "prompt", "user"), [completion], lang
    if by_id is not None and str(row.get("id")) in by_id:
        found = by_id[str(row.get("id"))]
        return found["prompt"], [completion], lang or found.get("lang")
    raise loc.error(
        "missing"
        + (
            f" (and no prompt in `prompts` has id {row.get('id')!r})"
            if by_id is not None
            else " (or give `prompts` to look it up by id)"
        ),
        "prompt",
    )


def cmd_score(args: argparse.Namespace, extra: list[str]) -> int:
    from align.core.config import read_stage_config
    from align.core.io import write_jsonl
    from reward.rank import RewardRanker, pairwise_accuracy, score_sharded

    raw, source = read_stage_config(args.config, extra)
    config = parse_score_config(raw, source)
    data = read_score_input(config.input, config.prompts)  # bad input stops before any model is loaded
    state = process_state()
    ranker = RewardRanker(
        config.model,
        batch_size=config.batch_size,
        max_length=config.max_length,
        sort_by_length=config.sort_by_length,
        model_args=config,  # a ScoreArgs is a ModelArgs
        device=state.device if cuda_available() else None,
    )
    width = 2 if data.kind == "pairs" else 1
    prompts = [p for p in data.prompts for _ in range(width)]
    completions = [c for group in data.completions for c in group]
    scored = score_sharded(ranker, prompts, completions, state)
    if not state.is_main_process:
        return 0
    rows = []
    for i, row in enumerate(data.rows):
        if data.kind == "pairs":
            rows.append({**row, "chosen_score": scored.scores[2 * i], "rejected_score": scored.scores[2 * i + 1]})
        else:
            rows.append({**row, "score": scored.scores[i]})
    write_jsonl(config.output, rows)
    print(
        f"scored {len(rows)} {data.kind} ({len(completions)} completions, {scored.n_truncated} truncated to "
        f"{config.max_length} tokens) with {config.model} on {state.num_processes} process(es) → {config.output}"
    )
    if data.kind == "pairs":
        acc = pairwise_accuracy(scored.scores[0::2], scored.scores[1::2], data.langs)
        print(
            f"pairwise accuracy (chosen above rejected): {acc['accuracy']:.1%}; per language: "
            + ", ".join(f"{lang} {v:.0%}" for lang, v in acc["per_language"].items())
        )
    return 0
