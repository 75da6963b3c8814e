"""Bad files and a full disk, as a user meets them: one line naming the file (or the output being written), a
non-zero exit, no finished output, and what can be resumed kept."""

from __future__ import annotations

import resource
import subprocess
import sys

from conftest import REPO, subprocess_env, write_jsonl

CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"Frage {i}: Wie spät ist es?"},
            {"role": "assistant", "content": "Es ist drei Uhr."},
        ],
        "lang": "de",
    }
    for i in range(8)
]


def polyalign(argv: list[str], cwd, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def file_size_limit():  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG, as a full disk would
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "align.cli", *argv],
        cwd=cwd,
        env=subprocess_env(),
        text=True,
        capture_output=True,
        timeout=600,
        preexec_fn=file_size_limit if limit_bytes else None,
    )


def test_a_truncated_parquet_file_is_one_line(tiny_model_dir, tmp_path):
    import datasets

    datasets.Dataset.from_list(CHATS).to_parquet(tmp_path / "chats.parquet")
    whole = (tmp_path / "chats.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    result = polyalign(
        ["sft", "--model", str(tiny_model_dir), "--dataset", "cut.parquet", "--output_dir", "out", "--max_steps", "1"],
        tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "polyalign sft: error: cut.parquet: not a readable Parquet file (Parquet magic "
        "bytes not found in footer. Either the file is corrupted or this is not a "
        "parquet file.)"
    )
    assert not (tmp_path / "out").exists()


def test_a_dataset_path_that_is_a_folder_of_nothing_readable_is_one_line(tiny_model_dir, tmp_path):
    (tmp_path / "data.jsonl").mkdir()
    result = polyalign(
        ["sft", "--model", str(tiny_model_dir), "--dataset", "data.jsonl", "--output_dir", "out"], tmp_path
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("polyalign sft: error: ") and "data.jsonl" in result.stderr


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_output(tiny_model_dir, tmp_path):
    """The tiny model's weights are 12 MB: under a 2 MB file-size limit its save fails as on a full disk."""
    write_jsonl(tmp_path / "chats.jsonl", CHATS)
    result = polyalign(
        [
            "sft",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "chats.jsonl",
            "--output_dir",
            "out",
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
            "--config",
            str(REPO / "tests" / "data" / "tiny_sft.yaml"),
        ],
        tmp_path,
        limit_bytes=2 << 20,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith("polyalign sft: error: writing in .out.partial: File too large (os error 27)"), lines
    assert not (tmp_path / "out").exists()

    write_jsonl(tmp_path / "answers-prompts.jsonl", [{"prompt": "Wie spät ist es?", "id": f"q{i}"} for i in range(3)])
    result = polyalign(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            "answers-prompts.jsonl",
            "--max_new_tokens",
            "2",
            "--output",
            "answers.jsonl",
        ],
        tmp_path,
        limit_bytes=10,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("polyalign generate: error: "), result.stderr
    assert "polyalign generate: error: .answers.jsonl." in result.stderr and ": File too large (EFBIG)" in result.stderr
    assert not (tmp_path / "answers.jsonl").exists()
