"""The whole recipe in one command: a stage graph over one run directory, skipped, resumed or rerun as needed.

    reward? → arbitrage → sft/<cluster> … → sft/merged → dpo/offline[/<cluster> … → merged] → dpo/online → eval

Each stage reads what earlier stages wrote and writes its own directory (ARCHITECTURE.md). `state.json` records every
finished stage with a hash of its config and of the stages it reads, so a rerun skips finished stages, resumes the
one that was cut (each stage resumes its own partial work), and reruns a stage whose config, or whose inputs,
changed, and everything after it. `--from STAGE` forces a rerun from there. The plan is printed before anything runs.

Clusters (align.data.languages.make_clusters) are language families, or lists given in the recipe, each holding the
shared languages (default en, es, fr) so the cluster models merge well (Aya Expanse).

One module over 400 lines: the builders of the stage graph share one builder's state (run directory, ranker, policy
so far); apart, they would pass it around.
"""

from __future__ import annotations

import difflib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from align.core.config import config_hash, load_yaml, plain
from align.core.console import print_table
from align.core.errors import ConfigError
from align.core.io import partial_dir, safe_name, write_json, write_jsonl
from align.data import load_records
from align.data.languages import DEFAULT_SHARED, UnknownLanguage, make_clusters
from align.models.embedded import DEFAULT_MODEL
from align.stages.launch import Launch, launch_flags, run_launched

log = logging.getLogger(__name__)

# A pipeline recipe's keys, declared once with their help (`polyalign run --help` prints them).
PIPELINE_KEYS = {
    "name": "the pipeline's name: tracker runs are named <name>/<stage>",
    "run_dir": "required: the run directory (state.json and one folder per stage)",
    "model": "the base model every stage starts from (default: the embedded smollm2-135m)",
    "prompts": "required: the prompts of arbitrage and online DPO",
    "heldout": "held-out prompts with references for the evaluation (default: `prompts`)",
    "clusters": "`family` (one per language family), or {name: [languages or family names]}",
    "shared_languages": "languages every cluster also holds (default en, es, fr)",
    "seed": "the seed of every stage (default 0)",
    "ranker": "without a `reward` section: {reward_model: path}, {likelihood: model} or {judge: model}",
    "dtype": "model loading for every stage: auto, bf16, fp16 or fp32",
    "attn_implementation": "model loading for every stage: auto, or a transformers attention backend",
    "trust_remote_code": "model loading for every stage: run a model repository's own code",
    "launch": "accelerate launch options for every stage (a section's own `launch` wins; false: in this process)",
    "report_to": "trackers for every stage (tensorboard, trackio, wandb, mlflow), runs named <name>/<stage>",
}
# The pipeline keys' defaults (a resolved recipe writes them out); `heldout` defaults to `prompts`, and the model
# keys (dtype, ...) to each stage's own.
PIPELINE_DEFAULTS = {"model": DEFAULT_MODEL, "clusters": "family", "shared_languages": list(DEFAULT_SHARED), "seed": 0}
# Each section holds that stage's own keys (`polyalign <command> --help` lists them).
SECTIONS = {
    "reward": "optional: train the ranker (polyalign reward)",
    "arbitrage": "required: the teacher pool and its routing (polyalign arbitrage)",
    "sft": "required: SFT per language cluster (polyalign sft)",
    "merge": "weights of the cluster soup: equal, languages or {cluster: weight}",
    "dpo": "offline DPO on the arbitrage pairs (polyalign dpo); per_cluster: true trains one per cluster",
    "online": "online iterations (polyalign iterate); per_cluster: true trains one per cluster each iteration",
    "evaluate": "evaluation of every stage (polyalign evaluate); unmerged: true adds each cluster model",
}
TOP_KEYS = {*PIPELINE_KEYS, *SECTIONS}
# The sections that `report_to` at the top of a recipe reaches (the merges too: `_add_merge`).
TRACKED_SECTIONS = ("reward", "arbitrage", "sft", "dpo", "online", "evaluate")
MODEL_KEYS = ("dtype", "attn_implementation", "trust_remote_code")
# The `polyalign` subcommand of each stage function: what `launch` starts under accelerate.
COMMAND_OF = {
    "reward.train:run_reward": "reward",
    "align.stages.arbitrage:run_arbitrage": "arbitrage",
    "align.stages.sft:run_sft": "sft",
    "align.stages.dpo:run_dpo": "dpo",
    "align.stages.online:run_iterate": "iterate",
    "align.stages.evaluate:run_evaluate": "evaluate",
}


