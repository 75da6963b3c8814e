"""Per-language evaluation of every stage: pairwise win-rates against the baseline and the stage before, single-answer
grades, language fidelity, chrF++ against references and lm-eval benchmarks, each with a bootstrap 95% interval.

Reference metrics cannot be fooled by a model that repeats the question (align.data.echo): every evaluation with
references also scores the prompt itself as an answer (the `echo` control row), reports echo-free chrF++ (credit only
for what an answer adds beyond its prompt) beside plain chrF++, each model's echo rate per language, and flags every
model that does not beat the echo control beyond noise on echo-free chrF++.

Every model answers the same held-out prompts greedily; the answers are logged in the stage's partial directory, keyed
by the model and generation settings, so a killed run resumes them (align.core.lifecycle), and end up in `answers/<name>.jsonl`.
A `models` entry may also be a JSONL of answers (`{"id", "completion"}`, matched to the prompts by id): a competitor's
answers are judged without generating. A judge LM compares two answers in both orders (a verdict only when the orders
agree; the share that disagree is its position bias); a reward model compares their scores (use one that did not
train the models: it would grade its own homework). The report (`report.md` and charts) marks every difference whose
interval holds "no difference" as within noise.

One module over 400 lines: the measures are computed from the stage's own answer logs, in one pass; the report and
its charts live in align.evaluation.report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.core.config import build_dataclass, config_hash, require, resolve_recipe
from align.core.errors import ConfigError, InputError
from align.core.io import safe_name, write_jsonl
from align.core.lifecycle import StageRun
from align.core.stats import mean_interval, statistic_interval, within_noise
from align.core.timing import Stopwatch
from align.core.tracking import Tracker, TrackingArgs
from align.data import load_records
from align.data.echo import RULE as ECHO_RULE
from align.data.echo import echo_flags, is_echo, prompt_text
from align.data.pairs import outcome_of_scores, outcome_of_winner, tally_with_rates
from align.evaluation.chrf import chrf_score, chrf_statistics
from align.evaluation.fidelity import fidelity_flags
from align.generation.generate import (
    DecodingArgs,
    Throughput,
    choose_backend,
    generate_logged,
    generate_sharded,
    load_backend,
)
from align.models.loading import LoadingArgs
from reward.rules import score_in_languages
from reward.spec import describe_ranker, parse_ranker

log = logging.getLogger(__name__)
POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # a win-rate is the mean of these
ECHO = "echo"  # the control row: each prompt as its own answer


@dataclass
class EvaluateArgs(LoadingArgs, DecodingArgs, TrackingArgs):
    """Evaluation's own keys; the generation keys (greedy by default), model-loading and tracking keys are shared."""

    models: Any = None  # {name: checkpoint or answers JSONL} in report order, or a list of them (named by path)
    baseline: str | None = None  # a name in `models` (default: the first)
    prompts: Any = None  # required: held-out prompts; a `reference` per prompt adds chrF++ and the echo control
    output_dir: str | None = None  # required: where report.md, charts, answers/ and metrics.json go
    judge: dict = field(default_factory=dict)  # pairwise: {judge: model} or {reward_model: path}, plus settings
    grader: dict = field(default_factory=dict)  # single-answer grades: {judge: model, scale: 10 | 5, ...}
    benchmarks: list = field(default_factory=list)  # lm-eval task names or task YAML paths
    benchmark_limit: int | None = None  # examples per benchmark task (None: all)
    benchmark_fewshot: int | None = None  # few-shot examples for every lm-eval benchmark (default: each task's own)
    resamples: int = 1000  # bootstrap resamples per interval
    tasks: Any = field(default=None, init=False, repr=False)  # the benchmarks, resolved by lm-eval
    max_prompts: int | None = None  # evaluate on the first N prompts only (a quick look)
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    seed: int = 0  # seed of the bootstrap intervals and of any sampling
    max_new_tokens: int = 256  # tokens per answer


@dataclass(frozen=True)
class Entry:
    """One model of the evaluation: a checkpoint that answers, or a file of answers."""

    name: str
    model: str | None = None
    answers: str | None = None

    @property
    def described(self) -> str:
        return self.model or f"answers {self.answers}"


