"""The evaluation's report: `report.md` (per stage and per language, every figure with its 95% interval, differences
inside their interval marked as within noise) and its charts, from the metrics.json that align.evaluate writes."""

from __future__ import annotations

from pathlib import Path

from reward.spec import describe_ranker

from .io import save_figure

NOISE = " ~"  # marks a win-rate whose interval holds 0.5


def _ci(bounds, digits: int = 0, percent: bool = True) -> str:
    if not bounds:
        return ""
    low, high = bounds
    return f" [{low:.0%}, {high:.0%}]" if percent else f" [{low:.{digits}f}, {high:.{digits}f}]"


def _rate(row: dict | None) -> str:
    if not row:
        return "-"
    bounds = row.get("interval")
    return f"{row['win_rate']:.0%}{_ci(bounds) if bounds else ' (n<5)'}{NOISE if row.get('within_noise') else ''}"


def _languages(results: dict) -> list[str]:
    return sorted(results["languages"])


def overview(results: dict) -> list[str]:
    models = results["models"]
    lines = ["| model | win-rate vs baseline | vs previous stage | grade | language fidelity | chrF++ | words |",
             "|---|---|---|---|---|---|---:|"]
    for name, m in models.items():
        grade = (results.get("grades") or {}).get(name, {}).get("all")
        fid = results["language_fidelity"][name]["all"]
        chrf = (m.get("chrf++") or {}).get("all")
        previous = m.get("vs_previous")
        lines.append(" | ".join([
            f"| {name}", "baseline" if name == results["baseline"] else _rate((m.get("vs_baseline") or {}).get("all")),
            f"{_rate(previous.get('all'))} (vs {previous['model']})" if previous else "-",
            _grade_cell(grade),
            f"{fid['pass_rate']:.0%}{_ci(fid.get('pass_rate_interval'))}",
            f"{chrf['score']}{_ci(chrf['interval'], 1, False)}" if chrf else "-", f"{m['mean_words']} |"]))
    return lines


def differences_table(results: dict) -> list[str]:
    """Each model minus the baseline, with paired intervals: a difference whose interval holds 0 is within noise."""
    rows = [(n, m["vs_baseline_difference"]) for n, m in results["models"].items() if "vs_baseline_difference" in m]
    if not rows:
        return []

    def cell(d: dict | None, percent: bool) -> str:
        if not d:
            return "-"
        value = f"{d['difference']:+.0%}" if percent else f"{d['difference']:+.2f}"
        bounds = d.get("interval")
        shown = (f" [{bounds[0]:+.0%}, {bounds[1]:+.0%}]" if percent else f" [{bounds[0]:+.1f}, {bounds[1]:+.1f}]") \
            if bounds else " (n<5)"
        return value + shown + (" within noise" if d.get("within_noise") else "")

    lines = ["", f"Differences from {results['baseline']} (paired bootstrap over the same prompts):", "",
             "| model | language fidelity | chrF++ |", "|---|---|---|"]
    for name, d in rows:
        lines.append(f"| {name} | {cell(d.get('language_fidelity'), True)} | {cell(d.get('chrf++'), False)} |")
    return lines


