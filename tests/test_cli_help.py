"""`polyalign <stage> --help` lists the recipe keys as declared: every key has its help where it is defined, the
required ones are marked, and the trl config whose fields pass through is named (with `--all`, its fields)."""

from __future__ import annotations

import importlib

import pytest

from align.cli import COMMANDS, main
from align.core.declared import declared_keys


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.keys])
def test_every_recipe_key_is_declared_with_its_help(name):
    module, _, cls = COMMANDS[name].keys.partition(":")
    declared = getattr(importlib.import_module(module), cls)
    if isinstance(declared, dict):  # the pipeline's keys: name → help
        assert declared and [k for k, text in declared.items() if not text] == []
        return
    keys = declared_keys(declared)
    assert keys and [k.name for k in keys if not k.help] == [], f"polyalign {name}: keys without help"


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_stage_help_lists_keys_grouped_with_required_marked_and_the_trl_config(capsys):
    out = help_text(capsys, "sft", "--help")
    lines = out.splitlines()
    assert "  SFTArgs" in lines and "  ModelArgs" in lines and "  TrainingArgs" in lines
    dataset = next(line for line in lines if line.split()[:2] == ["*", "dataset"])
    assert "a file, folder or datasets name" in dataset
    model = next(line for line in lines if line.split()[:1] == ["model"])
    assert model.endswith("['smollm2-135m']") and "embedded model" in model
    assert "is a field of trl.SFTConfig" in out and "report_to='none'" in out and "learning_rate" not in out
    full = help_text(capsys, "sft", "--help", "--all")
    assert "  trl.SFTConfig" in full and any(line.split()[:1] == ["learning_rate"] for line in full.splitlines())


def test_online_help_says_trl_fields_go_under_dpo(capsys):
    assert "Every other key (under `dpo:`) is a field of trl.DPOConfig" in help_text(capsys, "iterate", "--help")


def test_run_help_lists_pipeline_keys_and_sections_and_the_pipeline_accepts_exactly_those(capsys):
    from align.stages.pipeline import PIPELINE_KEYS, SECTIONS, TOP_KEYS

    out = help_text(capsys, "run", "--help")
    assert "pipeline keys (* required):" in out and "stage sections:" in out
    lines = out.splitlines()
    for key in [*PIPELINE_KEYS, *SECTIONS]:
        assert any(line.split()[:2] in (["*", key], [key, *line.split()[1:2]]) for line in lines), key
    assert TOP_KEYS == {*PIPELINE_KEYS, *SECTIONS}
