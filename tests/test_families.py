"""The family matrix: every family users bring (tests/families.py), through every stage, on tiny random checkpoints
built from each family's own config. bench/family_matrix.py runs this file and writes README's "Model families"
table and the per-family timings in BENCHMARKS.md from its outcomes.

Each stage test is one column of that table: packed SFT exact against each example alone, LoRA on the family's
default targets, padding-free DPO exact against trl's padded path, a reward model trained and ranking, batched greedy
generation equal to one prompt at a time, a linear soup that loads in transformers, one online iteration."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_jsonl
from families import FAMILIES, WINDOW, build_family
from test_packing import make_trainer, per_token_losses, split_packed
from test_padding_free import dpo_trainer, step

from align.models.chat import IGNORE_INDEX
from align.models.loading import LoraArgs, ModelArgs, linear_module_names, load_model, lora_config

SLIDING = [f for f, keys in FAMILIES.items() if keys.get("sliding_window")]
QUESTIONS = [
    ("Quelle est la capitale de la France ?", "fr"),
    ("Wie spät ist es jetzt in Berlin?", "de"),
    ("भारत की राजधानी क्या है?", "hi"),
    ("What is the tallest mountain on Earth?", "en"),
    ("日本の首都はどこですか？", "ja"),
    ("¿Dónde está la estación de tren?", "es"),
]


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, tokenizer):
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = build_family(family, tmp_path_factory.mktemp(family), tokenizer)
        return built[family]

    return get


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """What a family's earlier stage test wrote (its SFT model, its reward model), for the stages that consume it."""
    return {}


def trained_sft(family, family_dir, outputs, tmp_path_factory, chat_records):
    from align.stages.sft import run_sft

    if (family, "sft") not in outputs:
        root = tmp_path_factory.mktemp(f"{family}-sft")
        data = write_jsonl(root / "chats.jsonl", chat_records)
        outputs[family, "sft"] = run_sft(
            {
                "model": str(family_dir(family)),
                "dataset": str(data),
                "output_dir": str(root / "sft"),
                "max_steps": 1,
                "max_length": 128,
                "per_device_train_batch_size": 8,
                "save_strategy": "no",
                "dtype": "fp32",
                "report_to": "none",
                "disable_tqdm": True,
            }
        )
    return outputs[family, "sft"]


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_sft_equals_each_example_alone(family, family_dir, chat_file, tmp_path):
    """All examples in one flattened row at learning rate 0: the loss is each example's own, run alone through the
    family's own attention (its sliding window and soft-capping applied by transformers)."""
    trainer, stats = make_trainer(
        family_dir(family),
        chat_file,
        tmp_path,
        "auto",
        max_length=512,
        per_device_train_batch_size=8,
        learning_rate=0.0,
        router_aux_loss_coef=0.0,
    )
    assert stats["packed_attention"] == "segments", stats
    batch = next(iter(trainer.get_train_dataloader()))
    examples = split_packed(batch, trainer.processing_class.pad_token_id)
    assert len(examples) == 6 and batch["input_ids"].shape[0] == 1
    if family in SLIDING:
        assert max(len(ids) for _, _, ids, _ in examples) > 4 * WINDOW
    model = trainer.model.eval()
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch)).item()
        alone = load_model(ModelArgs(model=str(family_dir(family)), dtype="fp32")).eval()
        total, count = 0.0, 0
        for _, _, input_ids, labels in examples:
            losses = per_token_losses(alone, input_ids, labels)
            mask = labels[1:] != IGNORE_INDEX
            total += losses[mask].sum().item()
            count += int(mask.sum())
    assert packed == pytest.approx(total / count, abs=1e-4)


def test_negative_control_a_window_ignored_is_detected(family_dir, chat_file, tmp_path, monkeypatch):
    """Drop the sliding window in the packed attention and the loss moves: the equality above sees the window."""
    from align.models import attention as segment_attention

    trainer, _ = make_trainer(
        family_dir("gemma3_text"), chat_file, tmp_path, "auto", max_length=512, per_device_train_batch_size=8
    )
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        windowed = trainer.compute_loss(model, dict(batch)).item()
        one_example = segment_attention._one_example
        monkeypatch.setattr(segment_attention, "_one_example", lambda *args: one_example(*args[:-2], None, args[-1]))
        unwindowed = trainer.compute_loss(model, dict(batch)).item()
    assert abs(windowed - unwindowed) > 1e-3


