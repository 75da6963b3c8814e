"""Multilingual data arbitrage: every teacher in a pool answers, a ranker picks; best → SFT, best/worst → pairs.

No single teacher is best in every language (Aya Expanse), so each prompt is answered by every teacher that serves
its language and a reward model (or an LLM judge) routes it to the best completion. The stage is built to survive
real runs: teachers are loaded one at a time (the pool may exceed memory), completions and scores are appended and
flushed prompt by prompt into a hidden `.<output_dir>.partial`, and a rerun of the same config continues where a
kill stopped it, with nothing lost or repeated. Under `accelerate launch` prompts are split between processes and
joined back in input order. The output directory appears, complete, only at the end:

    candidates.jsonl  sft.jsonl  pairs.jsonl  routing.json  routing.png  metrics.json
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_dataclass, config_hash
from .data import load_records
from .data.languages import UnknownLanguage, normalize_lang
from .errors import ConfigError, PolyalignError
from .generate import GenerationArgs, choose_backend, iter_batches, load_backend
from .io import AppendLog, partial_dir, promote, write_json, write_jsonl
from .models import ModelArgs, cuda_available, model_path, release_memory

log = logging.getLogger(__name__)


@dataclass
class TeacherSpec:
    """One teacher of the pool. Unset generation keys take the stage's values."""

    name: str
    model: str
    adapter: str | None = None  # a LoRA adapter served on `model`
    languages: list[str] | None = None  # the languages it answers (all when unset)
    samples: int = 1
    system_prompt: str | None = None  # prepended when the prompt has no system turn of its own
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


@dataclass
class RankerSpec:
    """Exactly one of a reward model (any one-output sequence classifier) or a judge LM."""

    reward_model: str | None = None
    judge: str | None = None
    batch_size: int = 16
    max_length: int = 1024


@dataclass
class ArbitrageArgs:
    prompts: Any = None
    output_dir: str | None = None
    teachers: list = field(default_factory=list)
    ranker: dict = field(default_factory=dict)
    min_margin: float = 0.0  # a pair is kept when best − worst reaches this
    overwrite: bool = False
    seed: int = 0
    max_prompts: int | None = None
    # generation defaults for every teacher
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    max_batch_tokens: int | None = None  # padded prompt tokens per batch (default: 16384 on CPU, 65536 on CUDA)
    backend: str = "auto"
    # how teachers and the ranker are loaded
    dtype: str = "auto"
    attn_implementation: str = "auto"
    trust_remote_code: bool = False


@dataclass
class ArbitrageJob:
    args: ArbitrageArgs
    teachers: list[TeacherSpec]
    ranker: RankerSpec
    raw: dict


def parse_arbitrage_config(raw: dict, source: str | None = None) -> ArbitrageJob:
    args = build_dataclass(ArbitrageArgs, raw, source)
    if not args.output_dir:
        raise ConfigError(source, "output_dir", "missing: where to write candidates, SFT records and pairs")
    if args.prompts is None:
        raise ConfigError(source, "prompts", "missing: a prompt dataset (any format polyalign reads)")
    if not isinstance(args.teachers, list) or not args.teachers:
        raise ConfigError(source, "teachers", "the pool is empty: list at least one teacher {name, model}")
    teachers = []
    for i, item in enumerate(args.teachers):
        if not isinstance(item, dict):
            raise ConfigError(source, f"teachers[{i}]", "expected a mapping with name and model")
        for key in ("name", "model"):
            if not item.get(key):
                raise ConfigError(source, f"teachers[{i}].{key}", "missing")
        teacher = build_dataclass(TeacherSpec, item, source, prefix=f"teachers[{i}].")
        if teacher.samples < 1:
            raise ConfigError(source, f"teachers[{i}].samples", f"must be at least 1, got {teacher.samples}")
        if teacher.languages is not None:
            try:
                teacher.languages = [normalize_lang(lang) for lang in teacher.languages]
            except UnknownLanguage as e:
                raise ConfigError(source, f"teachers[{i}].languages", str(e)) from None
        teachers.append(teacher)
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ConfigError(source, "teachers", f"two teachers are named {duplicate!r}: names must be unique")
    ranker = build_dataclass(RankerSpec, args.ranker or {}, source, prefix="ranker.")
    if (ranker.reward_model is None) == (ranker.judge is None):
        raise ConfigError(source, "ranker", "give exactly one of ranker.reward_model (a reward model) and "
                                            "ranker.judge (a judge LM)")
    if args.min_margin < 0:
        raise ConfigError(source, "min_margin", f"must be >= 0, got {args.min_margin}")
    GenerationArgs(backend=args.backend, temperature=args.temperature, top_p=args.top_p,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   max_batch_tokens=args.max_batch_tokens)  # validates them
    return ArbitrageJob(args, teachers, ranker, raw)


