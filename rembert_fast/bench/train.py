"""`rembert-fast bench --train`: one training step (forward, loss, backward, AdamW step) of a head, per
implementation, each in a fresh process, against transformers in the same run.

Each implementation runs in its own child process (`python -m rembert_fast.bench.train ...`), so its
peak memory is its own: on CPU the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs once the model, its gradients and AdamW's state exist, after one untimed step;
glibc is told to map every allocation of 1 MiB or more, so freed tensors leave the resident set), on a
GPU `torch.cuda.max_memory_allocated` over the same span. Either is reported above what was resident
before the timed steps (weights and optimizer state), so the figure is the step's own memory:
activations, logits, gradients.

Weights are the same in every process: each parameter drawn from a generator seeded by the run's seed
and the parameter's name (N(0, 0.02), LayerNorm weights 1 and biases 0), so the implementations'
first-step losses must agree (dropout is off); inputs are `e2e.make_inputs`' padded batch, labels as
the collators write them: masked LM, `--mlm-fraction` of the real tokens (15%, as
DataCollatorForLanguageModeling); causal LM, every real token; classification, one class per sequence.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from typing import Any

import torch

from rembert_fast.bench.e2e import DTYPE_NAMES, Shape, make_inputs

HEADS = {"mlm": "RemBertForMaskedLM", "clm": "RemBertForCausalLM", "cls": "RemBertForSequenceClassification"}
TRAIN_IMPLS = ("rembert_fast", "transformers", "torch.compile(transformers)")
LOSS_AGREEMENT = 1e-3  # relative: first-step losses of two implementations on the same weights and batch


# ----------------------------------------------------------------------------------------- child
def _resident_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_resident() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def _fill_weights(model: torch.nn.Module, seed: int) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
                continue
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def _build(impl: str, head: str, config_dict: dict[str, Any], seed: int, device: torch.device) -> Any:
    if impl == "rembert_fast":
        import rembert_fast as lib

        config = lib.RemBertConfig(**config_dict)
    else:
        import transformers as lib

        config = lib.RemBertConfig(attn_implementation="eager", **config_dict)
    model = getattr(lib, HEADS[head])(config)
    _fill_weights(model, seed)
    model = model.to(device).train()
    return torch.compile(model) if impl.startswith("torch.compile") else model


def _batch(head: str, shape: Shape, vocab: int, fraction: float, seed: int, device: torch.device
           ) -> dict[str, torch.Tensor]:
    ids, mask = make_inputs(shape, vocab, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if head == "cls":
        labels = torch.randint(0, 2, (shape.batch,), generator=gen)
    elif head == "clm":
        labels = ids.cpu().masked_fill(mask.cpu() == 0, -100)
    else:
        chosen = (torch.rand(ids.shape, generator=gen) < fraction) & mask.cpu().bool()
        labels = torch.where(chosen, ids.cpu(), -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(impl: str, head: str, config_dict: dict[str, Any], shape: Shape, fraction: float, iters: int,
            seed: int, device: torch.device, autocast: str | None) -> dict[str, Any]:
    """One implementation's row, in this process: first-step loss, median step ms, real tokens/s, the
    step's peak memory in MiB above the weights and optimizer state."""
    model = _build(impl, head, config_dict, seed, device)
    batch = _batch(head, shape, config_dict["vocab_size"], fraction, seed, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dtype = getattr(torch, autocast) if autocast else None

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    first_loss = step()  # untimed: creates AdamW's state (and compiles, for torch.compile)
    gc.collect()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _resident_kib("VmRSS") * 1024
        _reset_peak_resident()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else _resident_kib("VmHWM") * 1024)
    median = statistics.median(times)
    real_tokens = int(batch["attention_mask"].sum())
    return {"impl": impl, "first_loss": first_loss, "median_ms": median, "times_ms": times,
            "real_tokens": real_tokens, "labelled": int((batch["labels"] != -100).sum()),
            "tokens_per_s": real_tokens / (median / 1e3), "peak_step_mb": (peak - before) / 2**20,
            "resident_before_mb": before / 2**20}


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rembert_fast.bench.train")
    parser.add_argument("--spec", required=True, help="JSON: the case (see run_case)")
    spec = json.loads(parser.parse_args(argv).spec)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    row = measure(spec["impl"], spec["head"], spec["config"], Shape(*spec["shape"]), spec["fraction"],
                  spec["iters"], spec["seed"], torch.device(spec["device"]), spec["autocast"])
    print("ROW " + json.dumps(row))
    return 0