@dataclass
class Stage:
    name: str
    output: Path
    reads: list[str]  # names of the stages whose outputs it reads
    config: dict  # what the stage's hash covers
    run: Callable[[], None]  # in the pipeline's own process
    hash: str = ""
    launch: Launch | None = None  # run as its own accelerate launch job instead (align.stages.launch)
    command: str | None = None  # the `polyalign` subcommand and config of that job, and what to write first
    cfg: dict | None = None
    before: Callable[[], None] | None = None

    def execute(self, run_dir: Path) -> None:
        if self.launch is None:
            self.run()
            return
        if self.before:
            self.before()
        run_launched(self.name, self.command, self.cfg, self.launch, run_dir)


@dataclass
class Pipeline:
    raw: dict
    source: str | None
    run_dir: Path
    stages: list[Stage] = field(default_factory=list)

    def add(self, name: str, output: Path, reads: list[str], config: dict, run: Callable[[], None]) -> Stage:
        """A stage; its hash covers its config and the hashes of what it reads (how it is launched is not part of
        its result)."""
        known = {s.name: s for s in self.stages}
        upstream = [known[r].hash for r in reads]
        stage = Stage(name, output, reads, config, run)
        stage.hash = config_hash({"config": config, "reads": upstream})
        self.stages.append(stage)
        return stage

    def add_call(
        self,
        name: str,
        output: Path,
        reads: list[str],
        target: str,
        cfg: dict,
        section: str,
        *,
        hashed: dict | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """A stage that calls `target(cfg)`: in this process, or as its own accelerate job when the recipe's
        `launch` (top level, or the section's own) says so."""

        untracked, cfg = cfg, _tracked(self.raw, section, name, cfg)  # the hash leaves tracking out: no result changes

        def run():
            if before:
                before()
            _call(target, cfg, self.source)

        stage = self.add(name, output, reads, untracked if hashed is None else hashed, run)
        stage.launch = _launch(self.raw, section, self.source)
        stage.command, stage.cfg, stage.before = COMMAND_OF[target], cfg, before


def _tracked(raw: dict, section: str, stage: str, cfg: dict) -> dict:
    """`report_to` at the top of a recipe reaches every stage (a section's own wins), each run named
    `<pipeline>/<stage>` so that a pipeline's runs group and two pipelines compare in the tracker."""
    if "report_to" not in raw or section not in TRACKED_SECTIONS:
        return cfg
    keys = _tracking(raw, stage)
    if section == "online":  # the loop's own figures, and its training's keys under `dpo`
        return {**keys, **cfg, "dpo": {**keys, **(cfg.get("dpo") or {})}}
    return {**keys, **cfg}


def _tracking(raw: dict, stage: str) -> dict:
    return {"report_to": raw["report_to"], "run_name": f"{raw.get('name', 'pipeline')}/{stage}"}


def _section(raw: dict, key: str, source: str | None) -> dict:
    """A stage section's own keys (its `launch` is the pipeline's, not the stage's)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(source, key, "expected a mapping of that stage's keys")
    return {k: v for k, v in value.items() if k != "launch"}


def _launch(raw: dict, key: str, source: str | None) -> Launch | None:
    """accelerate launch's flags for section `key`: the top-level `launch` updated by the section's (`launch: false`
    runs that stage in the pipeline's process); None without either."""
    own = (raw.get(key) or {}).get("launch") if isinstance(raw.get(key), dict) else None
    if own is False or (own is None and not raw.get("launch")):
        return None
    if own is not None and not isinstance(own, dict):
        raise ConfigError(source, f"{key}.launch", "expected a mapping of accelerate launch options, or false")
    top = raw.get("launch") or {}
    if not isinstance(top, dict):
        raise ConfigError(
            source, "launch", "expected a mapping of accelerate launch options (num_processes, config_file, ...)"
        )
    return launch_flags({**top, **(own or {})}, source, f"{key}.launch" if own else "launch")


def _model_keys(raw: dict) -> dict:
    return {k: raw[k] for k in MODEL_KEYS if k in raw}


@dataclass
class Builder:
    """What the stage sections of a pipeline recipe share while they become stages."""

    pipe: Pipeline
    base: str
    common: dict  # model-loading keys and the seed, for every stage
    ranker: dict
    ranker_reads: list[str]
    clusters: dict[str, list[str]] = field(default_factory=dict)
    policy: Path | None = None  # the model the next stage starts from, and the stage that writes it
    policy_stage: str = ""

    @property
    def raw(self) -> dict:
        return self.pipe.raw

    def section(self, key: str) -> dict:
        return _section(self.raw, key, self.pipe.source)


def build_pipeline(raw: dict, source: str | None) -> Pipeline:
    """Turn a pipeline recipe into its ordered stages (nothing runs, nothing is written)."""
    _check_keys(raw, source)
    raw = {**PIPELINE_DEFAULTS, **raw}
    pipe = Pipeline(raw, source, Path(raw["run_dir"]))
    builder = _add_ranker(pipe, raw["model"], {**_model_keys(raw), "seed": raw["seed"]})
    _add_arbitrage(builder)
    _add_sft(builder)
    if "dpo" in raw:
        _add_offline_dpo(builder)
    if "online" in raw:
        _add_online(builder)
    if "evaluate" in raw:
        _add_evaluate(builder)
    return pipe


def resolve_pipeline(raw: dict, source: str | None) -> dict:
    """A pipeline recipe resolved: its keys checked, their defaults filled (PIPELINE_DEFAULTS, `heldout`), the
    sections as written. A section's own defaults are filled by its stage, whose output keeps its resolved recipe
    (polyalign_recipe.json): the pipeline hands each stage a section merged with what the pipeline sets, and written
    out here every section would repeat every key of its stage. Its stages hash as the recipe's do."""
    _check_keys(raw, source)
    resolved = {**PIPELINE_DEFAULTS, **raw}
    resolved.setdefault("heldout", resolved["prompts"])
    order = [*PIPELINE_KEYS, *SECTIONS]
    return plain({k: resolved[k] for k in sorted(resolved, key=order.index)})


def _check_keys(raw: dict, source: str | None) -> None:
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(TOP_KEYS), n=1)
        raise ConfigError(
            source,
            unknown[0],
            "unknown pipeline key"
            + (f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(TOP_KEYS))})"),
        )
    for key in ("run_dir", "prompts", "arbitrage", "sft"):
        if key not in raw:
            raise ConfigError(source, key, "missing")


