"""`polyalign <stage> --print-config`: the resolved recipe (defaults filled, overrides applied) as YAML that, given
back as --config, is the same config (the same hash the stage marks its work with), and that a finished output keeps
in polyalign_recipe.json. Nothing runs and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from align.cli import COMMANDS, main, resolved_stage
from align.core.config import deep_merge, parse_overrides, parse_yaml
from align.core.lifecycle import StageRun

ROOT = Path(__file__).resolve().parents[1]

# stage → (a small recipe, command-line overrides, a key the recipe leaves to its default and another value of it)
CASES = {
    "sft": (
        {"dataset": "d.jsonl", "output_dir": "out", "lora": True, "learning_rate": 1e-4},
        ["--seed", "3"],
        ("packed_attention", "rows"),
    ),
    "dpo": ({"dataset": "p.jsonl", "output_dir": "out", "beta": 1}, ["--lora.r", "4"], ("ref_model", "m")),
    "reward": ({"dataset": "p.jsonl", "output_dir": "out"}, ["--eval_fraction", "0.2"], ("margin_from_scores", True)),
    "iterate": (
        {"prompts": "q.jsonl", "output_dir": "out", "dpo": {"beta": 0.2}},
        ["--iterations", "2"],
        ("samples", 2),
    ),
    "evaluate": (
        {"models": {"a": "m"}, "prompts": "q.jsonl", "output_dir": "out"},
        ["--max_new_tokens", "8"],
        ("resamples", 10),
    ),
    "arbitrage": (
        {"teachers": [{"name": "a", "model": "m"}], "ranker": {"likelihood": "m"}, "prompts": "q", "output_dir": "o"},
        ["--seed", "2"],
        ("min_margin", 0.5),
    ),
    "curate": (
        {"dataset": "d.jsonl", "output_dir": "out", "steps": [{"exact_dedup": {}}]},
        ["--chunk_size", "5"],
        ("num_proc", 2),
    ),
    "contrast": (
        {"prompts": "q.jsonl", "output_dir": "out", "strong": {"model": "m"}},
        ["--seed", "1"],
        ("check_language", False),
    ),
    "generate": ({"model": "m", "max_new_tokens": 4}, ["--prompt", "Hi", "--prompt", "Salut"], ("temperature", 0.5)),
    "score": ({"model": "m", "input": "x.jsonl", "output": "y.jsonl"}, ["--batch_size", "4"], ("max_length", 64)),
}


def printed(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def digest(name: str, raw: dict, tmp_path: Path) -> str:
    """The hash the stage marks its partial work with (StageRun's, of the resolved form it is given)."""
    resolved = resolved_stage(COMMANDS[name], raw, None)
    return StageRun(tmp_path / "never-built", resolved, stage=name, overwrite=False).digest


def test_every_config_stage_is_covered():
    assert set(CASES) == {n for n, c in COMMANDS.items() if c.keys and n != "run"}


@pytest.mark.parametrize("name", CASES)
def test_printed_recipe_given_back_is_the_same_config(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe, overrides, (default_key, other) = CASES[name]
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    first = printed(capsys, name, "--config", "recipe.yaml", *overrides, "--print-config")
    resolved = parse_yaml(first)
    # the recipe as the stage is given it: generate's --prompt is its own flag, the rest are recipe overrides
    given = (
        {**recipe, "prompt": ["Hi", "Salut"]} if name == "generate" else deep_merge(recipe, parse_overrides(overrides))
    )
    assert default_key in resolved and default_key not in recipe  # defaults filled
    assert deep_merge(resolved, given) == resolved  # the recipe's values and the overrides, as given

    Path("resolved.yaml").write_text(first)
    assert printed(capsys, name, "--config", "resolved.yaml", "--print-config") == first
    assert digest(name, given, tmp_path) == digest(name, resolved, tmp_path)
    assert digest(name, {**resolved, default_key: other}, tmp_path) != digest(name, resolved, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "resolved.yaml"]  # nothing written


@pytest.mark.parametrize("name", ["sft", "dpo", "reward"])
def test_training_stages_resolve_with_the_classes_their_command_declares(name, tmp_path):
    """A training stage resolves its recipe from its parsed job's classes; --print-config from the command's."""
    import importlib

    parse = {"sft": "align.stages.sft:parse_sft_config", "dpo": "align.stages.dpo:parse_dpo_config"}
    module, _, function = parse.get(name, "reward.train:parse_reward_config").partition(":")
    recipe, _, _ = CASES[name]
    job = getattr(importlib.import_module(module), function)({**recipe, "output_dir": str(tmp_path / "o")})
    command = COMMANDS[name]
    assert f"{type(job.args).__module__}:{type(job.args).__name__}" == command.keys
    assert type(job.training).__name__ == command.trl


def test_trl_fields_hold_what_the_recipe_sets_and_the_defaults_polyalign_changes(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_text("dataset: d.jsonl\noutput_dir: out\nwarmup_steps: 5\nsave_steps: 50\n")
    resolved = parse_yaml(printed(capsys, "sft", "--config", str(path), "--print-config"))
    assert resolved["warmup_steps"] == 5 and resolved["save_steps"] == 50  # the recipe's
    assert resolved["report_to"] == "none" and resolved["packing"] is True  # polyalign's, not trl's
    assert "gradient_accumulation_steps" not in resolved and "bf16" not in resolved  # trl's own, and the machine's


def test_a_string_that_reads_as_a_number_stays_a_string(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text("model: '1e5'\nprompt: ['2']\n")
    out = printed(capsys, "generate", "--config", str(path), "--print-config")
    assert parse_yaml(out)["model"] == "1e5" and parse_yaml(out)["prompt"] == ["2"]


def test_bad_input_is_one_line_naming_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_text("dataset: d.jsonl\nlearnin_rate: 1\n")
    assert main(["sft", "--config", str(path), "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"polyalign sft: error: {path}: 'learnin_rate': unknown key: not a polyalign or trl SFTConfig field "
        "(did you mean 'learning_rate'?)"
    ]


def test_pipeline_printed_recipe_gives_the_same_stages_and_hashes(tmp_path, capsys, monkeypatch):
    from align.stages.pipeline import build_pipeline

    monkeypatch.chdir(ROOT)
    pipeline = "recipes/demo/pipeline.yaml"
    first = printed(capsys, "run", pipeline, "--seed", "3", "--print-config")
    resolved = parse_yaml(first)
    assert resolved["seed"] == 3 and resolved["shared_languages"] == ["en", "es", "fr"]  # override, default
    (tmp_path / "resolved.yaml").write_text(first)
    assert printed(capsys, "run", str(tmp_path / "resolved.yaml"), "--print-config") == first
    given = {**parse_yaml(Path(pipeline).read_text()), "seed": 3}
    hashes = [(s.name, s.hash) for s in build_pipeline(given, None).stages]
    assert [(s.name, s.hash) for s in build_pipeline(resolved, None).stages] == hashes
    assert not Path(resolved["run_dir"]).exists() or Path(resolved["run_dir"]).is_dir()


def test_merge_prints_its_config_as_read(tmp_path, capsys):
    path = tmp_path / "merge.yaml"
    path.write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n")
    first = printed(capsys, "merge", str(path), "--print-config")
    assert parse_yaml(first)["models"][0] == {"model": "a", "parameters": {"weight": 1}}
    (tmp_path / "again.yaml").write_text(first)
    assert printed(capsys, "merge", str(tmp_path / "again.yaml"), "--print-config") == first
    assert main(["merge", str(path)]) == 2  # without --print-config the output directory is needed
    assert "OUTPUT_DIR" in capsys.readouterr().err


def test_a_finished_output_keeps_the_resolved_recipe(tmp_path, capsys):
    data = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Yes."}], "lang": "en"}
            for q in ("Is it?", "Is it?", "Really?")
        ],
    )
    path = tmp_path / "curate.yaml"
    path.write_text(f"dataset: {data}\noutput_dir: {tmp_path / 'out'}\nsteps:\n  - exact_dedup: {{on: prompt}}\n")
    resolved = parse_yaml(printed(capsys, "curate", "--config", str(path), "--num_proc", "1", "--print-config"))
    assert main(["curate", "--config", str(path), "--num_proc", "1"]) == 0
    recipe = json.loads((tmp_path / "out" / "polyalign_recipe.json").read_text())
    assert recipe["stage"] == "curate" and recipe["source"] == str(path)
    assert recipe["config"] == resolved
