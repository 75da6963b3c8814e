"""README's shell commands, run as written, in README's order, from a user's project folder.

The folder holds a copy of recipes/ and the files README's commands name but do not show (my_sft.yaml, ties.yaml,
candidates.jsonl, ...); soup.yaml is README's own merge YAML block. The embedded default `smollm2-135m` is, in
this folder's cache, a tiny random Llama with SmolLM2's tokenizer: every recipe file, key, data file and command
line runs as documented, in seconds instead of minutes. A command README adds later is run here too, unless it is
listed in EXCLUDED with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, build_tiny_llama, scaled_teacher, subprocess_env, tiny_reward_model, write_jsonl

README = REPO / "README.md"

# Commands (by their opening words) the suite does not run, and why.
EXCLUDED = {
    "make demo": "the recipe below (`polyalign run recipes/demo/pipeline.yaml`) on the real 135M model, ~9 minutes on "
    "2 cores; the fresh-clone check before each release runs it",
    "make test": "the suite itself",
    "accelerate launch --config_file recipes/accelerate/multi_gpu.yaml": "GPU: 8 CUDA processes in bf16; the same "
    "scripts run below under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo)",
    "polyalign run recipes/demo/pipeline.yaml --from dpo": "the last three stages of the run above once more (two "
    "minutes even on the tiny model); `--from` itself is tested in tests/test_pipeline.py",
}


def fenced_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(line of the opening fence, body) of every ```language block."""
    blocks, body, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if body is None and line.strip() == f"```{language}":
            body, start = [], number
        elif body is not None and line.startswith("```"):
            blocks.append((start, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(README line, command) for every command of every bash block: continuations joined, comments dropped."""
    commands = []
    for start, body in fenced_blocks(text, "bash"):
        pending, first = "", 0
        for offset, line in enumerate(body.splitlines(), 1):
            code = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if not pending:
                first = start + offset
            if code.endswith("\\"):
                pending += code[:-1].strip() + " "
                continue
            command = (pending + code.strip()).strip()
            pending = ""
            if command:
                commands.append((first, command))
    return commands


def excluded(command: str) -> str | None:
    return next((why for opening, why in EXCLUDED.items() if command.startswith(opening)), None)


def test_readme_parsing_finds_every_command():
    """The parser itself, on README: every block's commands, continuations joined, nothing but commands kept."""
    commands = shell_commands(README.read_text(encoding="utf-8"))
    blocks = fenced_blocks(README.read_text(encoding="utf-8"), "bash")
    assert len(blocks) >= 10 and len(commands) >= 23
    assert all(not c.startswith("#") and "\\" not in c for _, c in commands)
    assert any(
        c.startswith(
            "accelerate launch --multi_gpu --num_processes 2 recipes/reward_model.py score --model "
            "runs/demo/reward --input candidates.jsonl"
        )
        for _, c in commands
    )
    for opening in EXCLUDED:
        assert any(c.startswith(opening) for _, c in commands), f"EXCLUDED names a command README lost: {opening}"


def user_folder(root: Path, tokenizer) -> dict:
    """A project folder as a user has it when README's commands run: recipes/, the files they name, and a cache
    whose embedded default is a tiny model."""
    shutil.copytree(REPO / "recipes", root / "recipes")
    cache = root / "cache"
    scaled_teacher(cache / "models" / "smollm2-135m", tokenizer, seed=5)
    for name, seed in (("runs/fr/sft", 1), ("runs/hi/sft", 2)):
        build_tiny_llama(root / name, tokenizer, seed=seed)
    build_tiny_llama(root / "path" / "to" / "judge-lm", tokenizer, seed=3)
    tiny_reward_model(root / "runs" / "rm", tokenizer)
    data = "recipes/demo/data"
    soup = next(
        body
        for _, body in fenced_blocks(README.read_text(encoding="utf-8"), "yaml")
        if body.startswith("merge_method: linear")
    )
    files = {
        "soup.yaml": soup,
        "ties.yaml": {
            "merge_method": "ties",
            "base_model": "smollm2-135m",
            "dtype": "float32",
            "models": [
                {"model": "runs/fr/sft", "parameters": {"weight": 0.5, "density": 0.5}},
                {"model": "runs/hi/sft", "parameters": {"weight": 0.5, "density": 0.5}},
            ],
        },
        "my_sft.yaml": {
            "model": "smollm2-135m",
            "dataset": f"{data}/sft.jsonl",
            "output_dir": "runs/my_sft",
            "max_length": 256,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "packing": True,
            "save_strategy": "no",
        },
        "my_arbitrage.yaml": {
            "prompts": f"{data}/pipeline_prompts.jsonl",
            "output_dir": "runs/my_arbitrage",
            "max_new_tokens": 8,
            "batch_size": 16,
            "seed": 0,
            "echo_pairs": True,
            "teachers": [
                {"name": "student", "model": "smollm2-135m", "languages": ["en", "es", "fr", "de"]},
                {"name": "human", "completions": f"{data}/human_answers.jsonl"},
            ],
            "ranker": {"reward_model": "runs/rm", "batch_size": 16},
        },
        "my_dpo.yaml": {
            "model": "smollm2-135m",
            "dataset": "runs/my_arbitrage/pairs.jsonl",
            "output_dir": "runs/my_dpo",
            "lora": True,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "max_length": 128,
            "save_strategy": "no",
        },
        "my_online.yaml": {
            "model": "smollm2-135m",
            "prompts": f"{data}/pipeline_prompts.jsonl",
            "output_dir": "runs/my_online",
            "iterations": 1,
            "samples": 2,
            "max_new_tokens": 8,
            "batch_size": 16,
            "lora": True,
            "ranker": {"reward_model": "runs/rm"},
            "dpo": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 128, "save_strategy": "no"},
        },
        "my_eval.yaml": {
            "models": {"base": "smollm2-135m", "dpo": "runs/my_dpo"},
            "prompts": f"{data}/prompts.jsonl",
            "output_dir": "runs/my_eval",
            "max_new_tokens": 8,
            "batch_size": 16,
            "judge": {"reward_model": "runs/rm"},
        },
        "my.yaml": {"dataset": f"{data}/sft.jsonl", "output_dir": "runs/my_curated"},
    }
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True, sort_keys=False)
        (root / name).write_text(text, encoding="utf-8")
    prompts = [json.loads(line) for line in (REPO / data / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    write_jsonl(
        root / "candidates.jsonl",
        [
            {"prompt": p["prompt"], "completion": answer, "lang": p["lang"]}
            for p in prompts[:6]
            for answer in (p["reference"], p["prompt"])
        ],
    )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**subprocess_env(cpu=True), "PATH": path, "POLYALIGN_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_every_readme_command_runs_as_written(tmp_path, tokenizer):
    commands = shell_commands(README.read_text(encoding="utf-8"))
    env = user_folder(tmp_path, tokenizer)
    ran = []
    for line, command in commands:
        if excluded(command):
            continue
        began = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        print(f"{time.monotonic() - began:6.1f} s  README.md:{line}: {command}")
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"README.md:{line}: {command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
        )
        ran.append(command)
    assert len(ran) + sum(map(bool, map(excluded, (c for _, c in commands)))) == len(commands)
    produced = [
        "runs/demo/sft/model.safetensors",
        "runs/demo/generations.jsonl",
        "runs/soup/config.json",
        "runs/ties/config.json",
        "runs/demo/reward/config.json",
        "scored.jsonl",
        "runs/demo/pipeline/eval/report.md",
        "runs/my_arbitrage/pairs.jsonl",
        "runs/my_dpo",
        "runs/my_online/iter_1",
        "runs/my_eval/metrics.json",
        "runs/demo/curated",
        "runs/my_curated",
        "runs/demo/contrast",
        "runs/my_sft",
    ]
    assert [p for p in produced if not (tmp_path / p).exists()] == []
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 12 and all(isinstance(r["score"], float) for r in scored)

    # README's Python snippets, in the same folder (after the commands above made runs/demo/reward), with the
    # names they leave to the reader bound to small real values.
    for line, snippet in fenced_blocks(README.read_text(encoding="utf-8"), "python"):
        result = subprocess.run(
            [sys.executable, "-c", SNIPPET_NAMES + snippet],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"README.md:{line}: python block\n{result.stderr[-3000:]}"


SNIPPET_NAMES = """
import json
prompts = ["Quelle est la capitale de la France ?", "Wie spät ist es?"]
completions = ours = ["La capitale de la France est Paris.", "Es ist drei Uhr."]
baseline, langs = ["Je ne sais pas.", "Keine Ahnung."], ["fr", "de"]
prompt, candidates = prompts[0], ["Paris.", "Quelle est la capitale de la France ?"]
candidate_lists = [candidates, ["Drei Uhr.", "Wie spät ist es?"]]
records = [json.loads(line) for line in open("recipes/demo/data/sft.jsonl", encoding="utf-8")]
"""