def _add_ranker(pipe: Pipeline, base: str, common: dict) -> Builder:
    """The ranker: a reward model trained here, or one named in the recipe."""
    raw, source = pipe.raw, pipe.source
    ranker = dict(raw.get("ranker") or {})
    if "reward" in raw:
        reward_dir = pipe.run_dir / "reward"
        cfg = {"model": base, **common, **_section(raw, "reward", source), "output_dir": str(reward_dir)}
        pipe.add_call("reward", reward_dir, [], "reward.train:run_reward", cfg, "reward")
        ranker = {**ranker, "reward_model": str(reward_dir)}
    if not ranker:
        raise ConfigError(
            source,
            "ranker",
            "missing: a `reward` stage to train one, or ranker: {reward_model: path}, "
            "{likelihood: model} or {judge: model}",
        )
    return Builder(pipe, base, common, ranker, ["reward"] if "reward" in raw else [])


def _add_arbitrage(b: Builder) -> None:
    """The teacher pool answers the prompts; the ranker routes."""
    out = b.pipe.run_dir / "arbitrage"
    cfg = {
        **b.common,
        **b.section("arbitrage"),
        "prompts": b.raw["prompts"],
        "ranker": b.ranker,
        "output_dir": str(out),
    }
    b.pipe.add_call("arbitrage", out, b.ranker_reads, "align.stages.arbitrage:run_arbitrage", cfg, "arbitrage")


