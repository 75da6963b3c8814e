"""Multilingual data arbitrage: every teacher in a pool answers, a ranker picks; best → SFT, best/worst → pairs.

No single teacher is best in every language (Aya Expanse), so each prompt is answered by every teacher that serves
its language and a reward model (or an LLM judge) routes it to the best completion. The stage is built to survive
real runs: teachers are loaded one at a time (the pool may exceed memory), completions and scores are appended and
flushed prompt by prompt into a hidden `.<output_dir>.partial`, and a rerun of the same config continues where a
kill stopped it, with nothing lost or repeated. Under `accelerate launch` prompts are split between processes and
joined back in input order. The output directory appears, complete, only at the end:

    candidates.jsonl  sft.jsonl  pairs.jsonl  routing.json  routing.png  metrics.json

One module over 400 lines: the teachers' answers, the ranking and the picks share one prompt plan and one resume log.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.core.config import build_dataclass, require, resolve_recipe
from align.core.console import print_table
from align.core.errors import ConfigError
from align.core.io import AppendLog, read_logs, save_figure, write_json, write_jsonl
from align.core.lifecycle import StageRun
from align.core.tracking import Tracker, TrackingArgs
from align.data import load_records
from align.data.echo import is_echo
from align.data.languages import UnknownLanguage, normalize_lang
from align.data.pairs import echo_choice, echo_pair, pair_statistics, preference_record
from align.generation.generate import (
    DecodingArgs,
    Throughput,
    check_models,
    choose_backend,
    generate_logged,
    load_backend,
)
from align.models.loading import LoadingArgs, process_state, release_memory
from reward.spec import RankerSpec, parse_ranker

log = logging.getLogger(__name__)


@dataclass
class TeacherSpec:
    """One teacher of the pool. Unset generation keys take the stage's values."""

    name: str
    model: str | None = None  # a checkpoint (alias, path or hub id) ...
    api: dict | None = None  # ... or an OpenAI-compatible endpoint: {base_url, model, api_key_env, max_concurrency}
    completions: str | None = None  # ... or a JSONL of answers that exist ({"id", "completion"}): the prompts it has
    adapter: str | None = None  # a LoRA adapter served on `model`
    languages: list[str] | None = None  # the languages it answers (all when unset)
    samples: int = 1
    system_prompt: str | None = None  # prepended when the prompt has no system turn of its own
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


@dataclass
class ArbitrageArgs(LoadingArgs, DecodingArgs, TrackingArgs):
    """Arbitrage's own keys; the generation keys (defaults for every teacher), model-loading and tracking keys are
    shared."""

    prompts: Any = None  # required: the prompts every teacher answers (any prompt-capable format)
    output_dir: str | None = None  # required: where candidates, sft, pairs and routing go
    # required: the pool: checkpoints {name, model, ...}, endpoints {name, api} or answers {name, completions}
    teachers: list = field(default_factory=list)
    # required: {reward_model: path}, {likelihood: model}, {judge: model} or {rule: language}
    ranker: dict = field(default_factory=dict)
    min_margin: float = 0.0  # a pair is kept when best − worst reaches this (and is above zero)
    # also pair each pick with the prompt itself as the rejected answer (align.data.pairs.echo_pair)
    echo_pairs: bool = False
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    seed: int = 0  # seed of the teachers' sampling
    max_prompts: int | None = None  # arbitrate the first N prompts only (a quick look)
    max_new_tokens: int = 256  # tokens per teacher answer (a teacher's own value wins)
    temperature: float = 0.7  # teachers' sampling temperature (a teacher's own value wins)


@dataclass
class ArbitrageJob:
    args: ArbitrageArgs
    teachers: list[TeacherSpec]
    ranker: RankerSpec
    raw: dict


