"""Batched sampling from chat models behind one interface: transformers, or vLLM where it is installed with CUDA.

Batches are a deterministic function of the prompts and the batch size (sorted by prompt length, longest first, so
each left-padded batch wastes little, and capped at `max_batch_tokens` padded prompt tokens, so one very long prompt
does not make seven short ones pay its length: on CPU a batch of eight padded to a 4,000-token MT-Bench prompt took
6x longer than the eight run one by one), and each batch draws from its own seed. A stage that streams results batch by
batch and is killed can therefore regenerate a cut batch exactly: a resumed run writes what an uninterrupted one
would have. Answers are returned in input order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from .errors import ConfigError

log = logging.getLogger(__name__)

Messages = list[dict]
BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class GenerationArgs:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0
    num_samples: int = 1  # completions per prompt (needs temperature > 0 to differ)
    backend: str = "auto"  # auto: vLLM when installed and CUDA is present, else transformers
    # Cap on a batch's padded prompt tokens (rows x samples x longest prompt); a longer prompt runs alone.
    # None: 4096 on CPU, where prefill is compute-bound and padding costs its full price; 65536 on CUDA.
    max_batch_tokens: int | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(None, "backend", f"unknown generation backend {self.backend!r} (expected "
                                               f"{', '.join(BACKENDS)})")
        for key in ("max_new_tokens", "batch_size", "num_samples", "max_batch_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(None, key, f"must be at least 1, got {getattr(self, key)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(None, "temperature" if self.temperature < 0 else "top_p",
                              "temperature must be >= 0 and top_p in (0, 1]")


class Backend(Protocol):
    """Generates `num_samples` completions for each prompt of one batch."""

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]: ...


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index`: independent of which batches ran before it in this process."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def batch_token_budget(args: GenerationArgs) -> int:
    if args.max_batch_tokens is not None:
        return args.max_batch_tokens
    return DEFAULT_BATCH_TOKENS["cuda" if torch.cuda.is_available() else "cpu"]


def plan_batches(prompts: list[Messages], tokenizer, batch_size: int, max_batch_tokens: int | None = None,
                 samples: int = 1) -> list[list[int]]:
    """Indices of the prompts, grouped into batches of similar length (longest first; ties keep input order).

    A batch holds at most `batch_size` prompts and, when `max_batch_tokens` is set, at most that many padded prompt
    tokens (prompts x `samples` x its longest prompt), but always at least one prompt."""
    lengths = [len(tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False))
               for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is None or len(current) >= batch_size or (
                max_batch_tokens and (len(current) + 1) * samples * lengths[current[0]] > max_batch_tokens):
            batches.append([i])
        else:
            current.append(i)
    return batches


class TransformersBackend:
    """Left-padded batches through `model.generate`; the model stays loaded between calls.

    On CPU each prompt's prefill runs alone, unpadded, and the batch only shares decoding: prefill is compute-bound
    there, so batching it gains nothing and padding costs its full price, while each decoding step is bound by
    reading the weights, which a batch shares (`prefill_each`; on by default on CPU for full-attention models).
    """

    def __init__(self, model, tokenizer, *, prefill_each: bool | None = None):
        from .segment_attention import supports

        self.model, self.tokenizer = model, tokenizer
        self.generated_tokens = 0  # new tokens before each sequence's end (benchmarks, progress reports)
        if prefill_each is None:
            prefill_each = next(model.parameters()).device.type == "cpu" and supports(model.config)
        self.prefill_each = prefill_each

    def prefilled_cache(self, encoded: list[list[int]], width: int, copies: int, device):
        """A KV cache of every prompt but its last token, each computed alone, left-padded to `width - 1` and
        repeated `copies` times per prompt (the rows `generate` would make for num_return_sequences)."""
        from transformers import DynamicCache

        alone = []
        with torch.no_grad():
            for ids in encoded:
                cache = DynamicCache(config=self.model.config)
                if len(ids) > 1:
                    self.model(input_ids=torch.tensor([ids[:-1]], device=device), past_key_values=cache,
                               use_cache=True, logits_to_keep=1)
                alone.append(cache)
        batch = DynamicCache(config=self.model.config)
        reference = next(c for c in alone if c.get_seq_length() > 0)
        for index, layer in enumerate(reference.layers):
            shape = (len(encoded) * copies, layer.keys.shape[1], width - 1, layer.keys.shape[3])
            keys = layer.keys.new_zeros(shape)
            values = layer.values.new_zeros(shape[:3] + (layer.values.shape[3],))
            for row, (ids, cache) in enumerate(zip(encoded, alone)):
                n = len(ids) - 1
                if n:
                    rows = slice(row * copies, (row + 1) * copies)
                    keys[rows, :, width - 1 - n:] = cache.layers[index].keys[0]
                    values[rows, :, width - 1 - n:] = cache.layers[index].values[0]
            batch.update(keys, values, index)
        return batch

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]:
        tokenizer, model = self.tokenizer, self.model
        encoded = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)
                   for p in prompts]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for ids in encoded)
        k = args.num_samples
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        device = next(model.parameters()).device
        sampling = args.temperature > 0
        was_training = model.training
        model.eval()
        try:
            extra = {"num_return_sequences": k}
            if self.prefill_each and width > 1:
                # generate() would not repeat a given cache per sample: make the k rows per prompt here instead
                extra = {"past_key_values": self.prefilled_cache(encoded, width, k, device)}
                input_ids, attention_mask = input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0)
            torch.manual_seed(seed)
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    max_new_tokens=args.max_new_tokens, do_sample=sampling,
                    temperature=args.temperature if sampling else None, top_p=args.top_p if sampling else None,
                    top_k=None, pad_token_id=pad_id, **extra)
        finally:
            model.train(was_training)
        new = output[:, width:]
        self.generated_tokens += int((new != pad_id).sum())
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return [[t.strip() for t in texts[i * k: (i + 1) * k]] for i in range(len(prompts))]


class VLLMBackend:
    """vLLM's offline engine: continuous batching and paged attention on CUDA. A LoRA adapter is served on its base."""

    def __init__(self, model_path: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                 adapter: str | None = None, gpu_memory_utilization: float = 0.85, max_model_len: int | None = None):
        from vllm import LLM

        self.adapter = adapter
        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code, enable_lora=bool(adapter),
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    def __call__(self, prompts: list[Messages], args: GenerationArgs, seed: int) -> list[list[str]]:
        from vllm import SamplingParams

        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter)
        params = SamplingParams(n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_new_tokens, seed=seed)
        outputs = self.llm.chat(prompts, params, use_tqdm=False, lora_request=lora)
        return [[c.text.strip() for c in out.outputs] for out in outputs]


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def choose_backend(name: str) -> str:
    if name == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if name == "vllm" and not vllm_usable():
        raise ConfigError(None, "backend", "vllm needs the vllm package and a CUDA GPU: pip install vllm, or use "
                                           "backend: transformers")
    return name