def _clusters(raw: dict, source: str | None) -> dict[str, list[str]]:
    try:
        langs = sorted(
            {r["lang"] for r in load_records(raw["prompts"], "prompt", seed=raw["seed"], source=source, key="prompts")}
        )
        clusters, unassigned = make_clusters(langs, raw["clusters"], raw["shared_languages"])
    except (UnknownLanguage, ValueError) as e:
        raise ConfigError(source, "clusters", str(e)) from None
    if unassigned:
        raise ConfigError(
            source,
            "clusters",
            f"no cluster holds {', '.join(unassigned)}: add them to a cluster or to shared_languages",
        )
    return clusters


def _add_sft(b: Builder) -> None:
    """SFT per cluster, on the arbitrage SFT records of the cluster's languages, then a weighted merge."""
    b.clusters = _clusters(b.raw, b.pipe.source)
    run_dir, section, records = b.pipe.run_dir, b.section("sft"), b.pipe.run_dir / "arbitrage" / "sft.jsonl"
    cluster_dirs = {}
    for name, members in b.clusters.items():
        out, data = run_dir / "sft" / safe_name(name), run_dir / "sft" / ".data" / f"{safe_name(name)}.jsonl"
        cfg = {"model": b.base, **b.common, **section, "dataset": str(data), "output_dir": str(out)}
        b.pipe.add_call(
            f"sft/{name}",
            out,
            ["arbitrage"],
            "align.stages.sft:run_sft",
            cfg,
            "sft",
            hashed={**cfg, "languages": members},
            before=lambda members=members, data=data: _cluster_data(records, members, data, b.pipe.source),
        )
        cluster_dirs[name] = out
    b.policy, b.policy_stage = run_dir / "sft" / "merged", "sft/merged"
    _add_merge(b, "sft/merged", b.policy, cluster_dirs, [f"sft/{n}" for n in b.clusters])


def _add_offline_dpo(b: Builder) -> None:
    """Offline DPO on the arbitrage pairs: on the merged model, or per cluster and merged again."""
    section = b.section("dpo")
    per_cluster = bool(section.pop("per_cluster", False))
    if section.get("lora"):
        section["save_merged"] = True  # the next stage reads a full model
    run_dir, pairs, source = b.pipe.run_dir, b.pipe.run_dir / "arbitrage" / "pairs.jsonl", b.pipe.source
    reads = [b.policy_stage, "arbitrage"]
    if not per_cluster:
        out = run_dir / "dpo" / "offline"
        cfg = {"model": str(b.policy), **b.common, **section, "dataset": str(pairs), "output_dir": str(out)}
        b.pipe.add_call("dpo", out, reads, "align.stages.dpo:run_dpo", cfg, "dpo")
        b.policy, b.policy_stage = _trained(out, cfg), "dpo"
        return
    dirs = {}
    for name, members in b.clusters.items():
        out, data = (
            run_dir / "dpo" / "offline" / safe_name(name),
            run_dir / "dpo" / ".data" / f"{safe_name(name)}.jsonl",
        )
        cfg = {"model": str(b.policy), **b.common, **section, "dataset": str(data), "output_dir": str(out)}
        b.pipe.add_call(
            f"dpo/{name}",
            out,
            reads,
            "align.stages.dpo:run_dpo",
            cfg,
            "dpo",
            hashed={**cfg, "languages": members},
            before=lambda members=members, data=data: _cluster_data(pairs, members, data, source),
        )
        dirs[name] = _trained(out, cfg)
    b.policy, b.policy_stage = run_dir / "dpo" / "offline" / "merged", "dpo/merged"
    _add_merge(b, "dpo/merged", b.policy, dirs, [f"dpo/{n}" for n in b.clusters])


def _add_online(b: Builder) -> None:
    """Online iterations, each followed by a merge with the previous policy when the recipe asks; with `per_cluster`,
    each iteration trains one model per cluster and merges them with the pipeline's merge weights (Aya Expanse §2.3)."""
    out = b.pipe.run_dir / "dpo" / "online"
    section = b.section("online")
    if section.pop("per_cluster", False):
        section.update(clusters=b.clusters, cluster_weights=b.section("merge").get("weights", "equal"))
    cfg = {
        **b.common,
        **section,
        "model": str(b.policy),
        "prompts": b.raw["prompts"],
        "ranker": b.ranker,
        "output_dir": str(out),
    }
    b.pipe.add_call("online", out, [b.policy_stage, *b.ranker_reads], "align.stages.online:run_iterate", cfg, "online")


