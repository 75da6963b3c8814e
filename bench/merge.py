"""`polyalign merge` vs `mergekit-yaml`: wall time and peak RSS of a 3-input linear merge, side by side in one run.

Inputs: three perturbed copies of the embedded default (SmolLM2-135M-Instruct, the fp32 safetensors in
$POLYALIGN_CACHE/models/smollm2-135m, 517 MB), each re-sharded into --input-shard-mb files so that reading is
really streamed from several shards. Both tools get the same YAML (linear, weights 0.5/0.3/0.2, dtype float32) and
their default 5 GB output shard size, and each run is a fresh subprocess of the installed console script.

Peak RSS and CPU time of each run are measured by a small launcher process that runs the command and reads
`resource.getrusage(RUSAGE_CHILDREN)` (so they are that run's, not the whole benchmark's). The baseline is the same
measurement for `python -c "import torch"` (and, for context, torch + transformers); the imports each tool pays
before merging are measured the same way. Runs alternate between the tools (--repeats rounds, the order flipped
every round); medians are reported, with CPU seconds next to wall seconds because the 2-core machine is shared
and wall time swings with what else runs. The two outputs are compared tensor by tensor at the end.

    .venv/bin/python bench/merge.py [--repeats 5] [--threads 1] [--input-shard-mb 100] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
WEIGHTS = [0.5, 0.3, 0.2]

LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
if rc.returncode:
    sys.stderr.write(rc.stderr.decode()[-3000:])
    sys.exit(rc.returncode)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def measure(argv: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MiB, CPU seconds user+system) of one fresh run of argv."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
    wall, kib, cpu = out.stdout.split()
    return float(wall), int(kib) / 1024, float(cpu)


def make_inputs(workdir: Path, shard_mb: int) -> tuple[list[Path], dict]:
    """Three perturbed, re-sharded copies of the embedded default; returns their paths and tensor facts."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from align.models.embedded import resolve_model
    from merge.writer import SAFETENSORS_DTYPES

    source = Path(resolve_model("smollm2-135m"))
    with safe_open(str(source / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        tensors = {n: f.get_tensor(n) for n in names}
    largest = max(names, key=lambda n: tensors[n].numel() * tensors[n].element_size())
    facts = {
        "source": str(source),
        "tensors": len(names),
        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "largest": largest,
        "largest_shape": list(tensors[largest].shape),
        "largest_bytes": tensors[largest].numel() * tensors[largest].element_size(),
        "dtype": SAFETENSORS_DTYPES[tensors[largest].dtype],
    }
    paths = []
    for i in range(3):
        target = workdir / f"input{i}"
        target.mkdir()
        generator = torch.Generator().manual_seed(i)
        shards, current, size = [], {}, 0
        for name in names:
            t = tensors[name]
            perturbed = t + 0.01 * t.std().clamp_min(1e-3) * torch.randn(t.shape, generator=generator, dtype=t.dtype)
            if current and size + perturbed.numel() * 4 > shard_mb * 2**20:
                shards.append(current)
                current, size = {}, 0
            current[name] = perturbed
            size += perturbed.numel() * 4
        shards.append(current)
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, target / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in shard})
        (target / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": facts["bytes"]}, "weight_map": weight_map}, indent=2)
        )
        for extra in source.iterdir():
            if extra.suffix != ".safetensors" and extra.is_file():
                shutil.copy2(extra, target / extra.name)
        paths.append(target)
        facts["input_shards"] = len(shards)
    return paths, facts