def check_models(job: ArbitrageJob, source: str | None) -> None:
    """Every model named must resolve to a loadable config before any work starts (a typo fails in seconds)."""
    from transformers import AutoConfig

    def check(name: str, key: str, adapter: bool = False):
        try:
            path = model_path(name)
            if adapter or (Path(path) / "adapter_config.json").is_file():
                if not (Path(path) / "adapter_config.json").is_file():
                    raise OSError("no adapter_config.json")
                return
            AutoConfig.from_pretrained(path, trust_remote_code=job.args.trust_remote_code)
        except (OSError, ValueError, PolyalignError) as e:
            raise ConfigError(source, key, f"cannot load model {name!r} ({str(e).splitlines()[0]})") from None

    for i, teacher in enumerate(job.teachers):
        check(teacher.model, f"teachers[{i}].model")
        if teacher.adapter:
            check(teacher.adapter, f"teachers[{i}].adapter", adapter=True)
    check(job.ranker.reward_model or job.ranker.judge, "ranker.reward_model" if job.ranker.reward_model
          else "ranker.judge")


# ------------------------------------------------------------------------------------------------ generation


def teacher_prompt(teacher: TeacherSpec, prompt: list[dict]) -> list[dict]:
    if teacher.system_prompt and not any(m["role"] == "system" for m in prompt):
        return [{"role": "system", "content": teacher.system_prompt}, *prompt]
    return prompt


def serves(teacher: TeacherSpec, lang: str | None) -> bool:
    return teacher.languages is None or lang in teacher.languages


def generation_args(job: ArbitrageJob, teacher: TeacherSpec) -> GenerationArgs:
    a = job.args
    return GenerationArgs(max_new_tokens=teacher.max_new_tokens or a.max_new_tokens,
                          temperature=a.temperature if teacher.temperature is None else teacher.temperature,
                          top_p=a.top_p if teacher.top_p is None else teacher.top_p, batch_size=a.batch_size,
                          seed=a.seed, num_samples=teacher.samples, backend=a.backend,
                          max_batch_tokens=a.max_batch_tokens)


def load_teacher(job: ArbitrageJob, teacher: TeacherSpec, backend: str):
    """(generation backend, tokenizer) for one teacher."""
    model_args = ModelArgs(model=teacher.model, dtype=job.args.dtype, attn_implementation=job.args.attn_implementation,
                           trust_remote_code=job.args.trust_remote_code)
    return load_backend(model_args, backend, teacher.adapter)


def read_logs(partial: Path, pattern: str) -> list[dict]:
    """Every record of every process's log matching `pattern` (a resumed run may have another process count)."""
    records = []
    for path in sorted(partial.glob(pattern)):
        with AppendLog(path, key=lambda r: r["index"]) as existing:
            records += existing.records
    return records


def generate_candidates(job: ArbitrageJob, prompts: list[dict], shard: list[int], partial: Path, rank: int,
                        is_main: bool) -> None:
    backend_name = choose_backend(job.args.backend)
    for t, teacher in enumerate(job.teachers):
        done = {r["index"] for r in read_logs(partial, f"generations.{t}.*.jsonl")}
        # Batches are planned over every prompt this teacher serves, done or not, so that a resumed run regenerates
        # a cut batch exactly as the uninterrupted run would have.
        eligible = [i for i in shard if serves(teacher, prompts[i]["lang"])]
        todo = [i for i in eligible if i not in done]
        if not todo:
            continue
        if is_main:
            print(f"Teacher {teacher.name} ({teacher.model}): {len(todo)} of {len(eligible)} prompts to answer",
                  flush=True)
        backend, tokenizer = load_teacher(job, teacher, backend_name)
        chats = [teacher_prompt(teacher, prompts[i]["prompt"]) for i in eligible]
        with AppendLog(partial / f"generations.{t}.rank{rank}.jsonl", key=lambda r: r["index"]) as out:
            for chunk in iter_batches(backend, tokenizer, chats, generation_args(job, teacher),
                                      skip=lambda j: eligible[j] in done, desc=f"Generating ({teacher.name})",
                                      progress=is_main):
                for j, completions in chunk:
                    out.append({"index": eligible[j], "teacher": teacher.name, "completions": completions})
        del backend, tokenizer
        release_memory()


# ------------------------------------------------------------------------------------------------ ranking


def load_ranker(job: ArbitrageJob):
    import dataclasses

    from reward import load_ranker as build

    return build(dataclasses.asdict(job.ranker), ModelArgs(dtype=job.args.dtype,
                                                         attn_implementation=job.args.attn_implementation,
                                                         trust_remote_code=job.args.trust_remote_code))


