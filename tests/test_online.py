"""Online iterative DPO on tiny models: it learns to please a reward, builds pairs right, chooses the reference, varies
β per iteration, merges, serves LoRA policies, and resumes after a kill with the records of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import scaled_teacher, subprocess_env, tiny_reward_model, write_jsonl

from align.core.errors import ConfigError
from align.stages.online import build_pairs, parse_iterate_config, run_iterate
from reward.rank import ranking_from_scores

QUESTIONS = ["Bonjour, comment vas-tu ?", "Wie spät ist es?", "¿Dónde está la estación?", "What is your name?"]
LANGS = ["fr", "de", "es", "en"]


class DirectionReward:
    """A rule-based reward a tiny model can learn to please (a verifier, in RLVR terms): the share of a completion's
    tokens whose output embedding points along a fixed random direction. It rewards a global, linear feature of the
    policy, so DPO on a few pairs moves it on held-out prompts too (a lexical feature such as capital letters did
    not: measured across seeds, its sampled reward stayed flat)."""

    def __init__(self, policy_dir, tokenizer):
        from transformers import AutoModelForCausalLM

        embeddings = AutoModelForCausalLM.from_pretrained(policy_dir).get_output_embeddings().weight.detach()
        direction = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0))
        self.good = set(((embeddings @ direction) > 0).nonzero().flatten().tolist())
        self.tokenizer = tokenizer

    def reward(self, text: str) -> float:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return sum(i in self.good for i in ids) / max(1, len(ids))

    def score(self, prompts, completions):
        return [self.reward(c) for c in completions]

    def rank_many(self, prompts, candidates):
        return [ranking_from_scores([self.reward(c) for c in group]) for group in candidates]


class DirectionJudge:
    """A judge-like ranker: it only compares candidates (like reward.judge.PairwiseJudge), it gives no reward."""

    def __init__(self, reward: DirectionReward):
        self.rank_many = reward.rank_many


def prompts_file(tmp_path: Path, n: int) -> Path:
    return write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"Question {i}: {QUESTIONS[i % 4]}", "lang": LANGS[i % 4], "id": f"q{i}"} for i in range(n)],
    )


def config(tmp_path, policy, n=24, **overrides) -> dict:
    return {
        "model": str(policy),
        "prompts": str(prompts_file(tmp_path, n)),
        "output_dir": str(tmp_path / "online"),
        "iterations": 1,
        "samples": 4,
        "temperature": 1.0,
        "max_new_tokens": 8,
        "batch_size": 8,
        "heldout_fraction": 0.25,
        "dtype": "fp32",
        "beta": 0.1,
        "dpo": {
            "learning_rate": 5e-3,
            "num_train_epochs": 2,
            "per_device_train_batch_size": 8,
            "disable_tqdm": True,
            "logging_steps": 1,
        },
        **overrides,
    }


@pytest.fixture(scope="module")
def policy(tmp_path_factory, tokenizer):
    return scaled_teacher(tmp_path_factory.mktemp("policy"), tokenizer, seed=1, scale=5)


@pytest.fixture(scope="module")
def reward(policy, tokenizer):
    return DirectionReward(policy, tokenizer)


def test_one_iteration_raises_the_heldout_reward(tmp_path, policy, reward):
    out = run_iterate(config(tmp_path, policy), ranker=reward)
    summary = json.loads((out / "metrics.json").read_text())
    first = summary["iterations"][0]
    assert first["heldout_reward_mean"] > summary["start"]["heldout_reward_mean"] + 0.15, summary
    assert first["vs_previous"]["win_rate"] > 0.5
    assert set(first["seconds"]) == {"sampling", "scoring", "training", "heldout"}
    assert first["training"]["padding_free"] == "packed (per_example)"
    assert first["training"]["real_token_fraction"] == 1.0
    held = [json.loads(line) for line in (out / "iter_1" / "heldout.jsonl").read_text().splitlines()]
    assert [h["score"] for h in held] == pytest.approx([reward.reward(h["completion"]) for h in held])
    samples = [json.loads(line) for line in (out / "iter_1" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == first["prompts"] and all(len(s["completions"]) == 4 for s in samples)
    assert {s["id"] for s in samples}.isdisjoint({h["id"] for h in held})  # held-out prompts are never trained on
    for name in ("scores.jsonl", "pairs.jsonl", "model/model.safetensors", "metrics.json"):
        assert (out / "iter_1" / name).exists(), name
    assert (out / "iterations.png").stat().st_size > 0
    assert summary["final_model"] == str(out / "iter_1" / "model")


def recorded_paths(out: Path) -> list[str]:
    """Every path the records of a finished output name (adapter configs, recipes and metrics, the nested stages'
    too): each string with a / and no space in them. None may name a .partial directory; each must exist."""

    def strings(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    paths = []
    for name in ("adapter_config.json", "polyalign_recipe.json", "metrics.json"):
        for record in out.rglob(name):
            for value in strings(json.loads(record.read_text())):
                if "/" in value and " " not in value:
                    assert ".partial" not in value and Path(value).exists(), (record, value)
                    paths.append(value)
    return paths


@pytest.mark.slow
@pytest.mark.filterwarnings("error:Could not find a config file:UserWarning")  # peft reads the base where it is now
def test_records_of_the_finished_output_name_where_things_are(tmp_path, policy, reward, monkeypatch):
    """The loop trains, merges and records inside its partial; each record is written with the paths it has once the
    output is published (relative ones too): a LoRA adapter loads on the base it names, the previous soup."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    cfg = config(
        tmp_path,
        policy,
        n=12,
        iterations=2,
        samples=2,
        max_new_tokens=4,
        lora=True,
        merge_with_previous=0.5,
        output_dir="runs/online",
        dpo={"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4, "disable_tqdm": True},
    )
    out = run_iterate(cfg, ranker=reward)
    assert out == Path("runs/online")
    paths = recorded_paths(out)
    adapter = out / "iter_2" / "model"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(out / "iter_1" / "merged")  # written as given: relative
    assert {base, str(out / "iter_2" / "merged"), str(adapter / "merged"), str(out / "iter_1" / "pairs.jsonl")} <= set(
        paths
    )
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    merged = load_file(adapter / "merged" / "model.safetensors")
    assert merged.keys() <= loaded.state_dict().keys()
    for key, tensor in merged.items():  # the adapter on the base it names is the model the loop merged
        torch.testing.assert_close(loaded.state_dict()[key], tensor)


