"""Shared fixtures: the embedded tokenizer and a tiny random Llama that uses it (built from a config, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer and ChatML template (the embedded default; converted once into the cache)."""
    from align.models.loading import ModelArgs, load_tokenizer

    return load_tokenizer(ModelArgs())


def build_tiny_llama(directory: Path, tokenizer, *, seed: int = 0, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def scaled_teacher(directory: Path, tokenizer, seed: int, scale: float = 25) -> Path:
    """A tiny random Llama whose weights are scaled so its answers depend on the prompt (at the default init a
    random model says "\\n" to everything)."""
    import torch
    from transformers import AutoModelForCausalLM

    build_tiny_llama(directory, tokenizer, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(scale)
    model.save_pretrained(directory)
    return directory


def tiny_reward_model(directory: Path, tokenizer) -> Path:
    """A tiny random one-output sequence classifier: a reward model with arbitrary but fixed preferences."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (a server's, a rendezvous')."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(*, cpu: bool = False) -> dict:
    """The environment of a test's child process: this repo importable, one thread each (two cores, two processes).
    `cpu` hides GPUs: several processes then form a gloo CPU group, as in CI, even on a one-GPU machine."""
    import os

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    return {**env, "CUDA_VISIBLE_DEVICES": ""} if cpu else env


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# A small multilingual chat set with multi-turn dialogues and skewed lengths.
CHATS = [
    {
        "messages": [
            {"role": "user", "content": "Quelle est la capitale de la France ?"},
            {"role": "assistant", "content": "La capitale de la France est Paris."},
        ],
        "lang": "fr",
    },
    {
        "messages": [
            {"role": "system", "content": "Du bist ein knapper Assistent."},
            {"role": "user", "content": "Was ist zwei plus drei?"},
            {"role": "assistant", "content": "Zwei plus drei ist fünf."},
            {"role": "user", "content": "Und mal zwei?"},
            {"role": "assistant", "content": "Fünf mal zwei ist zehn."},
        ],
        "lang": "de",
    },
    {
        "messages": [
            {"role": "user", "content": "भारत की राजधानी क्या है?"},
            {"role": "assistant", "content": "भारत की राजधानी नई दिल्ली है।"},
        ],
        "lang": "hi",
    },
    {
        "messages": [
            {"role": "user", "content": "Explain in a few sentences why the sky is blue."},
            {
                "role": "assistant",
                "content": "Sunlight is scattered by the molecules of the air. Short, blue "
                "wavelengths scatter much more than long, red ones (Rayleigh scattering), so blue light reaches "
                "our eyes from every direction of the sky. At sunset the light crosses more air, the blue is "
                "scattered away, and the sky turns red and orange.",
            },
        ],
        "lang": "en",
    },
    {
        "messages": [
            {"role": "user", "content": "日本の首都はどこですか？"},
            {"role": "assistant", "content": "日本の首都は東京です。"},
        ],
        "lang": "ja",
    },
    {
        "messages": [
            {"role": "user", "content": "¿Cuánto es siete por ocho?"},
            {"role": "assistant", "content": "Siete por ocho es cincuenta y seis."},
            {"role": "user", "content": "¿Y menos seis?"},
            {"role": "assistant", "content": "Cincuenta y seis menos seis es cincuenta."},
        ],
        "lang": "es",
    },
]


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chats.jsonl", CHATS)
