"""Generation: deterministic length-sorted batches, k samples per prompt, input order kept, exact resumption."""

from __future__ import annotations

import json

import pytest

from align.core.errors import ConfigError
from align.core.io import AppendLog
from align.generation.generate import (
    GenerationArgs,
    TransformersBackend,
    engine_gpus,
    generate,
    iter_batches,
    plan_batches,
)
from align.models.loading import ModelArgs, load_model

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in (
        "Hi",
        "Quelle est la capitale de la France ? Réponds en une phrase.",
        "Was ist zwei plus drei?",
        "Explain in a few sentences why the sky is blue, and why sunsets are red.",
        "日本の首都はどこですか？",
        "¿Cuánto es siete por ocho?",
        "नमस्ते",
    )
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tokenizer):
    """The tiny random model with its weights scaled up: at the default init it answers "\n" to every prompt."""
    import torch

    model = load_model(ModelArgs(model=str(tiny_model_dir), dtype="fp32"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(25)
    return model, tokenizer


def test_batches_are_length_sorted_and_cover_every_prompt(tokenizer):
    batches = plan_batches(PROMPTS, tokenizer, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(PROMPTS)))
    lengths = [
        len(tokenizer.apply_chat_template(PROMPTS[i], add_generation_prompt=True, return_dict=False))
        for b in batches
        for i in b
    ]
    assert lengths == sorted(lengths, reverse=True)
    assert len(batches) == 3 and max(len(b) for b in batches) <= 3  # short prompts: as few batches as possible
    assert plan_batches(PROMPTS, tokenizer, 3) == batches  # a function of the input alone


def test_a_long_prompt_joins_short_ones_only_while_padding_costs_less_than_a_decoding_step(tokenizer):
    """Padding seven short prompts to a long one costs 7 x the length gap per step; a batch of its own costs one more
    step (STEP_COST_TOKENS). The plan takes whichever is cheaper."""
    from align.generation.generate import STEP_COST_TOKENS

    short = [[{"role": "user", "content": f"Say {n} in French."}] for n in range(7)]

    def length(prompt):
        return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False))

    def padded_to(gap):  # a prompt about `gap` tokens longer than the short ones
        text, prompt = "", short[0]
        while length(prompt) - length(short[0]) < gap:
            text += " Le chat dort au soleil."
            prompt = [{"role": "user", "content": "Résume:" + text}]
        return prompt

    step = STEP_COST_TOKENS["cpu"]
    near, far = padded_to(step // 7 // 2), padded_to(step // 7 * 2)
    assert [len(b) for b in plan_batches([near] + short, tokenizer, 8, step_cost=step)] == [8]
    assert plan_batches([far] + short, tokenizer, 8, step_cost=step) == [[0], list(range(1, 8))]
    # where padding is nearly free (CUDA's default), the fewest batches
    assert [len(b) for b in plan_batches([far] + short, tokenizer, 8, step_cost=STEP_COST_TOKENS["cuda"])] == [8]


def test_a_token_budget_keeps_long_prompts_from_padding_short_ones(tokenizer):
    """One long prompt must not make the short ones pay its length: batches stay within the padded-token budget."""
    prompts = [[{"role": "user", "content": "Résume ce texte. " + "Le chat dort au soleil. " * 60}]] + PROMPTS
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=False)) for p in prompts]
    budget = 4 * max(lengths[1:])
    assert lengths[0] > budget // 2  # the long prompt cannot share a batch within the budget
    batches = plan_batches(prompts, tokenizer, batch_size=4, max_batch_tokens=budget)
    assert batches[0] == [0]
    assert sorted(i for b in batches for i in b) == list(range(len(prompts)))
    for batch in batches:
        assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget)
    assert [len(b) for b in plan_batches(prompts, tokenizer, 4)] == [4, 4]  # no budget: counts only
    # samples multiply a batch's rows: with 2 samples per prompt, half as many prompts fit
    assert max(len(b) for b in plan_batches(prompts, tokenizer, 4, max_batch_tokens=budget, samples=2)) <= 2
    assert GenerationArgs().max_batch_tokens is None
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        GenerationArgs(max_batch_tokens=0)


def test_batched_greedy_answers_equal_one_at_a_time_in_input_order(tiny):
    model, tokenizer = tiny
    args = GenerationArgs(max_new_tokens=8, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, args, progress=False)
    alone = [generate(model, tokenizer, [p], args, progress=False)[0] for p in PROMPTS]
    assert batched == alone
    assert len(set(batched)) > 1  # the answers really depend on the prompt