def parse_arbitrage_config(raw: dict, source: str | None = None) -> ArbitrageJob:
    args = build_dataclass(ArbitrageArgs, raw, source)
    require(
        args,
        source,
        output_dir="where to write candidates, SFT records and pairs",
        prompts="a prompt dataset (any format polyalign reads)",
    )
    if not isinstance(args.teachers, list) or not args.teachers:
        raise ConfigError(source, "teachers", "the pool is empty: list at least one teacher {name, model}")
    teachers = []
    for i, item in enumerate(args.teachers):
        if not isinstance(item, dict):
            raise ConfigError(source, f"teachers[{i}]", "expected a mapping with name and model")
        if not item.get("name"):
            raise ConfigError(source, f"teachers[{i}].name", "missing")
        kinds = [k for k in ("model", "api", "completions") if item.get(k)]
        if len(kinds) != 1:
            raise ConfigError(
                source,
                f"teachers[{i}].{kinds[1] if kinds else 'model'}",
                "give exactly one of model, api (an endpoint) and completions (a file of answers)"
                if kinds
                else "missing: give the teacher a model, an api endpoint or completions",
            )
        teacher = build_dataclass(TeacherSpec, item, source, prefix=f"teachers[{i}].")
        if teacher.api is not None:
            from align.generation.api import APISpec

            build_dataclass(APISpec, teacher.api, source, prefix=f"teachers[{i}].api.")
        if teacher.completions is not None:
            if not Path(teacher.completions).is_file():
                raise ConfigError(source, f"teachers[{i}].completions", f"no such file: {teacher.completions}")
            from align.data.completions import read_completions

            read_completions(teacher.completions)  # a malformed line fails now, before any teacher has answered
        if teacher.samples < 1:
            raise ConfigError(source, f"teachers[{i}].samples", f"must be at least 1, got {teacher.samples}")
        if teacher.languages is not None:
            try:
                teacher.languages = [normalize_lang(lang) for lang in teacher.languages]
            except UnknownLanguage as e:
                raise ConfigError(source, f"teachers[{i}].languages", str(e)) from None
        teachers.append(teacher)
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ConfigError(source, "teachers", f"two teachers are named {duplicate!r}: names must be unique")
    ranker = parse_ranker(args.ranker or {}, source, backend=args.backend)
    if args.min_margin < 0:
        raise ConfigError(source, "min_margin", f"must be >= 0, got {args.min_margin}")
    return ArbitrageJob(args, teachers, ranker, raw)


def named_models(job: ArbitrageJob) -> list[tuple[str, str, str | None]]:
    """(config key, model, adapter) of every model the stage will load."""
    models = [(f"teachers[{i}].model", t.model, t.adapter) for i, t in enumerate(job.teachers) if t.model]
    loaded = job.ranker.loaded_model()
    if loaded:
        models.append((f"ranker.{loaded[0]}", loaded[1], None))
    return models


# ------------------------------------------------------------------------------------------------ generation


def teacher_prompt(teacher: TeacherSpec, prompt: list[dict]) -> list[dict]:
    if teacher.system_prompt and not any(m["role"] == "system" for m in prompt):
        return [{"role": "system", "content": teacher.system_prompt}, *prompt]
    return prompt


def serves(teacher: TeacherSpec, lang: str | None) -> bool:
    return teacher.languages is None or lang in teacher.languages


def answered_from_file(teacher: TeacherSpec, prompts: list[dict], eligible: list[int], log: Path, done: set) -> None:
    """A dataset teacher: its answers to the prompts it has (by id) go into its log as if it had generated them;
    the prompts it lacks are left to the other teachers, and the languages it covers follow from that."""
    from align.data.completions import read_completions

    answers = read_completions(teacher.completions)
    with AppendLog(log, key=lambda r: r["index"]) as out:
        for i in eligible:
            if i not in done and str(prompts[i]["id"]) in answers:
                out.append({"index": i, "teacher": teacher.name, "completions": [answers[str(prompts[i]["id"])]]})


def generation_args(job: ArbitrageJob, teacher: TeacherSpec):
    a = job.args
    return a.generation(
        max_new_tokens=teacher.max_new_tokens or a.max_new_tokens,
        temperature=a.temperature if teacher.temperature is None else teacher.temperature,
        top_p=a.top_p if teacher.top_p is None else teacher.top_p,
        num_samples=teacher.samples,
    )


def load_teacher(job: ArbitrageJob, teacher: TeacherSpec, backend: str, api_log: Path):
    """(generation backend, tokenizer) of a teacher: a checkpoint, or an endpoint (its responses logged, so a resumed
    run pays for none twice; no tokenizer: batches are planned by characters)."""
    if teacher.api is not None:
        from align.generation.api import APIBackend, APISpec

        return APIBackend(APISpec(**teacher.api), log=api_log), None
    return load_backend(
        job.args.model_args(teacher.model), backend, teacher.adapter, tensor_parallel_size=job.args.tensor_parallel_size
    )


