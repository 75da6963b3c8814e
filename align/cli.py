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

    return read_stage_config(args.config, extra)


def config_stage(target: str) -> Callable[[argparse.Namespace, list[str]], int]:
    """The runner of a `--config` stage: `target` names its `function(raw_config, source)` as "module:function"."""

    def run(args: argparse.Namespace, extra: list[str]) -> int:
        module, _, name = target.partition(":")
        raw, source = stage_config(args, extra)
        getattr(importlib.import_module(module), name)(raw, source)
        return 0

    return run


def cmd_generate(args, extra) -> int:
    from align.generation.generate import run_generate

    raw, source = stage_config(args, extra)
    if args.prompt:
        raw["prompt"] = args.prompt
    run_generate(raw, source)
    return 0


def config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe")


def run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (recipes/<name>/pipeline.yaml)")
    parser.add_argument("--from", dest="start_from", metavar="STAGE", help="rerun from this stage on")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")


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
    ),
    "sft": Command("packed supervised fine-tuning (trl SFTTrainer)", config_stage("align.stages.sft:run_sft")),
    "generate": Command("answer prompts with a model (greedy or sampled)", cmd_generate, generate_arguments),
    "reward": Command(
        "train a Bradley-Terry reward model (trl RewardTrainer)", config_stage("reward.train:run_reward")
    ),
    "score": Command("score candidates or preference pairs with a reward model", "reward.cli:cmd_score"),
    "merge": Command(
        "merge checkpoints: streamed linear soup, or mergekit's methods (mergekit YAML)",
        "merge.cli:run",
        merge_arguments,
    ),
    "dpo": Command("offline DPO on preference data (trl DPOTrainer)", config_stage("align.stages.dpo:run_dpo")),
    "iterate": Command(
        "online iterative DPO: sample, rank, DPO, repeat (optionally merging each iteration)",
        config_stage("align.stages.online:run_iterate"),
    ),
    "evaluate": Command(
        "win/loss/tie per language against a baseline (judge or reward model), chrF++, report",
        config_stage("align.stages.evaluate:run_evaluate"),
    ),
    "arbitrage": Command(
        "multi-teacher arbitrage: every teacher answers, a ranker picks (SFT records, pairs)",
        config_stage("align.stages.arbitrage:run_arbitrage"),
    ),
    "curate": Command(
        "curate data: clean, dedup (exact, MinHash, semantic), language filter, IFD, provenance, mix",
        config_stage("align.stages.curate:run_curate"),
    ),
    "contrast": Command(
        "translation-contrast pairs: strong in-language answer vs a weak English answer translated",
        config_stage("align.stages.contrast:run_contrast"),
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
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def quiet_third_party_noise() -> None:
    """Silence warnings that say nothing about the user's run (CPU-only bitsandbytes kernels, a renamed trl field)."""
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*`gradient_checkpointing` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=os.environ.get("POLYALIGN_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_noise()
    try:
        with preemption.handlers():
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
