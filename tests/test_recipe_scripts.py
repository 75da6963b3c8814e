"""The recipe scripts run as README shows them (`python recipes/<stage>.py --config ...`, which `accelerate launch`
does too): Python puts recipes/ first on sys.path, so a script named like one of the project's packages would be
imported in its place."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, subprocess_env

SCRIPTS = sorted((REPO / "recipes").glob("*.py"))


def test_no_script_is_named_like_a_package():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert {"align", "reward", "merge"} <= packages
    assert not packages & {s.stem for s in SCRIPTS}


def test_every_script_reaches_its_stage_from_another_folder(tmp_path):
    """Each script, started from outside the project, imports its stage and answers a recipe missing its data with
    the stage's one-line error (not an import error)."""
    (tmp_path / "bad.yaml").write_text("output_dir: out\n")
    runs = {
        s.stem: subprocess.Popen(
            [sys.executable, str(s), "--config", "bad.yaml"],
            cwd=tmp_path,
            env=subprocess_env(cpu=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in SCRIPTS
    }
    assert len(runs) == 7
    for name, run in runs.items():
        _, err = run.communicate(timeout=300)
        last = err.strip().splitlines()[-1]
        assert run.returncode == 2 and "Error" not in err and "missing" in last, (name, err[-500:])
        assert last.startswith("polyalign ") and "bad.yaml" in last, (name, last)
