"""The Aya Expanse staircase with its controls, on the demo recipe (recipes/demo/pipeline.yaml), per seed:

1. data arbitrage: SFT on the best single teacher vs SFT on the arbitrage picks, both one global model on the same
   prompts with the same SFT keys. The single teacher is, among the teachers that answer every prompt where teachers
   compete, the one with the highest mean ranker score there (chosen by the ranker, as arbitrage chooses; never by
   the evaluation); prompts that only one teacher serves keep that teacher's answer. Its data is its own best sample
   per prompt.
2. merging: SFT per cluster merged (the pipeline's sft/merged) vs the best single cluster model on the average
   language, held-out languages of that cluster included; and vs the global arbitrage SFT on the same data.
3. offline DPO vs SFT; online iterations 1, 2, 3, each vs the one before (with mean length, to see length hacking).

Every row is measured on the demo's 96 held-out prompts by align.stages.evaluate (echo-free and plain chrF++ against the
references, echo rate and language fidelity, with 95% bootstrap intervals), beside the echo control (each prompt as
its own answer); each comparison is a paired bootstrap over the same prompts: an interval that holds 0 is noise.
Everything is rerun per seed (the teachers' sampling, every stage's training, the online samples); the closing table
says which comparisons are beyond noise, in the same direction, in every seed.

    .venv/bin/python bench/recipe_efficacy.py --seeds 1 2 [--out runs/bench/efficacy] [--iterations 3]

Writes <out>/seed-<s>/ (the pipeline's run directory, the controls and eval/) and <out>/efficacy.md, the tables that
BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "demo" / "pipeline.yaml"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def best_single_teacher(candidates: list[dict]) -> tuple[str, list[dict], dict[str, float]]:
    """The teacher with the highest mean ranker score among those that answer every prompt of the languages where
    teachers compete (where one teacher alone serves a language, as the demo's human answers do in ru, hi, ar and ja,
    that one answers), and SFT records of its best sample per prompt: arbitrage without the ranker's choice."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for c in candidates:
        best = by_prompt.setdefault(c["id"], {}).get(c["model"])
        if best is None or c["score"] > best["score"]:
            by_prompt[c["id"]][c["model"]] = c
    contested = {pid: picks for pid, picks in by_prompt.items() if len(picks) > 1}
    full = set.intersection(*(set(picks) for picks in contested.values())) if contested else set()
    means = {t: statistics.fmean(picks[t]["score"] for picks in contested.values()) for t in sorted(full)}
    teacher = max(means, key=means.get)
    chosen = [picks[teacher] if pid in contested else next(iter(picks.values())) for pid, picks in by_prompt.items()]
    records = [
        {
            "messages": [*c["prompt"], {"role": "assistant", "content": c["completion"]}],
            "lang": c["lang"],
            "id": c["id"],
            "source": f"teacher:{c['model']}",
        }
        for c in chosen
    ]
    return teacher, records, {t: round(m, 4) for t, m in means.items()}