def by_language(results: dict, title: str, cell) -> list[str]:
    """One table: a row per model, a column per language, `cell(model, lang)` in each."""
    langs = _languages(results)
    lines = ["", f"## {title}", "", "| model | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for name in results["models"]:
        lines.append(f"| {name} | " + " | ".join(cell(name, lang) for lang in langs) + " |")
    return lines


def benchmark_table(results: dict) -> list[str]:
    scores = results.get("benchmarks") or {}
    tasks = sorted({(t, m) for per in scores.values() for t, ms in per.items() for m in ms if not m.endswith("stderr")})
    if not tasks:
        return []
    lines = ["", "## Benchmarks (lm-evaluation-harness)", "", "| model | " + " | ".join(f"{t} {m}" for t, m in tasks)
             + " |", "|---|" + "---:|" * len(tasks)]
    for name, per in scores.items():
        cells = []
        for task, metric in tasks:
            value, err = per.get(task, {}).get(metric), per.get(task, {}).get(f"{metric}_stderr")
            cells.append("-" if value is None else f"{value:.3f}" + (f" ± {1.96 * err:.3f}" if err else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict, directory: Path) -> None:
    """report.md and the charts."""
    models = results["models"]
    lines = [f"# Evaluation against {results['baseline']}", "",
             f"{results['prompts']} held-out prompts in {len(results['languages'])} languages. Pairwise: "
             f"{describe_ranker(results.get('judged_by'))}; grades: {describe_ranker(results.get('graded_by'))}. A tie counts as half a "
             "win. Brackets hold 95% bootstrap intervals over the prompts (none under 5 prompts); `~` marks a "
             "win-rate whose interval holds 50%, or that has too few prompts: within noise, not a result.", "",
             *overview(results)]
    lines += differences_table(results)
    disagree = {n: m["vs_baseline"]["all"].get("orders_disagree") for n, m in models.items() if "vs_baseline" in m}
    if any(v is not None for v in disagree.values()):
        lines += ["", "Share of comparisons whose two orders disagreed (the judge's position bias): "
                  + ", ".join(f"{n} {v:.0%}" for n, v in disagree.items() if v is not None) + "."]
    lines += by_language(results, "Win-rate vs the baseline, per language",
                         lambda n, lang: _rate((models[n].get("vs_baseline") or {}).get(lang))
                         if n != results["baseline"] else "baseline")
    lines += by_language(results, "Language fidelity (line and word pass rates, harmonic mean), per language",
                         lambda n, lang: _fidelity_cell(results["language_fidelity"][n].get(lang)))
    if any("chrf++" in m for m in models.values()):
        lines += by_language(results, "chrF++ against the references, per language",
                             lambda n, lang: _chrf_cell((models[n].get("chrf++") or {}).get(lang)))
    if results.get("grades"):
        lines += by_language(results, "Grades (single-answer, judge), per language",
                             lambda n, lang: _grade_cell(results["grades"][n].get(lang)))
    if results.get("second_turns"):
        lines += ["", "## Second turns (multi-turn prompts, judged as two-turn transcripts)", "",
                  "| model | prompts | win-rate vs baseline | language fidelity |", "|---|---:|---|---|"]
        for name, m in results["second_turns"].items():
            lines.append(f"| {name} | {m['prompts']} | {_rate((m.get('vs_baseline') or {}).get('all')) if name != results['baseline'] else 'baseline'} "
                         f"| {_fidelity_cell(m['language_fidelity'].get('all'))} |")
    lines += benchmark_table(results)
    if results.get("seconds"):
        lines += ["", "Time per part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()) + "."]
    lines += ["", "![win-rate by stage](winrate_by_stage.png)", "", "![win-rate by language](winrate_by_language.png)",
              "", "![language fidelity](fidelity_by_language.png)", ""]
    (directory / "report.md").write_text("\n".join(lines), encoding="utf-8")
    plot_stages(results, directory / "winrate_by_stage.png")
    plot_languages(results, directory / "winrate_by_language.png",
                   lambda n, lang: (models[n].get("vs_baseline") or {}).get(lang, {}).get("win_rate", 0),
                   f"win-rate vs {results['baseline']}", "Win-rate per language", compared_only=True)
    plot_languages(results, directory / "fidelity_by_language.png",
                   lambda n, lang: results["language_fidelity"][n].get(lang, {}).get("pass_rate", 0),
                   "language fidelity (pass rate)", "Answers in the prompt's language, per language")


def _fidelity_cell(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['pass_rate']:.0%}{_ci(row.get('pass_rate_interval'))} (line {row['line_pass_rate']:.0%}, word " \
           f"{row['word_pass_rate']:.0%})"


def _chrf_cell(row: dict | None) -> str:
    return f"{row['score']}{_ci(row['interval'], 1, False)}" if row else "-"


def _grade_cell(row: dict | None) -> str:
    if not row:
        return "-"
    unreadable = f" ({row['unparsable']} unparsable)" if row.get("unparsable") else ""
    return (f"{row['mean']:.2f}{_ci(row['interval'], 2, False)}" if row["mean"] is not None else "-") + unreadable


def plot_stages(results: dict, path: Path) -> None:
    """Each stage's win-rate against the baseline, with its interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = {n: m["vs_baseline"]["all"] for n, m in results["models"].items() if "vs_baseline" in m}
    names, rates = list(compared), [r["win_rate"] for r in compared.values()]
    errors = [[r - (c["interval"] or (r, r))[0] for r, c in zip(rates, compared.values())],
              [(c["interval"] or (r, r))[1] - r for r, c in zip(rates, compared.values())]]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    ax.bar(names, rates, yerr=errors, capsize=4, color="tab:blue")
    ax.axhline(0.5, color="gray", linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"win-rate vs {results['baseline']} (95% interval)")
    ax.set_title("Win-rate of each stage against the baseline")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    save_figure(fig, path)


def plot_languages(results: dict, path: Path, value, ylabel: str, title: str, compared_only: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = _languages(results)
    names = [n for n, m in results["models"].items() if not compared_only or "vs_baseline" in m]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(langs) + 2), 4))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        ax.bar([x + k * width for x in range(len(langs))], [value(name, lang) for lang in langs], width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(langs))], langs)
    if compared_only:
        ax.axhline(0.5, color="gray", linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    save_figure(fig, path)


def print_summary(results: dict, out: Path) -> None:
    print(f"\nEvaluation against {results['baseline']} ({results['prompts']} prompts; [95% interval], ~ within noise)",
          flush=True)
    for name, m in results["models"].items():
        fid = results["language_fidelity"][name]["all"]["pass_rate"]
        rate = _rate((m.get("vs_baseline") or {}).get("all")) if "vs_baseline" in m else "baseline"
        print(f"  {name:<24} win-rate {rate:<22} language fidelity {fid:.0%}", flush=True)
    print(f"  report: {out / 'report.md'}", flush=True)