def test_pairs_take_best_and_worst_and_respect_margin_and_ties():
    prompts = [{"prompt": [{"role": "user", "content": f"q{i}"}], "lang": "en", "id": f"q{i}"} for i in range(4)]
    samples = [
        {"index": 0, "completions": ["a", "b", "c"]},  # clear best c, worst a
        {"index": 1, "completions": ["x", "y", "z"]},  # all tied: no pair
        {"index": 2, "completions": ["same", "same "]},  # different scores, same text: no pair
        {"index": 3, "completions": ["lo", "hi"]},
    ]  # margin 0.5: kept only under a margin <= 0.5
    scores = {0: [0.1, 0.5, 2.0], 1: [1.0, 1.0, 1.0], 2: [0.0, 3.0], 3: [0.0, 0.5]}
    pairs = build_pairs(prompts, samples, scores, min_margin=0.0)
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("q0", "c", "a"),
        ("q3", "hi", "lo"),
    ]
    assert [p["id"] for p in build_pairs(prompts, samples, scores, min_margin=1.0)] == ["q0"]


def test_config_checks(tmp_path, policy):
    with pytest.raises(ConfigError, match="'beta': expected a positive number or a list of 3"):
        parse_iterate_config(config(tmp_path, policy, iterations=3, beta=[0.1, 0.2]), ranker_given=True)
    with pytest.raises(ConfigError, match="'reference': expected start or previous"):
        parse_iterate_config(config(tmp_path, policy, reference="sft"), ranker_given=True)
    with pytest.raises(ConfigError, match="'samples': need at least 1 iteration and 2 samples"):
        parse_iterate_config(config(tmp_path, policy, samples=1), ranker_given=True)
    with pytest.raises(ConfigError, match="'ranker': give exactly one"):
        parse_iterate_config(config(tmp_path, policy))
    with pytest.raises(ConfigError, match="'cluster_weights.asia': no cluster 'asia'"):
        parse_iterate_config(
            config(tmp_path, policy, clusters={"europe": ["de"]}, cluster_weights={"asia": 1}), ranker_given=True
        )
    with pytest.raises(ConfigError, match="'clusters': expected a mapping of cluster name to a list"):
        parse_iterate_config(config(tmp_path, policy, clusters={"europe": "de"}), ranker_given=True)
    with pytest.raises(ConfigError, match="'dpo.beta': set by the loop itself"):
        parse_iterate_config(config(tmp_path, policy, dpo={"beta": 0.3}), ranker_given=True)