def parse_evaluate_config(raw: dict, source: str | None = None) -> tuple[EvaluateArgs, list[Entry]]:
    args = build_dataclass(EvaluateArgs, raw, source)
    require(
        args,
        source,
        models="{name: checkpoint or answers JSONL}",
        prompts="the held-out prompts",
        output_dir="where to write the report",
    )
    entries = [
        _entry(str(k), v, source)
        for k, v in (args.models.items() if isinstance(args.models, dict) else ((str(m), m) for m in args.models))
    ]
    if len(entries) < 2:
        raise ConfigError(source, "models", "give at least two models: a baseline and one to compare with it")
    names = [e.name for e in entries]
    if ECHO in names:
        raise ConfigError(
            source,
            f"models.{ECHO}",
            f"{ECHO!r} is the name of the control row (the prompt as the answer); give the model another name",
        )
    args.baseline = args.baseline or names[0]
    if args.baseline not in names:
        raise ConfigError(source, "baseline", f"{args.baseline!r} is not one of the models ({', '.join(names)})")
    if args.judge:
        args.judge = parse_ranker(args.judge, source, "judge", backend=args.backend)
        if args.judge.language_penalty:
            raise ConfigError(
                source,
                "judge.language_penalty",
                "evaluation measures language fidelity on its own; remove the penalty from the judge",
            )
        if args.judge.echo_penalty:
            raise ConfigError(
                source,
                "judge.echo_penalty",
                "evaluation measures echo on its own (echo rate, echo-free chrF++, the echo row); remove the penalty",
            )
    if args.grader:
        args.grader = _grader_spec(args.grader, source, args.backend)
    if args.resamples < 100:
        raise ConfigError(source, "resamples", f"at least 100 for a 95% interval, got {args.resamples}")
    return args, entries


def _entry(name: str, value: Any, source: str | None) -> Entry:
    if isinstance(value, dict):
        if set(value) != {"answers"}:
            raise ConfigError(source, f"models.{name}", "expected a checkpoint, or {answers: path to a JSONL}")
        return Entry(name, answers=str(value["answers"]))
    value = str(value)
    return Entry(name, answers=value) if Path(value).is_file() else Entry(name, model=value)


def _grader_spec(value: dict, source: str | None, backend: str) -> dict:
    from reward.grading import SCALES

    scale = value.get("scale", 10)
    if scale not in SCALES:
        raise ConfigError(source, "grader.scale", f"expected one of {', '.join(map(str, SCALES))}, got {scale!r}")
    spec = parse_ranker({k: v for k, v in value.items() if k != "scale"}, source, "grader", backend=backend)
    if not (spec.judge or spec.api):
        raise ConfigError(source, "grader", "grades come from a judge: give grader.judge (a model) or grader.api")
    return {**spec.as_dict(), "scale": scale}


# ------------------------------------------------------------------------------------------------ answers


def answer(
    args: EvaluateArgs, entry: Entry, prompts: list[dict], directory: Path, state, meter: Throughput | None = None
) -> list[str]:
    """Greedy answers of one model, streamed into logs keyed by the model and the generation settings that produce
    them (a log is never read back for another model or setting), and resumed from them; or the entry's answers
    file. Under several processes (`state`, accelerate's) each answers its share of the batches; `meter` gets this
    process's throughput."""
    if entry.answers:
        return read_answers(entry.answers, prompts)
    gen = args.generation()
    key = config_hash({"model": entry.model, "generation": gen.__dict__, "prompts": [p["id"] for p in prompts]})
    records = generate_sharded(
        directory,
        f"{safe_name(entry.name)}.{key}",
        [p["prompt"] for p in prompts],
        gen,
        entry_loader(args, entry),
        rank=state.process_index,
        processes=state.num_processes,
        barrier=state.wait_for_everyone,
        desc=f"Answering ({entry.name})",
        meter=meter,
    )
    return [r["completions"][0] for r in records]


def entry_loader(args: EvaluateArgs, entry: Entry):
    """What loads the entry's model for generation (called only when something is left to answer)."""
    return lambda: load_backend(
        args.model_args(entry.model), choose_backend(args.backend), tensor_parallel_size=args.tensor_parallel_size
    )


