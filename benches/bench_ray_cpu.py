"""Batch embedding on CPU: `rembert-fast embed --ray` (2 actors, 1 thread each) vs the command (2 threads).

Input: 5,000 multilingual lines from `bench_inference_cpu.make_lines` (seeded; 1-3 sentences each),
truncated at 128 tokens, as a .txt file. Model: `bench_inference_cpu.build_model` (RemBERT-shaped,
random weights, hidden 288, 4 layers, 6 heads, intermediate 1152), float32.

- command: `rembert-fast embed --device cpu` in a subprocess with 2 torch threads, writing .jsonl.
- ray: `rembert-fast embed --ray --actors 2` (one CPU and one torch thread per actor) on a local
  2-CPU Ray cluster started once before the rounds, writing Parquet.

Both are timed end to end (model loading, actor start-up, reading and writing included), alternating
command, ray, command, ... for `--rounds` rounds; the median round's lines/s is reported. Every line's
embedding is checked to agree between the two (max abs error) before the figures are trusted.
Run (a few minutes on 2 cores):

    python benches/bench_ray_cpu.py [--lines 5000] [--rounds 2] [--json benches/results/ray_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference_cpu import MAX_LENGTH, build_model, make_lines  # noqa: E402

MAX_ABS_ERROR = 1e-5  # fp32; the two sides batch the same lines the same way (same windows)


def run_command(model_dir: Path, inp: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    subprocess.run(["rembert-fast", "embed", "--model", str(model_dir), "--input", str(inp), "--output",
                    str(out), "--device", "cpu", "--max-length", str(MAX_LENGTH)], check=True, env=env)
    return time.perf_counter() - start


def run_ray(model_dir: Path, inp: Path, out: Path) -> float:
    from rembert_fast.cli import main

    start = time.perf_counter()
    code = main(["embed", "--ray", "--actors", "2", "--model", str(model_dir), "--input", str(inp),
                 "--output", str(out), "--device", "cpu", "--max-length", str(MAX_LENGTH)])
    if code != 0:
        raise SystemExit(f"the ray run exited {code}")
    return time.perf_counter() - start


def max_error(command_out: Path, ray_out: Path) -> float:
    import pyarrow.parquet as pq

    want = np.array([json.loads(line)["embedding"] for line in command_out.read_text().splitlines()])
    table = pq.read_table(ray_out)
    if table.column("line").to_pylist() != list(range(1, len(want) + 1)):
        raise SystemExit("the ray output does not hold every line once, in order")
    got = np.array(table.column("embedding").to_pylist())
    return float(np.abs(got - want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import ray
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model(root)
        inp = root / "in.txt"
        inp.write_text("\n".join(make_lines(args.lines)) + "\n", encoding="utf-8")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        seconds: dict[str, list[float]] = {"command": [], "ray": []}
        error = 0.0
        for i in range(args.rounds):
            seconds["command"].append(run_command(model_dir, inp, root / f"command{i}.jsonl"))
            seconds["ray"].append(run_ray(model_dir, inp, root / f"ray{i}"))
            error = max(error, max_error(root / f"command{i}.jsonl", root / f"ray{i}"))
        ray.shutdown()
    if error > MAX_ABS_ERROR:
        raise SystemExit(f"ray and the command disagree: max abs error {error:.3g} > {MAX_ABS_ERROR}")
    load = os.getloadavg()[0]
    record = {
        "benchmark": "embed throughput, CPU, ray vs command",
        "device": f"cpu ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
        "dtype": "float32", "model": "hidden 288, 4 layers, 6 heads, intermediate 1152, random weights",
        "lines": args.lines, "max_length": MAX_LENGTH, "rounds": args.rounds, "load_average_1min": load,
        "torch": torch.__version__, "ray": ray.__version__, "max_abs_error": error,
        "command": "rembert-fast embed, 2 torch threads, .jsonl",
        "ray_run": "--ray --actors 2, 1 thread each, .parquet",
    }
    for name, values in seconds.items():
        record[f"{name}_median_seconds"] = round(statistics.median(values), 2)
        record[f"{name}_median_lines_per_s"] = round(args.lines / statistics.median(values), 1)
    record["ray_over_command"] = round(
        statistics.median(seconds["command"]) / statistics.median(seconds["ray"]), 2)
    print(json.dumps(record, indent=2))
    print(f"\n| | median s ({args.lines:,} lines, end to end) | lines/s |\n| --- | ---: | ---: |")
    for name, label in (("command", "rembert-fast embed, 2 threads"), ("ray", "--ray, 2 actors x 1 thread")):
        print(f"| {label} | {record[name + '_median_seconds']} | {record[name + '_median_lines_per_s']} |")
    print(f"| ray / command | | {record['ray_over_command']}x |")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")

if __name__ == "__main__":
    main()
