"""Online iterative DPO (Aya Expanse, RLHFlow): sample from the current policy, rank, train on best vs worst, repeat.

Each iteration i writes `iter_<i>/` in the output directory, one step after another, and each step's output marks it
done, so a killed run restarts at the first unfinished step of the unfinished iteration:

    samples.jsonl   k completions per prompt from the current policy (appended and flushed prompt by prompt)
    scores.jsonl    the ranker's score of every sample (appended chunk by chunk)
    pairs.jsonl     best vs worst where the margin clears `min_margin` and the two differ
    model/          DPO from the current policy (align.stages.dpo: resumes from its last checkpoint); with `clusters`, the
                    weighted soup of clusters/<name>/, one DPO model per language cluster trained on its languages'
                    pairs (Aya Expanse §2.3: cluster models merged at each iteration of preference training)
    merged/         optional linear soup with the previous policy (merge.soup)
    heldout.jsonl   greedy answers to held-out prompts, with their scores
    metrics.json    sample reward mean and spread, mean length, pairs, held-out reward and win-rate vs the previous
                    policy, training metrics, and a warning when length grows fast while reward rises

`iter_0/heldout.jsonl` holds the starting policy's held-out answers. The reference of every iteration is the starting
model (default) or the previous policy; β may differ per iteration. `iterations.png` plots reward and length.

One module over 400 lines: the loop's steps share its state (policy, ranker, resume point).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from align.core.config import build_dataclass, require, resolve_recipe
from align.core.errors import ConfigError
from align.core.io import AppendLog, join_logs, read_logs, safe_name, save_figure, shard_log, write_json, write_jsonl
from align.core.lifecycle import StageRun, published
from align.core.timing import Stopwatch
from align.core.tracking import Tracker, TrackingArgs
from align.data import hold_out_by_id, load_records
from align.data.echo import is_echo
from align.data.pairs import (
    echo_choice,
    echo_pair,
    outcome_of_scores,
    pair_statistics,
    preference_record,
    tally_with_rates,
)
from align.generation.generate import (
    DecodingArgs,
    GenerationArgs,
    Throughput,
    choose_backend,
    generate_sharded,
    load_backend,
)
from align.models.embedded import DEFAULT_MODEL
from align.models.loading import LoadingArgs, release_memory
from reward.rules import rank_in_languages, score_in_languages
from reward.spec import parse_ranker

log = logging.getLogger(__name__)
# How long the other processes wait at a barrier while the main one merges or scores the held-out answers (a soup of
# two 70B checkpoints takes a while); the collectives' default, 10 minutes under NCCL, is too short for that.
BARRIER_TIMEOUT = timedelta(hours=3)


@dataclass
class IterateArgs(LoadingArgs, DecodingArgs, TrackingArgs):
    """The loop's own keys; the sampling, model-loading and tracking keys are shared with other stages (each
    iteration's DPO reports where `report_to` says unless `dpo` sets its own)."""

    model: str = DEFAULT_MODEL  # the starting policy, usually the SFT (or offline-DPO) model
    prompts: Any = None  # required: the prompts to sample from (any prompt-capable format)
    heldout_prompts: Any = None  # default: `heldout_fraction` of `prompts`, chosen by a seeded hash of their ids
    heldout_fraction: float = 0.1  # share of the prompts held out to measure each iteration's policy
    output_dir: str | None = None  # required: where iter_<i>/ and the final model go
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    iterations: int = 3  # sample → rank → DPO rounds
    samples: int = 4  # k completions per prompt
    ranker: dict = field(default_factory=dict)  # {reward_model | likelihood | judge, batch_size, max_length}
    min_margin: float = 0.0  # a pair is kept when best − worst reaches this (and is above zero)
    echo_pairs: bool = False  # also pair each prompt's best sample with the prompt itself (align.data.pairs.echo_pair)
    reference: str = "start"  # start | previous
    beta: Any = 0.1  # one value, or one per iteration
    lora: Any = None  # true or {r, alpha, ...}: each iteration trains an adapter and merges it for the next
    merge_with_previous: float | None = None  # weight of the new policy in a linear soup with the previous one
    clusters: dict | None = None  # {name: [languages]}: one DPO model per cluster each iteration, then their soup
    cluster_weights: Any = "equal"  # the soup's weights: equal, languages, or {cluster: weight} (merge.weighting)
    dpo: dict = field(default_factory=dict)  # trl DPOConfig fields for every iteration's training
    length_warning: float = 0.2  # warn when mean length grows more than this fraction while reward rises
    seed: int = 0  # seed of sampling, held-out split and training
    temperature: float = 0.8  # sampling temperature of the policy's completions
    max_new_tokens: int = 256  # tokens per sampled completion
    batch_size: int = 8  # prompts per generation batch


