"""Batched sampling from chat models behind one interface: transformers, or vLLM where it is installed with CUDA.

Batches are a deterministic function of the prompts and the batch size (prompts sorted by length, longest first, cut
into consecutive batches by `plan_batches`), and each batch draws from its own seed. A stage that streams results
batch by batch and is killed can therefore regenerate a cut batch exactly: a resumed run writes what an
uninterrupted one would have. Answers are returned in input order.

One module over 400 lines: the backends share the batch plan and the seeds that make a resumed run exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from align.core.errors import ConfigError, PolyalignError
from align.core.io import AppendLog, join_logs, read_logs, shard_log
from align.models.loading import (
    ModelArgs,
    adapter_base,
    cuda_available,
    load_model,
    load_tokenizer,
    match_embeddings,
    model_path,
    release_memory,
    to_gpu_if_available,
)

log = logging.getLogger(__name__)

Messages = list[dict]
BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class DecodingArgs:
    """The generation keys of every stage that generates (arbitrage, contrast, iterate, evaluate, generate): declared
    here once; each stage's config extends this class, changing only the defaults it needs."""

    max_new_tokens: int = 128  # tokens per answer
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens whose probability reaches this
    batch_size: int = 16  # prompts per batch; each has num_samples rows
    backend: str = "auto"  # auto: vLLM when installed and CUDA is present, else transformers
    # Cap on a batch's padded prompt tokens (prompts x samples x longest prompt); a longer prompt runs alone.
    # None: 16384 on CPU (prefill is packed there, so this bounds only the KV cache), 65536 on CUDA.
    max_batch_tokens: int | None = None
    # vLLM: GPUs per engine (tensor parallelism: a model too large for one GPU). Under accelerate launch each process
    # runs its own engine on its own GPUs (data parallelism), so processes per node x this must fit the node's GPUs.
    tensor_parallel_size: int = 1

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(
                None, "backend", f"unknown generation backend {self.backend!r} (expected {', '.join(BACKENDS)})"
            )
        if self.tensor_parallel_size > 1 and self.backend == "transformers":
            raise ConfigError(
                None,
                "tensor_parallel_size",
                "tensor parallelism is vLLM's: use backend vllm (or auto on a machine with vLLM and CUDA)",
            )
        for key in ("max_new_tokens", "batch_size", "max_batch_tokens", "tensor_parallel_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(None, key, f"must be at least 1, got {getattr(self, key)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                None, "temperature" if self.temperature < 0 else "top_p", "temperature must be >= 0 and top_p in (0, 1]"
            )
        getattr(super(), "__post_init__", lambda: None)()

    def generation(self, **overrides) -> GenerationArgs:
        """These keys (and the stage's `seed`, when it has one) as the arguments of one generation run."""
        keys = {f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingArgs)}
        if hasattr(self, "seed"):
            keys["seed"] = self.seed
        return GenerationArgs(**{**keys, **overrides})


@dataclass
class GenerationArgs(DecodingArgs):
    seed: int = 0  # seed of sampling (each batch draws from its own seed derived from it)
    num_samples: int = 1  # completions per prompt (needs temperature > 0 to differ)

    def __post_init__(self):
        if self.num_samples < 1:
            raise ConfigError(None, "num_samples", f"must be at least 1, got {self.num_samples}")
        super().__post_init__()


@dataclass
class Throughput:
    """New tokens, answers and wall seconds of the generation one process ran in this run (answers a killed run left
    in the log count nothing): the tokens/s a tracker shows. Tokens are counted where the backend counts them
    (transformers, vLLM; an API endpoint does not)."""

    tokens: int | None = 0
    answers: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        rate = self.tokens / self.seconds if self.tokens is not None and self.seconds else None
        return {
            "tokens": self.tokens,
            "answers": self.answers,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": None if rate is None else round(rate, 2),
        }


