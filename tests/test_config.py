"""Recipes and command-line overrides: parsing, errors that name the key, and the SFT stage's typed config.

parse_sft_config builds trl's SFTConfig but loads no model and writes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from align.core.config import deep_merge, load_yaml, parse_overrides
from align.core.errors import ConfigError

# ------------------------------------------------------------------------------------------------ parse_overrides


def test_overrides_values_are_yaml_scalars():
    assert parse_overrides(
        [
            "--max_steps",
            "5",
            "--learning_rate",
            "0.0001",
            "--model",
            "org/model",
            "--packing",
            "false",
            "--dataset",
            "[a.jsonl, b.jsonl]",
            "--weight_decay",
            "-0.1",
        ]
    ) == {
        "max_steps": 5,
        "learning_rate": 0.0001,
        "model": "org/model",
        "packing": False,
        "dataset": ["a.jsonl", "b.jsonl"],
        "weight_decay": -0.1,
    }


def test_override_1e_minus_4_is_a_float(tmp_path):
    # PyYAML's YAML 1.1 reads "1e-4" as a string; recipes follow YAML 1.2, where it is the float the user meant.
    overrides = parse_overrides(["--learning_rate", "1e-4"])
    assert overrides == {"learning_rate": 1e-4}
    job = parse(tmp_path, **overrides)
    assert job.training.learning_rate == pytest.approx(1e-4)
    assert type(job.training.learning_rate) is float


def test_no_and_off_are_strings_not_booleans(tmp_path):
    """trl's enums spell "off" as `no`: `--save_strategy no` must reach SFTConfig as "no", not False."""
    assert parse_overrides(["--save_strategy", "no", "--report_to", "none"]) == {
        "save_strategy": "no",
        "report_to": "none",
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text("save_strategy: no\neval_strategy: no\npacking: false\nlearning_rate: 2e-5\n")
    assert load_yaml(recipe) == {"save_strategy": "no", "eval_strategy": "no", "packing": False, "learning_rate": 2e-5}
    job = parse(tmp_path, save_strategy="no")
    assert job.training.save_strategy == "no"


def test_dotted_overrides_nest():
    assert parse_overrides(["--lora.r", "16", "--lora.alpha", "32"]) == {"lora": {"r": 16, "alpha": 32}}
    assert parse_overrides(["--lora", "--lora.r", "16"]) == {"lora": {"r": 16}}
    with pytest.raises(ConfigError) as info:
        parse_overrides(["--lora", "false", "--lora.r", "16"])
    assert str(info.value) == "command line: 'lora.r': 'lora' is not a mapping"


def test_bare_flag_is_true():
    assert parse_overrides(["--packing"]) == {"packing": True}
    assert parse_overrides(["--overwrite", "--max_steps", "3"]) == {"overwrite": True, "max_steps": 3}


def test_key_equals_value_and_dashes():
    assert parse_overrides(["--max_steps=7", "--output-dir=out/run", "--model="]) == {
        "max_steps": 7,
        "output_dir": "out/run",
        "model": "",
    }
    assert parse_overrides(["--per-device-train-batch-size", "4"]) == {"per_device_train_batch_size": 4}


@pytest.mark.parametrize("argv", [["max_steps", "5"], ["--"], ["-x", "1"]])
def test_overrides_reject_positional_arguments(argv):
    with pytest.raises(ConfigError) as info:
        parse_overrides(argv)
    assert str(info.value) == f"command line: '{argv[0]}': expected --key value"


def test_overrides_win_over_the_recipe():
    recipe = {"max_steps": 10, "lora": {"r": 8, "alpha": 16}, "model": "m"}
    assert deep_merge(recipe, parse_overrides(["--lora.r", "32", "--max_steps", "3"])) == {
        "max_steps": 3,
        "lora": {"r": 32, "alpha": 16},
        "model": "m",
    }
    assert recipe == {"max_steps": 10, "lora": {"r": 8, "alpha": 16}, "model": "m"}  # not mutated


# ------------------------------------------------------------------------------------------------ load_yaml


def test_load_yaml(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: org/model\nlearning_rate: 2.0e-5\nlora:\n  r: 16\ndataset:\n  - a.jsonl\n")
    assert load_yaml(path) == {"model": "org/model", "learning_rate": 2e-5, "lora": {"r": 16}, "dataset": ["a.jsonl"]}
    path.write_text("# only a comment\n")
    assert load_yaml(path) == {}


def test_load_yaml_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: no such config file"


def test_load_yaml_invalid_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: org/model\noutput_dir: out\nlearning_rate: 1e-4\n  max_steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value).startswith(f"{path}:4: invalid YAML (")
    assert "\n" not in str(info.value)


def test_load_yaml_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- dataset\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: expected a mapping of keys to values at the top level"


# ------------------------------------------------------------------------------------------------ parse_sft_config


def parse(tmp_path: Path, source: str | None = None, **raw):
    from align.stages.sft import parse_sft_config

    raw.setdefault("dataset", "data.jsonl")
    raw.setdefault("output_dir", str(tmp_path / "out"))
    return parse_sft_config(raw, source)


def config_error(tmp_path: Path, source: str | None = None, **raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, source, **raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_suggests_the_closest(tmp_path):
    message = config_error(tmp_path, "recipe.yaml", learning_rat=1e-4)
    assert message.startswith("recipe.yaml: 'learning_rat': unknown key")
    assert message.endswith("(did you mean 'learning_rate'?)")


def test_unknown_lora_key_suggests_the_closest(tmp_path):
    message = config_error(tmp_path, lora={"rr": 4})
    assert message.startswith("command line: 'lora.rr': unknown key")
    assert message.endswith("(did you mean 'lora.r'?)")


def test_trl_fields_pass_through(tmp_path):
    job = parse(
        tmp_path,
        learning_rate=3e-5,
        max_steps="12",
        per_device_train_batch_size=4,
        lr_scheduler_type="cosine",
        gradient_accumulation_steps=2,
        max_length=256,
        seed=7,
    )
    t = job.training
    assert t.learning_rate == pytest.approx(3e-5)
    assert t.max_steps == 12
    assert t.per_device_train_batch_size == 4
    assert t.lr_scheduler_type == "cosine"
    assert (t.gradient_accumulation_steps, t.max_length, t.seed) == (2, 256, 7)


def test_recipe_file_to_config(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"dataset: data.jsonl\noutput_dir: {tmp_path / 'out'}\nlearning_rate: 1e-4\nmax_steps: 20\nlora:\n  r: 16\n"
    )
    raw = deep_merge(load_yaml(path), parse_overrides(["--max_steps", "5"]))
    from align.stages.sft import parse_sft_config

    job = parse_sft_config(raw, str(path))
    assert job.training.learning_rate == pytest.approx(1e-4)
    assert job.training.max_steps == 5
    assert job.lora.r == 16
    assert job.args.dataset == "data.jsonl"


def test_bad_value_type_names_the_key(tmp_path):
    assert config_error(tmp_path, "r.yaml", max_steps="abc") == "r.yaml: 'max_steps': expected int, got 'abc'"
    assert config_error(tmp_path, learning_rate="fast") == "command line: 'learning_rate': expected float, got 'fast'"


def test_lora_true_gives_the_defaults(tmp_path):
    lora = parse(tmp_path, lora=True).lora
    assert (lora.r, lora.alpha, lora.dropout) == (8, 16, pytest.approx(0.05))
    assert lora.target_modules is None  # the architecture's own: align.models.loading.lora_targets


def test_lora_mapping_overrides_some_defaults(tmp_path):
    lora = parse(tmp_path, lora={"r": "16", "target_modules": "all-linear"}).lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 16, pytest.approx(0.05), "all-linear")


@pytest.mark.parametrize("value", [None, False])
def test_no_lora(tmp_path, value):
    assert parse(tmp_path, lora=value).lora is None


@pytest.mark.parametrize("value", [16, ["q_proj", "v_proj"]])
def test_lora_of_the_wrong_type_is_a_config_error(tmp_path, value):
    # `lora: 16` (meant as the rank) must be reported against the key, not crash.
    assert config_error(tmp_path, "r.yaml", lora=value).startswith("r.yaml: 'lora': ")


def test_quantised_base_needs_lora(tmp_path):
    assert (
        config_error(tmp_path, "r.yaml", load_in_4bit=True)
        == "r.yaml: 'load_in_4bit': a 4/8-bit base can only be trained through LoRA adapters: add `lora: true`"
    )
    assert config_error(tmp_path, load_in_8bit="true").startswith("command line: 'load_in_8bit': ")
    job = parse(tmp_path, load_in_4bit=True, lora=True)  # with adapters it is fine (no model is loaded here)
    assert job.args.load_in_4bit is True and job.lora is not None


def test_missing_output_dir_and_dataset(tmp_path):
    from align.stages.sft import parse_sft_config

    with pytest.raises(ConfigError) as info:
        parse_sft_config({"dataset": "data.jsonl"}, "r.yaml")
    assert str(info.value).startswith("r.yaml: 'output_dir': missing")
    with pytest.raises(ConfigError) as info:
        parse_sft_config({"output_dir": str(tmp_path / "out")}, "r.yaml")
    assert str(info.value).startswith("r.yaml: 'dataset': missing")


def test_packing_defaults_to_true(tmp_path):
    assert parse(tmp_path).training.packing is True
    assert parse(tmp_path, packing=False).training.packing is False
    assert parse(tmp_path, packing="false").training.packing is False


def test_wrapped_packing_is_refused(tmp_path):
    assert config_error(tmp_path, packing_strategy="wrapped").startswith("command line: 'packing_strategy': ")


def test_assistant_only_loss_is_consumed_by_polyalign(tmp_path):
    default = parse(tmp_path)
    assert default.assistant_only_loss is True
    assert default.training.assistant_only_loss is False
    assert default.training.completion_only_loss is False
    off = parse(tmp_path, assistant_only_loss=False)
    assert off.assistant_only_loss is False
    assert off.training.assistant_only_loss is False
    on = parse(tmp_path, assistant_only_loss="true")
    assert on.assistant_only_loss is True
    assert on.training.assistant_only_loss is False


def test_bf16_off_without_cuda(tmp_path, monkeypatch):
    import align.models.loading

    monkeypatch.setattr(align.models.loading, "cuda_available", lambda: False)
    assert parse(tmp_path).training.bf16 is False


def test_bf16_follows_this_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("bf16 defaults on where CUDA is present")
    assert parse(tmp_path).training.bf16 is False


def test_polyalign_keys_and_defaults(tmp_path):
    out = tmp_path / "runs" / "sft"
    job = parse(
        tmp_path, output_dir=str(out), model="org/model", dataset=["a.jsonl", {"path": "b.jsonl"}], overwrite="yes"
    )
    assert job.args.model == "org/model"
    assert job.args.output_dir == str(out)
    assert job.args.dataset == ["a.jsonl", {"path": "b.jsonl"}]
    assert job.args.overwrite is True
    assert job.training.report_to in ([], "none", ["none"])  # never a tracker nobody configured
    # training checkpoints go to a hidden sibling; parsing itself writes nothing
    assert Path(job.training.output_dir) == out.parent / ".sft.partial"
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_config_error_is_one_line(tmp_path, capsys):
    import trl

    from align.cli import main

    trl.SFTConfig  # noqa: B018
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    try:
        rc = main(["sft", "--dataset", "data.jsonl", "--output_dir", str(tmp_path / "out"), "--learning_rat", "1"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("polyalign sft: error: command line: 'learning_rat': unknown key")
    assert lines[0].endswith("(did you mean 'learning_rate'?)")
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_config_file(tmp_path, capsys):
    from align.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        rc = main(["sft", "--config", str(tmp_path / "nope.yaml")])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert rc == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"polyalign sft: error: {tmp_path / 'nope.yaml'}: no such config file"
    )


# ------------------------------------------------------------------------------------------------ training values


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("learning_rate", -1, "must be >= 0, got -1.0"),
        ("num_train_epochs", 0, "must be > 0, got 0.0"),
        ("max_steps", 0, "must be -1 (train for num_train_epochs) or at least 1, got 0"),
        ("per_device_train_batch_size", 0, "must be at least 1, got 0"),
        ("per_device_eval_batch_size", -2, "must be at least 1, got -2"),
        ("gradient_accumulation_steps", 0, "must be at least 1, got 0"),
        ("warmup_steps", -5, "must be a whole number of steps, or a ratio of the total steps in [0, 1), got -5.0"),
        ("warmup_steps", 2.5, "must be a whole number of steps, or a ratio of the total steps in [0, 1), got 2.5"),
        ("weight_decay", -0.1, "must be >= 0, got -0.1"),
        ("max_grad_norm", -1, "must be >= 0 (0 turns clipping off), got -1.0"),
        ("logging_steps", 0, "must be a whole number of steps > 0, or a ratio of the total steps in (0, 1), got 0.0"),
        ("save_steps", -1, "must be a whole number of steps > 0, or a ratio of the total steps in (0, 1), got -1.0"),
        ("max_length", 0, "must be at least 1, got 0"),
        ("lora", {"r": 0}, "must be at least 1, got 0"),
        ("lora", {"alpha": 0}, "must be > 0, got 0"),
        ("lora", {"dropout": 1}, "must be in [0, 1), got 1.0"),
    ],
)
def test_training_values_are_checked_when_the_recipe_is_read(tmp_path, key, value, message):
    named = f"lora.{next(iter(value))}" if key == "lora" else key
    assert config_error(tmp_path, "r.yaml", **{key: value}) == f"r.yaml: '{named}': {message}"