def parse_iterate_config(raw: dict, source: str | None = None, *, ranker_given: bool = False) -> IterateArgs:
    args = build_dataclass(IterateArgs, raw, source)
    require(
        args,
        source,
        output_dir="where the iterations go",
        prompts="the prompts to sample from (any format polyalign reads)",
    )
    if args.iterations < 1 or args.samples < 2:
        raise ConfigError(
            source,
            "iterations" if args.iterations < 1 else "samples",
            "need at least 1 iteration and 2 samples per prompt (a pair needs two)",
        )
    if args.reference not in ("start", "previous"):
        raise ConfigError(source, "reference", f"expected start or previous, got {args.reference!r}")
    betas = args.beta if isinstance(args.beta, list) else [args.beta] * args.iterations
    if len(betas) != args.iterations or not all(isinstance(b, (int, float)) and b > 0 for b in betas):
        raise ConfigError(source, "beta", f"expected a positive number or a list of {args.iterations} of them")
    args.beta = [float(b) for b in betas]
    if args.merge_with_previous is not None:
        from merge import with_previous

        with_previous("previous", "new", args.merge_with_previous, source=source)  # checks the weight
    if not 0 <= args.heldout_fraction < 1:
        raise ConfigError(source, "heldout_fraction", "must be in [0, 1)")
    if args.clusters is not None:
        from merge.weighting import cluster_weights

        if (
            not isinstance(args.clusters, dict)
            or not args.clusters
            or not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in args.clusters.values())
        ):
            raise ConfigError(source, "clusters", "expected a mapping of cluster name to a list of language codes")
        args.cluster_weights = cluster_weights(
            args.cluster_weights, args.clusters, source=source, key="cluster_weights"
        )
    if not ranker_given:
        args.ranker = parse_ranker(args.ranker, source, backend=args.backend).as_dict()
    from align.stages.dpo import parse_dpo_config

    for key in ("model", "output_dir", "dataset", "beta", "ref_model"):
        if key in args.dpo:
            raise ConfigError(source, f"dpo.{key}", "set by the loop itself; remove it from dpo")
    for key in ("report_to", "run_name"):  # the loop's tracking reaches its training too
        if getattr(args, key) is not None:
            args.dpo = {key: getattr(args, key), **args.dpo}
    parse_dpo_config({**args.dpo, "dataset": "-", "output_dir": "-"}, source)  # DPOConfig fields, checked now
    return args


def iteration_model(out: Path, i: int, *, merged: bool, lora: bool, clusters: bool = False) -> str:
    """Iteration i's final policy in the loop's output `out`: its soup with the previous policy when it merges, else
    its DPO model (the adapter merged into its base, with LoRA; the soup of the cluster models, with clusters)."""
    if merged:
        return str(out / f"iter_{i}" / "merged")
    model = out / f"iter_{i}" / "model"
    return str(model / "merged" if lora and not clusters else model)


def cluster_model(out: Path, i: int, cluster: str, *, lora: bool) -> str:
    """Iteration i's DPO model of one cluster, before the merge (a full model, with LoRA too)."""
    model = out / f"iter_{i}" / "clusters" / safe_name(cluster)
    return str(model / "merged" if lora else model)


