"""The whole recipe in one command: a stage graph over one run directory, skipped, resumed or rerun as needed.

    reward? → arbitrage → sft/<cluster> … → sft/merged → dpo/offline[/<cluster> … → merged] → dpo/online → eval

Each stage reads what earlier stages wrote and writes its own directory (ARCHITECTURE.md). `state.json` records every
finished stage with a hash of its config and of the stages it reads, so a rerun skips finished stages, resumes the
one that was cut (each stage resumes its own partial work), and reruns a stage whose config, or whose inputs,
changed, and everything after it. `--from STAGE` forces a rerun from there. The plan is printed before anything runs.

Clusters (align.data.languages.make_clusters) are language families, or lists given in the recipe, each holding the
shared languages (default en, es, fr) so the cluster models merge well (Aya Expanse).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import config_hash, load_yaml
from .data import load_records
from .data.languages import DEFAULT_SHARED, UnknownLanguage, make_clusters
from .embedded import DEFAULT_MODEL
from .errors import ConfigError
from .io import write_json, write_jsonl

log = logging.getLogger(__name__)

SECTIONS = ("reward", "arbitrage", "sft", "merge", "dpo", "online", "evaluate")
TOP_KEYS = {"name", "run_dir", "model", "prompts", "heldout", "clusters", "shared_languages", "seed", "ranker",
            "dtype", "attn_implementation", "trust_remote_code", *SECTIONS}
MODEL_KEYS = ("dtype", "attn_implementation", "trust_remote_code")


@dataclass
class Stage:
    name: str
    output: Path
    reads: list[str]  # names of the stages whose outputs it reads
    config: dict  # what the stage's hash covers
    run: Callable[[], None]
    hash: str = ""


@dataclass
class Pipeline:
    raw: dict
    source: str | None
    run_dir: Path
    stages: list[Stage] = field(default_factory=list)

    def add(self, name: str, output: Path, reads: list[str], config: dict, run: Callable[[], None]) -> None:
        known = {s.name: s for s in self.stages}
        upstream = [known[r].hash for r in reads]
        stage = Stage(name, output, reads, config, run)
        stage.hash = config_hash({"config": config, "reads": upstream})
        self.stages.append(stage)


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(None, key, "expected a mapping of that stage's keys")
    return dict(value)


def _model_keys(raw: dict) -> dict:
    return {k: raw[k] for k in MODEL_KEYS if k in raw}


def build_pipeline(raw: dict, source: str | None) -> Pipeline:
    """Turn a pipeline recipe into its ordered stages (nothing runs, nothing is written)."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(TOP_KEYS), n=1)
        raise ConfigError(source, unknown[0], "unknown pipeline key" + (f" (did you mean '{close[0]}'?)" if close
                                                                         else f" (known: {', '.join(sorted(TOP_KEYS))})"))
    for key in ("run_dir", "prompts", "arbitrage", "sft"):
        if key not in raw:
            raise ConfigError(source, key, "missing")
    run_dir = Path(raw["run_dir"])
    base = raw.get("model", DEFAULT_MODEL)
    seed = raw.get("seed", 0)
    common = {**_model_keys(raw), "seed": seed}
    pipe = Pipeline(raw, source, run_dir)

    # The ranker: a reward model trained here, or one named in the recipe.
    ranker = dict(raw.get("ranker") or {})
    if "reward" in raw:
        reward_dir = run_dir / "reward"
        cfg = {"model": base, **common, **_section(raw, "reward"), "output_dir": str(reward_dir)}
        pipe.add("reward", reward_dir, [], cfg, lambda cfg=cfg: _call("reward.train:run_reward", cfg, source))
        ranker = {**ranker, "reward_model": str(reward_dir)}
    if not ranker:
        raise ConfigError(source, "ranker", "missing: a `reward` stage to train one, or ranker: {reward_model: path} "
                                            "or {judge: model}")
    ranker_reads = ["reward"] if "reward" in raw else []

    # Arbitrage: the teacher pool answers the prompts; the ranker routes.
    arbitrage_dir = run_dir / "arbitrage"
    cfg = {**common, **_section(raw, "arbitrage"), "prompts": raw["prompts"], "ranker": ranker,
           "output_dir": str(arbitrage_dir)}
    pipe.add("arbitrage", arbitrage_dir, ranker_reads, cfg, lambda cfg=cfg: _call("align.arbitrage:run_arbitrage",
                                                                                  cfg, source))

    # SFT per cluster, on the arbitrage SFT records of the cluster's languages, then a weighted merge.
    try:
        langs = sorted({r["lang"] for r in load_records(raw["prompts"], "prompt", seed=seed)})
        clusters, unassigned = make_clusters(langs, raw.get("clusters", "family"),
                                             raw.get("shared_languages", DEFAULT_SHARED))
    except UnknownLanguage as e:
        raise ConfigError(source, "clusters", str(e)) from None
    except ValueError as e:
        raise ConfigError(source, "clusters", str(e)) from None
    if unassigned:
        raise ConfigError(source, "clusters", f"no cluster holds {', '.join(unassigned)}: add them to a cluster or "
                                              "to shared_languages")
    sft_section = _section(raw, "sft")
    cluster_dirs = {}
    for name, members in clusters.items():
        out = run_dir / "sft" / _slug(name)
        data = run_dir / "sft" / ".data" / f"{_slug(name)}.jsonl"
        cfg = {"model": base, **common, **sft_section, "dataset": str(data), "output_dir": str(out)}
        pipe.add(f"sft/{name}", out, ["arbitrage"], {**cfg, "languages": members},
                 lambda cfg=cfg, members=members, data=data: _cluster_sft(arbitrage_dir, members, data, cfg, source))
        cluster_dirs[name] = out
    merge_section = _section(raw, "merge")
    sft_merged = run_dir / "sft" / "merged"
    _add_merge(pipe, "sft/merged", sft_merged, cluster_dirs, clusters, merge_section, [f"sft/{n}" for n in clusters])
    policy, policy_stage = sft_merged, "sft/merged"

    # Offline DPO on the arbitrage pairs: on the merged model, or per cluster and merged again.
    if "dpo" in raw:
        dpo_section = _section(raw, "dpo")
        per_cluster = bool(dpo_section.pop("per_cluster", False))
        if dpo_section.get("lora"):
            dpo_section["save_merged"] = True  # the next stage reads a full model
        pairs = arbitrage_dir / "pairs.jsonl"
        if per_cluster:
            dirs = {}
            for name, members in clusters.items():
                out = run_dir / "dpo" / "offline" / _slug(name)
                data = run_dir / "dpo" / ".data" / f"{_slug(name)}.jsonl"
                cfg = {"model": str(policy), **common, **dpo_section, "dataset": str(data), "output_dir": str(out)}
                pipe.add(f"dpo/{name}", out, [policy_stage, "arbitrage"], {**cfg, "languages": members},
                         lambda cfg=cfg, members=members, data=data: _cluster_dpo(pairs, members, data, cfg, source))
                dirs[name] = _trained(out, cfg)
            merged = run_dir / "dpo" / "offline" / "merged"
            _add_merge(pipe, "dpo/merged", merged, dirs, clusters, merge_section, [f"dpo/{n}" for n in clusters])
            policy, policy_stage = merged, "dpo/merged"
        else:
            out = run_dir / "dpo" / "offline"
            cfg = {"model": str(policy), **common, **dpo_section, "dataset": str(pairs), "output_dir": str(out)}
            pipe.add("dpo", out, [policy_stage, "arbitrage"], cfg, lambda cfg=cfg: _call("align.dpo:run_dpo", cfg,
                                                                                          source))
            policy, policy_stage = _trained(out, cfg), "dpo"

    # Online iterations, each followed by a merge with the previous policy when the recipe asks.
    if "online" in raw:
        out = run_dir / "dpo" / "online"
        cfg = {**common, **_section(raw, "online"), "model": str(policy), "prompts": raw["prompts"],
               "ranker": ranker, "output_dir": str(out)}
        pipe.add("online", out, [policy_stage, *ranker_reads], cfg,
                 lambda cfg=cfg: _call("align.online:run_iterate", cfg, source))
        policy_stage = "online"

    # Evaluation of every stage's model against the base.
    if "evaluate" in raw:
        section = _section(raw, "evaluate")
        models = {"base": base, "sft": str(sft_merged)}
        reads = ["sft/merged"]
        if "dpo" in raw:
            models["dpo-offline"] = str(policy)
            reads.append("dpo/merged" if any(s.name == "dpo/merged" for s in pipe.stages) else "dpo")
        if "online" in raw:
            iterations = int(_section(raw, "online").get("iterations", 3))
            online_cfg = next(s.config for s in pipe.stages if s.name == "online")
            for i in range(1, iterations + 1):
                models[f"online-{i}"] = _online_policy(run_dir / "dpo" / "online", i, online_cfg)
            reads.append("online")
        eval_dir = run_dir / "eval"
        cfg = {**common, "max_new_tokens": 128, **section, "models": models, "baseline": "base",
               "prompts": raw.get("heldout", raw["prompts"]), "output_dir": str(eval_dir)}
        if "judge" not in cfg:
            raise ConfigError(source, "evaluate.judge", "missing: {judge: model} or {reward_model: path} (by default "
                                                        "not the reward model the recipe trained with)")
        pipe.add("evaluate", eval_dir, reads, cfg, lambda cfg=cfg: _call("align.evaluate:run_evaluate", cfg, source))
    return pipe