def iter_batches(backend: Backend, tokenizer, prompts: list[Messages], args: GenerationArgs, *,
                 skip: Callable[[int], bool] = lambda i: False, progress: bool = True,
                 desc: str = "Generating") -> Iterator[list[tuple[int, list[str]]]]:
    """Yield each planned batch's (prompt index, completions), skipping batches whose every prompt `skip`s.

    A batch with some prompts done is regenerated whole (same prompts, same seed, so the same completions) and only
    its missing prompts are yielded: that is what makes a resumed run equal an uninterrupted one.
    """
    batches = plan_batches(prompts, tokenizer, args.batch_size, batch_token_budget(args), args.num_samples)
    todo = [(b, batch) for b, batch in enumerate(batches) if not all(skip(i) for i in batch)]
    bar = tqdm(total=sum(len(batch) for _, batch in todo), desc=desc, unit="prompt",
               disable=not progress or len(prompts) < 2)
    for b, batch in todo:
        completions = backend([prompts[i] for i in batch], args, batch_seed(args.seed, b))
        yield [(i, c) for i, c in zip(batch, completions) if not skip(i)]
        bar.update(len(batch))
    bar.close()


def generate(model, tokenizer, prompts: list[Messages], args: GenerationArgs, *, progress: bool = True) -> list[str]:
    """One completion per prompt (a list of chat messages), in the order given, with the transformers backend."""
    backend = TransformersBackend(model, tokenizer)
    results: list[str | None] = [None] * len(prompts)
    single = GenerationArgs(**{**args.__dict__, "num_samples": 1, "backend": "transformers"})
    for chunk in iter_batches(backend, tokenizer, prompts, single, progress=progress):
        for i, completions in chunk:
            results[i] = completions[0]
    return results  # type: ignore[return-value]
