"""Padding-free preference training: a batch's chosen and rejected sequences packed into one row give trl's padded
results (log-probs, loss, gradients; reward scores), and a leak across sequences would be caught."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_reward_model, write_jsonl

from align.cli import main
from align.models import attention as segment_attention
from align.stages.dpo import build_dpo_trainer, parse_dpo_config
from reward.train import RewardStage, parse_reward_config

# Length-skewed multilingual pairs: long Hindi and Japanese answers beside one-word ones.
PAIRS = [
    ("Quelle est la capitale de la France ?", "La capitale de la France est Paris.", "Paris.", "fr"),
    (
        "भारत की राजधानी क्या है? कृपया विस्तार से बताइए।",
        "भारत की राजधानी नई दिल्ली है। यह देश का राजनीतिक केंद्र है और यहाँ संसद भवन स्थित है।",
        "Delhi.",
        "hi",
    ),
    (
        "日本の首都はどこですか？",
        "日本の首都は東京です。東京は世界でも有数の大都市で、人口は約千四百万人です。",
        "東京。",
        "ja",
    ),
    ("Was ist zwei plus drei?", "Fünf.", "Zwei plus drei ergibt sechs, wenn man sich verrechnet.", "de"),
]


def messages(prompt, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


RECORDS = [messages(p, c, r) for p, c, r, _ in PAIRS]


def dpo_trainer(model_dir, tmp_path, padding_free, **overrides):
    torch.manual_seed(0)  # the same LoRA initialisation on both paths
    raw = {
        "model": str(model_dir),
        "dataset": "unused",
        "output_dir": str(tmp_path / f"o-{padding_free}"),
        "dtype": "fp32",
        "max_steps": 1,
        "padding_free": padding_free,
        **overrides,
    }
    trainer, _, layout = build_dpo_trainer(parse_dpo_config(raw), RECORDS)
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(RECORDS))])
    return trainer, batch, layout


def step(trainer, batch):
    """Per-sequence log-probs (chosen, rejected), the DPO loss, and its gradients."""
    logps = trainer.compute_ref_log_probs(trainer.model, batch)
    loss = trainer._compute_loss(trainer.model, batch, False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return logps, loss.detach(), grads


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"loss_type": ["ipo"]},
        {"lora": True},
        {"precompute_ref_log_probs": True},
        {"loss_type": ["sigmoid", "bco_pair"], "loss_weights": [1.0, 0.5]},
    ],
    ids=["sigmoid-live-ref", "ipo", "lora-ref", "precomputed-ref", "weighted-losses"],
)
def test_packed_dpo_equals_trls_padded_path(tiny_model_dir, tmp_path, overrides):
    padded, batch, layout = dpo_trainer(tiny_model_dir, tmp_path, False, **overrides)
    assert layout.startswith("padded")
    packed, packed_batch, layout = dpo_trainer(tiny_model_dir, tmp_path, True, **overrides)
    assert layout == "packed (per_example)"
    lengths = batch["attention_mask"].sum(1)
    assert lengths.max() > 2 * lengths.min()  # skewed: the padded batch is mostly padding in its short rows
    (logps, loss, grads), (packed_logps, packed_loss, packed_grads) = step(padded, batch), step(packed, packed_batch)
    for a, b in zip(logps, packed_logps):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == packed_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_training_step_with_gradient_accumulation_moves_the_weights_as_trls_padded_path(tiny_model_dir, tmp_path):
    """trl's own loop (Trainer.train): two micro-batches of two pairs accumulated into one SGD step (the update is the
    gradient itself, so any difference in it shows)."""
    moved = {}
    for padding_free in (False, True):
        trainer, _, _ = dpo_trainer(
            tiny_model_dir,
            tmp_path,
            padding_free,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            gradient_accumulation_steps=2,
            per_device_train_batch_size=2,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        moved[padding_free] = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
        assert trainer.state.global_step == 1 and trainer.tokens.real > 0
    assert any(d.abs().max() > 1e-4 for d in moved[False].values())
    for name, delta in moved[False].items():
        torch.testing.assert_close(moved[True][name], delta, atol=1e-5, rtol=1e-4, msg=name)


def test_a_leak_across_packed_sequences_would_be_caught(tiny_model_dir, tmp_path, monkeypatch):
    """Negative control: the same packed row with every sequence allowed to see the ones before it (positions still
    restarting) moves the log-probs far outside the tolerance above."""
    padded, batch, _ = dpo_trainer(tiny_model_dir, tmp_path, False)
    packed, packed_batch, _ = dpo_trainer(tiny_model_dir, tmp_path, True)
    expected = torch.cat(padded.compute_ref_log_probs(padded.model, batch))
    torch.testing.assert_close(
        torch.cat(packed.compute_ref_log_probs(packed.model, packed_batch)), expected, atol=1e-5, rtol=1e-5
    )
    monkeypatch.setattr(
        segment_attention, "segment_bounds", lambda position_ids, batch: [[(0, position_ids.shape[-1])]] * batch
    )
    leaky = torch.cat(packed.compute_ref_log_probs(packed.model, packed_batch))
    assert (leaky - expected)[1:].abs().min() > 1e-3  # every sequence after the first sees another one


def test_padding_free_true_on_a_model_that_cannot_pack_names_the_key(tiny_model_dir, tmp_path, tokenizer, capsys):
    """LFM2 alternates convolutions with attention: a convolution would mix packed sequences, so packing is refused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "lfm2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        layer_types=["conv", "full_attention"],
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "lfm2")
    tokenizer.save_pretrained(tmp_path / "lfm2")
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r, "lang": lang} for p, c, r, lang in PAIRS]
    )
    assert (
        main(
            [
                "dpo",
                "--model",
                str(tmp_path / "lfm2"),
                "--dataset",
                str(pairs),
                "--output_dir",
                str(tmp_path / "o"),
                "--padding_free",
                "true",
            ]
        )
        != 0
    )
    err = capsys.readouterr().err
    assert "padding_free" in err and "lfm2" in err
    assert not (tmp_path / "o").exists()
    assert (
        main(
            [
                "dpo",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(pairs),
                "--output_dir",
                str(tmp_path / "o"),
                "--padding_free",
                "sometimes",
            ]
        )
        != 0
    )
    assert "padding_free" in capsys.readouterr().err