def test_moe_router_loss_is_the_same_packed_and_padded(family_dir, chat_file, tmp_path):
    """Qwen3-MoE with trl's load-balancing loss on (the default): one packed row and trl's padded batch give the same
    loss. The router's statistics see real tokens only on both paths: the flattened row has no padding, and the
    padded batch passes its attention mask to transformers' load_balancing_loss_func."""
    losses = {}
    for packing in (True, False):
        trainer, _ = make_trainer(
            family_dir("qwen3_moe"),
            chat_file,
            tmp_path,
            "auto",
            max_length=512,
            per_device_train_batch_size=8,
            packing=packing,
            padding_free=packing,
        )
        assert trainer.aux_loss_enabled
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("attention_mask" in batch) != packing
        with torch.no_grad():
            losses[packing] = trainer.compute_loss(trainer.model.eval(), dict(batch)).item()
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_the_family_default(family, family_dir):
    from peft import get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model = load_model(ModelArgs(model=str(family_dir(family)), dtype="fp32"))
    config = lora_config(LoraArgs(), model)
    expected = PEFT_DEFAULTS.get(family) or linear_module_names(model)
    assert set(config.target_modules) == set(expected)
    peft_model = get_peft_model(model, config)
    adapted = {name.rsplit(".", 1)[-1] for name in peft_model.targeted_module_names}
    assert adapted == set(expected)
    if family == "phi3":
        assert "qkv_proj" in adapted  # the fused projection: no q_proj, k_proj, v_proj in Phi-3


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_free_dpo_equals_trls_padded_path(family, family_dir, tmp_path):
    padded, batch, layout = dpo_trainer(family_dir(family), tmp_path, False, lora=True)
    packed, packed_batch, packed_layout = dpo_trainer(family_dir(family), tmp_path, "auto", lora=True)
    assert layout.startswith("padded") and packed_layout == "packed (per_example)"
    (logps, loss, grads), (packed_logps, packed_loss, packed_grads) = step(padded, batch), step(packed, packed_batch)
    for a, b in zip(logps, packed_logps):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-4)
    assert grads.keys() == packed_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_trains_and_ranks(family, family_dir, outputs, tmp_path_factory):
    from test_padding_free import RECORDS

    from reward import load_ranker
    from reward.train import run_reward

    root = tmp_path_factory.mktemp(f"{family}-rm")
    data = write_jsonl(root / "pairs.jsonl", RECORDS * 2)
    out = run_reward(
        {
            "model": str(family_dir(family)),
            "dataset": str(data),
            "output_dir": str(root / "rm"),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "max_length": 128,
            "save_strategy": "no",
            "dtype": "fp32",
            "report_to": "none",
            "disable_tqdm": True,
        }
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"][0].endswith("ForSequenceClassification")
    ranker = load_ranker({"reward_model": str(out), "echo_penalty": 0}, ModelArgs(dtype="fp32"))
    answers = ["La capitale de la France est Paris.", "Berlin.", "Je ne sais pas du tout, désolé."]
    scores = ranker.score(["Quelle est la capitale de la France ?"] * 3, answers)
    assert all(torch.isfinite(torch.tensor(scores))) and len(set(scores)) == 3
    ranking = ranker.rank("Quelle est la capitale de la France ?", answers)
    assert ranking.scores == pytest.approx(scores, abs=1e-4)
    outputs[family, "reward"] = out


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_generation_equals_one_prompt_at_a_time(family, family_dir):
    from align.generation.generate import GenerationArgs, load_backend

    backend, _ = load_backend(ModelArgs(model=str(family_dir(family)), dtype="fp32"), "transformers")
    prompts = [[{"role": "user", "content": q}] for q, _ in QUESTIONS]
    args = GenerationArgs(max_new_tokens=12, batch_size=len(prompts))
    together = backend(prompts, args, seed=0)
    alone = [backend([p], args, seed=0)[0] for p in prompts]
    assert together == alone
    assert len({t[0] for t in together}) > 1, together  # the answers depend on the prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_soup_of_sft_and_base_loads_in_transformers(family, family_dir, outputs, tmp_path_factory, tmp_path):
    from conftest import CHATS
    from transformers import AutoModelForCausalLM

    from merge.api import soup

    sft = trained_sft(family, family_dir, outputs, tmp_path_factory, CHATS)
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics.get("packed_attention", metrics.get("packing", {}).get("packed_attention")) in (None, "segments")
    merged = soup([(str(sft), 0.5), (str(family_dir(family)), 0.5)], tmp_path / "soup", progress=False)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    a = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(family_dir(family), dtype=torch.float32).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_online_iteration(family, family_dir, outputs, tmp_path):
    from align.stages.online import run_iterate

    if (family, "reward") not in outputs:
        pytest.skip("needs this family's reward model (test_reward_model_trains_and_ranks)")
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": q, "lang": lang, "id": f"q{i}"} for i, (q, lang) in enumerate(QUESTIONS * 2)],
    )
    out = run_iterate(
        {
            "model": str(family_dir(family)),
            "prompts": str(prompts),
            "output_dir": str(tmp_path / "online"),
            "iterations": 1,
            "samples": 2,
            "temperature": 1.0,
            "max_new_tokens": 8,
            "batch_size": 8,
            "heldout_fraction": 0.25,
            "dtype": "fp32",
            "lora": True,
            "ranker": {"reward_model": str(outputs[family, "reward"])},
            "dpo": {"max_steps": 1, "per_device_train_batch_size": 4, "disable_tqdm": True},
        }
    )
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["iterations"][0]["pairs"] > 0
    assert summary["iterations"][0]["training"]["padding_free"] == "packed (per_example)"
    assert (out / "iter_1" / "model" / "adapter_model.safetensors").exists()


def test_readme_table_is_the_matrix():
    """README's table lists every family and stage of this file, each ✓: the run that passes here is the one
    bench/family_matrix.py writes, so a README that claims more (or less) than the matrix fails."""
    from conftest import REPO
    from families import README_END, README_START, STAGES

    block = (REPO / "README.md").read_text(encoding="utf-8").split(README_START, 1)[1].split(README_END, 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
    assert rows[0] == ["family", *STAGES.values()]
    assert [row[0] for row in rows[2:]] == list(FAMILIES)
    assert all(cell == "✓" for row in rows[2:] for cell in row[1:]), rows