def candidates_by_prompt(job: ArbitrageJob, partial: Path) -> dict[int, list[tuple[str, int, str]]]:
    """prompt index → [(teacher, sample, completion)] in pool order."""
    out: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for t, teacher in enumerate(job.teachers):
        for record in sorted(read_logs(partial, f"generations.{t}.*.jsonl"), key=lambda r: r["index"]):
            for s, completion in enumerate(record["completions"]):
                out[record["index"]].append((teacher.name, s, completion))
    return out


def score_candidates(job: ArbitrageJob, prompts: list[dict], shard: list[int], partial: Path, rank: int,
                     is_main: bool, chunk: int = 32) -> None:
    from tqdm.auto import tqdm

    done = {r["index"] for r in read_logs(partial, "scores.*.jsonl")}
    candidates = candidates_by_prompt(job, partial)
    # Fixed chunks over the whole shard: a cut chunk is rescored whole, as the uninterrupted run scored it.
    served = [i for i in shard if i in candidates]
    chunks = [served[k: k + chunk] for k in range(0, len(served), chunk)]
    chunks = [c for c in chunks if any(i not in done for i in c)]
    if not chunks:
        return
    ranker = load_ranker(job)
    with AppendLog(partial / f"scores.rank{rank}.jsonl", key=lambda r: r["index"]) as out:
        for indices in tqdm(chunks, desc="Scoring", disable=not is_main, unit="chunk"):
            rankings = ranker.rank_many([prompts[i]["prompt"] for i in indices],
                                        [[c for _, _, c in candidates[i]] for i in indices])
            for i, ranking in zip(indices, rankings):
                if i not in done:
                    out.append({"index": i, "scores": ranking.scores})
    del ranker
    release_memory()


# ------------------------------------------------------------------------------------------------ outputs


def assemble(job: ArbitrageJob, prompts: list[dict], partial: Path) -> tuple[dict, dict]:
    """Join every process's logs in input order and write the stage's files into `partial`."""
    candidates = candidates_by_prompt(job, partial)
    scores = {r["index"]: r["scores"] for r in read_logs(partial, "scores.*.jsonl")}
    candidate_rows, sft_rows, pair_rows = [], [], []
    wins: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unserved, below_margin, single = 0, 0, 0
    for i, prompt in enumerate(prompts):
        lang = prompt["lang"]
        group = candidates.get(i, [])
        if not group:
            unserved += 1
            continue
        group_scores = scores[i]
        for (teacher, sample, completion), score in zip(group, group_scores):
            candidate_rows.append({"id": prompt["id"], "lang": lang, "model": teacher, "sample": sample,
                                   "prompt": prompt["prompt"], "completion": completion, "score": score})
            sums[lang][teacher].append(score)
        best = max(range(len(group)), key=lambda k: (group_scores[k], -k))
        worst = min(range(len(group)), key=lambda k: (group_scores[k], -k))
        wins[lang][group[best][0]] += 1
        meta = {"lang": lang, "id": prompt["id"], "source": "arbitrage"}
        sft_rows.append({"messages": [*prompt["prompt"], {"role": "assistant", "content": group[best][2]}],
                         **meta, "teacher": group[best][0], "score": group_scores[best]})
        if len(group) < 2:
            single += 1
        elif group_scores[best] - group_scores[worst] < job.args.min_margin or best == worst:
            below_margin += 1
        else:
            pair_rows.append({"prompt": prompt["prompt"],
                              "chosen": [{"role": "assistant", "content": group[best][2]}],
                              "rejected": [{"role": "assistant", "content": group[worst][2]}], **meta,
                              "chosen_score": group_scores[best], "rejected_score": group_scores[worst],
                              "chosen_by": group[best][0], "rejected_by": group[worst][0]})
    routing = routing_table(job, prompts, wins, sums)
    write_jsonl(partial / "candidates.jsonl", candidate_rows)
    write_jsonl(partial / "sft.jsonl", sft_rows)
    write_jsonl(partial / "pairs.jsonl", pair_rows)
    write_json(partial / "routing.json", routing)
    plot_routing(routing, partial / "routing.png")
    metrics = {"prompts": len(prompts), "candidates": len(candidate_rows), "sft_records": len(sft_rows),
               "pairs": len(pair_rows), "pairs_below_margin": below_margin, "prompts_with_one_candidate": single,
               "prompts_no_teacher_serves": unserved, "min_margin": job.args.min_margin,
               "teachers": [t.name for t in job.teachers]}
    return metrics, routing