def second_turns(
    args: EvaluateArgs, entry: Entry, prompts: list[dict], first: list[str], directory: Path
) -> list[str] | None:
    """A checkpoint's answers to the second user turn of multi-turn (MT-Bench) prompts, with its own first answer in
    context; None for an answers file, or when no prompt has a second turn."""
    followed = [(p, a) for p, a in zip(prompts, first) if len(p.get("turns") or []) > 1]
    if entry.answers or not followed:
        return None
    chats = [
        [*p["prompt"], {"role": "assistant", "content": a}, {"role": "user", "content": p["turns"][1]}]
        for p, a in followed
    ]
    gen = args.generation()
    key = config_hash({"model": entry.model, "generation": gen.__dict__, "chats": chats})
    records = generate_logged(
        directory / f"{safe_name(entry.name)}.turn2.{key}.jsonl",
        chats,
        gen,
        entry_loader(args, entry),
        desc=f"Second turns ({entry.name})",
    )
    return [r["completions"][0] for r in records]


def transcript(texts: list[str]) -> str:
    """Two turns as one text, the shape a judge reads a multi-turn conversation in."""
    return "\n\n".join(f"[Turn {k}]\n{t}" for k, t in enumerate(texts, 1))


def read_answers(path: str, prompts: list[dict]) -> list[str]:
    """The answers of a JSONL file, one per prompt, matched by `id`."""
    from align.data.completions import read_completions

    by_id = read_completions(path)
    missing = [p["id"] for p in prompts if str(p["id"]) not in by_id]
    if missing:
        raise InputError(
            path, f"no answer for prompt id {missing[0]!r} ({len(missing)} of {len(prompts)} missing)", field="id"
        )
    return [by_id[str(p["id"])] for p in prompts]


# ------------------------------------------------------------------------------------------------ measures


def with_intervals(outcomes: list[str], langs: list[str], args: EvaluateArgs) -> dict:
    """Win/loss/tie per language with the win-rate's interval, and whether it holds 0.5 (no difference)."""
    table = tally_with_rates(outcomes, langs)
    for lang, row in table.items():
        points = [POINTS[o] for o, l in zip(outcomes, langs) if lang == "all" or (l or "?") == lang]
        row["interval"] = mean_interval(points, resamples=args.resamples, seed=args.seed)
        row["within_noise"] = within_noise(row["interval"], 0.5)
    return table


def compare(args: EvaluateArgs, scorer, prompts: list[dict], ours: list[str], theirs: list[str]) -> dict:
    """Our answers against theirs, per language; a judge LM also reports how often its two orders disagree."""
    texts, langs = [p["prompt"] for p in prompts], [p["lang"] for p in prompts]
    if not hasattr(scorer, "compare"):  # a reward model or a rule: absolute scores
        a, b = (score_in_languages(scorer, texts, answers, langs) for answers in (ours, theirs))
        return with_intervals([outcome_of_scores(x, y) for x, y in zip(a, b)], langs, args)
    judgements = scorer.compare(texts, ours, theirs)
    table = with_intervals([outcome_of_winner(j.winner) for j in judgements], langs, args)
    table["all"]["orders_disagree"] = round(sum(j.orders_disagree for j in judgements) / max(len(judgements), 1), 4)
    return table


def unpenalised(spec: dict) -> dict:
    """A judge's or grader's spec with no rule penalties: evaluation measures echo and language on their own."""
    return {**spec, "echo_penalty": 0.0, "language_penalty": None}


def previous_stage(entries: list[Entry], k: int) -> str | None:
    """The stage before entry k: the nearest earlier model that is not one cluster's part of a merge (`sft/europe`),
    so that a merged stage is compared with the stage it started from."""
    return next((e.name for e in reversed(entries[:k]) if "/" not in e.name), None)


def comparisons(args: EvaluateArgs, entries: list[Entry], prompts: list[dict], answers: dict, partial: Path) -> dict:
    """{model: {vs_baseline, vs_previous}}: every stage against the baseline and against the stage before it."""
    from reward import load_ranker

    scorer = load_ranker(unpenalised(args.judge.as_dict()), args.model_args(), log_dir=partial / "api")
    out: dict[str, dict] = {}
    for k, entry in enumerate(entries):
        if entry.name == args.baseline:
            continue
        out[entry.name] = {"vs_baseline": compare(args, scorer, prompts, answers[entry.name], answers[args.baseline])}
        previous = previous_stage(entries, k)
        if previous not in (None, args.baseline):
            out[entry.name]["vs_previous"] = {
                "model": previous,
                **compare(args, scorer, prompts, answers[entry.name], answers[previous]),
            }
    return out


