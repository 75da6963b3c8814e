"""`polyalign <stage> --config recipe.yaml [--key value ...]`: one subcommand per stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from align import __version__
from align.core import preemption
from align.core.errors import PolyalignError, io_failure
from merge.cli import merge_arguments


def stage_config(args: argparse.Namespace, extra: list[str]) -> tuple[dict, str | None]:
    from align.core.config import read_stage_config

    raw, source = read_stage_config(args.config, extra)
    if getattr(args, "prompt", None):  # generate's --prompt, repeatable
        raw["prompt"] = args.prompt
    return raw, source


def config_stage(target: str) -> Callable[[argparse.Namespace, list[str]], int]:
    """The runner of a `--config` stage: `target` names its `function(raw_config, source)` as "module:function"."""

    def run(args: argparse.Namespace, extra: list[str]) -> int:
        module, _, name = target.partition(":")
        raw, source = stage_config(args, extra)
        getattr(importlib.import_module(module), name)(raw, source)
        return 0

    return run


PRINT_CONFIG = "print the resolved recipe (defaults filled, overrides applied) as YAML and stop"


def config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe")
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG)


def run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (recipes/<name>/pipeline.yaml)")
    parser.add_argument("--from", dest="start_from", metavar="STAGE", help="rerun from this stage on")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG)


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    config_arguments(parser)
    parser.add_argument("--prompt", action="append", help="a user message (repeatable)")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, how it parses arguments, and what runs it (`run(args, extra) -> exit code`).

    `run` may be a "module:function" string so that `polyalign --help` imports no stage's heavy dependencies.
    """

    help: str
    run: Callable[[argparse.Namespace, list[str]], int] | str
    arguments: Callable[[argparse.ArgumentParser], None] = config_arguments
    keys: str | None = None  # "module:Args": the dataclass that declares the recipe keys `--help` lists
    trl: str | None = None  # the trl config class whose fields pass through (`--help --all` lists them)
    trl_under: str | None = None  # the section the trl fields go under (None: the top level of the recipe)

    def resolve(self) -> Callable[[argparse.Namespace, list[str]], int]:
        if callable(self.run):
            return self.run
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "run": Command(
        "the whole recipe: arbitrage, SFT per cluster, merges, offline and online DPO, evaluation",
        "align.stages.pipeline:cmd_run",
        run_arguments,
        keys="align.stages.pipeline:PIPELINE_KEYS",
    ),
    "sft": Command(
        "packed supervised fine-tuning (trl SFTTrainer)",
        config_stage("align.stages.sft:run_sft"),
        keys="align.stages.sft:SFTArgs",
        trl="SFTConfig",
    ),
    "generate": Command(
        "answer prompts with a model (greedy or sampled)",
        config_stage("align.generation.generate:run_generate"),
        generate_arguments,
        keys="align.generation.generate:GenerateArgs",
    ),
    "reward": Command(
        "train a Bradley-Terry reward model (trl RewardTrainer)",
        config_stage("reward.train:run_reward"),
        keys="reward.train:RewardArgs",
        trl="RewardConfig",
    ),
    "score": Command(
        "score candidates or preference pairs with a reward model", "reward.cli:cmd_score", keys="reward.cli:ScoreArgs"
    ),
    "merge": Command(
        "merge checkpoints: streamed linear soup, or mergekit's methods (mergekit YAML)",
        "merge.cli:run",
        merge_arguments,
    ),
    "dpo": Command(
        "offline DPO on preference data (trl DPOTrainer)",
        config_stage("align.stages.dpo:run_dpo"),
        keys="align.stages.dpo:DPOArgs",
        trl="DPOConfig",
    ),
    "iterate": Command(
        "online iterative DPO: sample, rank, DPO, repeat (optionally merging each iteration)",
        config_stage("align.stages.online:run_iterate"),
        keys="align.stages.online:IterateArgs",
        trl="DPOConfig",
        trl_under="dpo",
    ),
    "evaluate": Command(
        "win/loss/tie per language against a baseline (judge or reward model), chrF++, report",
        config_stage("align.stages.evaluate:run_evaluate"),
        keys="align.stages.evaluate:EvaluateArgs",
    ),
    "arbitrage": Command(
        "multi-teacher arbitrage: every teacher answers, a ranker picks (SFT records, pairs)",
        config_stage("align.stages.arbitrage:run_arbitrage"),
        keys="align.stages.arbitrage:ArbitrageArgs",
    ),
    "curate": Command(
        "curate data: clean, dedup (exact, MinHash, semantic), language filter, IFD, provenance, mix",
        config_stage("align.stages.curate:run_curate"),
        keys="align.stages.curate:CurateArgs",
    ),
    "contrast": Command(
        "translation-contrast pairs: strong in-language answer vs a weak English answer translated",
        config_stage("align.stages.contrast:run_contrast"),
        keys="align.stages.contrast:ContrastArgs",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyalign",
        description="Post-training toolkit for multilingual LLMs.",
        epilog="Any other --key value overrides the recipe (trl config fields too).",
    )
    parser.add_argument("--version", action="version", version=f"polyalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="STAGE")
    for name, command in COMMANDS.items():
        stage = sub.add_parser(name, help=command.help, description=command.help, add_help=False)
        stage.add_argument(
            "-h",
            "--help",
            action=KeysHelp,
            command=command,
            help="show this help and the recipe keys (--help --all: trl's fields too)",
        )
        command.arguments(stage)
    return parser


class KeysHelp(argparse.Action):
    """`polyalign <stage> --help`: the usage, then the recipe keys as declared (align.core.declared)."""

    show_all = False  # set by main() when the command line also holds --all

    def __init__(self, option_strings, dest, command: Command, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.command = command

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        if self.command.keys:
            print_keys(self.command, self.show_all)
        parser.exit()


def print_keys(command: Command, show_all: bool) -> None:
    from align.core.declared import declared_keys, trl_fields

    module, _, name = command.keys.partition(":")
    declared = getattr(importlib.import_module(module), name)
    if isinstance(declared, dict):  # a pipeline recipe: its own keys, then one section per stage
        sections = importlib.import_module(module).SECTIONS
        width = max(map(len, [*declared, *sections]))
        for title, table in (("pipeline keys (* required)", declared), ("stage sections", sections)):
            print(f"\n{title}:")
            for key, text in table.items():
                required = text.startswith("required")
                print(f"  {'*' if required else ' '} {key:<{width}}  {text.removeprefix('required: ')}")
        return
    keys = declared_keys(declared)
    groups: dict[str, list] = {}
    for key in keys:
        groups.setdefault(key.declared_in, []).append(key)
    width = max(len(k.name) for k in keys)
    print("\nrecipe keys (YAML, or --key value on the command line; * required):")
    for group, members in groups.items():
        print(f"\n  {group}")
        for k in members:
            default = "" if k.required else f" [{k.default}]"
            print(f"  {'*' if k.required else ' '} {k.name:<{width}}  {k.text}{default}".rstrip())
    if command.trl:
        import trl

        from align.training.keys import TRAINING_DEFAULTS

        changed = ", ".join(f"{k}={v!r}" for k, v in getattr(declared, "trl_defaults", TRAINING_DEFAULTS).items())
        where = f"under `{command.trl_under}:`" if command.trl_under else "at the top level"
        print(
            f"\nEvery other key ({where}) is a field of trl.{command.trl}; polyalign's defaults differ from trl's for "
            f"{changed}, and bf16 is on only where CUDA has it. `--help --all` lists trl's fields."
        )
        if show_all:
            fields = trl_fields(getattr(trl, command.trl))
            width = max(len(f.name) for f in fields)
            print(f"\n  trl.{command.trl}")
            for f in fields:
                print(f"    {f.name:<{width}}  {f.help} [{f.default}]".rstrip())


def print_config(args: argparse.Namespace, extra: list[str]) -> int:
    """`--print-config`: the recipe as the stage resolves it (align.core.config.resolve_recipe), as YAML on stdout.
    Nothing runs and nothing is written; given back as --config, it is the same config (the same hash)."""
    from align.core.config import deep_merge, dump_recipe, load_yaml, parse_overrides

    command = COMMANDS[args.command]
    if args.command == "run":
        from align.stages.pipeline import resolve_pipeline

        resolved = resolve_pipeline(deep_merge(load_yaml(args.pipeline), parse_overrides(extra)), args.pipeline)
    elif args.command == "merge":
        from merge.cli import resolved_merge

        resolved = resolved_merge(args, extra)
    else:
        raw, source = stage_config(args, extra)
        resolved = resolved_stage(command, raw, source)
    sys.stdout.write(dump_recipe(resolved))
    return 0


def resolved_stage(command: Command, raw: dict, source) -> dict:
    """A stage's resolved recipe, from the classes its command declares (the ones the stage resolves with)."""
    from align.core.config import resolve_recipe

    module, _, name = command.keys.partition(":")
    trl_cls = None
    if command.trl and command.trl_under is None:
        import trl

        trl_cls = getattr(trl, command.trl)
    return resolve_recipe(raw, getattr(importlib.import_module(module), name), source, trl_cls)


def quiet_third_party_noise() -> None:
    """Silence warnings that say nothing about the user's run (CPU-only bitsandbytes kernels, a renamed trl field)."""
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*`gradient_checkpointing` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")


def main(argv: list[str] | None = None) -> int:
    KeysHelp.show_all = "--all" in (sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=os.environ.get("POLYALIGN_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_noise()
    try:
        with preemption.handlers():
            if getattr(args, "print_config", False):
                return print_config(args, extra)
            return COMMANDS[args.command].resolve()(args, extra)
    except preemption.Preempted as e:
        print(f"polyalign {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except PolyalignError as e:
        print(f"polyalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        failure = io_failure(e)
        if failure is None:
            raise
        print(
            f"polyalign {args.command}: error: {failure}; no finished output was written (the same command "
            "resumes where it can)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"polyalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