def _add_evaluate(b: Builder) -> None:
    """Evaluation of every stage's model against the base; with `unmerged: true`, each cluster model before its merge
    too (`sft/<cluster>` ...), so that the merge's own gain is visible."""
    from align.stages.online import cluster_model, iteration_model

    run_dir, stages = b.pipe.run_dir, {s.name: s for s in b.pipe.stages}
    section = b.section("evaluate")
    unmerged = bool(section.pop("unmerged", False))
    models, reads = {"base": b.base}, ["sft/merged"]
    if unmerged:
        models.update({f"sft/{c}": str(run_dir / "sft" / safe_name(c)) for c in b.clusters})
    models["sft"] = str(run_dir / "sft" / "merged")
    if "dpo" in b.raw:
        if unmerged and "dpo/merged" in stages:
            models.update(
                {
                    f"dpo-offline/{c}": str(_trained(stages[f"dpo/{c}"].output, stages[f"dpo/{c}"].config))
                    for c in b.clusters
                }
            )
        models["dpo-offline"] = str(b.policy)
        reads.append("dpo/merged" if "dpo/merged" in stages else "dpo")
    if "online" in stages:
        online, out = stages["online"].config, run_dir / "dpo" / "online"
        lora, clusters = bool(online.get("lora")), online.get("clusters")
        for i in range(1, int(online.get("iterations", 3)) + 1):
            if unmerged and clusters:
                models.update({f"online-{i}/{c}": cluster_model(out, i, c, lora=lora) for c in clusters})
            models[f"online-{i}"] = iteration_model(
                out, i, lora=lora, clusters=clusters is not None, merged=online.get("merge_with_previous") is not None
            )
        reads.append("online")
    out = run_dir / "eval"
    cfg = {
        **b.common,
        "max_new_tokens": 128,
        **section,
        "models": models,
        "baseline": "base",
        "prompts": b.raw.get("heldout", b.raw["prompts"]),
        "output_dir": str(out),
    }
    b.pipe.add_call("evaluate", out, reads, "align.stages.evaluate:run_evaluate", cfg, "evaluate")


def _trained(out: Path, cfg: dict) -> Path:
    """Where a DPO stage's full model is: its output, or the merged copy of a LoRA adapter."""
    return out / "merged" if cfg.get("lora") else out


def _add_merge(b: Builder, name: str, out: Path, dirs: dict[str, Path], reads: list[str]) -> None:
    from merge.weighting import cluster_weights

    section = b.section("merge")
    if "launch" in (b.raw.get("merge") or {}):
        raise ConfigError(
            b.pipe.source,
            "merge.launch",
            "a merge runs in the pipeline's own process (streamed tensor by tensor, no GPU): remove launch",
        )
    weights = cluster_weights(
        section.get("weights", "equal"), {c: b.clusters[c] for c in dirs}, source=b.pipe.source, key="merge.weights"
    )
    models = [(str(path), weights[c]) for c, path in dirs.items()]
    cfg = {"models": models, "dtype": section.get("dtype")}
    tracking = _tracking(b.raw, name) if "report_to" in b.raw else {}  # not hashed: tracking changes no result

    def run():
        from merge import soup

        soup(models, out, dtype=section.get("dtype"), command="polyalign run (pipeline merge)", **tracking)

    b.pipe.add(name, out, reads, cfg, run)


def _call(target: str, cfg: dict, source: str | None) -> None:
    import importlib

    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(cfg, source)