@pytest.mark.slow
def test_lora_iterations_with_start_reference_per_iteration_beta_and_merging(tmp_path, policy, reward):
    cfg = config(
        tmp_path,
        policy,
        n=12,
        iterations=2,
        samples=2,
        max_new_tokens=4,
        beta=[0.1, 0.3],
        lora=True,
        reference="start",
        merge_with_previous=0.5,
        dpo={"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4, "disable_tqdm": True},
    )
    out = run_iterate(cfg, ranker=DirectionJudge(reward))
    first, second = (json.loads((out / f"iter_{i}" / "model" / "metrics.json").read_text()) for i in (1, 2))
    for i in (1, 2):  # a judge gives no held-out reward, but compares each iteration with the one before
        metrics = json.loads((out / f"iter_{i}" / "metrics.json").read_text())
        assert metrics["heldout_reward_mean"] is None
        held = (out / f"iter_{i}" / "heldout.jsonl").read_text().splitlines()
        assert sum(metrics["vs_previous"][k] for k in ("win", "loss", "tie")) == len(held) > 0
    assert first["reference"] == "policy with adapters disabled"  # iteration 1: the start is the adapter-free base
    assert second["reference"] == f"model {policy}"  # later iterations: the starting model, named explicitly
    assert (first["beta"], second["beta"]) == (0.1, 0.3)
    for i in (1, 2):
        assert (out / f"iter_{i}" / "model" / "adapter_model.safetensors").exists()
        assert (out / f"iter_{i}" / "merged" / "model.safetensors").exists()  # soup with the previous policy
    recipe = json.loads((out / "iter_2" / "model" / "polyalign_recipe.json").read_text())
    assert recipe["config"]["model"] == str(out / "iter_1" / "merged")  # iteration 2 starts from iteration 1's soup
    assert json.loads((out / "metrics.json").read_text())["final_model"] == str(out / "iter_2" / "merged")


def test_per_cluster_iterations_merge_the_cluster_models_and_sample_from_the_merge(tmp_path, policy, reward):
    from collections import Counter

    from safetensors.torch import load_file

    clusters = {"romance": ["fr", "es"], "other": ["de", "en"]}
    cfg = config(
        tmp_path,
        policy,
        n=16,
        iterations=2,
        samples=2,
        max_new_tokens=4,
        clusters=clusters,
        cluster_weights={"romance": 3, "other": 1},
        dpo={"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4, "disable_tqdm": True},
    )
    out = run_iterate(cfg, ranker=reward)
    for i in (1, 2):
        directory = out / f"iter_{i}"
        pairs = Counter(json.loads(line)["lang"] for line in (directory / "pairs.jsonl").read_text().splitlines())
        for name, languages in clusters.items():  # each cluster trained on its own languages' pairs, from the policy
            trained = json.loads((directory / "clusters" / name / "metrics.json").read_text())
            assert trained["pairs_per_language"] == {lang: pairs[lang] for lang in languages if pairs[lang]}
            recipe = json.loads((directory / "clusters" / name / "polyalign_recipe.json").read_text())
            assert recipe["config"]["model"] == (str(policy) if i == 1 else str(out / "iter_1" / "model"))
        parts = {name: load_file(directory / "clusters" / name / "model.safetensors") for name in clusters}
        soup = load_file(directory / "model" / "model.safetensors")
        key = next(k for k in soup if "q_proj" in k)
        torch.testing.assert_close(soup[key], 0.75 * parts["romance"][key] + 0.25 * parts["other"][key])
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["training"]["weights"] == {"romance": 3.0, "other": 1.0}
        assert metrics["policy"] == str(directory / "model")
    samples = json.loads((out / "iter_2" / "samples.jsonl").read_text().splitlines()[0])
    assert json.loads((out / "metrics.json").read_text())["final_model"] == str(out / "iter_2" / "model")
    assert samples["completions"]  # iteration 2 sampled from iteration 1's soup (its cluster models start there)
    assert str(out / "iter_1" / "clusters" / "romance") in recorded_paths(out)  # the soup's recipe names its parts


@pytest.mark.slow
def test_killed_run_resumes_with_the_records_of_an_uninterrupted_run(tmp_path, policy, tokenizer):
    rm = tiny_reward_model(tmp_path / "rm", tokenizer)
    cfg = config(
        tmp_path,
        policy,
        n=24,
        samples=2,
        batch_size=2,
        ranker={"reward_model": str(rm)},
        dpo={"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4, "disable_tqdm": True},
    )
    run_iterate({**cfg, "output_dir": str(tmp_path / "whole" / "online")})
    path = tmp_path / "cut" / "iterate.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "cut" / "online")}))
    command = [sys.executable, "-m", "align.cli", "iterate", "--config", str(path)]

    samples = tmp_path / "cut" / ".online.partial" / "iter_1" / "samples.jsonl"  # the stage works in its partial
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 5 <= len(samples.read_text().splitlines()) < 18  # killed while sampling iteration 1
    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "heldout.jsonl"):
        lines = lambda run: sorted((tmp_path / run / "online" / "iter_1" / name).read_text().splitlines())
        assert lines("cut") == lines("whole"), name


@pytest.mark.slow
def test_two_processes_sample_and_score_as_one_and_train_together(tmp_path, policy, tokenizer):
    """Under accelerate launch the processes share the sampling and the scoring (their records are those of one
    process) and train the DPO step together, LoRA or full; the output has the shape of a one-process run. The first
    iteration samples from the starting model, so one single-process run is the reference for both."""
    rm = tiny_reward_model(tmp_path / "rm", tokenizer)
    cfg = config(
        tmp_path,
        policy,
        n=16,
        samples=2,
        batch_size=2,
        max_new_tokens=6,
        ranker={"reward_model": str(rm)},
        dpo={"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 2, "disable_tqdm": True},
    )
    one = run_iterate({**cfg, "output_dir": str(tmp_path / "one")})
    for lora in (True, False):
        out = tmp_path / f"two_lora_{lora}"
        path = tmp_path / f"two_lora_{lora}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "lora": lora, "output_dir": str(out)}))
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "align.cli",
            "iterate",
            "--config",
            str(path),
        ]
        result = subprocess.run(command, env=subprocess_env(cpu=True), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        for name in ("samples.jsonl", "scores.jsonl", "pairs.jsonl"):
            assert sorted((out / "iter_1" / name).read_text().splitlines()) == sorted(
                (one / "iter_1" / name).read_text().splitlines()
            ), (lora, name)
        assert not list((out / "iter_1").glob("*.rank*.jsonl"))  # the processes' logs joined into one
        trained = json.loads((out / "iter_1" / "model" / "metrics.json").read_text())
        assert trained["processes"] == 2 and trained["steps"] == 2 and trained["engine"] == "DDP"
        metrics = json.loads((out / "metrics.json").read_text())
        model = out / "iter_1" / "model"
        assert metrics["final_model"] == str(model / "merged" if lora else model), lora
        assert (out / "iter_0" / "heldout.jsonl").read_text() == (one / "iter_0" / "heldout.jsonl").read_text()


def test_an_echo_is_never_chosen_and_echo_pairs_reject_the_prompt_itself():
    prompts = [
        {"prompt": [{"role": "user", "content": q}], "lang": "de", "id": f"q{i}"}
        for i, q in enumerate(["Wie viele Beine hat eine Spinne?", "Was ist die Hauptstadt von Italien?"])
    ]
    samples = [
        {"index": 0, "completions": ["Wie viele Beine hat eine Spinne?", "Acht.", "Sechs Beine."]},
        {"index": 1, "completions": ["Was ist die Hauptstadt von Italien?", "Was ist die Hauptstadt?"]},
    ]
    scores = {0: [9.0, 1.0, 0.5], 1: [2.0, 1.0]}  # the ranker scores the echo highest, as PMI does
    pairs = build_pairs(prompts, samples, scores, min_margin=0.0)
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("q0", "Acht.", "Wie viele Beine hat eine Spinne?")
    ]  # q1: every sample an echo, no pair
    with_echo = build_pairs(prompts, samples, scores, min_margin=0.0, echo_pairs=True)
    # q0's own pair already rejects the prompt's text: no duplicate; a best sample with another worst gets both
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in with_echo] == [
        ("Acht.", "Wie viele Beine hat eine Spinne?")
    ]
    samples[0]["completions"] = ["Acht.", "Sechs Beine."]
    scores[0] = [1.0, 0.5]
    assert [
        (p["chosen"][0]["content"], p["rejected"][0]["content"], p.get("rejected_by"))
        for p in build_pairs(prompts, samples, scores, min_margin=0.0, echo_pairs=True)
    ] == [("Acht.", "Wie viele Beine hat eine Spinne?", "echo"), ("Acht.", "Sechs Beine.", None)]
