"""`polyalign merge` refusals and atomicity: every bad input stops with one line before anything is written, and a
merge killed midway leaves no output directory (and the next run clears what it left)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_llama
from safetensors.torch import load_file, save_file

from align.cli import main
from align.core.lifecycle import OWNER_MARKER

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return build_tiny_llama(root / "a", tokenizer, seed=11), build_tiny_llama(root / "b", tokenizer, seed=12)


def write_config(path: Path, models: list, weights: list | None = None, **extra) -> Path:
    entries = [
        {"model": str(m), **({"parameters": {"weight": w}} if weights else {})}
        for m, w in zip(models, weights or [None] * len(models))
    ]
    path.write_text(yaml.safe_dump({"merge_method": "linear", "models": entries, **extra}, sort_keys=False))
    return path


def refused(capsys, *argv: str) -> str:
    """Run `polyalign merge ...`; it must exit 2 with exactly one error line, which is returned."""
    assert main(["merge", *argv, "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("polyalign merge: error:")]
    assert len(err) == 1, err
    return err[0]


def variant(source: Path, target: Path, edit=None, **config) -> Path:
    """A copy of a checkpoint with its tensors edited and/or config keys changed."""
    shutil.copytree(source, target)
    if edit is not None:
        tensors = load_file(target / "model.safetensors")
        edit(tensors)
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((target / "config.json").read_text())
        cfg.update(config)
        (target / "config.json").write_text(json.dumps(cfg))
    return target


def nothing_written(out: Path) -> bool:
    return not out.exists() and not (out.parent / f".{out.name}.partial").exists()


def test_mismatched_architecture(pair, tmp_path, capsys):
    other = variant(pair[1], tmp_path / "mistral", architectures=["MistralForCausalLM"], model_type="mistral")
    out = tmp_path / "out"
    msg = refused(capsys, str(write_config(tmp_path / "c.yaml", [pair[0], other], [1, 1])), str(out))
    assert "architectures differ" in msg and "LlamaForCausalLM (llama)" in msg and "MistralForCausalLM (mistral)" in msg
    assert nothing_written(out)


def test_mismatched_tensor_names(pair, tmp_path, capsys, tokenizer):
    deeper = build_tiny_llama(tmp_path / "deeper", tokenizer, seed=13, layers=3)
    out = tmp_path / "out"
    msg = refused(capsys, str(write_config(tmp_path / "c.yaml", [pair[0], deeper], [1, 1])), str(out))
    assert "tensor names differ" in msg and "model.layers.2." in msg and "more differences" in msg
    assert nothing_written(out)


def test_mismatched_tensor_shapes(pair, tmp_path, capsys):
    def widen(t):
        t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)

    other = variant(pair[1], tmp_path / "wide", widen)
    out = tmp_path / "out"
    msg = refused(capsys, str(write_config(tmp_path / "c.yaml", [pair[0], other], [1, 1])), str(out))
    assert (
        "tensor shapes differ for model.layers.0.mlp.up_proj.weight" in msg
        and "[128, 64]" in msg
        and "[100, 64]" in msg
    )
    assert nothing_written(out)


def test_mismatched_vocabulary_suggests_the_fix(pair, tmp_path, capsys):
    def grow(t):
        t["model.embed_tokens.weight"] = torch.cat([t["model.embed_tokens.weight"], torch.zeros(64, 64)])

    other = variant(pair[1], tmp_path / "bigger", grow, vocab_size=49152 + 64)
    out = tmp_path / "out"
    msg = refused(capsys, str(write_config(tmp_path / "c.yaml", [pair[0], other], [1, 1])), str(out))
    assert "vocabulary sizes differ" in msg and "49152" in msg and "49216" in msg
    assert "tokenizer_source" in msg and "resize" in msg
    assert nothing_written(out)


def test_missing_directory_and_pickled_checkpoint(pair, tmp_path, capsys):
    out = tmp_path / "out"
    msg = refused(capsys, str(write_config(tmp_path / "c.yaml", [pair[0], tmp_path / "nowhere"], [1, 1])), str(out))
    assert "no such directory" in msg and "nowhere" in msg
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(pair[1] / "config.json", pickled / "config.json")
    torch.save(load_file(pair[1] / "model.safetensors"), pickled / "pytorch_model.bin")
    msg = refused(capsys, str(write_config(tmp_path / "c2.yaml", [pair[0], pickled], [1, 1])), str(out))
    assert "pytorch_model.bin" in msg and "safetensors only" in msg
    assert nothing_written(out)


@pytest.mark.parametrize(
    "weights, expected",
    [
        ([1, -0.5], "negative (-0.5)"),
        ([1, float("nan")], "weights must be finite"),
        ([0, 0], "the weights sum to zero"),
        ([1, None], "missing for"),
    ],
    ids=["negative", "nan", "zero-sum", "missing"],
)
def test_bad_weights(pair, tmp_path, capsys, weights, expected):
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(m), **({"parameters": {"weight": w}} if w is not None else {})} for m, w in zip(pair, weights)
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    msg = refused(capsys, str(tmp_path / "c.yaml"), str(out))
    assert expected in msg and "c.yaml" in msg and "weight" in msg
    assert nothing_written(out)


def test_unknown_method_lists_the_valid_ones(pair, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", list(pair), [1, 1])
    config.write_text(config.read_text().replace("merge_method: linear", "merge_method: soup_deluxe"))
    msg = refused(capsys, str(config), str(tmp_path / "out"))
    assert "unknown merge method 'soup_deluxe'" in msg
    for name in ("linear", "slerp", "ties", "dare_ties", "task_arithmetic"):
        assert name in msg
    assert nothing_written(tmp_path / "out")


def test_unknown_key_and_extra_arguments(pair, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", list(pair), [1, 1], normalise=True)
    msg = refused(capsys, str(config), str(tmp_path / "out"))
    assert "'normalise'" in msg and "unknown key" in msg and "did you mean 'parameters.normalize'" in msg
    msg = refused(capsys, str(write_config(tmp_path / "ok.yaml", list(pair), [1, 1])), str(tmp_path / "out"), "--bogus")
    assert "unexpected argument for merge: --bogus" in msg
    assert nothing_written(tmp_path / "out")


def test_mergekit_methods_get_the_same_checks(pair, tmp_path, capsys):
    """polyalign validates before handing a config to mergekit: shapes, and the method's own input contract."""

    def widen(t):
        t["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(64, 32)

    other = variant(pair[1], tmp_path / "wide", widen)
    ties = {
        "merge_method": "ties",
        "base_model": str(pair[0]),
        "models": [{"model": str(other), "parameters": {"weight": 1.0, "density": 0.5}}],
    }
    (tmp_path / "ties.yaml").write_text(yaml.safe_dump(ties))
    msg = refused(capsys, str(tmp_path / "ties.yaml"), str(tmp_path / "out"))
    assert "tensor shapes differ for model.layers.1.self_attn.o_proj.weight" in msg
    slerp = {
        "merge_method": "slerp",
        "base_model": str(pair[0]),
        "parameters": {"t": 0.5},
        "models": [{"model": str(m)} for m in (*pair, other)],
    }
    (tmp_path / "slerp.yaml").write_text(yaml.safe_dump(slerp))
    msg = refused(capsys, str(tmp_path / "slerp.yaml"), str(tmp_path / "out"))
    assert "slerp" in msg and "exactly 2" in msg
    assert nothing_written(tmp_path / "out")


def test_a_running_merge_into_the_same_output_is_not_clobbered(pair, tmp_path, capsys):
    out = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial / OWNER_MARKER).write_text(f"{socket.gethostname()}:{sleeper.pid}")
        msg = refused(capsys, str(write_config(tmp_path / "c.yaml", list(pair), [1, 1])), str(out))
        assert f"another run is building {out} (pid {sleeper.pid})" in msg
        assert partial.is_dir() and not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_alias_resolves_to_the_embedded_checkpoint(pair, tmp_path, capsys):
    """`smollm2-135m` is the embedded default's cached safetensors (30 layers), so the tiny model does not match."""
    msg = refused(
        capsys, str(write_config(tmp_path / "c.yaml", [pair[0], "smollm2-135m"], [1, 1])), str(tmp_path / "out")
    )
    assert "tensor names differ" in msg and "'smollm2-135m'" in msg and "no such directory" not in msg