class Loop:
    """State shared by the steps of every iteration. Under several processes (`state`, accelerate's) they share
    the sampling and the scoring (batches and chunks dealt out, so the records are those of one process) and train
    each DPO step together (DDP, FSDP or ZeRO-3 from the accelerate config); the main process writes pairs, merges,
    held-out scores and metrics, with a barrier before anyone reads them."""

    def __init__(self, args: IterateArgs, out: Path, source: str | None, state, ranker=None):
        self.args, self.out, self.source, self.state = args, out, source, state
        self.rank, self.processes, self.main = state.process_index, state.num_processes, state.is_main_process
        self._given_ranker = ranker
        self._ranker = ranker

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    # ---------------------------------------------------------------------------------------------- resources

    def ranker(self):
        if self._ranker is None:
            from reward import load_ranker

            log_dir = self.out / "api" / (f"rank{self.rank}" if self.processes > 1 else "")
            self._ranker = load_ranker(self.args.ranker, self.args.model_args(), log_dir=log_dir)
        return self._ranker

    def release_ranker(self) -> None:
        """Free a loaded ranker's memory before training (a given one is the caller's to keep)."""
        self._ranker = self._given_ranker
        release_memory()

    def policy(self, i: int) -> str:
        """The policy that iteration i samples from: the start, or iteration i-1's final model."""
        if i == 1:
            return self.args.model
        return iteration_model(
            self.out,
            i - 1,
            merged=self.args.merge_with_previous is not None,
            lora=bool(self.args.lora),
            clusters=self.args.clusters is not None,
        )

    def generate(
        self,
        policy: str,
        prompts: list[dict],
        directory: Path,
        stem: str,
        args: GenerationArgs,
        desc: str,
        meter: Throughput | None = None,
    ) -> list[dict]:
        """Answers of `policy` to `prompts`, streamed into `<directory>/<stem>.jsonl` and resumed from it."""

        def load():
            return load_backend(
                self.args.model_args(policy),
                choose_backend(self.args.backend),
                tensor_parallel_size=self.args.tensor_parallel_size,
            )

        return generate_sharded(
            directory,
            stem,
            [p["prompt"] for p in prompts],
            args,
            load,
            rank=self.rank,
            processes=self.processes,
            barrier=self.barrier,
            desc=desc,
            extra=lambda j: {"id": prompts[j]["id"], "lang": prompts[j]["lang"]},
            meter=meter,
        )

    def score(
        self, prompts: list[dict], answers: list[dict], directory: Path, chunk: int = 32
    ) -> dict[int, list[float]]:
        """The ranker's score of every completion into `scores.jsonl`, in fixed chunks (a cut chunk is rescored
        whole), dealt out to the processes."""
        done = {r["index"] for pattern in ("scores.jsonl", "scores.rank*.jsonl") for r in read_logs(directory, pattern)}
        with AppendLog(shard_log(directory, "scores", self.rank, self.processes), key=lambda r: r["index"]) as out:
            chunks = [answers[k : k + chunk] for k in range(0, len(answers), chunk)][self.rank :: self.processes]
            for group in chunks:
                if all(r["index"] in done | out.done for r in group):
                    continue
                rankings = rank_in_languages(
                    self.ranker(),
                    [prompts[r["index"]]["prompt"] for r in group],
                    [r["completions"] for r in group],
                    [prompts[r["index"]]["lang"] for r in group],
                )
                for r, ranking in zip(group, rankings):
                    if r["index"] not in done | out.done:
                        out.append({"index": r["index"], "scores": ranking.scores})
        self.barrier()
        if self.main:
            join_logs(directory, "scores", key=lambda r: r["index"])
        self.barrier()
        return {r["index"]: r["scores"] for r in read_logs(directory, "scores.jsonl")}

    def heldout(self, i: int, policy: str, heldout: list[dict]) -> list[dict]:
        """Greedy held-out answers of `policy` with their reward (iteration 0: the starting policy)."""
        directory = self.out / f"iter_{i}"
        path = directory / "heldout.jsonl"
        args = self.args.generation(temperature=0.0, top_p=1.0)
        answers = self.generate(policy, heldout, directory, "heldout_answers", args, f"Held-out (iter {i})")
        if self.main and not path.exists():
            ranker = self.ranker()
            texts = [a["completions"][0] for a in answers]
            # An absolute reward where the ranker has one (a reward model); a judge only compares (see versus()).
            scores = (
                score_in_languages(
                    ranker,
                    [heldout[a["index"]]["prompt"] for a in answers],
                    texts,
                    [heldout[a["index"]]["lang"] for a in answers],
                )
                if hasattr(ranker, "score")
                else [None] * len(answers)
            )
            write_jsonl(path, [{**a, "completion": t, "score": s} for a, t, s in zip(answers, texts, scores)])
        self.barrier()
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def versus(self, heldout: list[dict], previous: list[dict], current: list[dict]) -> list[str]:
        """'win' / 'loss' / 'tie' of each current held-out answer against the previous policy's, by the ranker
        (a judge compares them in both orders and gives 1 point to the winner, 1/2 each for a tie)."""
        old = {h["index"]: h["completion"] for h in previous}
        rankings = rank_in_languages(
            self.ranker(),
            [heldout[h["index"]]["prompt"] for h in current],
            [[h["completion"], old[h["index"]]] for h in current],
            [heldout[h["index"]]["lang"] for h in current],
        )
        return [outcome_of_scores(*r.scores) for r in rankings]

    def run_iteration(self, i: int, train: list[dict], heldout: list[dict], previous_heldout: list[dict]) -> dict:
        args, directory = self.args, self.out / f"iter_{i}"
        metrics_path = directory / "metrics.json"
        if metrics_path.exists():
            return json.loads(metrics_path.read_text())
        policy = self.policy(i)
        if self.main:
            print(f"\nIteration {i}/{args.iterations}: sampling {args.samples} per prompt from {policy}", flush=True)
        sampling = args.generation(seed=args.seed * 1000 + i, num_samples=args.samples)
        clock, meter = Stopwatch(), Throughput()
        with clock("sampling"):
            samples = self.generate(policy, train, directory, "samples", sampling, f"Sampling (iter {i})", meter)
        with clock("scoring"):
            scores = self.score(train, samples, directory)
        pairs = build_pairs(train, samples, scores, args.min_margin, args.echo_pairs)  # the same on every process
        if self.main and not (directory / "pairs.jsonl").exists():
            write_jsonl(directory / "pairs.jsonl", pairs)
        self.release_ranker()
        if not pairs:
            raise ConfigError(
                self.source,
                "min_margin",
                f"iteration {i}: no prompt's best and worst samples differ "
                f"by {args.min_margin} or more: lower min_margin, raise temperature or samples",
            )

        with clock("training"):
            trained, training = self.train(i, policy, pairs)
        final = trained
        if args.merge_with_previous is not None:
            final = str(directory / "merged")
            with clock("merging"):
                if self.main and not Path(final).exists():
                    from merge import soup, with_previous

                    soup(with_previous(policy, trained, args.merge_with_previous), final, progress=False)
                self.barrier()
        with clock("heldout"):
            current = self.heldout(i, final, heldout) if heldout else []
            outcomes = self.versus(heldout, previous_heldout, current) if heldout and self.main else []
        if self.main:
            metrics = iteration_metrics(
                i, train, samples, scores, pairs, current, previous_heldout, outcomes, training, final, args
            )
            metrics["seconds"] = clock.seconds  # this process's time per step (steps done before a resume count 0)
            metrics["sampling_throughput"] = meter.as_dict()  # this process's sampling in this run
            write_json(metrics_path, published(metrics))
        self.release_ranker()
        self.barrier()
        return json.loads(metrics_path.read_text())

    def run_all(self, train: list[dict], heldout: list[dict]) -> dict:
        """Every iteration from the first unfinished one; the summary that becomes metrics.json."""
        start = self.heldout(0, self.args.model, heldout) if heldout else []
        start_metrics = {}
        if start:
            start_metrics = {
                "heldout_reward_mean": _mean(h["score"] for h in start),
                "heldout_mean_words": round(statistics.fmean(len(h["completion"].split()) for h in start), 2),
            }
        history, previous = [], start
        for i in range(1, self.args.iterations + 1):
            history.append(self.run_iteration(i, train, heldout, previous))
            if heldout:
                previous = [
                    json.loads(line) for line in (self.out / f"iter_{i}" / "heldout.jsonl").read_text().splitlines()
                ]
        if self.main:
            plot_iterations(history, start_metrics, self.out / "iterations.png")
        return {"start": start_metrics, "iterations": history, "final_model": history[-1]["policy"]}

    def train(self, i: int, policy: str, pairs: list[dict]) -> tuple[str, dict]:
        """DPO from `policy` on the iteration's pairs: one model, or one per cluster and their soup. Returns the trained
        policy and its training metrics (per cluster, with the soup's weights)."""
        args, directory = self.args, self.out / f"iter_{i}"
        if args.clusters is None:
            model_dir = directory / "model"
            self.train_one(i, policy, model_dir, pairs)
            return iteration_model(self.out, i, merged=False, lora=bool(args.lora)), training_keys(model_dir)
        trained, weights = {}, {}
        for name, languages in args.clusters.items():
            own = [p for p in pairs if p["lang"] in languages]
            if not own or not args.cluster_weights[name]:
                log.warning(
                    "iteration %d: cluster %s has %s; it sits this iteration out",
                    i,
                    name,
                    "no pair" if not own else "weight 0",
                )
                continue
            if self.main:
                print(f"Iteration {i}: DPO for cluster {name} on {len(own)} pairs ({', '.join(languages)})", flush=True)
            self.train_one(i, policy, directory / "clusters" / safe_name(name), own)
            trained[name] = cluster_model(self.out, i, name, lora=bool(args.lora))
            weights[name] = args.cluster_weights[name]
        if not trained:
            raise ConfigError(self.source, "clusters", f"iteration {i}: no cluster has a pair in its languages")
        soup_dir = Path(iteration_model(self.out, i, merged=False, lora=bool(args.lora), clusters=True))
        if self.main and not soup_dir.exists():
            from merge import soup

            soup([(trained[n], weights[n]) for n in trained], soup_dir, progress=False)
        self.barrier()
        training = {n: training_keys(directory / "clusters" / safe_name(n)) for n in trained}
        return str(soup_dir), {"clusters": training, "weights": weights}

    def train_one(self, i: int, policy: str, model_dir: Path, pairs: list[dict]) -> None:
        args, directory = self.args, self.out / f"iter_{i}"
        if not model_dir.exists():
            from align.stages.dpo import run_dpo

            raw = {
                **args.dpo,
                "model": policy,
                "output_dir": str(model_dir),
                "dataset": str(directory / "pairs.jsonl"),
                "beta": args.beta[i - 1],
                "dtype": args.dtype,
                "attn_implementation": args.attn_implementation,
                "trust_remote_code": args.trust_remote_code,
                "seed": args.seed,
            }
            if args.lora:
                raw.update(lora=args.lora, save_merged=True)
            if "run_name" in args.dpo:  # one tracker run per model trained: <run_name>/iter_<i>/model, ...
                raw["run_name"] = f"{args.dpo['run_name']}/{model_dir.relative_to(self.out).as_posix()}"
            if args.reference == "start" and i > 1:
                raw["ref_model"] = args.model
            run_dpo(raw, self.source, records=pairs)
            release_memory()