def generate_candidates(
    job: ArbitrageJob, prompts: list[dict], partial: Path, rank: int, processes: int, is_main: bool
) -> dict[str, Throughput]:
    """Every teacher's answers, each process writing its own log: a model teacher's batches are planned over every
    prompt it serves and dealt out to the processes (align.generation.generate.iter_batches), so that the completions are those of
    one process; a file teacher's records are dealt out by prompt. Returns this process's throughput per teacher
    that generated in this run."""
    backend = choose_backend(job.args.backend)
    meters: dict[str, Throughput] = {}
    for t, teacher in enumerate(job.teachers):
        done = {r["index"] for r in read_logs(partial, f"generations.{t}.*.jsonl")}
        eligible = [i for i in range(len(prompts)) if serves(teacher, prompts[i]["lang"])]
        if teacher.completions:
            answered_from_file(
                teacher, prompts, eligible[rank::processes], partial / f"generations.{t}.rank{rank}.jsonl", done
            )
            continue
        todo = [i for i in eligible if i not in done]
        if todo and is_main:
            print(
                f"Teacher {teacher.name} ({teacher.model or teacher.api['base_url']}): {len(todo)} of "
                f"{len(eligible)} prompts to answer",
                flush=True,
            )
        generate_logged(
            partial / f"generations.{t}.rank{rank}.jsonl",
            [teacher_prompt(teacher, prompts[i]["prompt"]) for i in eligible],
            generation_args(job, teacher),
            lambda: load_teacher(job, teacher, backend, partial / f"api.{t}.rank{rank}.jsonl"),
            keys=eligible,
            extra=lambda j: {"teacher": teacher.name},
            done=done,
            desc=f"Generating ({teacher.name})",
            progress=is_main,
            shard=(rank, processes),
            meter=meters.setdefault(teacher.name, Throughput()),
        )
    return {name: meter for name, meter in meters.items() if meter.answers}


# ------------------------------------------------------------------------------------------------ ranking


def candidates_by_prompt(job: ArbitrageJob, partial: Path) -> dict[int, list[tuple[str, int, str]]]:
    """prompt index → [(teacher, sample, completion)] in pool order."""
    out: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for t, teacher in enumerate(job.teachers):
        for record in sorted(read_logs(partial, f"generations.{t}.*.jsonl"), key=lambda r: r["index"]):
            for s, completion in enumerate(record["completions"]):
                out[record["index"]].append((teacher.name, s, completion))
    return out


def score_candidates(
    job: ArbitrageJob, prompts: list[dict], partial: Path, rank: int, processes: int, is_main: bool, chunk: int = 32
) -> None:
    from tqdm.auto import tqdm

    done = {r["index"] for r in read_logs(partial, "scores.*.jsonl")}
    candidates = candidates_by_prompt(job, partial)
    # Fixed chunks over every prompt, dealt out to the processes: each chunk is scored as one process scores it, and
    # a cut chunk is rescored whole, as the uninterrupted run scored it.
    served = [i for i in range(len(prompts)) if i in candidates]
    chunks = [served[k : k + chunk] for k in range(0, len(served), chunk)][rank::processes]
    chunks = [c for c in chunks if any(i not in done for i in c)]
    if not chunks:
        return
    from reward import load_ranker
    from reward.rules import rank_in_languages

    ranker = load_ranker(job.ranker.as_dict(), job.args.model_args(), log_dir=partial / f"api.rank{rank}")
    with AppendLog(partial / f"scores.rank{rank}.jsonl", key=lambda r: r["index"]) as out:
        for indices in tqdm(chunks, desc="Scoring", disable=not is_main, unit="chunk"):
            rankings = rank_in_languages(
                ranker,
                [prompts[i]["prompt"] for i in indices],
                [[c for _, _, c in candidates[i]] for i in indices],
                [prompts[i]["lang"] for i in indices],
            )
            for i, ranking in zip(indices, rankings):
                if i not in done:
                    out.append({"index": i, "scores": ranking.scores})
    del ranker
    release_memory()


# ------------------------------------------------------------------------------------------------ outputs