def test_existing_output_is_refused_unless_overwrite(pair, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    config = str(write_config(tmp_path / "c.yaml", list(pair), [1, 1]))
    msg = refused(capsys, config, str(out))
    assert "already exists" in msg and "--overwrite" in msg
    assert (out / "keep.txt").read_text() == "precious" and not (tmp_path / ".out.partial").exists()
    assert main(["merge", config, str(out), "--overwrite", "--quiet"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# The kill test's subprocess runs the real `polyalign merge` entry point; the pause is patched in from the test's
# own script (no hook in polyalign): after the first shard is complete on disk it writes a marker and sleeps, so
# the test kills it at a known point, mid-merge, with files already written.
KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import merge.writer as writer

    write = writer.ShardWriter.write

    def write_then_stall(self, name, tensor):
        write(self, name, tensor)
        if self._file is None and self._next < len(self._queue):  # a shard just closed; more to come
            Path(sys.argv[1]).write_text("first shard written")
            time.sleep(600)

    writer.ShardWriter.write = write_then_stall
    from align.cli import main
    sys.exit(main(["merge", sys.argv[2], sys.argv[3], "--max-shard-size", "1MB", "--quiet"]))
""")


def test_killed_merge_leaves_no_output(pair, tmp_path):
    config = write_config(tmp_path / "c.yaml", list(pair), [1, 1])
    out, marker = tmp_path / "out", tmp_path / "marker"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(marker), str(config), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the merge never reached its first shard"
            time.sleep(0.1)
        partial = tmp_path / ".out.partial"
        shards = list(partial.glob("model-*.safetensors"))
        assert shards and shards[0].stat().st_size > 1_000_000  # really mid-merge: a full shard is on disk
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    # The next run clears the dead run's partial directory and completes.
    assert main(["merge", str(config), str(out), "--quiet"]) == 0
    assert (out / "model.safetensors").is_file() and not partial.exists()