def training_keys(model_dir: Path) -> dict:
    """What an iteration's metrics keep of a DPO run's metrics.json."""
    training = json.loads((model_dir / "metrics.json").read_text())
    return {
        k: training.get(k)
        for k in (
            "steps",
            "train_loss",
            "final_reward_accuracy",
            "final_reward_margin",
            "reference",
            "padding_free",
            "real_token_fraction",
        )
    }


def build_pairs(
    prompts: list[dict],
    samples: list[dict],
    scores: dict[int, list[float]],
    min_margin: float,
    echo_pairs: bool = False,
):
    """Best vs worst sample of each prompt, by the pair rule (align.data.pairs): an echo of the prompt is never chosen;
    with `echo_pairs`, also the best sample vs the prompt itself."""
    pairs = []
    for record in samples:
        prompt, completions, values = prompts[record["index"]], record["completions"], scores[record["index"]]
        choice = echo_choice(prompt, completions, values, min_margin)
        echo = echo_pair(prompt, completions, choice, chosen_score=values[choice.best]) if echo_pairs else None
        if echo:
            pairs.append(echo)
        if choice.dropped is None:
            pairs.append(
                preference_record(
                    prompt,
                    completions[choice.best],
                    completions[choice.worst],
                    chosen_score=values[choice.best],
                    rejected_score=values[choice.worst],
                )
            )
    return pairs