def _online_policy(out: Path, i: int, cfg: dict) -> str:
    if cfg.get("merge_with_previous") is not None:
        return str(out / f"iter_{i}" / "merged")
    model = out / f"iter_{i}" / "model"
    return str(model / "merged" if cfg.get("lora") else model)


def _trained(out: Path, cfg: dict) -> Path:
    """Where a DPO stage's full model is: its output, or the merged copy of a LoRA adapter."""
    return out / "merged" if cfg.get("lora") else out


def _add_merge(pipe: Pipeline, name: str, out: Path, dirs: dict[str, Path], clusters: dict, section: dict,
               reads: list[str]) -> None:
    weighting = section.get("weights", "equal")
    if weighting not in ("equal", "languages") and not isinstance(weighting, dict):
        raise ConfigError(pipe.source, "merge.weights", "expected equal, languages (cluster size), or a mapping "
                                                        "of cluster to weight")
    if isinstance(weighting, dict):
        weights = {c: float(weighting.get(c, 0)) for c in dirs}
    elif weighting == "languages":
        weights = {c: float(len(clusters[c])) for c in dirs}
    else:
        weights = {c: 1.0 for c in dirs}
    models = [(str(path), weights[c]) for c, path in dirs.items()]
    cfg = {"models": models, "dtype": section.get("dtype")}

    def run(models=models, out=out):
        from merge import soup

        soup(models, out, dtype=section.get("dtype"), command="polyalign run (pipeline merge)")

    pipe.add(name, out, reads, cfg, run)