def per_language(values: list[float | None], langs: list[str], args: EvaluateArgs) -> dict[str, dict]:
    """Mean and interval of per-answer values (None left out), per language and overall."""
    table = {}
    for lang in sorted(set(langs)) + ["all"]:
        kept = [v for v, l in zip(values, langs) if (lang == "all" or l == lang) and v is not None]
        table[lang] = {
            "mean": round(sum(kept) / len(kept), 4) if kept else None,
            "n": len(kept),
            "interval": mean_interval(kept, resamples=args.resamples, seed=args.seed),
        }
    return table


def grades(args: EvaluateArgs, prompts: list[dict], answers: dict, partial: Path) -> dict:
    """Single-answer grades per model and language; reference-guided where a prompt has a reference."""
    from reward import load_ranker
    from reward.grading import Grader

    judge = load_ranker(
        unpenalised({k: v for k, v in args.grader.items() if k != "scale"}),
        args.model_args(),
        log_dir=partial / "api" / "grader",
    )
    grader = Grader(ask=judge.ask, scale=args.grader["scale"], explain=args.grader.get("explain", True))
    langs, refs = [p["lang"] for p in prompts], [reference_of(p) for p in prompts]
    out = {}
    for name, texts in answers.items():
        graded = grader.grade([p["prompt"] for p in prompts], texts, refs)
        table = per_language([g.rating for g in graded], langs, args)
        table["all"]["unparsable"] = sum(g.rating is None for g in graded)
        out[name] = table
    return out


def reference_of(prompt: dict) -> str | None:
    refs = prompt.get("references") or prompt.get("reference")
    return (refs[0] if isinstance(refs, list) else refs) or None