def run_seed(seed: int, out: Path, iterations: int) -> dict:
    from align.core.config import load_yaml
    from align.core.io import safe_name, write_jsonl
    from align.stages.evaluate import ECHO, echo_control, paired_differences, parse_evaluate_config
    from align.stages.pipeline import build_pipeline, run_pipeline
    from align.stages.sft import run_sft

    raw = load_yaml(RECIPE)
    run_dir = out / f"seed-{seed}"
    raw.update(seed=seed, run_dir=str(run_dir))
    raw["online"] = {**raw["online"], "iterations": iterations}
    evaluate = raw.pop("evaluate")
    began = time.time()
    run_pipeline(raw, str(RECIPE))
    seconds = {"pipeline": round(time.time() - began, 1)}

    teacher, single, means = best_single_teacher(read_jsonl(run_dir / "arbitrage" / "candidates.jsonl"))
    sft_keys = {"model": raw["model"], "seed": seed, **raw["sft"]}
    controls = {
        f"sft-single ({teacher})": (run_dir / "controls" / "single.jsonl", single),
        "sft-arbitrage (global)": (run_dir / "arbitrage" / "sft.jsonl", None),
    }
    trained = {}
    began = time.time()
    for name, (data, records) in controls.items():
        target = run_dir / "controls" / ("sft-single" if records else "sft-arbitrage")
        if records:
            write_jsonl(data, records)
        if not target.exists():
            run_sft({**sft_keys, "dataset": str(data), "output_dir": str(target)}, str(RECIPE))
        trained[name] = str(target)
    seconds["controls"] = round(time.time() - began, 1)

    pipe = {s.name: s for s in build_pipeline({**raw, "evaluate": {**evaluate, "unmerged": True}}, str(RECIPE)).stages}
    staged = pipe["evaluate"].config["models"]
    clusters = [n for n in staged if n.startswith("sft/")]
    models = {
        "base": staged["base"],
        **trained,
        **{n: staged[n] for n in clusters},
        **{n: p for n, p in staged.items() if n == "sft" or n.startswith(("dpo-offline", "online-"))},
    }
    eval_cfg = {**pipe["evaluate"].config, "models": models, "output_dir": str(run_dir / "eval"), "overwrite": True}
    eval_dir = run_dir / "eval"
    began = time.time()
    if not (eval_dir / "metrics.json").exists():
        from align.stages.evaluate import run_evaluate

        run_evaluate(eval_cfg, str(RECIPE))
    seconds["evaluate"] = round(time.time() - began, 1)
    metrics = json.loads((eval_dir / "metrics.json").read_text())

    # The comparisons the staircase asks for, beyond each stage vs the one before (which the evaluation has).
    args, entries = parse_evaluate_config(eval_cfg, str(RECIPE))
    from align.data import load_records

    prompts = load_records(args.prompts, "prompt", seed=args.seed, source=str(RECIPE), key="prompts")
    written = {n: read_jsonl(eval_dir / "answers" / f"{safe_name(n)}.jsonl") for n in models}
    assert all([r["id"] for r in rows] == [p["id"] for p in prompts] for rows in written.values())
    answers = {n: [r["completion"] for r in rows] for n, rows in written.items()}
    answers[ECHO] = echo_control(prompts)
    paired = paired_differences(args, [*models, ECHO], prompts, answers)
    best_cluster = max(clusters, key=lambda n: metrics["models"][n]["echo_free_chrf++"]["all"]["score"])
    single_name, arbitrage_name = list(trained)
    comparisons = {
        "arbitrage vs best single teacher (global SFT)": (arbitrage_name, single_name),
        "merged clusters vs best cluster model": ("sft", best_cluster),
        "merged clusters vs global SFT on the same picks": ("sft", arbitrage_name),
        "offline DPO vs SFT (merged)": ("dpo-offline", "sft"),
        "online-1 vs offline DPO": ("online-1", "dpo-offline"),
        **{f"online-{i} vs online-{i - 1}": (f"online-{i}", f"online-{i - 1}") for i in range(2, iterations + 1)},
        f"preference training as a whole: online-{iterations} vs SFT (merged)": (f"online-{iterations}", "sft"),
        "SFT (merged) vs base": ("sft", "base"),
        f"online-{iterations} vs base": (f"online-{iterations}", "base"),
        "base vs echo control": ("base", ECHO),
        "SFT (merged) vs echo control": ("sft", ECHO),
        f"online-{iterations} vs echo control": (f"online-{iterations}", ECHO),
    }
    return {
        "seed": seed,
        "teacher": teacher,
        "teacher_mean_scores": means,
        "seconds": seconds,
        "best_cluster": best_cluster,
        "rows": {n: row(metrics, n) for n in [*models, ECHO]},
        "comparisons": {label: {"ours": a, "theirs": b, **paired(a, b)} for label, (a, b) in comparisons.items()},
        "per_language_echo_free": {
            n: {lang: v["score"] for lang, v in metrics["models"][n]["echo_free_chrf++"].items() if lang != "all"}
            for n in [*models, ECHO]
        },
        "per_language_fidelity": {
            n: {lang: v["pass_rate"] for lang, v in metrics["language_fidelity"][n].items() if lang != "all"}
            for n in [*models, ECHO]
        },
    }


def row(metrics: dict, name: str) -> dict:
    m, fid = metrics["models"][name], metrics["language_fidelity"][name]["all"]
    return {
        "chrf": m["chrf++"]["all"]["score"],
        "chrf_interval": m["chrf++"]["all"]["interval"],
        "echo_free": m["echo_free_chrf++"]["all"]["score"],
        "echo_free_interval": m["echo_free_chrf++"]["all"]["interval"],
        "echo_rate": m["echo_rate"]["all"]["mean"],
        "echo_rate_interval": m["echo_rate"]["all"]["interval"],
        "fidelity": fid["pass_rate"],
        "fidelity_interval": fid.get("pass_rate_interval"),
        "words": m["mean_words"],
    }


def interval(bounds, percent: bool = False) -> str:
    if not bounds:
        return ""
    return f" [{bounds[0]:+.0%}, {bounds[1]:+.0%}]" if percent else f" [{bounds[0]:+.2f}, {bounds[1]:+.2f}]"


