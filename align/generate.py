"""Batched sampling from a chat model (transformers backend).

Prompts are sorted by length so that each left-padded batch wastes little, then answers are returned in input
order. Greedy decoding, or sampling with a fixed seed, gives the same output for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class GenerationArgs:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def generate(model, tokenizer, prompts: list[list[dict]], args: GenerationArgs, *, progress: bool = True) -> list[str]:
    """One completion per prompt (a list of chat messages), in the order given."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[str | None] = [None] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator_seed = args.seed
    batches = [order[i: i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    for batch in tqdm(batches, desc="Generating", disable=not progress or len(batches) < 2):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids = encoded[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        sampling = args.temperature > 0
        torch.manual_seed(generator_seed)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=args.max_new_tokens, do_sample=sampling,
                temperature=args.temperature if sampling else None, top_p=args.top_p if sampling else None,
                top_k=None, pad_token_id=pad_id)
        for row, i in enumerate(batch):
            results[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    if was_training:
        model.train()
    return results  # type: ignore[return-value]
