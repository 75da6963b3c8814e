"""The two merge engines behind one interface, and the one rule that picks the engine for a config.

An engine writes the merged model (weights, config.json, generation config, tokenizer, chat template) into a
directory and returns the output's floating dtype; everything around it (the checks before, LoRA adapters, the
card, the stage lifecycle) is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from merge.config import MergeSpec
from merge.inputs import Checkpoint


@dataclass(frozen=True)
class Options:
    max_shard_bytes: int
    seed: int | None = None  # for randomised methods (dare_*, della)
    progress: bool = True


@dataclass
class Plan:
    """A merge resolved and checked before anything is written: the checkpoint behind every reference, the engine,
    where config and tokenizer come from, the chat template, and the stage's partial directory (`work`)."""

    spec: MergeSpec
    ckpts: dict[str, Checkpoint]  # an adapter input's checkpoint is its base until the adapter is merged
    work: Path
    engine: Engine
    donor_ref: str  # the checkpoint whose config and generation config the output gets
    tokenizer_ref: str | None = None  # None when mergekit builds a new tokenizer
    template: str | None = None
    adapters: dict[str, Path] = field(init=False)  # reference → where its adapter is merged into its base

    def __post_init__(self) -> None:
        self.adapters = {
            ref: self.work / "lora" / f"{i}-{c.adapter.name}"
            for i, (ref, c) in enumerate(self.ckpts.items())
            if c.adapter is not None
        }

    @property
    def inputs(self) -> list[Checkpoint]:
        return [self.ckpts[m.ref] for m in self.spec.inputs()]

    @property
    def donor(self) -> Checkpoint:
        return self.ckpts[self.donor_ref]

    def paths(self) -> dict[str, str]:
        """The directory each reference is read from once its adapter (if any) is merged."""
        return {ref: str(self.adapters.get(ref, c.path)) for ref, c in self.ckpts.items()}


class Engine(Protocol):
    def label(self) -> str:
        """How the model card names the engine."""

    def aligns_vocab(self, spec: MergeSpec) -> bool:
        """Whether inputs of different vocabulary sizes can be merged (onto one tokenizer)."""

    def check(self, plan: Plan) -> None:
        """What the engine refuses, before anything is written."""

    def merge(self, plan: Plan, out_dir: Path, options: Options) -> str | None:
        """Write the merged model into out_dir; return its floating dtype name."""


class StreamedLinear:
    """polyalign's linear average, kept beside mergekit's because it never holds a shard in memory (BENCHMARKS.md)."""

    def label(self) -> str:
        return "polyalign's streamed linear average"

    def aligns_vocab(self, spec: MergeSpec) -> bool:
        return False

    def check(self, plan: Plan) -> None:
        pass

    def merge(self, plan: Plan, out_dir: Path, options: Options) -> str | None:
        from merge.inputs import copy_tokenizer
        from merge.linear import merge_linear
        from merge.output import copy_generation_config, write_chat_template, write_config

        spec = plan.spec
        result = merge_linear(
            plan.inputs,
            spec.scalar_weights(),
            out_dir,
            normalize=spec.normalize,
            dtype=spec.dtype,
            out_dtype=spec.out_dtype,
            max_shard_bytes=options.max_shard_bytes,
            progress=options.progress,
        )
        write_config(plan.donor.path, out_dir, dtype=result["dtype"], tied=result["tied"])
        copy_generation_config(plan.donor.path, out_dir)
        if plan.tokenizer_ref is not None:
            copy_tokenizer(plan.ckpts[plan.tokenizer_ref].path, out_dir)
        if plan.template is not None:
            write_chat_template(out_dir, plan.template)
        return result["dtype"]


class Mergekit:
    """mergekit's methods, layer-wise recipes and tokenizer surgery, run on the directories polyalign resolved."""

    def __init__(self) -> None:
        self.config = None  # mergekit's MergeConfiguration, validated by check()

    def label(self) -> str:
        from importlib.metadata import version

        return f"mergekit {version('mergekit')}"

    def aligns_vocab(self, spec: MergeSpec) -> bool:
        return spec.tokenizer is not None or spec.tokenizer_source is not None

    def check(self, plan: Plan) -> None:
        from merge.methods import mergekit_config

        self.config = mergekit_config(plan.spec, plan.paths())

    def merge(self, plan: Plan, out_dir: Path, options: Options) -> str | None:
        from collections import Counter

        from merge.inputs import read_headers, tie_names
        from merge.methods import run_mergekit
        from merge.output import copy_generation_config, write_chat_template, write_config

        run_mergekit(plan.spec, self.config, out_dir, options, work_dir=plan.work)
        written = read_headers(out_dir, "merged output")
        floating = Counter(t.dtype for t in written.values() if t.dtype in ("F64", "F32", "F16", "BF16"))
        dtype = (
            {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
                floating.most_common(1)[0][0]
            )
            if floating
            else None
        )
        # mergekit copies the donor's config as is: when it wrote an output embedding, the model must not be tied.
        untied = any(head in written for head in tie_names(plan.donor.config))
        write_config(out_dir, out_dir, dtype=dtype, tied=False if untied else None)
        copy_generation_config(plan.donor.path, out_dir)
        if plan.template is not None and (out_dir / "tokenizer_config.json").is_file():
            write_chat_template(out_dir, plan.template)
        return dtype


ENGINES = {"linear": StreamedLinear, "mergekit": Mergekit}


def choose_engine(spec: MergeSpec, inputs: list[Checkpoint]) -> Engine:
    """polyalign's streamed average runs a linear merge of whole models with one number per model. mergekit runs the
    rest: its other methods, layer-wise recipes, per-layer weight gradients or filters, and re-mapping embeddings
    onto one tokenizer (`union`, a `tokenizer:` block, or a tokenizer_source for inputs whose vocabularies differ).
    Inputs whose vocabularies differ with no tokenizer to map them onto are refused by the compatibility check."""
    streamed = (
        spec.method == "linear"
        and not spec.layered
        and spec.tokenizer is None
        and spec.tokenizer_source != "union"
        and spec.scalar_weights() is not None
        and not (spec.tokenizer_source is not None and len({c.vocab_size for c in inputs}) > 1)
    )
    return ENGINES["linear" if streamed else "mergekit"]()