def compare(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    def load(d):
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    x, y = load(a), load(b)
    if set(x) != set(y):
        raise SystemExit(f"outputs differ in tensor names: {sorted(set(x) ^ set(y))[:5]}")
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--input-shard-mb", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the inputs and outputs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for both tools' runs (default 1: on a shared 2-core machine every "
        "multi-threaded op waits for a descheduled thread; 0 leaves it unset)",
    )
    args = parser.parse_args(argv)

    import torch

    workdir = Path(tempfile.mkdtemp(prefix="polyalign-bench-merge-", dir=args.workdir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    try:
        print(f"building 3 perturbed, sharded copies of smollm2-135m in {workdir} ...", flush=True)
        inputs, facts = make_inputs(workdir, args.input_shard_mb)
        config = workdir / "linear.yaml"
        config.write_text(
            "merge_method: linear\ndtype: float32\nmodels:\n"
            + "".join(f"  - model: {p}\n    parameters:\n      weight: {w}\n" for p, w in zip(inputs, WEIGHTS))
        )
        tools = {
            "polyalign merge": lambda out: [str(BIN / "polyalign"), "merge", str(config), str(out), "--quiet"],
            "mergekit-yaml": lambda out: [str(BIN / "mergekit-yaml"), str(config), str(out)],
        }
        base_torch = measure([sys.executable, "-c", "import torch"], env)[1]
        base_tf = measure([sys.executable, "-c", "import torch, transformers.modeling_utils"], env)[1]
        # What each tool pays before merging anything: its imports (median of 3, warm file cache).
        imports = {
            name: [measure([sys.executable, "-c", code], env) for _ in range(3)]
            for name, code in (
                ("polyalign merge", "import torch, align.core.lifecycle, merge.api, merge.engines, merge.linear"),
                ("mergekit-yaml", "import mergekit.merge, mergekit.options"),
            )
        }
        imports = {
            name: (statistics.median(r[0] for r in runs), statistics.median(r[2] for r in runs))
            for name, runs in imports.items()
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
        order = list(tools)
        for round_ in range(args.repeats):
            for name in order if round_ % 2 == 0 else order[::-1]:
                out = workdir / f"out-{name.split()[0]}"
                shutil.rmtree(out, ignore_errors=True)
                wall, rss, cpu = measure(tools[name](out), env)
                results[name].append((wall, rss, cpu))
                print(
                    f"  round {round_ + 1}: {name:16s} {wall:6.2f} s wall  {cpu:6.2f} s CPU  peak RSS {rss:7.1f} MiB",
                    flush=True,
                )
        diff = compare(workdir / "out-polyalign", workdir / "out-mergekit-yaml")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    mib = 2**20
    largest = facts["largest_bytes"] / mib
    target = (len(inputs) + 1) * largest
    print()
    threads = f"OMP_NUM_THREADS={args.threads} for both tools" if args.threads else "torch's default threads"
    print(
        f"- machine: {os.cpu_count()} CPU cores (shared), no GPU; torch {torch.__version__}, {threads}; "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    print(
        f"- inputs: 3 perturbed copies of smollm2-135m, {facts['dtype']}, {facts['bytes'] / mib:.0f} MiB each, "
        f"{facts['tensors']} tensors, {facts['input_shards']} shards of <= {args.input_shard_mb} MiB each"
    )
    print(
        f"- largest tensor: {facts['largest']} {facts['largest_shape']} = {largest:.1f} MiB; "
        f"target for peak RSS above baseline: (3 + 1) x {largest:.1f} = {target:.1f} MiB"
    )
    print(
        f"- baseline peak RSS: python + import torch {base_torch:.1f} MiB; + transformers.modeling_utils {base_tf:.1f} MiB"
    )
    print(
        f"- imports alone, before any merging (median of 3): polyalign {imports['polyalign merge'][0]:.2f} s wall / "
        f"{imports['polyalign merge'][1]:.2f} s CPU, mergekit {imports['mergekit-yaml'][0]:.2f} s wall / "
        f"{imports['mergekit-yaml'][1]:.2f} s CPU"
    )
    print(f"- max abs difference between the two outputs: {diff:.3g}")
    print()
    print(
        "| tool | wall s, median (runs) | CPU s, median | CPU s minus import CPU (rough) | peak RSS MiB "
        "| above torch baseline | in largest tensors |"
    )
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        medians[name] = (wall, rss, cpu)
        print(
            f"| `{name}` | {wall:.2f} ({', '.join(f'{r[0]:.2f}' for r in runs)}) | {cpu:.2f} | "
            f"{cpu - imports[name][1]:.2f} | {rss:.0f} | {rss - base_torch:.0f} | {(rss - base_torch) / largest:.2f} |"
        )
    ratios = [p[0] / m[0] for p, m in zip(results["polyalign merge"], results["mergekit-yaml"])]
    (pw, pr, pc), (mw, mr, mc) = medians["polyalign merge"], medians["mergekit-yaml"]
    print()
    print(
        f"polyalign / mergekit: wall {pw / mw:.2f}x (median of per-round ratios {statistics.median(ratios):.2f}x), "
        f"CPU {pc / mc:.2f}x, peak RSS {pr / mr:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