def chrf(
    prompts: list[dict], answers: list[str], *, echo_free: bool = False, resamples: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """chrF++ per language (and 'all') over the prompts that carry references, with a bootstrap interval over the
    prompts; `echo_free` scores only what each answer adds beyond its prompt (align.data.echo)."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        if reference_of(prompt):
            for lang in (prompt["lang"], "all"):
                groups.setdefault(lang, []).append(i)
    out = {}
    for lang, rows in sorted(groups.items()):
        stats = reference_statistics([prompts[i] for i in rows], [answers[i] for i in rows], echo_free)
        out[lang] = {
            "score": round(chrf_score(stats), 2),
            "n": len(rows),
            "interval": statistic_interval(len(rows), lambda d: chrf_score(stats[d]), resamples=resamples, seed=seed),
        }
    return out


def reference_statistics(prompts: list[dict], answers: list[str], echo_free: bool):
    """chrF++ sentence statistics of answers to prompts that all carry a reference."""
    return chrf_statistics(
        answers, [reference_of(p) for p in prompts], [p["prompt"] for p in prompts] if echo_free else None
    )


REFERENCE_METRICS = {"chrf++": False, "echo_free_chrf++": True}  # name: scored on what the answer adds only


def paired_differences(
    args: EvaluateArgs, names: list[str], prompts: list[dict], answers: dict, flags: dict[str, list] | None = None
):
    """`paired(ours, theirs)` for any two of `names`: `ours` minus `theirs` with paired bootstrap intervals (the same
    resampled prompts for both): language fidelity's pass rate, and plain and echo-free chrF++ where prompts carry
    references. An interval holding 0 is noise."""
    import numpy as np

    from align.evaluation.fidelity import fidelity_rates

    if flags is None:
        flags = {name: fidelity_flags(answers[name], [p["lang"] for p in prompts]) for name in names}
    judged = [i for i, p in enumerate(prompts) if reference_of(p)]
    # sentence statistics once per model and metric; a resample's corpus score sums them
    stats = (
        {
            (metric, name): reference_statistics(
                [prompts[i] for i in judged], [answers[name][i] for i in judged], echo_free
            )
            for metric, echo_free in REFERENCE_METRICS.items()
            for name in names
        }
        if judged
        else {}
    )

    def difference(metric: str, ours: str, theirs: str) -> dict:
        a, b = stats[metric, ours], stats[metric, theirs]
        bounds = statistic_interval(
            len(judged), lambda d: chrf_score(a[d]) - chrf_score(b[d]), resamples=args.resamples, seed=args.seed
        )
        every = np.arange(len(judged))
        return {
            "difference": round(chrf_score(a[every]) - chrf_score(b[every]), 2),
            "interval": bounds,
            "within_noise": within_noise(bounds, 0.0),
        }

    def paired(ours: str, theirs: str) -> dict:
        a, b = flags[ours], flags[theirs]
        fid = statistic_interval(
            len(prompts),
            lambda d: fidelity_rates([a[i] for i in d])[2] - fidelity_rates([b[i] for i in d])[2],
            resamples=args.resamples,
            seed=args.seed,
        )
        out = {
            "language_fidelity": {
                "difference": round(fidelity_rates(a)[2] - fidelity_rates(b)[2], 4),
                "interval": fid,
                "within_noise": within_noise(fid, 0.0),
            }
        }
        if judged:
            out.update({metric: difference(metric, ours, theirs) for metric in REFERENCE_METRICS})
        return out

    return paired


def differences(
    args: EvaluateArgs, entries: list[Entry], prompts: list[dict], answers: dict, flags: dict[str, list] | None = None
) -> dict[str, dict]:
    """{model: {vs_baseline, vs_previous, vs_echo}}: each model minus the baseline, minus the stage before it, and
    minus the echo control where there is one."""
    names = [e.name for e in entries] + ([ECHO] if ECHO in answers else [])
    paired = paired_differences(args, names, prompts, answers, flags)
    out = {}
    for k, e in enumerate(entries):
        out[e.name] = {"vs_echo": paired(e.name, ECHO)} if ECHO in answers else {}
        if e.name == args.baseline:
            continue
        out[e.name]["vs_baseline"] = paired(e.name, args.baseline)
        previous = previous_stage(entries, k)
        if previous not in (None, args.baseline):
            out[e.name]["vs_previous"] = {"model": previous, **paired(e.name, previous)}
    return out


def echo_control(prompts: list[dict]) -> list[str] | None:
    """The control every reference-based evaluation carries: each prompt's own text as its answer (None when no
    prompt has a reference). A model that does not beat it has learnt to repeat the question."""
    if not any(reference_of(p) for p in prompts):
        return None
    return [prompt_text(p["prompt"]) for p in prompts]


def echo_rates(prompts: list[dict], answers: list[str], args: EvaluateArgs) -> dict[str, dict]:
    """Share of answers that restate their prompt (align.data.echo's rule), per language, with intervals."""
    flags = echo_flags(answers, [p["prompt"] for p in prompts])
    return per_language([float(f) for f in flags], [p["lang"] for p in prompts], args)


def fidelity(prompts: list[dict], flags: list[tuple[bool, bool]], args: EvaluateArgs) -> dict[str, dict]:
    """Language fidelity per language from the answers' flags (align.evaluation.fidelity.fidelity_flags): line, word and overall
    pass rates (their harmonic mean), with intervals."""
    from align.data.languages import normalize_lang
    from align.evaluation.fidelity import fidelity_rates, rates_table

    langs = [p["lang"] for p in prompts]
    table = rates_table(flags, langs)
    for lang, rates in table.items():
        rows = [f for f, l in zip(flags, langs) if lang == "all" or normalize_lang(l) == lang]
        rates["pass_rate_interval"] = statistic_interval(
            len(rows), lambda draw: fidelity_rates([rows[i] for i in draw])[2], resamples=args.resamples, seed=args.seed
        )
    return table


# ------------------------------------------------------------------------------------------------ stage


def measure(args: EvaluateArgs, entries: list[Entry], prompts: list[dict], answers: dict, partial: Path) -> dict:
    """metrics.json: everything measured, per model and language."""
    langs = [p["lang"] for p in prompts]
    results: dict = {
        "baseline": args.baseline,
        "prompts": len(prompts),
        "languages": dict(Counter(langs).most_common()),
        "judged_by": args.judge.as_dict() if args.judge else None,
        "graded_by": args.grader or None,
        "models": {
            e.name: {
                "model": e.described,
                "mean_words": round(sum(len(a.split()) for a in answers[e.name]) / max(len(prompts), 1), 2),
            }
            for e in entries
        },
    }
    clock = Stopwatch()
    if args.judge:
        with clock("pairwise"):
            for name, entry in comparisons(args, entries, prompts, answers, partial).items():
                results["models"][name].update(entry)
    rows = [e.name for e in entries] + ([ECHO] if ECHO in answers else [])
    if ECHO in answers:
        results["models"][ECHO] = {
            "model": "control: the prompt itself as the answer",
            "control": True,
            "mean_words": round(sum(len(a.split()) for a in answers[ECHO]) / len(prompts), 2),
        }
    with clock("chrf"):
        for name in rows:
            for metric, echo_free in REFERENCE_METRICS.items():
                scores = chrf(prompts, answers[name], echo_free=echo_free, resamples=args.resamples, seed=args.seed)
                if scores:
                    results["models"][name][metric] = scores
    with clock("echo"):
        results["echo_rule"] = ECHO_RULE
        for name in rows:
            results["models"][name]["echo_rate"] = echo_rates(prompts, answers[name], args)
    with clock("language_fidelity"):
        flags = {name: fidelity_flags(answers[name], langs) for name in rows}
        results["language_fidelity"] = {name: fidelity(prompts, flags[name], args) for name in rows}
    with clock("differences"):
        for name, paired in differences(args, entries, prompts, answers, flags).items():
            for versus, row in paired.items():
                results["models"][name][f"{versus}_difference"] = row
            if "vs_echo" in paired:  # beats the echo control beyond noise on what answers add to the prompt
                versus_echo = paired["vs_echo"]["echo_free_chrf++"]
                results["models"][name]["beats_echo"] = (
                    versus_echo["difference"] > 0 and not versus_echo["within_noise"]
                )
    if args.judge and any(len(p.get("turns") or []) > 1 for p in prompts):
        with clock("second_turns"):
            results["second_turns"] = second_turn_measures(args, entries, prompts, answers, partial)
    if args.grader:
        with clock("grades"):
            results["grades"] = grades(args, prompts, answers, partial)
    if args.benchmarks:
        with clock("benchmarks"):
            results["benchmarks"] = benchmarks(args, entries, partial)
    results["seconds"] = clock.seconds  # this run's time per part (answers resumed from a killed run count 0)
    return results


def second_turn_measures(
    args: EvaluateArgs, entries: list[Entry], prompts: list[dict], answers: dict, partial: Path
) -> dict:
    """Second turns of multi-turn prompts: each checkpoint's two-turn conversation against the baseline's, judged as
    transcripts of both turns, and the fidelity of the second answers."""
    from reward import load_ranker

    multi = [p for p in prompts if len(p.get("turns") or []) > 1]
    firsts = {e.name: [a for p, a in zip(prompts, answers[e.name]) if len(p.get("turns") or []) > 1] for e in entries}
    seconds = {e.name: second_turns(args, e, prompts, answers[e.name], partial / "generations") for e in entries}
    if seconds[args.baseline] is None:
        return {}
    scorer = load_ranker(unpenalised(args.judge.as_dict()), args.model_args(), log_dir=partial / "api" / "turn2")
    asked = [{**p, "prompt": [{"role": "user", "content": transcript(p["turns"][:2])}]} for p in multi]
    talks = {n: [transcript([a, b]) for a, b in zip(firsts[n], s)] for n, s in seconds.items() if s is not None}
    out = {}
    for name, talk in talks.items():
        write_jsonl(
            partial / "answers" / f"{safe_name(name)}.turn2.jsonl",
            [
                {"id": p["id"], "lang": p["lang"], "turns": p["turns"][:2], "completions": [a, b]}
                for p, a, b in zip(multi, firsts[name], seconds[name])
            ],
        )
        out[name] = {
            "prompts": len(multi),
            "language_fidelity": fidelity(multi, fidelity_flags(seconds[name], [p["lang"] for p in multi]), args),
        }
        if name != args.baseline:
            out[name]["vs_baseline"] = compare(args, scorer, asked, talk, talks[args.baseline])
    return out


def benchmarks(args: EvaluateArgs, entries: list[Entry], partial: Path) -> dict:
    """lm-eval's own metrics per model and task (a checkpoint's; an answers file has no model to run)."""
    from align.evaluation.benchmarks import run_benchmarks

    out = {}
    for entry in entries:
        if entry.model:
            out[entry.name] = run_benchmarks(
                entry.model,
                args.tasks,
                model_args=args.model_args(entry.model),
                limit=args.benchmark_limit,
                num_fewshot=args.benchmark_fewshot,
                batch_size=args.batch_size,
                backend=args.backend,
                log_dir=partial / "benchmarks" / safe_name(entry.name),
            )
    return out


def run_evaluate(raw: dict, source: str | None = None) -> Path:
    """The `evaluate` stage: every model against the baseline and its predecessor, per language. Under `accelerate
    launch` the processes share the answering; the main process measures and writes the report."""
    from align.evaluation.report import print_summary, write_report
    from align.models.loading import process_state

    args, entries = parse_evaluate_config(raw, source)
    state = process_state()
    run = StageRun(
        args.output_dir,
        resolve_recipe(raw, EvaluateArgs, source),
        stage="evaluate",
        overwrite=args.overwrite,
        source=source,
        is_main=state.is_main_process,
    )
    prompts = load_records(args.prompts, "prompt", seed=args.seed, source=source, key="prompts")[
        : args.max_prompts or None
    ]
    answers = {e.name: read_answers(e.answers, prompts) for e in entries if e.answers}  # bad files fail first
    control = echo_control(prompts)
    if args.benchmarks:  # every task and its data resolved once, before any model runs: a missing one fails now
        from align.evaluation.benchmarks import resolve_tasks

        args.tasks = resolve_tasks(args.benchmarks, source)
    run.prepare_shared(state)
    clock, meters = Stopwatch(), {e.name: Throughput() for e in entries}
    with clock("answers"):
        answers = {
            e.name: answers.get(e.name) or answer(args, e, prompts, run.partial / "generations", state, meters[e.name])
            for e in entries
        }
    if control is not None:
        answers[ECHO] = control
    if not state.is_main_process:
        return run.final  # the main process measures, reports and moves the output into place (no barrier: a
        # judge may take longer than a collective's timeout)
    results = measure(args, entries, prompts, answers, run.partial)
    results["seconds"] = {**clock.seconds, **results["seconds"]}
    # wall-clock figures, beside "seconds" and out of the models' measures (which the number of processes leaves
    # unchanged): this process's answering in this run, per model it answered
    results["throughput"] = {name: meter.as_dict() for name, meter in meters.items() if meter.answers}
    for name in answers:
        write_jsonl(
            run.partial / "answers" / f"{safe_name(name)}.jsonl",
            [
                {
                    "id": p["id"],
                    "lang": p["lang"],
                    "prompt": p["prompt"],
                    "completion": a,
                    "echo": is_echo(a, p["prompt"]),
                }
                for p, a in zip(prompts, answers[name])
            ],
        )
    write_report(
        results,
        run.partial,
        judges=(describe_ranker(results.get("judged_by")), describe_ranker(results.get("graded_by"))),
    )
    with Tracker(args.report_to, args.run_name, run.partial) as tracker:
        tracker.log(tracked(results))
        tracker.images({f"eval/{chart.stem}": chart for chart in sorted(run.partial.glob("*.png"))})
    run.finish(results, drop=("generations", "benchmarks", "api"))
    print_summary(results, run.final)
    return run.final


# The per-language figures a tracker shows, as (tracker name, where in metrics.json, the value's key, its interval's)
TRACKED = (
    ("win_rate_vs_baseline", lambda r, n: r["models"][n].get("vs_baseline"), "win_rate", "interval"),
    ("language_fidelity", lambda r, n: r["language_fidelity"].get(n), "pass_rate", "pass_rate_interval"),
    ("chrf", lambda r, n: r["models"][n].get("chrf++"), "score", "interval"),
    ("echo_free_chrf", lambda r, n: r["models"][n].get("echo_free_chrf++"), "score", "interval"),
    ("echo_rate", lambda r, n: r["models"][n].get("echo_rate"), "mean", "interval"),
    ("grade", lambda r, n: (r.get("grades") or {}).get(n), "mean", "interval"),
)


def tracked(results: dict) -> dict:
    """What a tracker shows of an evaluation, per model (echo control included) and language: each score with the
    bounds of its 95% interval (`<name>/<lang>`, `.../low`, `.../high`), language fidelity, words and tokens/s."""
    figures = {}
    for name, model in results["models"].items():
        for metric, table_of, key, bounds in TRACKED:
            for lang, row in (table_of(results, name) or {}).items():
                if not isinstance(row, dict) or key not in row:
                    continue
                figures[f"eval/{name}/{metric}/{lang}"] = row[key]
                if row.get(bounds):
                    figures[f"eval/{name}/{metric}/{lang}/low"], figures[f"eval/{name}/{metric}/{lang}/high"] = row[
                        bounds
                    ]
        figures[f"eval/{name}/mean_words"] = model["mean_words"]
        figures[f"eval/{name}/tokens_per_second"] = (
            (results.get("throughput") or {}).get(name, {}).get("tokens_per_second")
        )
    return figures