def _score(value: float, bounds, percent: bool = False) -> str:
    if percent:
        return f"{value:.0%}" + (f" [{bounds[0]:.0%}, {bounds[1]:.0%}]" if bounds else "")
    return f"{value:.2f}" + (f" [{bounds[0]:.1f}, {bounds[1]:.1f}]" if bounds else "")


def _difference(d: dict, percent: bool = False) -> str:
    value = f"{d['difference']:+.0%}" if percent else f"{d['difference']:+.2f}"
    return value + interval(d["interval"], percent) + (" noise" if d["within_noise"] else "")


def table(result: dict) -> list[str]:
    lines = [
        f"### Seed {result['seed']} (single teacher: {result['teacher']}; best cluster model: "
        f"{result['best_cluster']}; mean ranker scores "
        + ", ".join(f"{t} {s}" for t, s in result["teacher_mean_scores"].items())
        + ")",
        "",
        "| model | echo-free chrF++ [95%] | chrF++ [95%] | echo rate | language fidelity [95%] | mean words |",
        "|---|---|---|---|---|---:|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {_score(r['echo_free'], r['echo_free_interval'])} "
            f"| {_score(r['chrf'], r['chrf_interval'])} | {_score(r['echo_rate'], r['echo_rate_interval'], True)} "
            f"| {_score(r['fidelity'], r['fidelity_interval'], True)} | {r['words']:.1f} |"
        )
    lines += [
        "",
        "| comparison (paired bootstrap) | echo-free chrF++ | chrF++ | fidelity | words |",
        "|---|---|---|---|---|",
    ]
    for label, c in result["comparisons"].items():
        words = f"{result['rows'][c['ours']]['words']:.1f} vs {result['rows'][c['theirs']]['words']:.1f}"
        lines.append(
            f"| {label} | {_difference(c['echo_free_chrf++'])} | {_difference(c['chrf++'])} "
            f"| {_difference(c['language_fidelity'], True)} | {words} |"
        )
    for title, key, percent in (
        ("Echo-free chrF++", "per_language_echo_free", False),
        ("Language fidelity", "per_language_fidelity", True),
    ):
        per_model = result[key]
        langs = sorted({lang for per in per_model.values() for lang in per})
        lines += [
            "",
            f"{title} per language (12 prompts each)",
            "",
            "| model | " + " | ".join(langs) + " |",
            "|---|" + "---|" * len(langs),
        ]
        for name, per in per_model.items():
            cells = [
                ("-" if lang not in per else f"{per[lang]:.0%}" if percent else f"{per[lang]:.1f}") for lang in langs
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()), ""]
    return lines


def across_seeds(results: list[dict]) -> list[str]:
    """Each comparison's verdict per seed, and whether it holds in every seed (beyond noise, the same sign)."""
    lines = [
        "### Across seeds: what holds in every seed",
        "",
        "| comparison | echo-free chrF++ per seed | holds in every seed | fidelity per seed | holds |",
        "|---|---|---|---|---|",
    ]

    def verdict(cells: list[dict]) -> str:
        if all(not c["within_noise"] and c["difference"] > 0 for c in cells):
            return "**above, every seed**"
        if all(not c["within_noise"] and c["difference"] < 0 for c in cells):
            return "**below, every seed**"
        return "no"

    for label in results[0]["comparisons"]:
        cells = [r["comparisons"][label] for r in results]
        lines.append(
            f"| {label} | "
            + "; ".join(f"{c['echo_free_chrf++']['difference']:+.2f}" for c in cells)
            + f" | {verdict([c['echo_free_chrf++'] for c in cells])} | "
            + "; ".join(f"{c['language_fidelity']['difference']:+.0%}" for c in cells)
            + f" | {verdict([c['language_fidelity'] for c in cells])} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="runs/bench/efficacy")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--tables-only", action="store_true", help="rewrite efficacy.md from the seeds' saved results")
    opts = parser.parse_args()
    out = Path(opts.out)
    results = []
    for seed in opts.seeds:
        saved = out / f"seed-{seed}" / "efficacy.json"
        results.append(json.loads(saved.read_text()) if opts.tables_only else run_seed(seed, out, opts.iterations))
        saved.write_text(json.dumps(results[-1], indent=2))
    import torch

    lines = [
        f"Recipe efficacy: `python bench/recipe_efficacy.py --seeds {' '.join(map(str, opts.seeds))} "
        f"--iterations {opts.iterations}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}; "
        f"{datetime.date.today()}",
        "",
    ]
    for result in results:
        lines += table(result)
    lines += across_seeds(results)
    (out / "efficacy.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
