"""Per-language evaluation: win/loss/tie of each model against a baseline on held-out prompts, and chrF++.

Every model answers the same held-out prompts greedily (answers are cached and resumed: `answers/<name>.jsonl`).
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

from .config import build_dataclass
from .data import load_records
from .errors import ConfigError
from .generate import GenerationArgs, iter_batches, load_backend
from .io import AppendLog, atomic_dir, write_json, write_jsonl
from .models import ModelArgs, release_memory

log = logging.getLogger(__name__)
TIE_EPSILON = 1e-6  # reward-model scores closer than this are a tie


@dataclass
class EvaluateArgs:
    models: Any = None  # {name: model} in report order, or a list of models (named by their path)
    baseline: str | None = None  # a name in `models` (default: the first)
    prompts: Any = None
    output_dir: str | None = None
    judge: dict = field(default_factory=dict)  # {judge: model} or {reward_model: path}, plus batch_size, max_length
    max_new_tokens: int = 256
    batch_size: int = 16
    max_prompts: int | None = None
    overwrite: bool = False
    seed: int = 0
    dtype: str = "auto"
    attn_implementation: str = "auto"
    trust_remote_code: bool = False


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
    if ("judge" in args.judge) == ("reward_model" in args.judge):
        raise ConfigError(source, "judge", "give exactly one of judge.judge (a judge LM) and judge.reward_model")
    args.baseline = baseline
    return args, {str(k): str(v) for k, v in models.items()}


def answer(args: EvaluateArgs, name: str, model: str, prompts: list[dict], path: Path) -> list[str]:
    """Greedy answers of one model, streamed into `path` and resumed from it."""
    with AppendLog(path, key=lambda r: r["index"]) as out:
        if len(out.done) < len(prompts):
            model_args = ModelArgs(model=model, dtype=args.dtype, attn_implementation=args.attn_implementation,
                                   trust_remote_code=args.trust_remote_code)
            backend, tokenizer = load_backend(model_args, "transformers")
            gen = GenerationArgs(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
            for chunk in iter_batches(backend, tokenizer, [p["prompt"] for p in prompts], gen,
                                      skip=lambda i: i in out.done, desc=f"Answering ({name})"):
                for i, completions in chunk:
                    out.append({"index": i, "id": prompts[i]["id"], "lang": prompts[i]["lang"],
                                "completion": completions[0]})
            del backend
            release_memory()
        return [r["completion"] for r in sorted(out.records, key=lambda r: r["index"])]


def outcomes(judge_spec: dict, prompts: list[dict], answers: list[str], baseline: list[str], scorer) -> list[str]:
    """'win' / 'loss' / 'tie' of `answers` against `baseline`, one per prompt."""
    texts = [p["prompt"] for p in prompts]
    if "reward_model" in judge_spec:
        ours, theirs = scorer.score(texts, answers), scorer.score(texts, baseline)
        return ["tie" if abs(a - b) <= TIE_EPSILON else "win" if a > b else "loss" for a, b in zip(ours, theirs)]
    verdicts = scorer.compare(texts, answers, baseline)
    return [{"a": "win", "b": "loss"}.get(v.winner, "tie") for v in verdicts]


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


def summarise(outcomes_: list[str], prompts: list[dict]) -> dict[str, dict]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for outcome, prompt in zip(outcomes_, prompts):
        counts[prompt["lang"]][outcome] += 1
        counts["all"][outcome] += 1
    table = {}
    for lang, c in sorted(counts.items()):
        n = sum(c.values())
        table[lang] = {"win": c["win"], "loss": c["loss"], "tie": c["tie"],
                       "win_rate": round((c["win"] + c["tie"] / 2) / n, 4)}
    return table


def run_evaluate(raw: dict, source: str | None = None) -> Path:
    """The `evaluate` stage: every model against the baseline, per language; returns the output directory."""
    args, models = parse_evaluate_config(raw, source)
    out = Path(args.output_dir)
    if out.exists() and not args.overwrite:
        raise ConfigError(source, "output_dir", f"{out} already exists (pass --overwrite to replace it)")
    prompts = load_records(args.prompts, "prompt", seed=args.seed)[: args.max_prompts or None]
    cache = out.parent / f".{out.name}.answers"  # answers survive a kill; the report appears at the end
    answers = {name: answer(args, name, model, prompts, cache / f"{_slug(name)}.jsonl")
               for name, model in models.items()}
    from reward import load_ranker

    scorer = load_ranker(args.judge, ModelArgs(dtype=args.dtype, attn_implementation=args.attn_implementation,
                                               trust_remote_code=args.trust_remote_code))
    results = {"baseline": args.baseline, "judged_by": args.judge, "prompts": len(prompts),
               "languages": dict(Counter(p["lang"] for p in prompts).most_common()), "models": {}}
    for name in models:
        entry: dict = {"model": models[name], "mean_words": round(sum(len(a.split()) for a in answers[name])
                                                                  / max(len(prompts), 1), 2)}
        if name != args.baseline:
            entry["vs_baseline"] = summarise(outcomes(args.judge, prompts, answers[name], answers[args.baseline],
                                                      scorer), prompts)
        scores = chrf(prompts, answers[name])
        if scores:
            entry["chrf++"] = scores
        results["models"][name] = entry
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        (tmp / "answers").mkdir()
        for name in models:
            write_jsonl(tmp / "answers" / f"{_slug(name)}.jsonl",
                        [{"id": p["id"], "lang": p["lang"], "prompt": p["prompt"], "completion": a}
                         for p, a in zip(prompts, answers[name])])
        write_json(tmp / "metrics.json", results)
        write_report(results, tmp)
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    print_summary(results, out)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(results: dict, directory: Path) -> None:
    """report.md with the win-rate tables, and the two charts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
