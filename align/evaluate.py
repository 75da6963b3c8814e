"""Per-language evaluation: win/loss/tie of each model against a baseline on held-out prompts, and chrF++.

Every model answers the same held-out prompts greedily; the answers are logged in the stage's partial directory, keyed
by the model and generation settings, so a killed run resumes them (align.runs), and end up in `answers/<name>.jsonl`.
A judge LM compares each answer with the baseline's in both orders (a verdict only when the orders agree, else a
tie); a reward model compares their scores (use one that did not train the models: it would grade its own
homework). Prompts with a `reference` (or `references`) also get chrF++ (sacrebleu). The report, `report.md` with
`winrate_by_stage.png` and `winrate_by_language.png`, has the shape of Aya Expanse's step-by-step figure.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward.spec import RankerSpec, parse_ranker

from .config import build_dataclass, config_hash
from .data import load_records
from .errors import ConfigError
from .generate import DecodingArgs, GenerationArgs, choose_backend, generate_logged, load_backend
from .io import safe_name, write_jsonl
from .models import LoadingArgs
from .pairs import outcome_of_scores, outcome_of_winner, tally_with_rates
from .runs import StageRun

log = logging.getLogger(__name__)


@dataclass
class EvaluateArgs(LoadingArgs, DecodingArgs):
    """Evaluation's own keys; the generation keys (greedy by default) and model-loading keys are shared."""

    models: Any = None  # {name: model} in report order, or a list of models (named by their path)
    baseline: str | None = None  # a name in `models` (default: the first)
    prompts: Any = None
    output_dir: str | None = None
    judge: dict = field(default_factory=dict)  # {judge: model} or {reward_model: path}, plus batch_size, max_length
    max_prompts: int | None = None
    overwrite: bool = False
    seed: int = 0
    max_new_tokens: int = 256


def parse_evaluate_config(raw: dict, source: str | None = None) -> tuple[EvaluateArgs, dict[str, str]]:
    args = build_dataclass(EvaluateArgs, raw, source)
    for key in ("models", "prompts", "output_dir"):
        if not getattr(args, key):
            raise ConfigError(source, key, "missing")
    models = args.models if isinstance(args.models, dict) else {str(m): str(m) for m in args.models}
    if len(models) < 2:
        raise ConfigError(source, "models", "give at least two models: a baseline and one to compare with it")
    baseline = args.baseline or next(iter(models))
    if baseline not in models:
        raise ConfigError(source, "baseline", f"{baseline!r} is not one of the models ({', '.join(models)})")
    args.judge = parse_ranker(args.judge, source, "judge", backend=args.backend)
    args.baseline = baseline
    return args, {str(k): str(v) for k, v in models.items()}


def answer(args: EvaluateArgs, name: str, model: str, prompts: list[dict], directory: Path) -> list[str]:
    """Greedy answers of one model, streamed into a log keyed by the model and the generation settings that produce
    them (a log is never read back for another model or setting), and resumed from it."""
    gen = args.generation()
    key = config_hash({"model": model, "generation": gen.__dict__, "prompts": [p["id"] for p in prompts]})
    records = generate_logged(directory / f"{safe_name(name)}.{key}.jsonl", [p["prompt"] for p in prompts], gen,
                              lambda: load_backend(args.model_args(model), choose_backend(args.backend)),
                              desc=f"Answering ({name})")
    return [r["completions"][0] for r in records]


def outcomes(judge: RankerSpec, prompts: list[dict], answers: list[str], baseline: list[str], scorer) -> list[str]:
    """'win' / 'loss' / 'tie' of `answers` against `baseline`, one per prompt."""
    texts = [p["prompt"] for p in prompts]
    if judge.reward_model:
        ours, theirs = scorer.score(texts, answers), scorer.score(texts, baseline)
        return [outcome_of_scores(a, b) for a, b in zip(ours, theirs)]
    return [outcome_of_winner(v.winner) for v in scorer.compare(texts, answers, baseline)]


def chrf(prompts: list[dict], answers: list[str]) -> dict[str, float]:
    """chrF++ per language (and 'all') over the prompts that carry references."""
    from sacrebleu.metrics import CHRF

    by_lang: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for prompt, text in zip(prompts, answers):
        refs = prompt.get("references") or ([prompt["reference"]] if prompt.get("reference") else None)
        if not refs:
            continue
        for lang in (prompt["lang"], "all"):
            by_lang[lang][0].append(text)
            by_lang[lang][1].append(refs[0] if isinstance(refs, list) else refs)
    metric = CHRF(word_order=2)
    return {lang: round(metric.corpus_score(hyps, [refs]).score, 2) for lang, (hyps, refs) in sorted(by_lang.items())}