def assemble(
    job: ArbitrageJob, prompts: list[dict], partial: Path, throughput: dict[str, Throughput] | None = None
) -> tuple[dict, dict]:
    """Join every process's logs in input order and write the stage's files into `partial`."""
    candidates = candidates_by_prompt(job, partial)
    scores = {r["index"]: r["scores"] for r in read_logs(partial, "scores.*.jsonl")}
    candidate_rows, sft_rows, pair_rows = [], [], []
    wins: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    margins: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    dropped: Counter = Counter()
    for i, prompt in enumerate(prompts):
        group = candidates.get(i, [])
        if not group:
            dropped["no_teacher_serves"] += 1
            continue
        lang, group_scores = prompt["lang"], scores[i]
        for (teacher, sample, completion), score in zip(group, group_scores):
            candidate_rows.append(
                {
                    "id": prompt["id"],
                    "lang": lang,
                    "model": teacher,
                    "sample": sample,
                    "prompt": prompt["prompt"],
                    "completion": completion,
                    "score": score,
                }
            )
            sums[lang][teacher].append(score)
        texts = [c for _, _, c in group]
        choice = echo_choice(prompt, texts, group_scores, job.args.min_margin)
        (best_by, _, best), (worst_by, _, worst) = group[choice.best], group[choice.worst]
        if choice.dropped == "all_echo":  # every teacher restated the question: nothing worth learning
            dropped["all_echo"] += 1
            continue
        wins[lang][best_by] += 1
        sft_rows.append(
            {
                "messages": [*prompt["prompt"], {"role": "assistant", "content": best}],
                "lang": lang,
                "id": prompt["id"],
                "source": "arbitrage",
                "teacher": best_by,
                "score": group_scores[choice.best],
            }
        )
        echo = (
            echo_pair(
                prompt, texts, choice, source="arbitrage", chosen_score=group_scores[choice.best], chosen_by=best_by
            )
            if job.args.echo_pairs
            else None
        )
        if echo:
            pair_rows.append(echo)
        if choice.dropped:
            dropped[choice.dropped] += 1
            continue
        margins[lang][best_by].append(group_scores[choice.best] - group_scores[choice.worst])
        pair_rows.append(
            preference_record(
                prompt,
                best,
                worst,
                source="arbitrage",
                chosen_score=group_scores[choice.best],
                rejected_score=group_scores[choice.worst],
                chosen_by=best_by,
                rejected_by=worst_by,
            )
        )
    routing = routing_table(job, prompts, wins, sums, margins)
    write_jsonl(partial / "candidates.jsonl", candidate_rows)
    write_jsonl(partial / "sft.jsonl", sft_rows)
    write_jsonl(partial / "pairs.jsonl", pair_rows)
    write_json(partial / "routing.json", routing)
    plot_routing(routing, partial / "routing.png")
    metrics = {
        "prompts": len(prompts),
        "candidates": len(candidate_rows),
        "sft_records": len(sft_rows),
        "pairs": len(pair_rows),
        "echo_pairs": sum(p["rejected_by"] == "echo" for p in pair_rows),
        "pairs_below_margin": sum(n for k, n in dropped.items() if k in ("tie", "below_margin", "identical")),
        "pairs_dropped": dict(dropped),
        "prompts_with_one_candidate": dropped["single"],
        "prompts_all_echo": dropped["all_echo"],
        "candidate_echo_share": round(
            sum(is_echo(r["completion"], r["prompt"]) for r in candidate_rows) / max(len(candidate_rows), 1), 4
        ),
        "sft_echo_share": round(
            sum(is_echo(r["messages"][-1]["content"], r["messages"][:-1]) for r in sft_rows) / max(len(sft_rows), 1), 4
        ),
        "pair_statistics": pair_statistics(pair_rows),
        "prompts_no_teacher_serves": dropped["no_teacher_serves"],
        "min_margin": job.args.min_margin,
        "teachers": [t.name for t in job.teachers],
        "throughput": {name: meter.as_dict() for name, meter in (throughput or {}).items()},
    }
    return metrics, routing


def routing_table(job: ArbitrageJob, prompts: list[dict], wins, sums, margins) -> dict:
    """Per language (and overall): each teacher's share of wins, mean score, and mean margin over the worst answer
    of the pairs it won."""
    langs = sorted({p["lang"] for p in prompts})
    table = {}
    for lang in [*langs, "all"]:
        routed = sum(wins[lang].values()) if lang != "all" else sum(sum(w.values()) for w in wins.values())
        row = {}
        for teacher in job.teachers:
            name = teacher.name
            won = wins[lang][name] if lang != "all" else sum(wins[l][name] for l in langs)
            scores = sums[lang][name] if lang != "all" else [s for l in langs for s in sums[l][name]]
            won_by = margins[lang][name] if lang != "all" else [m for l in langs for m in margins[l][name]]
            row[name] = {
                "wins": won,
                "share": round(won / routed, 4) if routed else 0.0,
                "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
                "mean_margin": round(sum(won_by) / len(won_by), 4) if won_by else None,
                "candidates": len(scores),
            }
        table[lang] = {"prompts": routed, "teachers": row}
    return table