def _call(target: str, cfg: dict, source: str | None) -> None:
    import importlib

    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(cfg, source)


def _subset(path: Path, members: list[str], target: Path, what: str, source: str | None) -> int:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in rows if r.get("lang") in members]
    if not kept:
        raise ConfigError(source, "clusters", f"the {what} hold no record in {', '.join(members)}")
    write_jsonl(target, kept)
    return len(kept)


def _cluster_sft(arbitrage_dir: Path, members: list[str], data: Path, cfg: dict, source: str | None) -> None:
    _subset(arbitrage_dir / "sft.jsonl", members, data, "arbitrage SFT records", source)
    _call("align.sft:run_sft", cfg, source)


def _cluster_dpo(pairs: Path, members: list[str], data: Path, cfg: dict, source: str | None) -> None:
    _subset(pairs, members, data, "arbitrage pairs", source)
    _call("align.dpo:run_dpo", cfg, source)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ------------------------------------------------------------------------------------------------ running


def load_state(run_dir: Path) -> dict:
    path = run_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def plan(pipe: Pipeline, state: dict, start_from: str | None) -> list[tuple[Stage, str]]:
    """(stage, what happens to it): done (skipped), run, resume (partial work is there), rerun (changed)."""
    names = [s.name for s in pipe.stages]
    if start_from is not None and start_from not in names:
        raise ConfigError(None, "from", f"no stage {start_from!r} in this pipeline (stages: {', '.join(names)})")
    forced = set(names[names.index(start_from):]) if start_from else set()
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
        elif (stage.output.parent / f".{stage.output.name}.partial").exists() or stage.output.exists():
            out.append((stage, "resume"))  # cut: the stage picks up its own partial work
        else:
            out.append((stage, "run"))
    return out


def print_plan(pipe: Pipeline, steps: list[tuple[Stage, str]]) -> None:
    width = max(len(s.name) for s, _ in steps)
    print(f"Pipeline {pipe.raw.get('name', pipe.run_dir.name)} in {pipe.run_dir}:", flush=True)
    for stage, action in steps:
        print(f"  {stage.name:<{width}}  {action:<7} → {stage.output}", flush=True)


def run_pipeline(raw: dict, source: str | None = None, *, start_from: str | None = None,
                 dry_run: bool = False) -> Path:
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
            shutil.rmtree(stage.output.parent / f".{stage.output.name}.partial", ignore_errors=True)
        state["stages"].pop(stage.name, None)
        write_json(pipe.run_dir / "state.json", state)
        print(f"\n=== {stage.name} ({action}) ===", flush=True)
        began = time.time()
        stage.run()
        state["stages"][stage.name] = {"hash": stage.hash, "output": str(stage.output),
                                       "seconds": round(time.time() - began, 1),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(pipe.run_dir / "state.json", state)
    final = pipe.stages[-1]
    print(f"\nPipeline done: {pipe.run_dir}" + (f"; report: {final.output / 'report.md'}"
                                               if final.name == "evaluate" else ""), flush=True)
    return pipe.run_dir


def cmd_run(args, extra) -> int:
    """`polyalign run PIPELINE.yaml [--from STAGE] [--dry-run] [--key value ...]`."""
    from .config import deep_merge, parse_overrides

    raw = deep_merge(load_yaml(args.pipeline), parse_overrides(extra))
    run_pipeline(raw, args.pipeline, start_from=args.start_from, dry_run=args.dry_run)
    return 0