def score_models(args: EvaluateArgs, models: dict[str, str], prompts: list[dict], answers: dict) -> dict:
    """metrics.json: every model's mean length, chrF++, and win/loss/tie per language against the baseline."""
    from reward import load_ranker

    scorer = load_ranker(args.judge.as_dict(), args.model_args())
    langs = [p["lang"] for p in prompts]
    results = {"baseline": args.baseline, "judged_by": args.judge.as_dict(), "prompts": len(prompts),
               "languages": dict(Counter(langs).most_common()), "models": {}}
    for name in models:
        entry: dict = {"model": models[name], "mean_words": round(sum(len(a.split()) for a in answers[name])
                                                                  / max(len(prompts), 1), 2)}
        if name != args.baseline:
            entry["vs_baseline"] = tally_with_rates(outcomes(args.judge, prompts, answers[name],
                                                             answers[args.baseline], scorer), langs)
        scores = chrf(prompts, answers[name])
        if scores:
            entry["chrf++"] = scores
        results["models"][name] = entry
    return results


def run_evaluate(raw: dict, source: str | None = None) -> Path:
    """The `evaluate` stage: every model against the baseline, per language; returns the output directory."""
    args, models = parse_evaluate_config(raw, source)
    run = StageRun(args.output_dir, raw, stage="evaluate", overwrite=args.overwrite, source=source)
    prompts = load_records(args.prompts, "prompt", seed=args.seed, source=source, key="prompts")[: args.max_prompts or None]
    run.prepare()
    logs = run.partial / "generations"
    answers = {name: answer(args, name, model, prompts, logs) for name, model in models.items()}
    results = score_models(args, models, prompts, answers)
    for name in models:
        write_jsonl(run.partial / "answers" / f"{safe_name(name)}.jsonl",
                    [{"id": p["id"], "lang": p["lang"], "prompt": p["prompt"], "completion": a}
                     for p, a in zip(prompts, answers[name])])
    write_report(results, run.partial)
    run.finish(results, drop=("generations",))
    print_summary(results, run.final)
    return run.final


def write_report(results: dict, directory: Path) -> None:
    """report.md with the win-rate tables, and the two charts."""
    compared = {n: m for n, m in results["models"].items() if "vs_baseline" in m}
    langs = sorted({lang for m in compared.values() for lang in m["vs_baseline"] if lang != "all"})
    lines = [f"# Evaluation against {results['baseline']}", "",
             f"{results['prompts']} held-out prompts in {len(results['languages'])} languages; judged by "
             f"{results['judged_by']}. Win-rate counts a tie as half a win.", "",
             "| model | win | loss | tie | win-rate | " + " | ".join(langs) + " | words |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(langs) + "---:|"]
    for name, m in compared.items():
        overall = m["vs_baseline"]["all"]
        per = [f"{m['vs_baseline'][lang]['win_rate']:.0%}" if lang in m["vs_baseline"] else "-" for lang in langs]
        lines.append(f"| {name} | {overall['win']} | {overall['loss']} | {overall['tie']} | "
                     f"{overall['win_rate']:.0%} | " + " | ".join(per) + f" | {m['mean_words']} |")
    chrf_rows = [(n, m["chrf++"]) for n, m in results["models"].items() if "chrf++" in m]
    if chrf_rows:
        lines += ["", "## chrF++ against the references", "", "| model | all | " + " | ".join(langs) + " |",
                  "|---|---:|" + "---:|" * len(langs)]
        for name, scores in chrf_rows:
            lines.append(f"| {name} | {scores.get('all', '-')} | " + " | ".join(str(scores.get(l, "-")) for l in langs)
                         + " |")
    lines += ["", "![win-rate by stage](winrate_by_stage.png)", "", "![win-rate by language](winrate_by_language.png)",
              ""]
    (directory / "report.md").write_text("\n".join(lines), encoding="utf-8")
    plot_winrates(results, compared, langs, directory)


def plot_winrates(results: dict, compared: dict, langs: list[str], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(compared)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    rates = [compared[n]["vs_baseline"]["all"]["win_rate"] for n in names]
    ax.bar(names, rates, color="tab:blue")
    ax.axhline(0.5, color="gray", linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win-rate vs {results['baseline']}")
    ax.set_title("Win-rate of each stage against the baseline")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(directory / "winrate_by_stage.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(langs) + 2), 4))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        ax.bar([x + k * width for x in range(len(langs))],
               [compared[name]["vs_baseline"].get(lang, {}).get("win_rate", 0) for lang in langs], width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(langs))], langs)
    ax.axhline(0.5, color="gray", linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win-rate vs {results['baseline']}")
    ax.set_title("Win-rate per language")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(directory / "winrate_by_language.png", dpi=120)
    plt.close(fig)


def print_summary(results: dict, out: Path) -> None:
    print(f"\nEvaluation against {results['baseline']} ({results['prompts']} prompts)", flush=True)
    for name, m in results["models"].items():
        if "vs_baseline" in m:
            a = m["vs_baseline"]["all"]
            print(f"  {name:<24} win {a['win']:>3}  loss {a['loss']:>3}  tie {a['tie']:>3}  win-rate "
                  f"{a['win_rate']:.0%}", flush=True)
    print(f"  report: {out / 'report.md'}", flush=True)