# ----------------------------------------------------------------------------------------- driver
def run_case(impl: str, spec: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run one implementation in a fresh Python process; its row, or a row with `status` saying why not."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    command = [sys.executable, "-m", "rembert_fast.bench.train", "--spec", json.dumps({**spec, "impl": impl})]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "status": f"timed out after {timeout_s} s"}
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode != 0 or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"impl": impl, "status": f"failed (exit {done.returncode}): {tail[0]}"}
    return {**json.loads(rows[0]), "status": "ok"}


def judge(rows: list[dict[str, Any]], reference: str = "transformers") -> None:
    """Ratios to the reference row (speed: its step time / ours; memory: ours / its) and loss agreement."""
    ref = next((r for r in rows if r["impl"] == reference and r["status"] == "ok"), None)
    for row in rows:
        if row["status"] != "ok" or ref is None:
            continue
        row["speedup_vs_transformers"] = ref["median_ms"] / row["median_ms"]
        row["memory_vs_transformers"] = (row["peak_step_mb"] / ref["peak_step_mb"] if ref["peak_step_mb"] > 0
                                         else None)
        scale = max(1.0, abs(ref["first_loss"]))
        row["loss_agrees"] = abs(row["first_loss"] - ref["first_loss"]) <= LOSS_AGREEMENT * scale


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'impl':<30} {'loss':>9} {'median ms':>10} {'real tok/s':>11} {'step peak MiB':>14} "
             f"{'speed x':>8} {'memory x':>9}"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['impl']:<30} {r['status']}")
            continue
        speed, memory = r.get("speedup_vs_transformers"), r.get("memory_vs_transformers")
        lines.append(f"{r['impl']:<30} {r['first_loss']:>9.4f} {r['median_ms']:>10.1f} "
                     f"{r['tokens_per_s']:>11.1f} {r['peak_step_mb']:>14.0f} {_ratio(speed):>8} "
                     f"{_ratio(memory):>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace, config_dict: dict[str, Any], device: torch.device, output: Any) -> int:
    """`rembert-fast bench --train`: every (dtype, shape) case of `args`, each implementation in a fresh
    process one after the other (never two at once: their memory would mix); prints the table, writes
    JSON to `output` after every case. Exit 1 if a case failed or a loss disagrees."""
    from rembert_fast.bench import environment

    on_gpu = device.type == "cuda"
    layers = args.layers if args.layers is not None else (None if on_gpu else 2)
    if layers is not None:
        config_dict = {**config_dict, "num_hidden_layers": layers}
    # Dropout off (RemBERT's own default, but for the classifier's): the losses of two implementations
    # then compare. A decoder for the causal LM.
    config_dict = {**config_dict, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                   "classifier_dropout_prob": 0.0, "is_decoder": args.head == "clm"}
    impls = list(args.impls or ["rembert_fast", "transformers"]
                 + (["torch.compile(transformers)"] if on_gpu or args.compile else []))
    if args.no_compile:
        impls = [i for i in impls if not i.startswith("torch.compile")]
    shapes = args.shapes or [Shape(8, 256, "variable")]
    dtypes = args.dtypes or (["bf16"] if on_gpu else ["fp32"])
    result: dict[str, Any] = {"schema": "rembert_fast.bench.train/1", "device": device.type,
                              "device_name": environment.device_name(device),
                              "git_commit": environment.git_commit(), "versions": environment.versions(),
                              "head": args.head, "layers": config_dict["num_hidden_layers"],
                              "vocab_size": config_dict["vocab_size"], "threads": args.threads,
                              "memory": "GPU max_memory_allocated" if on_gpu else "process VmHWM",
                              "cases": [], "complete": False}
    bad = False
    for dtype in dtypes:
        autocast = None if DTYPE_NAMES[dtype] == "float32" else DTYPE_NAMES[dtype]  # fp32: no autocast
        for shape in shapes:
            spec = {"head": args.head, "config": config_dict,
                    "shape": [shape.batch, shape.seq, shape.lengths],
                    "fraction": args.mlm_fraction, "iters": args.iters or (10 if on_gpu else 3),
                    "seed": args.seed, "device": device.type, "autocast": autocast, "threads": args.threads}
            rows = [run_case(impl, spec) for impl in impls]
            judge(rows)
            bad |= any(r["status"] != "ok" or r.get("loss_agrees") is False for r in rows)
            result["cases"].append({"dtype": dtype, "shape": shape.label, "rows": rows})
            output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"{args.head} training step, {shape.label}, {dtype}, {result['layers']} layers, vocab "
                  f"{config_dict['vocab_size']}, {result['device_name']}; memory: the step's peak above "
                  f"weights and optimizer state ({result['memory']})")
            print(format_rows(rows))
    result["complete"] = True
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