def test_dpo_metrics_report_the_real_token_fraction_of_either_layout(tiny_model_dir, tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r, "lang": lang} for p, c, r, lang in PAIRS]
    )
    fractions = {}
    for padding_free in ("false", "auto"):
        out = tmp_path / f"dpo-{padding_free}"
        assert (
            main(
                [
                    "dpo",
                    "--model",
                    str(tiny_model_dir),
                    "--dataset",
                    str(pairs),
                    "--output_dir",
                    str(out),
                    "--max_steps",
                    "2",
                    "--per_device_train_batch_size",
                    "4",
                    "--disable_tqdm",
                    "true",
                    "--dtype",
                    "fp32",
                    "--padding_free",
                    padding_free,
                ]
            )
            == 0
        )
        metrics = json.loads((out / "metrics.json").read_text())
        fractions[padding_free] = metrics["real_token_fraction"]
        assert metrics["padding_free"] == (
            "packed (per_example)" if padding_free == "auto" else "padded (padding_free: false)"
        )
    assert fractions["auto"] == 1.0 and 0.3 < fractions["false"] < 0.9, fractions


@pytest.fixture(scope="module")
def reward_setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("packed-reward")
    model = tiny_reward_model(root / "model", tokenizer)
    data = write_jsonl(
        root / "pairs.jsonl",
        [
            {"prompt": p, "chosen": c, "rejected": r, "lang": lang, "id": str(i)}
            for i, (p, c, r, lang) in enumerate(PAIRS)
        ],
    )
    return model, data, root


def reward_trainer(reward_setup, padding_free):
    model, data, root = reward_setup
    torch.manual_seed(0)
    stage = RewardStage(
        parse_reward_config(
            {
                "model": str(model),
                "dataset": str(data),
                "eval_fraction": 0,
                "output_dir": str(root / f"o-{padding_free}"),
                "dtype": "fp32",
                "padding_free": padding_free,
            }
        )
    )
    stage.load()
    trainer = stage.build()
    trainer.model.train()
    return trainer, stage.layout, trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])


def test_packed_reward_scores_and_loss_equal_the_padded_ones(reward_setup):
    (padded, padded_layout, batch), (packed, layout, _) = (
        reward_trainer(reward_setup, False),
        reward_trainer(reward_setup, True),
    )
    assert padded_layout.startswith("padded") and layout == "packed (per_example)"
    results = []
    for trainer in (padded, packed):
        scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append(
            (
                scores.detach(),
                loss.detach(),
                {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None},
            )
        )
    (scores, loss, grads), (packed_scores, packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_scores, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert packed.tokens.real == padded.tokens.real == int(batch["attention_mask"].sum())
    assert packed.tokens.fed == packed.tokens.real < padded.tokens.fed == batch["attention_mask"].numel()


def test_short_packed_dpo_on_the_embedded_model_raises_every_margin_as_the_padded_run_does(tmp_path, tokenizer):
    from test_dpo import sequence_logp
    from transformers import AutoModelForCausalLM

    from align.models.embedded import resolve_model

    def margins(model):
        return [sequence_logp(model, tokenizer, p, c) - sequence_logp(model, tokenizer, p, r) for p, c, r, _ in PAIRS]

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r, "lang": lang} for p, c, r, lang in PAIRS]
    )
    before = margins(AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m")))
    after = {}
    for padding_free in ("false", "auto"):
        out = tmp_path / f"dpo-{padding_free}"
        assert (
            main(
                [
                    "dpo",
                    "--dataset",
                    str(pairs),
                    "--output_dir",
                    str(out),
                    "--max_steps",
                    "2",
                    "--learning_rate",
                    "4e-5",
                    "--per_device_train_batch_size",
                    "4",
                    "--precompute_ref_log_probs",
                    "true",
                    "--disable_tqdm",
                    "true",
                    "--dtype",
                    "fp32",
                    "--padding_free",
                    padding_free,
                ]
            )
            == 0
        )
        after[padding_free] = margins(AutoModelForCausalLM.from_pretrained(out))
    for run in after.values():
        assert all(a > b + 0.5 for a, b in zip(run, before)), (before, after)
    # The same training on both layouts: margins agree far inside the distance they moved.
    assert all(abs(p - q) < 0.1 * abs(p - b) for p, q, b in zip(after["auto"], after["false"], before)), after
