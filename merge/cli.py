"""`polyalign merge CONFIG.yaml OUTPUT_DIR [--overwrite]`: the shape of `mergekit-yaml`, polyalign's guarantees.

Only argparse at the top: `polyalign --help` builds this parser without importing torch or mergekit.
"""

from __future__ import annotations

import argparse
import shlex

USAGE = (
    "polyalign merge CONFIG.yaml OUTPUT_DIR [--overwrite] [--max-shard-size SIZE] [--seed N] [--quiet]"
    " [--report-to TRACKER ...] [--run-name NAME] | polyalign merge CONFIG.yaml --print-config"
)


def merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="merge config in mergekit's YAML format")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", nargs="?", help="where the merged model appears, complete")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR")
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest output safetensors shard, e.g. 5GB, 500MB (default 5GB)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for randomised methods (dare_*, della)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config", action="store_true", help="print the merge config as polyalign reads it (YAML) and stop"
    )
    parser.add_argument(
        "--report-to",
        nargs="+",
        default=None,
        metavar="TRACKER",
        help="log the inputs and their weights to tensorboard, trackio, wandb or mlflow",
    )
    parser.add_argument("--run-name", default=None, help="the tracker run's name")


def resolved_merge(args: argparse.Namespace, extra: list[str]) -> dict:
    """The merge config as polyalign reads it and hashes it (mergekit's keys, as mergekit defaults them: nothing is
    filled in). The output directory and flags are the command line's, not the config's."""
    from align.core.errors import ConfigError
    from merge.config import load_config

    if extra:
        raise ConfigError(None, extra[0], f"unexpected argument for merge: {' '.join(extra)} (usage: {USAGE})")
    return load_config(args.config).raw


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from align.core.errors import ConfigError

    if extra:
        raise ConfigError(None, extra[0], f"unexpected argument for merge: {' '.join(extra)} (usage: {USAGE})")
    if args.output_dir is None:
        raise ConfigError(None, "OUTPUT_DIR", f"missing: where the merged model appears (usage: {USAGE})")
    from merge.api import run as run_merge
    from merge.config import load_config

    spec = load_config(args.config)
    out = run_merge(
        spec,
        args.output_dir,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        seed=args.seed,
        progress=not args.quiet,
        command=command_line(args),
        report_to=args.report_to,
        run_name=args.run_name,
    )
    print(f"merged {len(spec.inputs())} checkpoints ({spec.method}) into {out}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as the model card records it (rebuilt from the parsed arguments, so it reads the same whether
    `polyalign` ran from a shell or `align.cli.main` was called)."""
    words = ["polyalign", "merge", args.config, args.output_dir]
    if args.overwrite:
        words.append("--overwrite")
    if args.max_shard_size != "5GB":
        words += ["--max-shard-size", str(args.max_shard_size)]
    if args.seed is not None:
        words += ["--seed", str(args.seed)]
    if args.quiet:
        words.append("--quiet")
    if args.report_to:
        words += ["--report-to", *args.report_to]
    if args.run_name:
        words += ["--run-name", args.run_name]
    return " ".join(shlex.quote(w) for w in words)