def test_training_values_in_range_pass(tmp_path):
    job = parse(
        tmp_path,
        learning_rate=0,
        warmup_steps=0.1,
        max_grad_norm=0,
        max_steps=-1,
        max_length=None,
        lora={"r": 1, "dropout": 0},
    )
    assert (job.training.warmup_steps, job.training.max_grad_norm, job.lora.r) == (pytest.approx(0.1), 0, 1)
    # a steps key is checked only where its strategy uses it; max_steps overrides num_train_epochs
    assert parse(tmp_path, save_strategy="no", save_steps=0, max_steps=3, num_train_epochs=0).training.max_steps == 3


def test_dpo_and_reward_values_are_checked(tmp_path):
    from align.stages.dpo import parse_dpo_config
    from reward.train import parse_reward_config

    raw = {"dataset": "pairs.jsonl", "output_dir": str(tmp_path / "out")}
    for parse_config, key, value, message in [
        (parse_dpo_config, "beta", 0, "must be > 0, got 0.0"),
        (parse_dpo_config, "max_length", 0, "must be at least 1, got 0"),
        (parse_reward_config, "learning_rate", -1, "must be >= 0, got -1.0"),
        (parse_reward_config, "eval_batch_size", 0, "must be at least 1, got 0"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({**raw, key: value}, "r.yaml")
        assert str(info.value) == f"r.yaml: '{key}': {message}"


def run_cli_quietly(argv: list[str]) -> int:
    from align.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return main(argv)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_bad_training_value_stops_before_anything_loads_naming_where_it_was_written(tmp_path, capsys):
    """The model and the data do not exist: had either been loaded first, the error would be about them."""
    recipe = tmp_path / "x.yaml"
    recipe.write_text(
        f"model: {tmp_path / 'no-model'}\ndataset: {tmp_path / 'no-data.jsonl'}\n"
        f"output_dir: {tmp_path / 'out'}\nlearning_rate: -1\n"
    )
    capsys.readouterr()
    assert run_cli_quietly(["sft", "--config", str(recipe)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"polyalign sft: error: {recipe}: 'learning_rate': must be >= 0, got -1.0"
    ]
    recipe.write_text(recipe.read_text().replace("learning_rate: -1", "learning_rate: 1e-5"))
    assert run_cli_quietly(["sft", "--config", str(recipe), "--learning_rate", "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "polyalign sft: error: command line: 'learning_rate': must be >= 0, got -1.0"
    ]
    assert run_cli_quietly(["sft", "--config", str(recipe), "--lora.r", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "polyalign sft: error: command line: 'lora.r': must be at least 1, got 0"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["x.yaml"]