def plot_routing(routing: dict, path: Path) -> None:
    """Grouped bars: each teacher's share of wins per language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(routing)
    teachers = list(routing[langs[0]]["teachers"]) if langs else []
    width = 0.8 / max(len(teachers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(langs) + 2), 4))
    for k, teacher in enumerate(teachers):
        shares = [routing[lang]["teachers"][teacher]["share"] for lang in langs]
        ax.bar([x + k * width for x in range(len(langs))], shares, width, label=teacher)
    ax.set_xticks([x + width * (len(teachers) - 1) / 2 for x in range(len(langs))], langs)
    ax.set_ylabel("share of prompts won")
    ax.set_ylim(0, 1)
    ax.set_title("Arbitrage routing: which teacher the ranker picked, per language")
    ax.legend(fontsize="small")
    save_figure(fig, path)


def tracked(routing: dict, metrics: dict) -> dict:
    """What a tracker shows of a finished arbitrage: per language and teacher the share of wins, mean reward and
    margin; per teacher tokens/s; the records and pairs kept."""
    figures = {
        f"arbitrage/{lang}/{teacher}/{key}": row[key]
        for lang, by_teacher in routing.items()
        for teacher, row in by_teacher["teachers"].items()
        for key in ("share", "mean_score", "mean_margin")
    }
    for teacher, meter in metrics["throughput"].items():
        figures[f"arbitrage/{teacher}/tokens_per_second"] = meter["tokens_per_second"]
    for key in ("sft_records", "pairs", "pairs_below_margin", "candidate_echo_share"):
        figures[f"arbitrage/{key}"] = metrics[key]
    figures["arbitrage/mean_margin"] = metrics["pair_statistics"].get("mean_margin")
    return figures


def print_summary(routing: dict, metrics: dict, final: Path) -> None:
    teachers = metrics["teachers"]
    header = ["lang", "prompts", *[f"{t} wins" for t in teachers], *[f"{t} mean" for t in teachers]]
    rows = []
    for lang, row in routing.items():
        cells = [lang, str(row["prompts"])]
        cells += [f"{row['teachers'][t]['share']:.0%}" for t in teachers]
        cells += [
            "-" if row["teachers"][t]["mean_score"] is None else f"{row['teachers'][t]['mean_score']:.3f}"
            for t in teachers
        ]
        rows.append(cells)
    print_table("Arbitrage summary", header, rows, left=())
    print(
        f"  {metrics['sft_records']} SFT records, {metrics['pairs']} pairs ({metrics['echo_pairs']} against the "
        "prompt itself) "
        f"({metrics['pairs_below_margin']} below margin {metrics['min_margin']}, tied or identical), "
        f"{metrics['prompts_no_teacher_serves']} prompts no teacher serves → {final}",
        flush=True,
    )
    print(
        f"  echoes of the prompt: {metrics['candidate_echo_share']:.0%} of candidates, "
        f"{metrics['sft_echo_share']:.0%} of picks; {metrics['prompts_all_echo']} prompts where every candidate "
        "was one (no pick)",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------ stage


def run_arbitrage(raw: dict, source: str | None = None) -> Path:
    job = parse_arbitrage_config(raw, source)
    state = process_state()
    run = StageRun(
        job.args.output_dir,
        resolve_recipe(raw, ArbitrageArgs, source),
        stage="arbitrage",
        overwrite=job.args.overwrite,
        source=source,
        is_main=state.is_main_process,
    )
    check_models(named_models(job), source, trust_remote_code=job.args.trust_remote_code)
    prompts = load_records(job.args.prompts, "prompt", seed=job.args.seed, source=source, key="prompts")[
        : job.args.max_prompts or None
    ]
    resumed = run.prepare_shared(state)
    if state.is_main_process:
        print(
            f"Arbitrage: {len(prompts)} prompts, {len(job.teachers)} teachers" + (" (resuming)" if resumed else ""),
            flush=True,
        )
    rank, processes = state.process_index, state.num_processes
    throughput = generate_candidates(job, prompts, run.partial, rank, processes, state.is_main_process)
    state.wait_for_everyone()
    score_candidates(job, prompts, run.partial, rank, processes, state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        metrics, routing = assemble(job, prompts, run.partial, throughput)
        with Tracker(job.args.report_to, job.args.run_name, run.partial) as tracker:
            tracker.log(tracked(routing, metrics))
            tracker.images({"arbitrage/routing": run.partial / "routing.png"})
        run.finish(metrics, drop=("generations.*.jsonl", "scores.*.jsonl", "api.*"))
        print_summary(routing, metrics, run.final)
    state.wait_for_everyone()
    return run.final