def tracked(metrics: dict) -> dict:
    """What a tracker shows of one iteration: sample and pair rewards (chosen, rejected, margin), lengths, pairs kept,
    held-out reward and win-rate against the previous policy, and sampling tokens/s."""
    pairs = metrics["pair_statistics"]
    figures = {
        "online/sample_reward_mean": metrics["sample_reward_mean"],
        "online/sample_reward_std": metrics["sample_reward_std"],
        "online/sample_mean_words": metrics["sample_mean_words"],
        "online/pairs": metrics["pairs"],
        "online/chosen_reward_mean": pairs.get("chosen_mean_score"),
        "online/rejected_reward_mean": pairs.get("rejected_mean_score"),
        "online/margin_mean": pairs.get("mean_margin"),
        "online/chosen_mean_words": pairs.get("chosen_mean_words"),
        "online/rejected_mean_words": pairs.get("rejected_mean_words"),
        "online/sampling_tokens_per_second": (metrics.get("sampling_throughput") or {}).get("tokens_per_second"),
    }
    for key in ("heldout_reward_mean", "heldout_mean_words", "length_growth"):
        figures[f"online/{key}"] = metrics.get(key)
    figures["online/heldout_win_rate"] = (metrics.get("vs_previous") or {}).get("win_rate")
    return figures


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def iteration_metrics(i, train, samples, scores, pairs, heldout, previous, outcomes, training, final, args) -> dict:
    flat = [s for values in scores.values() for s in values]
    lengths = [len(c.split()) for r in samples for c in r["completions"]]
    metrics = {
        "iteration": i,
        "beta": args.beta[i - 1],
        "reference": args.reference,
        "policy": final,
        "prompts": len(samples),
        "samples_per_prompt": args.samples,
        "sample_reward_mean": round(statistics.fmean(flat), 4),
        "sample_reward_std": round(statistics.pstdev(flat), 4),
        "sample_mean_words": round(statistics.fmean(lengths), 2),
        "pairs": len(pairs),
        "echo_pairs": sum(p.get("rejected_by") == "echo" for p in pairs),
        "pairs_dropped": len(samples) - sum(p.get("rejected_by") != "echo" for p in pairs),
        "sample_echo_share": round(
            sum(is_echo(c, train[r["index"]]["prompt"]) for r in samples for c in r["completions"])
            / max(len(lengths), 1),
            4,
        ),
        "pair_statistics": pair_statistics(pairs),
        "training": training,
    }
    if heldout:
        metrics["heldout_reward_mean"] = _mean(h["score"] for h in heldout)  # None when ranked by a judge
        metrics["heldout_mean_words"] = round(statistics.fmean(len(h["completion"].split()) for h in heldout), 2)
        metrics["vs_previous"] = tally_with_rates(outcomes, [None] * len(outcomes))["all"]
        before_words = statistics.fmean(len(h["completion"].split()) for h in previous)
        growth = metrics["heldout_mean_words"] / before_words - 1 if before_words else 0.0
        metrics["length_growth"] = round(growth, 4)
        improving = metrics["vs_previous"]["win_rate"] > 0.5  # the ranker prefers the new policy
        if growth > args.length_warning and improving:
            metrics["warning"] = (
                f"held-out answers grew {growth:.0%} longer while the ranker prefers them: a sign "
                "of reward hacking; read the samples, and raise beta next iteration"
            )
            print(f"WARNING iteration {i}: {metrics['warning']}", flush=True)
    return metrics


