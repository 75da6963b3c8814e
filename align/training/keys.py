"""A training stage's keys: polyalign's own (model, data, LoRA) split from the trl config fields that pass
through, the rules their values must meet, and the defaults polyalign sets where trl's do not suit a recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from align.core.config import build_dataclass, require, split_known
from align.core.errors import ConfigError
from align.core.io import partial_dir
from align.core.tracking import check_trackers
from align.models.loading import LoraArgs, ModelArgs

# trl defaults that polyalign changes: never report to a tracker nobody configured, and save checkpoints often
# enough to resume after a kill.
TRAINING_DEFAULTS = {
    "report_to": "none",
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
}


@dataclass
class TrainingArgs(ModelArgs):
    """The keys every training stage has; a stage's own Args add to them, and every other recipe key is a field of
    the stage's trl config."""

    dataset: Any = None  # required: a file, folder or datasets name, in any format of README's Data section
    output_dir: str | None = None  # required: where the finished model goes (built in a hidden .partial sibling)
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    lora: dict | bool | None = None  # true for the defaults, or {r, alpha, dropout, target_modules, ...}
    save_merged: bool = False  # with LoRA: also write the adapter merged into its base under <output_dir>/merged
    keep_checkpoints: bool = False  # keep the trainer's checkpoints in the output (dropped by default)

    trl_defaults = TRAINING_DEFAULTS  # not a key: the trl defaults this stage changes (a resolved recipe holds them)


@dataclass
class TrainingJob:
    """A training stage's parsed recipe: polyalign's keys, the trl config, LoRA, and where the recipe was written."""

    args: TrainingArgs
    training: Any  # the stage's trl config (SFTConfig, DPOConfig, RewardConfig)
    lora: LoraArgs | None
    raw: dict = field(default_factory=dict)
    source: str | None = None


def parse_training_keys(
    raw: dict,
    source: str | None,
    own_cls,
    trl_cls,
    *,
    dataset_help: str,
    output_help: str = "where to write the trained model",
):
    """The config steps every training stage shares: polyalign's keys vs the trl config's, the required keys, and
    LoRA (a 4/8-bit base trains only through adapters). Returns (own args, trl kwargs, LoraArgs or None)."""
    own, trl_kwargs = split_known(raw, own_cls, trl_cls, source)
    args = build_dataclass(own_cls, own, source)
    require(args, source, output_dir=output_help, dataset=dataset_help)
    lora = None
    if args.lora not in (None, False):
        lora = build_dataclass(LoraArgs, {} if args.lora is True else args.lora, source, prefix="lora.")
        check_values(LORA_RULES, vars(lora), source, prefix="lora.")
    elif args.load_in_4bit or args.load_in_8bit:
        raise ConfigError(
            source,
            "load_in_4bit" if args.load_in_4bit else "load_in_8bit",
            "a 4/8-bit base can only be trained through LoRA adapters: add `lora: true`",
        )
    return args, trl_kwargs, lora


def take_chat_template_path(args, trl_kwargs: dict, source: str | None) -> None:
    """trl's `chat_template_path` is polyalign's `chat_template` (align.models.templates applies it before tokenising)."""
    path = trl_kwargs.pop("chat_template_path", None)
    if path:
        if args.chat_template:
            raise ConfigError(source, "chat_template_path", "give chat_template or chat_template_path, not both")
        args.chat_template = path


class Rule(NamedTuple):
    """A value a key must have; `when` (given the config's values) says whether the key is used at all."""

    key: str
    test: Callable[[Any], bool]
    message: str
    when: Callable[[dict], bool] = lambda values: True


def _steps_or_ratio(value) -> bool:
    """A whole number of steps, or below 1 a ratio of the total steps (as transformers reads these values)."""
    return value >= 0 and (value < 1 or value == int(value))


def _by_steps(what: str) -> Callable[[dict], bool]:
    """Whether `<what>_strategy` is "steps" (trl's strategies are str enums)."""
    return lambda values: str(getattr(values[f"{what}_strategy"], "value", values[f"{what}_strategy"])) == "steps"


STEPS_OR_RATIO = "must be a whole number of steps > 0, or a ratio of the total steps in (0, 1)"


# Values that trl or torch accept while the config is built and refuse (or misread) only once training starts:
# checked while the recipe is read, so that the error names the key and where it was written, before any model loads.
TRAINING_RULES = (
    Rule("learning_rate", lambda v: v >= 0, "must be >= 0"),
    Rule("num_train_epochs", lambda v: v > 0, "must be > 0", lambda values: values["max_steps"] == -1),
    Rule("max_steps", lambda v: v == -1 or v >= 1, "must be -1 (train for num_train_epochs) or at least 1"),
    *(
        Rule(key, lambda v: v >= 1, "must be at least 1")
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "max_length",
        )
    ),
    Rule("warmup_steps", _steps_or_ratio, "must be a whole number of steps, or a ratio of the total steps in [0, 1)"),
    Rule("weight_decay", lambda v: v >= 0, "must be >= 0"),
    Rule("max_grad_norm", lambda v: v >= 0, "must be >= 0 (0 turns clipping off)"),
    *(
        Rule(f"{what}_steps", lambda v: v > 0 and _steps_or_ratio(v), STEPS_OR_RATIO, _by_steps(what))
        for what in ("logging", "save", "eval")
    ),
    Rule("beta", lambda v: v > 0, "must be > 0"),  # DPO
)


# LoraArgs' values, checked where the stage reads them (peft refuses them only when the model is wrapped).
LORA_RULES = (
    Rule("r", lambda v: v >= 1, "must be at least 1"),
    Rule("alpha", lambda v: v > 0, "must be > 0"),
    Rule("dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
)


def check_values(rules, values: dict, source: str | None, prefix: str = "") -> None:
    """Every rule whose key `values` sets (to other than None) and uses: a ConfigError naming the first broken one."""
    for rule in rules:
        value = values.get(rule.key)
        if value is not None and rule.when(values) and not rule.test(value):
            raise ConfigError(source, f"{prefix}{rule.key}", f"{rule.message}, got {value!r}")


def build_trl_config(trl_cls, kwargs: dict, args, source: str | None):
    """The trl config of a stage: polyalign's defaults, then the recipe's values checked (TRAINING_RULES); bf16 only
    where the hardware has it (trl defaults to bf16, which a CPU run cannot use); without CUDA a gloo CPU group (so
    several processes work under torchrun / `accelerate launch --multi_gpu`); checkpoints in the partial directory."""
    from align.models.loading import cuda_available

    kwargs = {**type(args).trl_defaults, **kwargs}
    defaults = {f.name: f.default for f in dataclasses.fields(trl_cls) if f.default is not dataclasses.MISSING}
    check_values(TRAINING_RULES, {**defaults, **kwargs}, source)
    check_trackers(kwargs["report_to"], source)
    kwargs.setdefault("bf16", cuda_available() and args.dtype in ("auto", "bf16", "bfloat16"))
    kwargs.setdefault("use_cpu", not cuda_available())
    kwargs["output_dir"] = str(partial_dir(args.output_dir))
    try:
        return trl_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(source, None, f"invalid {trl_cls.__name__}: {e}") from None