def _cluster_data(path: Path, members: list[str], data: Path, source: str | None) -> None:
    """Write the records of `path` (arbitrage SFT records or pairs) in the cluster's languages to `data`, the
    cluster stage's dataset."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if r.get("lang") in members]
    if not kept:
        raise ConfigError(source, "clusters", f"{path} holds no record in {', '.join(members)}")
    write_jsonl(data, kept)


# ------------------------------------------------------------------------------------------------ running


def load_state(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def plan(pipe: Pipeline, state: dict, start_from: str | None) -> list[tuple[Stage, str]]:
    """(stage, what happens to it): done (skipped), run, resume (partial work is there), rerun (changed)."""
    names = [s.name for s in pipe.stages]
    if start_from is not None and start_from not in names:
        raise ConfigError(None, "from", f"no stage {start_from!r} in this pipeline (stages: {', '.join(names)})")
    forced = set(names[names.index(start_from) :]) if start_from else set()
    out = []
    stale = False
    for stage in pipe.stages:
        record = state["stages"].get(stage.name)
        done = record is not None and record["hash"] == stage.hash and stage.output.exists()
        if done and stage.name not in forced and not stale:
            out.append((stage, "done"))
            continue
        stale = True  # everything after a stage that runs runs too (its inputs are new)
        if record is not None and record["hash"] != stage.hash or stage.name in forced or done:
            out.append((stage, "rerun"))  # changed, forced, or after one that reruns: start it over
        elif partial_dir(stage.output).exists() or stage.output.exists():
            out.append((stage, "resume"))  # cut: the stage picks up its own partial work
        else:
            out.append((stage, "run"))
    return out


def print_plan(pipe: Pipeline, steps: list[tuple[Stage, str]]) -> None:
    width = max(len(s.name) for s, _ in steps)
    print(f"Pipeline {pipe.raw.get('name', pipe.run_dir.name)} in {pipe.run_dir}:", flush=True)
    for stage, action in steps:
        launched = f"  ({stage.launch.describe()})" if stage.launch else ""
        print(f"  {stage.name:<{width}}  {action:<7} → {stage.output}{launched}", flush=True)


def run_pipeline(raw: dict, source: str | None = None, *, start_from: str | None = None, dry_run: bool = False) -> Path:
    pipe = build_pipeline(raw, source)
    state = load_state(pipe.run_dir)
    steps = plan(pipe, state, start_from)
    print_plan(pipe, steps)
    if dry_run:
        return pipe.run_dir
    pipe.run_dir.mkdir(parents=True, exist_ok=True)
    for stage, action in steps:
        if action == "done":
            continue
        if action == "rerun":
            shutil.rmtree(stage.output, ignore_errors=True)
            shutil.rmtree(partial_dir(stage.output), ignore_errors=True)
        state["stages"].pop(stage.name, None)
        write_json(pipe.run_dir / "state.json", state)
        print(f"\n=== {stage.name} ({action}) ===", flush=True)
        began = time.time()
        stage.execute(pipe.run_dir)
        state["stages"][stage.name] = {
            "hash": stage.hash,
            "output": str(stage.output),
            "seconds": round(time.time() - began, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(pipe.run_dir / "state.json", state)
    print_wall_times(steps, state)
    final = pipe.stages[-1]
    print(
        f"\nPipeline done: {pipe.run_dir}"
        + (f"; report: {final.output / 'report.md'}" if final.name == "evaluate" else ""),
        flush=True,
    )
    return pipe.run_dir


def print_wall_times(steps: list[tuple[Stage, str]], state: dict) -> None:
    """Each stage's wall time, this run's or the one it was done in before (state.json), and the total."""
    rows, total = [], 0.0
    for stage, action in steps:
        seconds = state["stages"].get(stage.name, {}).get("seconds", 0.0)
        total += seconds if action != "done" else 0.0
        rows.append([stage.name, "done before" if action == "done" else action, f"{seconds:.1f}"])
    print_table(
        "Wall time per stage (s)",
        ["stage", "this run", "seconds"],
        [*rows, ["total, this run", "", f"{total:.1f}"]],
        left=(0, 1),
    )


def cmd_run(args, extra) -> int:
    """`polyalign run PIPELINE.yaml [--from STAGE] [--dry-run] [--key value ...]`."""
    from align.core.config import deep_merge, parse_overrides

    raw = deep_merge(load_yaml(args.pipeline), parse_overrides(extra))
    run_pipeline(raw, args.pipeline, start_from=args.start_from, dry_run=args.dry_run)
    return 0