class Backend(Protocol):
    """Generates `num_samples` completions for each prompt of one batch."""

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]: ...


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index`: independent of which batches ran before it in this process."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# Padded prompt tokens per batch (rows x longest prompt): on CPU prompts are prefilled packed, without padding, so
# this bounds only the KV cache; on CUDA a batch is prefilled padded.
DEFAULT_BATCH_TOKENS = {"cpu": 16384, "cuda": 65536}
# A decoding step's fixed cost (reading every weight once, shared by the batch) in units of its per-row cost of
# attending over one cached token. CPU: fitted to profiled step times of the embedded model (BENCHMARKS.md), and the
# plan barely depends on it. CUDA: padding is nearly free next to a step's kernel launches, so the plan makes the
# fewest batches.
STEP_COST_TOKENS = {"cpu": 12_000, "cuda": 1_000_000}


def _device() -> str:
    return "cuda" if cuda_available() else "cpu"


def batch_token_budget(args: GenerationArgs) -> int:
    if args.max_batch_tokens is not None:
        return args.max_batch_tokens
    return DEFAULT_BATCH_TOKENS[_device()]


def prompt_length(prompt: Messages, tokenizer) -> int:
    """Tokens of the rendered prompt; with no tokenizer (an API backend: the server renders it), the characters of
    its messages, which still sort prompts by length."""
    if tokenizer is None:
        return sum(len(str(m.get("role", ""))) + len(str(m.get("content", ""))) for m in prompt)
    return len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))


def plan_batches(
    prompts: list[Messages],
    tokenizer,
    batch_size: int,
    max_batch_tokens: int | None = None,
    samples: int = 1,
    step_cost: int | None = None,
) -> list[list[int]]:
    """Indices of the prompts, grouped into batches of similar length (longest first; ties keep input order).

    A batch holds at most `batch_size` prompts and, when `max_batch_tokens` is set, at most that many padded prompt
    tokens (prompts x `samples` x its longest prompt), but always at least one prompt. Of all the ways to cut the
    sorted prompts into such batches, the cheapest to decode is chosen: per step, each batch costs `step_cost` (by
    default `STEP_COST_TOKENS` of this machine's device) plus its rows x padded width. Filling batches greedily
    instead pads seven short prompts to one long one, or leaves a last batch of one (BENCHMARKS.md compares them).
    With no tokenizer (an API backend), lengths are characters (`prompt_length`).
    """
    lengths = [prompt_length(p, tokenizer) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    step_cost = STEP_COST_TOKENS[_device()] if step_cost is None else step_cost
    # cost[end]: the cheapest plan for order[:end]; first[end]: where its last batch begins
    cost, first = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end - 1, max(0, end - batch_size) - 1, -1):
            padded = (end - begin) * samples * lengths[order[begin]]
            if max_batch_tokens and begin < end - 1 and padded > max_batch_tokens:
                break  # longer batches only grow
            if cost[begin] + step_cost + padded < cost[end]:
                cost[end], first[end] = cost[begin] + step_cost + padded, begin
    batches, end = [], len(order)
    while end:
        batches.append(order[first[end] : end])
        end = first[end]
    return batches[::-1]


class TransformersBackend:
    """Left-padded batches through `model.generate`; the model stays loaded between calls.

    On CPU a batch's prompts are prefilled packed into one row, without padding, and only decoding runs as a padded
    batch (`packed_prefill`; on by default on CPU for full-attention models): prefill is compute-bound there, so
    every padding token costs its full price, while a decoding step is bound by reading the weights, which the
    batch shares.
    """

    def __init__(self, model, tokenizer, *, packed_prefill: bool | None = None):
        from align.models.attention import can_use, full_causal, unwrapped

        self.model, self.tokenizer = model, tokenizer
        self.generated_tokens = 0  # new tokens before each sequence's end (benchmarks, progress reports)
        if packed_prefill is None:
            packed_prefill = (
                next(model.parameters()).device.type == "cpu"
                and can_use(model)
                and full_causal(unwrapped(model).config)
            )
        self.packed_prefill = packed_prefill

    def prefilled_cache(self, encoded: list[list[int]], width: int, copies: int, room: int, device):
        """A KV cache of every prompt but its last token, left-padded to `width - 1`, repeated `copies` times per
        prompt (the rows `generate` would make for num_return_sequences), with room for `room` new tokens.

        One forward pass computes it over the prompts packed into one row (position ids restart per prompt and
        `per_example` keeps them apart): nothing is spent on padding, and short prompts share one pass (the gain over
        one pass per prompt is in BENCHMARKS.md, bench/generate_parts.py)."""
        from transformers import DynamicCache

        from align.generation.kv_cache import unpack_to_batch
        from align.models.attention import packed_attention

        heads = [ids[:-1] for ids in encoded]
        packed = DynamicCache(config=self.model.config)
        with torch.no_grad(), packed_attention(self.model) as switched:
            if not switched:
                raise ValueError("packed prefill needs a model that can run per_example attention")
            self.model(
                input_ids=torch.tensor([sum(heads, [])], device=device),
                use_cache=True,
                position_ids=torch.cat([torch.arange(len(h)) for h in heads])[None].to(device),
                past_key_values=packed,
                logits_to_keep=1,
            )
        return unpack_to_batch(packed, [len(h) for h in heads], width - 1, copies, room, self.model.config)

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]:
        tokenizer, model = self.tokenizer, self.model
        encoded = [
            tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)
            for p in prompts
        ]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for ids in encoded)
        k = args.num_samples
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        device = next(model.parameters()).device
        sampling = args.temperature > 0
        was_training = model.training
        model.eval()
        try:
            extra = {"num_return_sequences": k}
            if self.packed_prefill and width > 1:
                # generate() would not repeat a given cache per sample: make the k rows per prompt here instead
                extra = {"past_key_values": self.prefilled_cache(encoded, width, k, args.max_new_tokens, device)}
                input_ids, attention_mask = input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0)
            torch.manual_seed(seed)
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=args.max_new_tokens,
                    do_sample=sampling,
                    temperature=args.temperature if sampling else None,
                    top_p=args.top_p if sampling else None,
                    top_k=None,
                    pad_token_id=pad_id,
                    **extra,
                )
        finally:
            model.train(was_training)
        new = output[:, width:]
        self.generated_tokens += int((new != pad_id).sum())
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return [[t.strip() for t in texts[i * k : (i + 1) * k]] for i in range(len(prompts))]


class VLLMBackend:
    """vLLM's offline engine: continuous batching and paged attention on CUDA. A LoRA adapter is served on its base.

    The engine runs in its own process (vLLM's default), on the GPUs `engine_gpus` gives this process: weights saved
    by one online iteration reach the next iteration's engine by loading the checkpoint anew, and deleting the engine
    frees its GPUs whole.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        adapter: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
    ):
        import os

        from vllm import LLM

        self.adapter = adapter
        self.generated_tokens = 0  # new tokens, as TransformersBackend counts them
        gpus = engine_gpus(
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
            tensor_parallel_size,
            visible_gpus(),
        )
        with environment(
            CUDA_VISIBLE_DEVICES=",".join(gpus),
            VLLM_ENABLE_V1_MULTIPROCESSING="1",
            VLLM_WORKER_MULTIPROC_METHOD="spawn",
        ):  # the engine's processes see only this slice
            self.llm = LLM(
                model=model_path,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                enable_lora=bool(adapter),
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
            )

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]:
        from vllm import SamplingParams

        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter)
        params = SamplingParams(
            n=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_new_tokens,
            seed=seed,
        )
        outputs = self.llm.chat(prompts, params, use_tqdm=False, lora_request=lora)
        self.generated_tokens += sum(len(c.token_ids) for out in outputs for c in out.outputs)
        return [[c.text.strip() for c in out.outputs] for out in outputs]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices when it is unset)."""
    import os

    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [g.strip() for g in named.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def engine_gpus(local_rank: int, local_processes: int, tensor_parallel_size: int, visible: list[str]) -> list[str]:
    """The GPUs of this process's vLLM engine: the local_rank-th slice of `tensor_parallel_size` visible GPUs, so that
    the engines of one node's processes never share a GPU."""
    needed = local_processes * tensor_parallel_size
    if needed > len(visible):
        raise ConfigError(
            None,
            "tensor_parallel_size",
            f"{local_processes} process(es) on this node x "
            f"tensor_parallel_size {tensor_parallel_size} needs {needed} "
            f"GPUs; {len(visible)} are visible",
        )
    return visible[local_rank * tensor_parallel_size : (local_rank + 1) * tensor_parallel_size]


@contextlib.contextmanager
def environment(**values: str):
    """Environment variables set for the duration of the block, then restored."""
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and cuda_available()


def choose_backend(name: str) -> str:
    if name == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if name == "vllm" and not vllm_usable():
        raise ConfigError(
            None,
            "backend",
            "vllm needs the vllm package and a CUDA GPU: pip install vllm, or use backend: transformers",
        )
    return name


def load_backend(model_args: ModelArgs, backend: str, adapter: str | None = None, *, tensor_parallel_size: int = 1):
    """(generation backend, tokenizer) for one model, optionally with a LoRA adapter: vLLM serves the adapter on its
    base (a model path that is itself an adapter directory counts as one), on `tensor_parallel_size` GPUs;
    transformers applies it with peft and runs on the GPU when there is one."""
    tokenizer = load_tokenizer(model_args)
    if backend == "vllm":
        path = model_path(model_args.model)
        base = adapter_base(Path(path))
        if base is not None:  # an adapter directory given as the model
            adapter, path = path, model_path(base)
        return VLLMBackend(
            path,
            dtype=model_args.dtype,
            trust_remote_code=model_args.trust_remote_code,
            adapter=model_path(adapter) if adapter else None,
            tensor_parallel_size=tensor_parallel_size,
        ), tokenizer
    model = match_embeddings(load_model(model_args), tokenizer)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_path(adapter))
    return TransformersBackend(to_gpu_if_available(model), tokenizer), tokenizer


def iter_batches(
    backend: Backend,
    tokenizer,
    prompts: list[Messages],
    args: GenerationArgs,
    *,
    skip: Callable[[int], bool] = lambda i: False,
    progress: bool = True,
    desc: str = "Generating",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[list[tuple[int, list[str]]]]:
    """Yield each planned batch's (prompt index, completions), skipping batches whose every prompt `skip`s.

    A batch with some prompts done is regenerated whole (same prompts, same seed, so the same completions) and only
    its missing prompts are yielded: that is what makes a resumed run equal an uninterrupted one. `shard` (rank,
    processes) takes every processes-th batch of the plan over all prompts: each batch, and so each completion, is
    the one a single process makes.
    """
    rank, processes = shard
    batches = plan_batches(prompts, tokenizer, args.batch_size, batch_token_budget(args), args.num_samples)
    todo = [(b, batch) for b, batch in enumerate(batches) if b % processes == rank and not all(skip(i) for i in batch)]
    bar = tqdm(
        total=sum(len(batch) for _, batch in todo), desc=desc, unit="prompt", disable=not progress or len(prompts) < 2
    )
    for b, batch in todo:
        completions = backend([prompts[i] for i in batch], args, batch_seed(args.seed, b))
        yield [(i, c) for i, c in zip(batch, completions) if not skip(i)]
        bar.update(len(batch))
    bar.close()


def complete(
    backend: Backend,
    tokenizer,
    prompts: list[Messages],
    args: GenerationArgs,
    *,
    progress: bool = True,
    desc: str = "Generating",
) -> list[list[str]]:
    """`args.num_samples` completions per prompt, in input order, held in memory (a judge's replies, a test's
    answers); a stage that must survive a kill streams into a log with `generate_logged` instead."""
    results: list[list[str] | None] = [None] * len(prompts)
    for chunk in iter_batches(backend, tokenizer, prompts, args, progress=progress, desc=desc):
        for i, completions in chunk:
            results[i] = completions
    return results  # type: ignore[return-value]


def generate_logged(
    path: str | Path,
    prompts: list[Messages],
    args: GenerationArgs,
    load: Callable[[], tuple],
    *,
    keys: Sequence[Hashable] | None = None,
    extra: Callable[[int], dict] | None = None,
    done: set = frozenset(),
    desc: str = "Generating",
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    meter: Throughput | None = None,
) -> list[dict]:
    """The one generation primitive of the stages: answer `prompts` into the append log at `path`, one flushed
    record per prompt, `{"index": key, **extra(i), "completions": [...]}`, and return the log's records in input order.

    A rerun resumes: prompts whose key is in the log (or in `done`, e.g. other processes' logs) are skipped, and
    `load()` (→ backend, tokenizer) is called only when something is left to answer. Batches are planned over every
    prompt, done or not, so a cut batch is regenerated exactly as the uninterrupted run would have made it. With
    `shard` (rank, processes) this process answers its share of the batches (iter_batches) and returns its own.
    `meter` adds what this call generates (loading the model aside) to a Throughput.
    """
    keys = list(range(len(prompts))) if keys is None else list(keys)
    with AppendLog(path, key=lambda r: r["index"]) as log_file:
        finished = log_file.done | set(done)
        if any(k not in finished for k in keys):
            backend, tokenizer = load()
            tokens_before, began, answered = getattr(backend, "generated_tokens", None), time.perf_counter(), 0
            for chunk in iter_batches(
                backend,
                tokenizer,
                prompts,
                args,
                skip=lambda i: keys[i] in finished,
                desc=desc,
                progress=progress,
                shard=shard,
            ):
                for i, completions in chunk:
                    log_file.append({"index": keys[i], **(extra(i) if extra else {}), "completions": completions})
                answered += sum(len(c) for _, c in chunk)
            if meter is not None:
                meter.seconds += time.perf_counter() - began
                meter.answers += answered
                meter.tokens = (
                    None
                    if tokens_before is None or meter.tokens is None
                    else meter.tokens + backend.generated_tokens - tokens_before
                )
            del backend, tokenizer
            release_memory()
        by_key = {r["index"]: r for r in log_file.records}
    return [by_key[k] for k in keys if k in by_key]


def generate_sharded(
    directory: Path,
    stem: str,
    prompts: list[Messages],
    args: GenerationArgs,
    load: Callable[[], tuple],
    *,
    rank: int,
    processes: int,
    barrier: Callable[[], None],
    keys: Sequence[Hashable] | None = None,
    extra: Callable[[int], dict] | None = None,
    desc: str = "Generating",
    meter: Throughput | None = None,
) -> list[dict]:
    """`generate_logged` on one or several processes: each answers its share of the batches into its own log
    (align.core.io.shard_log), the main process joins them into `<stem>.jsonl`, and every process returns all records in
    input order (those one process makes)."""
    keys = list(range(len(prompts))) if keys is None else list(keys)
    done = {r["index"] for pattern in (f"{stem}.jsonl", f"{stem}.rank*.jsonl") for r in read_logs(directory, pattern)}
    generate_logged(
        shard_log(directory, stem, rank, processes),
        prompts,
        args,
        load,
        keys=keys,
        done=done,
        extra=extra,
        desc=desc,
        progress=rank == 0,
        shard=(rank, processes),
        meter=meter,
    )
    barrier()
    if rank == 0:
        order = {k: n for n, k in enumerate(keys)}
        join_logs(directory, stem, key=lambda r: order[r["index"]])
    barrier()
    by_key = {r["index"]: r for r in read_logs(directory, f"{stem}.jsonl")}
    return [by_key[k] for k in keys]


def check_models(
    models: Sequence[tuple[str, str, str | None]], source: str | None, *, trust_remote_code: bool = False
) -> None:
    """Every (key, model, adapter) must resolve to a loadable config before any work starts: a typo fails in
    seconds, not after the first teacher has answered."""
    from transformers import AutoConfig

    for key, model, adapter in models:
        try:
            path = model_path(model)
            if not (Path(path) / "adapter_config.json").is_file():
                AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            if adapter and not (Path(model_path(adapter)) / "adapter_config.json").is_file():
                raise OSError(f"{adapter}: no adapter_config.json")
        except (OSError, ValueError, PolyalignError) as e:
            raise ConfigError(source, key, f"cannot load model {model!r} ({str(e).splitlines()[0]})") from None


def generate(model, tokenizer, prompts: list[Messages], args: GenerationArgs, *, progress: bool = True) -> list[str]:
    """One completion per prompt (a list of chat messages), in the order given, with the transformers backend."""
    single = GenerationArgs(**{**args.__dict__, "num_samples": 1, "backend": "transformers"})
    return [
        c[0] for c in complete(TransformersBackend(model, tokenizer), tokenizer, prompts, single, progress=progress)
    ]


# ------------------------------------------------------------------------------------------------ polyalign generate


@dataclass
class GenerateArgs(ModelArgs, GenerationArgs):
    """`polyalign generate`: a model (ModelArgs' keys), the generation keys, and where the prompts come from."""

    prompts: object = None  # any prompt dataset polyalign reads
    prompt: list[str] | None = None  # user messages given on the command line (--prompt, repeatable)
    output: str | None = None  # a JSONL of completions; a killed run resumes it
    overwrite: bool = False  # replace an existing --output file (refused otherwise)


def run_generate(raw: dict, source: str | None = None) -> list[dict]:
    """Answer the prompts, print each answer, and write them to `output` when given; returns the rows."""
    from align.core.config import build_dataclass, recipe_hash, resolve_recipe
    from align.core.io import write_jsonl
    from align.data import load_records

    args = build_dataclass(GenerateArgs, raw, source)
    if args.prompt:
        records = [
            {"prompt": [{"role": "user", "content": p}], "id": str(i), "lang": None} for i, p in enumerate(args.prompt)
        ]
    elif args.prompts is not None:
        records = load_records(args.prompts, "prompt", seed=args.seed, source=source, key="prompts")
    else:
        raise ConfigError(source, "prompts", "missing: give --prompt TEXT (repeatable) or --prompts FILE")
    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise ConfigError(source, "output", f"{output} already exists (pass --overwrite to replace it)")
    backend = choose_backend(args.backend)  # vLLM asked for but not usable: an error now, not a silent fallback
    chats = [r["prompt"] for r in records]

    def load():
        return load_backend(args, backend, tensor_parallel_size=args.tensor_parallel_size)

    if output is None:
        answers = complete(*load(), chats, args)
    else:  # streamed into a log beside the output, keyed by the config, so a killed run resumes
        log_path = output.parent / f".{output.name}.{recipe_hash(resolve_recipe(raw, GenerateArgs, source))}"
        answers = [a["completions"] for a in generate_logged(log_path, chats, args, load)]
    rows = [
        {
            "id": r["id"],
            "lang": r.get("lang"),
            "prompt": r["prompt"][-1]["content"],
            "completion": a[0],
            **({"completions": a} if args.num_samples > 1 else {}),
        }
        for r, a in zip(records, answers)
    ]
    for row in rows:
        print(f"[{row['lang'] or '?'}] {row['prompt']}\n  → {row['completion']}\n", flush=True)
    if output is not None:
        write_jsonl(output, rows)
        print(f"wrote {len(rows)} completions to {output}")
        log_path.unlink()
    return rows
