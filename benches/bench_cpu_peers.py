"""CPU benchmark of the whole model against every peer, in one run: transformers eager,
`torch.compile(transformers)`, ONNX Runtime, and rembert_fast eager and compiled.

The model and batches are `model_cpu_table.py`'s: 4 layers at RemBERT's real widths, a 32000-row
vocabulary, float32, batch 8 x 256, ``padded`` (864 of 2048 tokens real) and ``full`` (all real), the
same weights in every implementation. Peers:

- ``transformers``: transformers' RemBertModel, eager, `torch.inference_mode`;
- ``torch.compile(transformers)``: the same model under `torch.compile` (default mode; every batch has
  the same (8, 256) shape, so it compiles once);
- ``onnxruntime``: the transformers model exported by `torch.onnx.export` (input_ids, attention_mask,
  token_type_ids; dynamic batch and length) and run by an ONNX Runtime `InferenceSession` with every
  graph optimisation on (`ORT_ENABLE_ALL`: SkipLayerNorm, BiasGelu, attention fusion) and the same
  intra-op thread count as torch;
- ``rembert_fast``: rembert_fast's RemBertModel, the eager packed path;
- ``rembert_fast+compile``: `torch.compile(rembert_fast model, dynamic=True)` compiled with inductor's
  `freezing` on, the documented CPU switch (README, "On CPU: compile with freezing"): dynamic=True
  compiles once for every token count (architecture, the packed path under torch.compile); freezing
  lets inductor treat the weights as constants, pre-pack them for oneDNN and fuse the GEMMs' epilogues
  (bias + GELU) into them. Freezing is read from inductor's global config when the first call compiles
  (`torch.compile(..., options={"freezing": True})` leaves the GEMMs unpacked), so it is switched on
  around this row's first calls only: the torch.compile peer compiles without it, as by default.

Before timing, each implementation's last_hidden_state (real positions) and pooler_output are compared
with transformers eager. Each implementation's first call (export and session creation for ONNX
Runtime, compilation for the compiled rows) is timed apart and reported as `first_call_s`. Timing then
cycles through the implementations call by call, rotating the order every round, so a change of load
from other processes hits all alike; the median of the rounds is reported, with every rembert_fast row's
ratio to every peer (peer ms / rembert_fast ms: above 1 is faster). Targets (issue 27): the best
rembert_fast row at least 1.0x every peer on ``full`` and 2x every peer on ``padded``.

Needs `onnxruntime`, `onnx` and `onnxscript` (for `torch.onnx.export`) besides transformers:

    pip install onnxruntime onnx onnxscript
    python benches/bench_cpu_peers.py [--threads 2] [--rounds 9] [--warmup 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config
import transformers
from model_cpu_table import (
    RESULTS_DIR,
    batches,
    build_models,
    cpu_name,
    git_commit,
    model_config,
    save_record,
)

import rembert_fast

PEERS = ("transformers", "torch.compile(transformers)", "onnxruntime")
OURS = ("rembert_fast", "rembert_fast+compile")
TARGETS = {"padded": 2.0, "full": 1.0}
MAX_ABS_ERROR = 1e-4  # float32 after four layers at width 1152 agrees to ~1e-5 (summation order)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

Forward = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]  # -> (hidden, pooled)


def torch_forward(model: Any) -> Forward:
    def forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            out = model(**batch)
        return out.last_hidden_state, out.pooler_output

    return forward


def onnxruntime_forward(model: Any, example: dict[str, torch.Tensor], directory: str,
                        threads: int) -> Forward:
    """Export `model` (transformers) to ONNX and wrap an ORT session with every graph optimisation."""
    import onnxruntime

    path = os.path.join(directory, "rembert.onnx")
    batch_dim, seq_dim = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = {name: {0: batch_dim, 1: seq_dim} for name in INPUT_NAMES}
    with torch.no_grad():
        torch.onnx.export(model, (), path, kwargs={n: example[n] for n in INPUT_NAMES},
                          input_names=list(INPUT_NAMES), output_names=["last_hidden_state", "pooler_output"],
                          dynamic_shapes=dynamic, dynamo=True)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = session.run(None, {n: batch[n].numpy() for n in INPUT_NAMES})
        return torch.from_numpy(hidden), torch.from_numpy(pooled)

    return forward


def max_abs_error(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor],
                  mask: torch.Tensor) -> float:
    real = mask.bool()
    return max((got[0][real] - want[0][real]).abs().max().item(), (got[1] - want[1]).abs().max().item())


def time_rotating(forwards: dict[str, Forward], batch: dict[str, torch.Tensor], rounds: int,
                  warmup: int) -> dict[str, list[float]]:
    """Wall seconds per call for each implementation, one call each per round, the order rotated."""
    names = list(forwards)
    for _ in range(warmup):
        for name in names:
            forwards[name](batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            forwards[name](batch)
            times[name].append(time.perf_counter() - start)
    return times


def run(rounds: int, warmup: int, num_layers: int, vocab_size: int, impls: list[str]) -> dict[str, Any]:
    ours, theirs = build_models(num_layers, vocab_size)
    named_batches = batches(vocab_size)
    load_before = os.getloadavg()
    first_call_s: dict[str, float] = {}
    reference = {name: torch_forward(theirs)(batch) for name, batch in named_batches.items()}
    with tempfile.TemporaryDirectory() as directory:
        builders: dict[str, Callable[[], Forward]] = {
            "transformers": lambda: torch_forward(theirs),
            "torch.compile(transformers)": lambda: torch_forward(torch.compile(theirs)),
            "onnxruntime": lambda: onnxruntime_forward(theirs, named_batches["full"], directory,
                                                       torch.get_num_threads()),
            "rembert_fast": lambda: torch_forward(ours),
            "rembert_fast+compile": lambda: torch_forward(torch.compile(ours, dynamic=True)),
        }
        forwards: dict[str, Forward] = {}
        errors: dict[str, dict[str, float]] = {}
        for name in impls:
            start = time.perf_counter()
            forwards[name] = builders[name]()
            errors[name] = {}
            with torch._inductor.config.patch(freezing=name == "rembert_fast+compile"):
                for batch_name, batch in named_batches.items():  # the first call of each batch: compiles
                    errors[name][batch_name] = max_abs_error(forwards[name](batch), reference[batch_name],
                                                             batch["attention_mask"])
            first_call_s[name] = time.perf_counter() - start
            print(f"{name}: first calls {first_call_s[name]:.1f} s, max abs error {errors[name]}", flush=True)
            bad = {b: e for b, e in errors[name].items() if e > MAX_ABS_ERROR}
            if bad:
                raise SystemExit(f"{name}: outputs disagree with transformers (max abs error {bad})")
        rows = []
        for batch_name, batch in named_batches.items():
            times = time_rotating(forwards, batch, rounds, warmup)
            medians = {name: statistics.median(values) for name, values in times.items()}
            print(f"{batch_name}: median ms " + ", ".join(f"{k} {1e3 * v:.0f}" for k, v in medians.items()),
                  flush=True)
            real_tokens = int(batch["attention_mask"].sum())
            rows.append({
                "batch": batch_name,
                "shape": list(batch["input_ids"].shape),
                "real_tokens": real_tokens,
                "max_abs_error": {name: errors[name][batch_name] for name in impls},
                "median_ms": {name: 1e3 * value for name, value in medians.items()},
                "all_ms": {name: [round(1e3 * v, 2) for v in values] for name, values in times.items()},
                "real_tokens_per_s": {name: real_tokens / value for name, value in medians.items()},
                "ratio": {ours_name: {peer: medians[peer] / medians[ours_name] for peer in impls
                                      if peer in PEERS} for ours_name in impls if ours_name in OURS},
                "target": TARGETS[batch_name],
            })
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "rembert_fast": rembert_fast.__version__}
    if "onnxruntime" in impls:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "benchmark": "cpu_peers",
        "device": cpu_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "versions": versions,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_before_after": [list(load_before), list(os.getloadavg())],
        "dtype": "float32",
        "model": model_config(num_layers, vocab_size),
        "rounds": rounds,
        "warmup": warmup,
        "first_call_s": first_call_s,
        "rows": rows,
    }


def print_table(record: dict[str, Any]) -> None:
    print(f"{record['device']} | {record['threads']} threads | {record['versions']} | "
          f"commit {record['commit']} | {record['date']}")
    print(f"float32, {record['model']['num_hidden_layers']} layers at hidden 1152, median of "
          f"{record['rounds']} rotating rounds after {record['warmup']} warm-up; load average before/after "
          f"{record['loadavg_before_after']}")
    print("first call (export, compile) s: " + ", ".join(f"{k} {v:.1f}"
                                                        for k, v in record["first_call_s"].items()))
    for row in record["rows"]:
        print(f"\n{row['batch']} ({row['real_tokens']} real tokens of {row['shape'][0] * row['shape'][1]})")
        for name, ms in row["median_ms"].items():
            print(f"  {name:<30}{ms:>10.1f} ms{row['real_tokens_per_s'][name]:>10.0f} tok/s"
                  f"   max err {row['max_abs_error'][name]:.1e}")
        for name, ratios in row["ratio"].items():
            verdict = "ok" if min(ratios.values()) >= row["target"] else "MISS"
            print(f"  {name} vs " + ", ".join(f"{peer} {r:.2f}x" for peer, r in ratios.items())
                  + f"   (target >= {row['target']}: {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed calls per implementation and batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--impls", default=",".join(PEERS + OURS),
                        help=f"comma list from: {', '.join(PEERS + OURS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON record")
    args = parser.parse_args(argv)
    impls = [name.strip() for name in args.impls.split(",") if name.strip()]
    unknown = [name for name in impls if name not in PEERS + OURS]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; choose from {', '.join(PEERS + OURS)}")
    if args.rounds < 5:
        parser.error(f"--rounds={args.rounds}: at least 5 rounds are needed for a stable median")
    torch.set_num_threads(args.threads)
    record = run(args.rounds, args.warmup, args.layers, args.vocab, impls)
    print_table(record)
    save_record(record, args.out, "cpu_peers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
