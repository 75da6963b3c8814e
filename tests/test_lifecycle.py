"""The one stage lifecycle (align.core.lifecycle.StageRun) and where config errors say a value came from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.core.errors import ConfigError, PolyalignError
from align.core.io import partial_dir
from align.core.lifecycle import HASH_MARKER, OWNER_MARKER, StageRun, published


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        StageRun(tmp_path / "out", {}, stage="x", overwrite=False)
    run = StageRun(tmp_path / "out", {}, stage="x", overwrite=True)
    run.prepare()
    (run.partial / "result.txt").write_text("new")
    run.finish({"n": 1})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metrics.json",
        "polyalign_recipe.json",
        "result.txt",
    ]


def test_same_config_resumes_and_a_changed_one_starts_over(tmp_path):
    raw = {"a": 1, "overwrite": False}
    first = StageRun(tmp_path / "out", raw, stage="x", overwrite=False)
    assert first.prepare() is False
    (first.partial / "log.jsonl").write_text("kept\n")
    again = StageRun(tmp_path / "out", {**raw, "overwrite": True}, stage="x", overwrite=True)  # overwrite: same hash
    assert again.prepare() is True and (again.partial / "log.jsonl").exists()
    changed = StageRun(tmp_path / "out", {"a": 2}, stage="x", overwrite=False)
    assert changed.prepare() is False and not (changed.partial / "log.jsonl").exists()
    fresh = StageRun(tmp_path / "out", {"a": 2}, stage="x", overwrite=False, resumable=False)
    (fresh.partial / "log.jsonl").write_text("stale\n")
    assert fresh.prepare() is False and not (fresh.partial / "log.jsonl").exists()


def test_a_partial_a_live_process_builds_is_refused(tmp_path):
    run = StageRun(tmp_path / "out", {}, stage="x", overwrite=False)
    run.prepare()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = (run.partial / OWNER_MARKER).read_text().rsplit(":", 1)[0]
        (run.partial / OWNER_MARKER).write_text(f"{owner}:{other.pid}")
        with pytest.raises(PolyalignError, match=f"another run is building .* \\(pid {other.pid}\\)"):
            StageRun(tmp_path / "out", {}, stage="x", overwrite=False).prepare()
    finally:
        other.kill()
        other.wait()
    assert StageRun(tmp_path / "out", {}, stage="x", overwrite=False).prepare() is True  # a dead owner: resume


def test_finish_drops_work_files_and_writes_records_with_published_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outer = StageRun(Path("runs") / "out", {"k": "v"}, stage="x", overwrite=False)  # relative, as a user gives it
    outer.prepare()
    (outer.partial / "generations.0.jsonl").write_text("{}\n")
    base = str(outer.partial / "iter_0")
    inner = StageRun(outer.partial / "iter_1" / "model", {"model": base}, stage="y", overwrite=False)  # nested
    inner.prepare()
    # innermost first, through every enclosing partial; a path keeps its type and form (as given, or resolved)
    assert published(inner.partial / "adapter") == Path("runs/out/iter_1/model/adapter")
    assert published(str(inner.partial.resolve() / "a")) == str(tmp_path.resolve() / "runs/out/iter_1/model/a")
    assert published({"p": [base, "runs/.out.partial2/x", "runs/out", 3]}) == {
        "p": ["runs/out/iter_0", "runs/.out.partial2/x", "runs/out", 3]
    }
    inner.finish({"checkpoint": str(inner.partial / "checkpoint-2")})
    final = outer.finish({"policy": str(outer.partial / "iter_1" / "model")}, drop=("generations.*.jsonl",))
    assert final == Path("runs/out") and not partial_dir(final).exists()
    assert not any((final / name).exists() for name in ("generations.0.jsonl", HASH_MARKER, OWNER_MARKER))
    assert json.loads((final / "metrics.json").read_text()) == {"policy": "runs/out/iter_1/model"}
    assert json.loads((final / "polyalign_recipe.json").read_text())["stage"] == "x"
    nested = final / "iter_1" / "model"
    assert json.loads((nested / "metrics.json").read_text()) == {"checkpoint": "runs/out/iter_1/model/checkpoint-2"}
    assert json.loads((nested / "polyalign_recipe.json").read_text())["config"] == {"model": "runs/out/iter_0"}
    assert published(base) == base  # finished runs map nothing


def test_published_maps_a_partial_reached_through_a_link_and_its_resolved_form(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    run = StageRun(tmp_path / "link" / "out", {}, stage="x", overwrite=False)
    run.prepare()
    assert published(str(tmp_path / "link" / ".out.partial" / "a")) == str(tmp_path / "link" / "out" / "a")
    real = tmp_path.resolve() / "real"
    assert published(str(real / ".out.partial" / "a")) == str(real / "out" / "a")
    run.finish(None)


def test_errors_name_the_file_or_the_command_line(tmp_path, capsys):
    path = tmp_path / "arbitrage.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "prompts": "p.jsonl",
                "output_dir": str(tmp_path / "out"),
                "temperature": -1,
                "teachers": [{"name": "a", "model": "m"}],
                "ranker": {"judge": "m"},
            }
        )
    )
    assert main(["arbitrage", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{path}: 'temperature': temperature must be >= 0 and top_p in (0, 1]")
    assert main(["arbitrage", "--config", str(path), "--temperature", "0.5", "--top_p", "2"]) == 2
    assert "command line: 'top_p'" in capsys.readouterr().err
    assert main(["arbitrage", "--config", str(path), "--temperature", "0.5", "--dtype", "fp8"]) == 2
    assert "command line: 'dtype': unknown dtype 'fp8'" in capsys.readouterr().err
    assert main(["arbitrage", "--config", str(path), "--temperature", "0.5", "--ranker.batch_size", "0"]) == 2
    assert "command line: 'ranker.batch_size': out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_generate_with_vllm_where_it_is_not_installed_is_one_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["generate", "--prompt", "Bonjour !", "--backend", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'backend': vllm needs the vllm package" in err


def test_generate_writes_and_resumes_its_output(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "answers.jsonl"
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "fp32",
        "--max_new_tokens",
        "3",
        "--prompt",
        "Bonjour !",
        "--prompt",
        "Hallo!",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Bonjour !", "Hallo!"]
    assert [p.name for p in tmp_path.iterdir()] == ["answers.jsonl"]  # its log is gone
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows  # greedy: the same answers
