"""The evaluation's report: `report.md` (per stage and per language, every figure with its 95% interval, differences
inside their interval marked as within noise) and its charts, from the metrics.json that align.stages.evaluate writes.

One module over 400 lines: the tables and the charts read the same measures and share their formatting
(intervals, within-noise marks, model order)."""

from __future__ import annotations

from pathlib import Path

from align.core.io import save_figure

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
    """One row per model; the win-rate and grade columns only when a judge or a grader ran."""
    models, judged, graded = results["models"], bool(results.get("judged_by")), bool(results.get("grades"))
    header = (
        ["model"]
        + (["win-rate vs baseline", "vs previous stage"] if judged else [])
        + (["grade"] if graded else [])
        + ["language fidelity", "chrF++", "echo-free chrF++", "echo rate", "words"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - 1) + "---:|"]
    for name, m in models.items():
        fid = results["language_fidelity"][name]["all"]
        previous = m.get("vs_previous")
        cells = [f"{name} (control: the prompt as answer)" if m.get("control") else name]
        if judged:
            cells += [
                "-"
                if m.get("control")
                else "baseline"
                if name == results["baseline"]
                else _rate((m.get("vs_baseline") or {}).get("all")),
                f"{_rate(previous.get('all'))} (vs {previous['model']})" if previous else "-",
            ]
        if graded:
            cells.append(_grade_cell(results["grades"].get(name, {}).get("all")))
        cells += [
            f"{fid['pass_rate']:.0%}{_ci(fid.get('pass_rate_interval'))}",
            _chrf_cell((m.get("chrf++") or {}).get("all")),
            _chrf_cell((m.get("echo_free_chrf++") or {}).get("all"))
            + ("" if m.get("control") or "beats_echo" not in m else "" if m["beats_echo"] else " ⚠"),
            _share_cell((m.get("echo_rate") or {}).get("all")),
            str(m["mean_words"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def echo_warning(results: dict) -> list[str]:
    """The rule, and the models that do not beat the echo control beyond noise on what their answers add."""
    models = results["models"]
    if not any(m.get("control") for m in models.values()):
        return []
    failing = [n for n, m in models.items() if "beats_echo" in m and not m["beats_echo"]]
    lines = [
        "",
        f"Echo: {results.get('echo_rule', '')}. Echo-free chrF++ scores only the n-grams an answer adds "
        "beyond its prompt; the `echo` row answers every prompt with the prompt itself.",
    ]
    if failing:
        lines.append(f"⚠ Not above the echo control beyond noise on echo-free chrF++: {', '.join(failing)}.")
    else:
        lines.append("Every model is above the echo control beyond noise on echo-free chrF++.")
    return lines


def _difference_cell(d: dict | None, percent: bool) -> str:
    if not d:
        return "-"
    value = f"{d['difference']:+.0%}" if percent else f"{d['difference']:+.2f}"
    bounds = d.get("interval")
    shown = (
        (f" [{bounds[0]:+.0%}, {bounds[1]:+.0%}]" if percent else f" [{bounds[0]:+.1f}, {bounds[1]:+.1f}]")
        if bounds
        else " (n<5)"
    )
    return value + shown + (" within noise" if bounds and d.get("within_noise") else "")


def differences_table(results: dict) -> list[str]:
    """Each model minus the baseline and minus the stage before it, with paired intervals: a difference whose
    interval holds 0 is within noise (what a stage added on top of the last one is the second pair of columns)."""
    rows = [
        (n, m["vs_baseline_difference"], m.get("vs_previous_difference"))
        for n, m in results["models"].items()
        if "vs_baseline_difference" in m
    ]
    if not rows:
        return []
    base = results["baseline"]
    lines = [
        "",
        "Differences (paired bootstrap over the same prompts):",
        "",
        f"| model | fidelity vs {base} | chrF++ vs {base} | echo-free chrF++ vs {base} | previous stage "
        "| fidelity vs previous | chrF++ vs previous | echo-free chrF++ vs previous |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, versus, previous in rows:
        previous = previous or {}
        lines.append(
            f"| {name} | {_difference_cell(versus.get('language_fidelity'), True)} "
            f"| {_difference_cell(versus.get('chrf++'), False)} "
            f"| {_difference_cell(versus.get('echo_free_chrf++'), False)} | {previous.get('model', '-')} "
            f"| {_difference_cell(previous.get('language_fidelity'), True)} "
            f"| {_difference_cell(previous.get('chrf++'), False)} "
            f"| {_difference_cell(previous.get('echo_free_chrf++'), False)} |"
        )
    return lines


def echo_table(results: dict) -> list[str]:
    """Each model minus the echo control: a model that does not beat it has learnt to repeat the question."""
    rows = [
        (n, m["vs_echo_difference"], m["beats_echo"]) for n, m in results["models"].items() if "vs_echo_difference" in m
    ]
    if not rows:
        return []
    lines = [
        "",
        "Against the echo control (paired bootstrap):",
        "",
        "| model | chrF++ vs echo | echo-free chrF++ vs echo | beats echo |",
        "|---|---|---|---|",
    ]
    for name, versus, beats in rows:
        lines.append(
            f"| {name} | {_difference_cell(versus.get('chrf++'), False)} "
            f"| {_difference_cell(versus.get('echo_free_chrf++'), False)} | {'yes' if beats else 'no ⚠'} |"
        )
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
    lines = [
        "",
        "## Benchmarks (lm-evaluation-harness)",
        "",
        "| model | " + " | ".join(f"{t} {m}" for t, m in tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for name, per in scores.items():
        cells = []
        for task, metric in tasks:
            value, err = per.get(task, {}).get(metric), per.get(task, {}).get(f"{metric}_stderr")
            cells.append("-" if value is None else f"{value:.3f}" + (f" ± {1.96 * err:.3f}" if err else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(results: dict, directory: Path, *, judges: tuple[str, str] = ("none", "none")) -> None:
    """report.md and the charts; `judges` describes the pairwise judge and the grader in a few words."""
    models = results["models"]
    judged = bool(results.get("judged_by"))
    intro = (
        f"{results['prompts']} held-out prompts in {len(results['languages'])} languages. Pairwise: "
        f"{judges[0]}; grades: {judges[1]}. "
        "Brackets hold 95% bootstrap intervals over the prompts (none under 5 prompts)"
    )
    intro += (
        "; a tie counts as half a win, and `~` marks a win-rate whose interval holds 50%, or that has too few "
        "prompts: within noise, not a result."
        if judged
        else "; a difference whose interval holds 0 is within noise."
    )
    lines = [f"# Evaluation against {results['baseline']}", "", intro, "", *overview(results)]
    lines += echo_warning(results)
    lines += differences_table(results)
    lines += echo_table(results)
    disagree = {n: m["vs_baseline"]["all"].get("orders_disagree") for n, m in models.items() if "vs_baseline" in m}
    if any(v is not None for v in disagree.values()):
        lines += [
            "",
            "Share of comparisons whose two orders disagreed (the judge's position bias): "
            + ", ".join(f"{n} {v:.0%}" for n, v in disagree.items() if v is not None)
            + ".",
        ]
    if judged:
        lines += by_language(
            results,
            "Win-rate vs the baseline, per language",
            lambda n, lang: (
                _rate((models[n].get("vs_baseline") or {}).get(lang)) if n != results["baseline"] else "baseline"
            ),
        )
    lines += by_language(
        results,
        "Language fidelity (line and word pass rates, harmonic mean), per language",
        lambda n, lang: _fidelity_cell(results["language_fidelity"][n].get(lang)),
    )
    if any("chrf++" in m for m in models.values()):
        lines += by_language(
            results,
            "chrF++ against the references, per language",
            lambda n, lang: _chrf_cell((models[n].get("chrf++") or {}).get(lang)),
        )
        lines += by_language(
            results,
            "Echo-free chrF++ (what the answer adds beyond the prompt), per language",
            lambda n, lang: _chrf_cell((models[n].get("echo_free_chrf++") or {}).get(lang)),
        )
    if any("echo_rate" in m for m in models.values()):
        lines += by_language(
            results,
            "Echo rate (answers that restate the prompt), per language",
            lambda n, lang: _share_cell((models[n].get("echo_rate") or {}).get(lang)),
        )
    if results.get("grades"):
        lines += by_language(
            results,
            "Grades (single-answer, judge), per language",
            lambda n, lang: _grade_cell(results["grades"][n].get(lang)),
        )
    if results.get("second_turns"):
        lines += [
            "",
            "## Second turns (multi-turn prompts, judged as two-turn transcripts)",
            "",
            "| model | prompts | win-rate vs baseline | language fidelity |",
            "|---|---:|---|---|",
        ]
        for name, m in results["second_turns"].items():
            lines.append(
                f"| {name} | {m['prompts']} | {_rate((m.get('vs_baseline') or {}).get('all')) if name != results['baseline'] else 'baseline'} "
                f"| {_fidelity_cell(m['language_fidelity'].get('all'))} |"
            )
    lines += benchmark_table(results)
    if results.get("seconds"):
        lines += ["", "Time per part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()) + "."]
    charts = (
        ["scores_by_stage"] + (["winrate_by_stage", "winrate_by_language"] if judged else []) + ["fidelity_by_language"]
    )
    for chart in charts:
        lines += ["", f"![{chart.replace('_', ' ')}]({chart}.png)"]
    (directory / "report.md").write_text("\n".join(lines + [""]), encoding="utf-8")
    plot_scores(results, directory / "scores_by_stage.png")
    if judged:
        plot_stages(results, directory / "winrate_by_stage.png")
        plot_languages(
            results,
            directory / "winrate_by_language.png",
            lambda n, lang: (models[n].get("vs_baseline") or {}).get(lang, {}).get("win_rate", 0),
            f"win-rate vs {results['baseline']}",
            "Win-rate per language",
            compared_only=True,
        )
    plot_languages(
        results,
        directory / "fidelity_by_language.png",
        lambda n, lang: results["language_fidelity"][n].get(lang, {}).get("pass_rate", 0),
        "language fidelity (pass rate)",
        "Answers in the prompt's language, per language",
    )


def _fidelity_cell(row: dict | None) -> str:
    if not row:
        return "-"
    return (
        f"{row['pass_rate']:.0%}{_ci(row.get('pass_rate_interval'))} (line {row['line_pass_rate']:.0%}, word "
        f"{row['word_pass_rate']:.0%})"
    )


def _chrf_cell(row: dict | None) -> str:
    return f"{row['score']}{_ci(row['interval'], 1, False)}" if row else "-"


def _share_cell(row: dict | None) -> str:
    return f"{row['mean']:.0%}{_ci(row.get('interval'))}" if row and row.get("mean") is not None else "-"


def _grade_cell(row: dict | None) -> str:
    if not row:
        return "-"
    unreadable = f" ({row['unparsable']} unparsable)" if row.get("unparsable") else ""
    return (f"{row['mean']:.2f}{_ci(row['interval'], 2, False)}" if row["mean"] is not None else "-") + unreadable


def plot_scores(results: dict, path: Path) -> None:
    """Every model's language fidelity and chrF++ (where there are references), each with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fidelity = [results["language_fidelity"][n]["all"] for n in names]
    panels = [
        (
            "language fidelity (pass rate)",
            [f["pass_rate"] for f in fidelity],
            [f.get("pass_rate_interval") for f in fidelity],
            (0, 1),
        )
    ]
    for metric, label in (
        ("chrf++", "chrF++ against the references"),
        ("echo_free_chrf++", "echo-free chrF++ (what answers add)"),
    ):
        chrf = [(results["models"][n].get(metric) or {}).get("all") for n in names]
        if all(chrf):
            panels.append((label, [c["score"] for c in chrf], [c["interval"] for c in chrf], None))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5, 1.1 * len(names) + 2) * len(panels), 4), squeeze=False)
    for ax, (label, values, bounds, limits) in zip(axes[0], panels):
        errors = [
            [v - (b or (v, v))[0] for v, b in zip(values, bounds)],
            [(b or (v, v))[1] - v for v, b in zip(values, bounds)],
        ]
        colors = [
            "tab:red" if results["models"][n].get("control") else "tab:gray" if n == results["baseline"] else "tab:blue"
            for n in names
        ]
        ax.bar(names, values, yerr=errors, capsize=4, color=colors)
        if limits:
            ax.set_ylim(*limits)
        ax.set_ylabel(f"{label} (95% interval)")
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.suptitle("Each stage on the held-out prompts")
    save_figure(fig, path)


def plot_stages(results: dict, path: Path) -> None:
    """Each stage's win-rate against the baseline, with its interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = {n: m["vs_baseline"]["all"] for n, m in results["models"].items() if "vs_baseline" in m}
    names, rates = list(compared), [r["win_rate"] for r in compared.values()]
    errors = [
        [r - (c["interval"] or (r, r))[0] for r, c in zip(rates, compared.values())],
        [(c["interval"] or (r, r))[1] - r for r, c in zip(rates, compared.values())],
    ]
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
    print(
        f"\nEvaluation against {results['baseline']} ({results['prompts']} prompts; [95% interval], ~ within noise)",
        flush=True,
    )
    for name, m in results["models"].items():
        fid = results["language_fidelity"][name]["all"]["pass_rate"]
        chrf, free = ((m.get(k) or {}).get("all") for k in ("chrf++", "echo_free_chrf++"))
        echo = (m.get("echo_rate") or {}).get("all")
        rate = (
            (
                _rate((m.get("vs_baseline") or {}).get("all"))
                if "vs_baseline" in m
                else "-"
                if m.get("control")
                else "baseline"
            )
            if results.get("judged_by")
            else ""
        )
        print(
            f"  {name:<24}"
            + (f" win-rate {rate:<22}" if rate else "")
            + f" language fidelity {fid:.0%}"
            + (f"  chrF++ {_chrf_cell(chrf)}" if chrf else "")
            + (f"  echo-free {_chrf_cell(free)}" if free else "")
            + (f"  echo rate {echo['mean']:.0%}" if echo and echo.get("mean") is not None else "")
            + ("  ⚠ not above echo" if m.get("beats_echo") is False else ""),
            flush=True,
        )
    print(f"  report: {out / 'report.md'}", flush=True)