def test_packed_prefill_gives_the_batched_answers(tiny, monkeypatch):
    """The CPU path (a batch's prompts prefilled packed into one row, decoding batched over a left-padded cache)
    answers exactly as one left-padded batch does, greedy and with k samples per prompt (k rows per prompt, in
    generate()'s order), and leaves the model on its own attention backend."""
    from align.models import attention as segment_attention

    model, tokenizer = tiny
    packed, padded = TransformersBackend(model, tokenizer), TransformersBackend(model, tokenizer, packed_prefill=False)
    assert packed.packed_prefill and not padded.packed_prefill  # the default on CPU for a full-attention Llama
    greedy = GenerationArgs(max_new_tokens=8, batch_size=8)
    expected = padded(PROMPTS, greedy, seed=0)
    assert packed(PROMPTS, greedy, seed=0) == expected
    assert model.config._attn_implementation == "sdpa"
    sampled = GenerationArgs(max_new_tokens=6, temperature=1.0, num_samples=3, batch_size=8)
    out = packed(PROMPTS, sampled, seed=3)
    assert [len(c) for c in out] == [3] * len(PROMPTS)
    assert out == padded(PROMPTS, sampled, seed=3)
    # negative control: prompts that attend to each other in the packed row change the answers
    monkeypatch.setattr(
        segment_attention, "segment_bounds", lambda position_ids, batch: [[(0, position_ids.shape[-1])]] * batch
    )
    monkeypatch.setattr(segment_attention, "_last_bounds", None)
    assert packed(PROMPTS, greedy, seed=0) != expected


def test_k_samples_per_prompt(tiny):
    model, tokenizer = tiny
    args = GenerationArgs(max_new_tokens=6, temperature=1.0, num_samples=3, batch_size=4, seed=1)
    out = TransformersBackend(model, tokenizer)(PROMPTS[:2], args, seed=5)
    assert [len(c) for c in out] == [3, 3]
    assert len(set(out[0])) > 1  # sampling at temperature 1 on a random model: the samples differ
    assert TransformersBackend(model, tokenizer)(PROMPTS[:2], args, seed=5) == out  # same seed, same samples


def test_resumed_sampling_equals_an_uninterrupted_run(tiny, tmp_path):
    """A run cut mid-batch and resumed writes exactly the records of a run that was never cut."""
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer)
    args = GenerationArgs(max_new_tokens=6, temperature=1.0, num_samples=2, batch_size=3, seed=7)

    def run(path, stop_after=None):
        with AppendLog(path, key=lambda r: r["i"]) as out:
            for chunk in iter_batches(backend, tokenizer, PROMPTS, args, skip=lambda i: i in out.done, progress=False):
                for i, completions in chunk:
                    out.append({"i": i, "completions": completions})
                    if stop_after is not None and len(out.done) == stop_after:
                        return

    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    run(full)
    run(cut, stop_after=4)  # stops inside the second batch
    with open(cut, "a", encoding="utf-8") as f:
        f.write('{"i": 99, "compl')  # a line the kill left half-written
    run(cut)
    read = lambda p: sorted((json.loads(line) for line in p.read_text().splitlines()), key=lambda r: r["i"])
    assert read(cut) == read(full)
    assert len(read(cut)) == len(PROMPTS)


def test_bad_generation_arguments_name_the_key():
    with pytest.raises(ConfigError, match="'backend': unknown generation backend 'tgi'"):
        GenerationArgs(backend="tgi")
    with pytest.raises(ConfigError, match="'num_samples': must be at least 1"):
        GenerationArgs(num_samples=0)
    with pytest.raises(ConfigError, match="'tensor_parallel_size': tensor parallelism is vLLM's"):
        GenerationArgs(backend="transformers", tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="'tensor_parallel_size': must be at least 1"):
        GenerationArgs(tensor_parallel_size=0)


def test_each_process_on_a_node_gets_its_own_gpus_for_its_vllm_engine():
    eight = [str(i) for i in range(8)]
    # data parallel: 8 processes, one engine per GPU
    assert [engine_gpus(r, 8, 1, eight) for r in range(8)] == [[g] for g in eight]
    # 2 processes on the node, each engine over 4 GPUs; CUDA_VISIBLE_DEVICES names are kept
    assert [engine_gpus(r, 2, 4, ["3", "5", "6", "7", "0", "1", "2", "4"]) for r in range(2)] == [
        ["3", "5", "6", "7"],
        ["0", "1", "2", "4"],
    ]
    assert engine_gpus(0, 1, 8, eight) == eight  # one process, one engine over the node
    with pytest.raises(
        ConfigError,
        match="'tensor_parallel_size': 8 process\\(es\\) on this node x "
        "tensor_parallel_size 2 needs 16 GPUs; 8 are visible",
    ):
        engine_gpus(0, 8, 2, eight)