def _nan(value) -> float:
    return math.nan if value is None else value


def plot_iterations(history: list[dict], start: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [0] + [m["iteration"] for m in history]
    reward = [_nan(start.get("heldout_reward_mean"))] + [_nan(m.get("heldout_reward_mean")) for m in history]
    words = [start.get("heldout_mean_words", math.nan)] + [m.get("heldout_mean_words", math.nan) for m in history]
    sample_reward = [math.nan] + [m["sample_reward_mean"] for m in history]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(steps, reward, "o-", label="held-out reward")
    left.plot(steps, sample_reward, "s--", label="sample reward")
    left.set_xlabel("iteration")
    left.set_ylabel("reward")
    right = left.twinx()
    right.plot(steps, words, "^:", color="gray", label="held-out length (words)")
    right.set_ylabel("words")
    left.legend(loc="upper left", fontsize="small")
    right.legend(loc="lower right", fontsize="small")
    left.set_xticks(steps)
    left.set_title("Online DPO: reward and length per iteration")
    save_figure(fig, path)


def run_iterate(raw: dict, source: str | None = None, *, ranker=None) -> Path:
    """The `iterate` stage: returns the output directory.

    `ranker` (Python callers) replaces the configured one with any object that has `rank_many(prompts, candidate
    lists) -> [Ranking]`, e.g. a rule-based verifier of math answers.
    """
    from align.models.loading import process_state

    args = parse_iterate_config(raw, source, ranker_given=ranker is not None)
    state = process_state(timeout=BARRIER_TIMEOUT)
    run = StageRun(
        args.output_dir,
        resolve_recipe(raw, IterateArgs, source),
        stage="iterate",
        overwrite=args.overwrite,
        source=source,
        is_main=state.is_main_process,
    )
    prompts = load_records(args.prompts, "prompt", seed=args.seed, source=source, key="prompts")
    if args.heldout_prompts is not None:
        train, heldout = (
            prompts,
            load_records(args.heldout_prompts, "prompt", seed=args.seed, source=source, key="heldout_prompts"),
        )
    else:
        train, heldout = hold_out_by_id(prompts, args.heldout_fraction, args.seed)
    resumed = run.prepare_shared(state)
    if state.is_main_process:
        print(
            f"Online DPO: {args.iterations} iterations, {len(train)} prompts ({len(heldout)} held out), "
            f"{args.samples} samples each, reference: {args.reference}" + (" (resuming)" if resumed else ""),
            flush=True,
        )
    summary = Loop(args, run.partial, source, state, ranker=ranker).run_all(train, heldout)
    if state.is_main_process:
        # Logged once the loop is done: each iteration's DPO opens tracker runs of its own, and trackio and wandb
        # keep one current run per process.
        with Tracker(args.report_to, args.run_name, run.partial) as tracker:
            tracker.log({f"online/{k}": v for k, v in summary["start"].items()}, step=0)
            for metrics in summary["iterations"]:
                tracker.log(tracked(metrics), step=metrics["iteration"])
            tracker.images({"online/iterations": run.partial / "iterations.png"})
        run.finish(summary)
        print_table(summary)
    state.wait_for_everyone()
    return run.final


def print_table(summary: dict) -> None:
    print("\nOnline DPO summary", flush=True)
    print("  iter  beta   pairs  sample reward  held-out reward  win-rate vs prev  words", flush=True)
    start = summary["start"]
    if start:
        print(
            f"  {0:>4}  {'':>4}  {'':>6}  {'':>13}  {_nan(start['heldout_reward_mean']):>15.3f}  {'':>16}  "
            f"{start['heldout_mean_words']:>5.1f}",
            flush=True,
        )
    for m in summary["iterations"]:
        win = m.get("vs_previous", {}).get("win_rate")
        print(
            f"  {m['iteration']:>4}  {m['beta']:>4}  {m['pairs']:>6}  {m['sample_reward_mean']:>13.3f}  "
            f"{_nan(m.get('heldout_reward_mean')):>15.3f}  {'-' if win is None else f'{win:.0%}':>16}  "
            f"{m.get('heldout_mean_words', float('nan')):>5.1f}",
            flush=True,
        )
    print(f"  final model: {summary['final_model']}", flush=True)
