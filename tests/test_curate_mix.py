"""Language mixing: multipliers per language and per tier, temperature sampling, exact counts, determinism."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from conftest import write_jsonl

from align.cli import main
from align.core.errors import ConfigError
from align.data.mix import MixArgs, format_plan, largest_remainder, mix_records, plan_mix

COUNTS = {"en": 800, "fr": 150, "sw": 50}


def records(counts=COUNTS) -> list[dict]:
    out = []
    for lang, n in counts.items():
        out += [
            {
                "messages": [
                    {"role": "user", "content": f"q {lang} {i}"},
                    {"role": "assistant", "content": f"a {lang} {i}"},
                ],
                "lang": lang,
                "id": f"{lang}-{i}",
            }
            for i in range(n)
        ]
    return out


def targets(plan) -> dict[str, int]:
    return {p.lang: p.target for p in plan}


def test_temperature_sampling_counts():
    # p_l ∝ n_l^(1/T). T=2, N=1000: 594.17, 257.28, 148.54 → floors 594/257/148, the one left goes to sw.
    assert targets(plan_mix(COUNTS, MixArgs(temperature=2.0, total=1000))) == {"en": 594, "fr": 257, "sw": 149}
    # T=3, N=600: 304.69, 174.39, 120.92 → floors 304/174/120, two left: sw (.92), then en (.69).
    assert targets(plan_mix(COUNTS, MixArgs(temperature=3.0, total=600))) == {"en": 305, "fr": 174, "sw": 121}
    # T=1 keeps the proportions; a large T approaches uniform.
    assert targets(plan_mix(COUNTS, MixArgs(temperature=1.0, total=100))) == {"en": 80, "fr": 15, "sw": 5}
    assert targets(plan_mix(COUNTS, MixArgs(temperature=1000.0, total=300))) == {"en": 100, "fr": 100, "sw": 100}
    # Without `total`, the mix is as large as the data.
    assert sum(targets(plan_mix(COUNTS, MixArgs(temperature=2.0))).values()) == 1000


def test_multipliers_per_language_and_tier():
    args = MixArgs(
        multipliers={"English": 0.5, "fr": 2},
        tiers={"low": {"languages": ["sw"], "multiplier": 3}, "high": {"languages": ["en"], "multiplier": 9}},
    )
    plan = plan_mix(COUNTS, args)
    # A language's own multiplier beats its tier's.
    assert {p.lang: p.multiplier for p in plan} == {"en": 0.5, "fr": 2.0, "sw": 3.0}
    assert targets(plan) == {"en": 400, "fr": 300, "sw": 150}


def test_mixed_records_are_exact_deterministic_and_sampled_without_repeats():
    data = records()
    mixed, plan = mix_records(data, multipliers={"en": 0.5, "fr": 2.5}, seed=7)
    counts = Counter(r["lang"] for r in mixed)
    assert counts == {"en": 400, "fr": 375, "sw": 50}
    per_record = Counter(r["id"] for r in mixed)
    # Down-sampling draws without replacement; 2.5x is two whole copies of every record plus half of them once more.
    assert all(per_record[r["id"]] == 1 for r in mixed if r["lang"] == "en")
    assert Counter(per_record[f"fr-{i}"] for i in range(150)) == {3: 75, 2: 75}
    assert all(per_record[f"sw-{i}"] == 1 for i in range(50))
    # Input order is kept, repeats side by side.
    positions = [int(r["id"].split("-")[1]) + {"en": 0, "fr": 1000, "sw": 2000}[r["lang"]] for r in mixed]
    assert positions == sorted(positions)
    again, _ = mix_records(data, multipliers={"en": 0.5, "fr": 2.5}, seed=7)
    other, _ = mix_records(data, multipliers={"en": 0.5, "fr": 2.5}, seed=8)
    assert [r["id"] for r in again] == [r["id"] for r in mixed]
    assert {r["id"] for r in other if r["lang"] == "en"} != {r["id"] for r in mixed if r["lang"] == "en"}
    # A language's sample does not depend on the other languages' settings.
    changed, _ = mix_records(data, multipliers={"en": 0.5, "fr": 1.0}, seed=7)
    assert [r["id"] for r in changed if r["lang"] == "en"] == [r["id"] for r in mixed if r["lang"] == "en"]
    table = format_plan(plan)
    assert table.splitlines()[1].split() == ["en", "800", "0.5", "48.5%", "400", "0.50x"]
    assert table.splitlines()[-1].split() == ["all", "1000", "100.0%", "825", "0.82x"]


def test_largest_remainder_always_adds_up():
    for total in (1, 7, 100, 1001):
        out = largest_remainder({"a": 1.0, "b": 1.0, "c": 1.0}, total)
        assert sum(out.values()) == total and max(out.values()) - min(out.values()) <= 1


@pytest.mark.parametrize(
    "args, key",
    [
        (MixArgs(temperature=-1.0), "temperature"),
        (MixArgs(total=0), "total"),
        (MixArgs(multipliers={"fr": -2}), "multipliers.fr"),
        (MixArgs(multipliers={"xx-nope": 2}), "multipliers.xx-nope"),
        (MixArgs(tiers={"low": {"languages": ["sw"]}}), "tiers.low"),
        (
            MixArgs(
                tiers={"a": {"languages": ["sw"], "multiplier": 2}, "b": {"languages": ["Swahili"], "multiplier": 3}}
            ),
            "tiers.b.languages",
        ),
    ],
)
def test_bad_mix_settings_name_the_key(args, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        plan_mix(COUNTS, args)


def test_curate_mix_step_writes_the_mixed_set_and_prints_the_mix(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", records({"en": 40, "fr": 10, "sw": 5}))
    config = {
        "dataset": str(data),
        "output_dir": str(tmp_path / "out"),
        "steps": ["exact_dedup", {"mix": {"temperature": 2.0, "multipliers": {"sw": 2}, "total": 60, "seed": 1}}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["curate", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    # weights: sqrt(40)=6.32, sqrt(10)=3.16, sqrt(5*2)=3.16 → 60 × (0.5, 0.25, 0.25)
    assert "Language mix" in printed
    assert ["sw", "5", "2", "25.0%", "15", "3.00x"] in [line.split() for line in printed.splitlines()]
    mixed = [json.loads(line) for line in (tmp_path / "out" / "mixed.jsonl").read_text().splitlines()]
    assert Counter(r["lang"] for r in mixed) == {"en": 30, "fr": 15, "sw": 15}
    curated = (tmp_path / "out" / "curated.jsonl").read_text().splitlines()
    assert len(curated) == 55  # curated.jsonl stays unmixed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mixed"] == 60 and metrics["languages"]["sw"] == {"input": 5, "curated": 5, "mixed": 15}
    assert "## Mix" in (tmp_path / "out" / "report.md").read_text()