def routing_table(job: ArbitrageJob, prompts: list[dict], wins, sums) -> dict:
    """Per language (and overall): each teacher's share of wins and mean score."""
    langs = sorted({p["lang"] for p in prompts})
    table = {}
    for lang in [*langs, "all"]:
        routed = sum(wins[lang].values()) if lang != "all" else sum(sum(w.values()) for w in wins.values())
        row = {}
        for teacher in job.teachers:
            name = teacher.name
            won = wins[lang][name] if lang != "all" else sum(wins[l][name] for l in langs)
            scores = sums[lang][name] if lang != "all" else [s for l in langs for s in sums[l][name]]
            row[name] = {"wins": won, "share": round(won / routed, 4) if routed else 0.0,
                         "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
                         "candidates": len(scores)}
        table[lang] = {"prompts": routed, "teachers": row}
    return table


def plot_routing(routing: dict, path: Path) -> None:
    """Grouped bars: each teacher's share of wins per language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(routing)
    teachers = list(routing[langs[0]]["teachers"]) if langs else []
    width = 0.8 / max(len(teachers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(langs) + 2), 4))
    for k, teacher in enumerate(teachers):
        shares = [routing[lang]["teachers"][teacher]["share"] for lang in langs]
        ax.bar([x + k * width for x in range(len(langs))], shares, width, label=teacher)
    ax.set_xticks([x + width * (len(teachers) - 1) / 2 for x in range(len(langs))], langs)
    ax.set_ylabel("share of prompts won")
    ax.set_ylim(0, 1)
    ax.set_title("Arbitrage routing: which teacher the ranker picked, per language")
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def print_summary(routing: dict, metrics: dict, final: Path) -> None:
    teachers = metrics["teachers"]
    header = ["lang", "prompts", *[f"{t} wins" for t in teachers], *[f"{t} mean" for t in teachers]]
    rows = []
    for lang, row in routing.items():
        cells = [lang, str(row["prompts"])]
        cells += [f"{row['teachers'][t]['share']:.0%}" for t in teachers]
        cells += ["-" if row["teachers"][t]["mean_score"] is None else f"{row['teachers'][t]['mean_score']:.3f}"
                  for t in teachers]
        rows.append(cells)
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]
    print("\nArbitrage summary", flush=True)
    for cells in [header, *rows]:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)), flush=True)
    print(f"  {metrics['sft_records']} SFT records, {metrics['pairs']} pairs "
          f"({metrics['pairs_below_margin']} below margin {metrics['min_margin']}), "
          f"{metrics['prompts_no_teacher_serves']} prompts no teacher serves → {final}", flush=True)


# ------------------------------------------------------------------------------------------------ stage


def run_arbitrage(raw: dict, source: str | None = None) -> Path:
    from accelerate import PartialState

    job = parse_arbitrage_config(raw, source)
    final = Path(job.args.output_dir)
    if final.exists() and not job.args.overwrite:
        raise ConfigError(source, "output_dir", f"{final} already exists (pass --overwrite to replace it)")
    check_models(job, source)
    prompts = load_records(job.args.prompts, "prompt", seed=job.args.seed)
    if job.args.max_prompts:
        prompts = prompts[: job.args.max_prompts]
    state = PartialState(cpu=not cuda_available())
    partial = partial_dir(final)
    digest = config_hash({k: v for k, v in job.raw.items() if k != "overwrite"})
    marker = partial / "polyalign_config_hash"
    if state.is_main_process:
        if partial.exists() and (not marker.exists() or marker.read_text().strip() != digest):
            log.warning("%s holds a run with another config: starting over", partial)
            shutil.rmtree(partial)
        resumed = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        marker.write_text(digest)
        print(f"Arbitrage: {len(prompts)} prompts, {len(job.teachers)} teachers"
              + (" (resuming)" if resumed else ""), flush=True)
    state.wait_for_everyone()
    with state.split_between_processes(list(range(len(prompts)))) as shard:
        shard = list(shard)
    generate_candidates(job, prompts, shard, partial, state.process_index, state.is_main_process)
    state.wait_for_everyone()
    score_candidates(job, prompts, shard, partial, state.process_index, state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        metrics, routing = assemble(job, prompts, partial)
        write_json(partial / "metrics.json", metrics)
        write_json(partial / "polyalign_recipe.json", {"stage": "arbitrage", "config": job.raw, "source": source})
        for log_file in [*partial.glob("generations.*.jsonl"), *partial.glob("scores.*.jsonl"), marker]:
            log_file.unlink()
        promote(partial, final, overwrite=job.args.overwrite)
        print_summary(routing, metrics, final)
    state.wait_for_everyone()
    return final
