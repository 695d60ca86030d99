"""`rembert-fast bench`'s options and driver: resolve the device's defaults, refuse settings that cannot
work (exit 2), build the models, run the GEMM peak, the end-to-end and the per-kernel cases, save the
JSON record after every shape, print the tables.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import rembert_fast
from rembert_fast.bench import e2e, environment
from rembert_fast.bench import train as train_bench
from rembert_fast.bench.e2e import (
    COMPILE_IMPLS,
    DTYPE_NAMES,
    FAST_COMPILE_IMPL,
    HF_IMPLS,
    IMPLS,
    LENGTH_MODES,
    REFERENCE_IMPL,
    Shape,
    bench_e2e,
    check_layers,
)
from rembert_fast.bench.flops import gemm_peak, gemm_shapes
from rembert_fast.bench.kernels import bench_kernels
from rembert_fast.bench.report import format_kernel_table, format_table, write_plot

SCHEMA = "rembert_fast.bench/1"
RESULTS_DIR = Path("benches") / "results"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return values


def _name_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    allowed = tuple(choices)

    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return names

    return parse


def _shapes(text: str) -> list[Shape]:
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)(?::(fixed|variable))?\s*", item)
        if match is None or int(match[1]) <= 0 or int(match[2]) <= 0:
            raise argparse.ArgumentTypeError(
                f"shape {item!r} is not BATCHxSEQ[:fixed|variable], e.g. 64x512:variable")
        shapes.append(Shape(int(match[1]), int(match[2]), match[3] or "fixed"))
    return shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `rembert-fast bench` (defaults that depend on the device are resolved in `run`)."""
    src = parser.add_argument_group("model")
    src.add_argument("--model", metavar="DIR", help="load weights from this checkpoint (default: random "
                     "weights with the default RemBERT config)")
    src.add_argument("--config", metavar="FILE", help="config.json for the random-weight model "
                     "(default: RemBERT's defaults)")
    src.add_argument("--layers", type=int, help="keep the first N layers (default: all on GPU, 2 on CPU)")
    cases = parser.add_argument_group("cases")
    cases.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cases.add_argument("--dtypes", type=_name_list(DTYPE_NAMES),
                       help="comma list of fp32/fp16/bf16 (default: bf16,fp16 on GPU, fp32 on CPU)")
    cases.add_argument("--batch-sizes", type=_int_list, help="default: 1,8,64 on GPU, 1,8 on CPU")
    cases.add_argument("--seq-lens", type=_int_list, help="padded lengths (default: 128,512)")
    cases.add_argument("--lengths", type=_name_list(LENGTH_MODES), default=list(LENGTH_MODES),
                       help="fixed (every sequence full) and/or variable (uniform 32..seq)")
    cases.add_argument("--shapes", type=_shapes, metavar="BxL[:MODE],...",
                       help="explicit cases instead of batch-sizes x seq-lens x lengths")
    cases.add_argument("--stream", type=int, default=1, metavar="N",
                       help="each variable-length case is N batches of its padded shape with different "
                       "lengths, timed as one pass over all N (default: 1)")
    impl = parser.add_argument_group("implementations")
    impl.add_argument("--impls", type=_name_list(IMPLS + train_bench.TRAIN_IMPLS[2:]),
                      help=f"comma list from: {', '.join(IMPLS)} (default: all that apply to the device); "
                      f"with --train: {', '.join(train_bench.TRAIN_IMPLS)}")
    impl.add_argument("--compile", action="store_true", help="include torch.compile variants on CPU")
    impl.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    impl.add_argument("--no-max-autotune", action="store_true", help="skip torch.compile(max-autotune)")
    impl.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                      help="per-kernel benchmarks (default: on for CUDA, off for CPU, where every op "
                      "is its eager reference)")
    impl.add_argument("--gemm-peak", action=argparse.BooleanOptionalAction, default=None,
                      help="measure the dense GEMM peak and report each row's fraction of it (default: "
                      "on for CUDA, off for CPU)")
    train = parser.add_argument_group("training step (--train)")
    train.add_argument("--train", action="store_true", help="benchmark a training step (forward, loss, "
                       "backward, AdamW) of --head instead of the encoder's forward: real tokens/s and the "
                       "step's peak memory, each implementation in a fresh process (default shape 8x256 "
                       "variable)")
    train.add_argument("--head", choices=sorted(train_bench.HEADS), default="mlm",
                       help="the head trained: masked LM, causal LM or sequence classification")
    train.add_argument("--mlm-fraction", type=float, default=0.15,
                       help="fraction of real tokens labelled for --head mlm (default 0.15)")
    run_opts = parser.add_argument_group("run")
    run_opts.add_argument("--warmup", type=int,
                          help="untimed calls after the first, checked one (default: 3 GPU, 0 CPU)")
    run_opts.add_argument("--iters", type=int, help="timed calls (default: 20 GPU, 3 CPU)")
    run_opts.add_argument("--seed", type=int, default=0, help="seeds the random weights and the inputs")
    run_opts.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); "
                          "1 gives steadier CPU timings on a busy machine")
    run_opts.add_argument("--output", metavar="FILE", help="JSON results (default: "
                          "benches/results/bench-<device>-<date>.json)")
    run_opts.add_argument("--plot", nargs="?", const="auto", metavar="PNG",
                          help="also write a bar chart (needs matplotlib; default: beside the JSON)")
    run_opts.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------- driver
class _NoProgress:
    def set_description(self, _text: str) -> None:
        pass

    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def resolve(args: argparse.Namespace, device: torch.device, have_hf: bool) -> dict[str, Any]:
    """Device-dependent defaults, and the implementation list after the skip flags."""
    on_gpu = device.type == "cuda"
    dtypes = [DTYPE_NAMES[d] for d in (args.dtypes or (["bf16", "fp16"] if on_gpu else ["fp32"]))]
    if args.shapes:
        shapes = args.shapes
    else:
        shapes = [Shape(b, s, mode) for b in (args.batch_sizes or ([1, 8, 64] if on_gpu else [1, 8]))
                  for s in (args.seq_lens or [128, 512]) for mode in args.lengths]
    if args.impls:
        impls = list(args.impls)
    else:
        compiles = on_gpu or args.compile
        impls = ["rembert_fast"]
        impls += ["rembert_fast+graphs"] if on_gpu else []
        impls += [FAST_COMPILE_IMPL] if compiles else []
        impls += ["transformers+optimize"] if on_gpu else []
        impls += ["transformers"]
        impls += [i for i in COMPILE_IMPLS if i != FAST_COMPILE_IMPL] if compiles else []
    if args.no_compile:
        impls = [i for i in impls if i not in COMPILE_IMPLS]
    if args.no_max_autotune:
        impls = [i for i in impls if i != "torch.compile(max-autotune)"]
    notes = []
    if not on_gpu and "rembert_fast+graphs" in impls:
        impls.remove("rembert_fast+graphs")
        notes.append("rembert_fast+graphs skipped: CUDA graphs need a CUDA device")
    if not have_hf:
        dropped = [i for i in impls if i in HF_IMPLS]
        impls = [i for i in impls if i not in HF_IMPLS]
        notes.append("transformers is not installed: benchmarking rembert_fast alone, no reference "
                     "and no error check" + (f" (skipped {', '.join(dropped)})" if dropped else ""))
    if not impls:
        raise ValueError("no implementation left to benchmark; check --impls and the skip flags")
    return {
        "dtypes": dtypes, "shapes": shapes, "impls": impls, "notes": notes,
        "layers": args.layers if args.layers is not None else (None if on_gpu else 2),
        "warmup": args.warmup if args.warmup is not None else (3 if on_gpu else 0),
        "iters": args.iters if args.iters is not None else (20 if on_gpu else 3),
        "kernels": args.kernels if args.kernels is not None else on_gpu,
        "gemm_peak": args.gemm_peak if args.gemm_peak is not None else on_gpu,
    }


def _check_output(output: Path) -> None:
    """The JSON record's path can be written: not a directory, in a directory that exists or can be made."""
    if output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a directory; name a .json file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output {str(output)!r}: cannot create its directory ({error})") from None
    if not os.access(output.parent, os.W_OK):
        raise ValueError(f"--output {str(output)!r}: its directory is not writable")


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    if args.model is not None:
        return rembert_fast.RemBertConfig.from_pretrained(args.model).to_dict()
    if args.config is not None:
        return rembert_fast.RemBertConfig.from_pretrained(args.config).to_dict()
    return rembert_fast.RemBertConfig().to_dict()


def _dispatch_record() -> dict[str, Any]:
    """What the ops ran on in this process: the tuning mode and cache, the probe verdicts held, and the
    candidate chosen for each call class the benchmark met."""
    from rembert_fast.ops import dispatch, tuning

    info = tuning.describe()
    return {"tune_mode": info["mode"], "cache": info["cache"], "verdicts": tuning.verdicts(),
            "choices": dispatch.choices_made()}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe; print the tables, write JSON (and a PNG)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and
                                                              torch.cuda.is_available()) else "cpu")
    have_hf = e2e.load_transformers() is not None
    stamp = datetime.datetime.now(datetime.timezone.utc)
    kind = f"train-{args.head}-" if args.train else ""
    output = Path(args.output) if args.output else (RESULTS_DIR / (
        f"bench-{kind}{environment.slug(environment.device_name(device))}-{stamp:%Y%m%d-%H%M%S}.json"))
    # Settings that cannot work are refused before minutes of model building, in one line (exit 2).
    try:
        if args.threads is not None and args.threads <= 0:
            raise ValueError(f"--threads {args.threads} must be a positive number of threads")
        if args.stream <= 0:
            raise ValueError(f"--stream {args.stream} must be a positive number of batches")
        plan = resolve(args, device, have_hf)
        config_dict = _config_dict(args)
        check_layers(plan["layers"], config_dict["num_hidden_layers"])
        max_len = config_dict["max_position_embeddings"]
        too_long = [s.label for s in plan["shapes"] if s.seq > max_len]
        if too_long:
            raise ValueError(f"shapes {too_long} exceed max_position_embeddings={max_len}")
        _check_output(output)
        if args.train and not 0.0 < args.mlm_fraction <= 1.0:
            raise ValueError(f"--mlm-fraction {args.mlm_fraction} must lie in (0, 1]")
        if args.train and device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
            raise ValueError("--train on CPU measures the process's peak resident set through /proc (Linux)")
        if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib, which is not installed: pip install matplotlib")
    except ValueError as error:
        print(f"rembert-fast bench: error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.train:
        return train_bench.run(args, config_dict, device, output)
    for note in plan["notes"]:
        print(f"note: {note}", file=sys.stderr)

    torch.manual_seed(args.seed)  # random weights too: separate runs with one seed time the same model
    hf_master, fast_master = e2e.build_masters(config_dict, args.model, plan["layers"], have_hf,
                                           any(i.startswith("rembert_fast") for i in plan["impls"]))
    model_config = (hf_master if hf_master is not None else fast_master).config
    total = len(plan["dtypes"]) * len(plan["shapes"]) * len(plan["impls"])
    if plan["kernels"]:
        total += len(plan["dtypes"]) * len({(s.batch, s.seq) for s in plan["shapes"]})
    progress: Any = _NoProgress()
    if not args.no_progress:
        progress = tqdm(total=total, unit="case", file=sys.stderr)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": stamp.isoformat(timespec="seconds"),
        "complete": False,  # until every case has run: a run cut off keeps the shapes it finished
        "device": device.type,
        "device_name": environment.device_name(device),
        "device_properties": environment.device_properties(device),
        "git_commit": environment.git_commit(),
        "versions": environment.versions(),
        "model": {"source": args.model or args.config or "default RemBertConfig, random weights",
                  "num_hidden_layers": model_config.num_hidden_layers,
                  "hidden_size": model_config.hidden_size,
                  "num_attention_heads": model_config.num_attention_heads},
        "settings": {"warmup": plan["warmup"], "iters": plan["iters"], "seed": args.seed,
                     "impls": plan["impls"], "dtypes": plan["dtypes"], "threads": torch.get_num_threads(),
                     "stream": args.stream,
                     "reference": REFERENCE_IMPL if have_hf else None,
                     "error_reference": "transformers float32" if have_hf else None},
        "notes": plan["notes"],
        "gemm_peak": {},
        "dispatch": {},  # the candidate each op's call class ran on (`ops.dispatch.choices_made`)
        "rows": [],
        "kernels": [],
    }
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(**fields: Any) -> None:
        # Written after every shape: a time limit's SIGTERM/SIGKILL runs no cleanup, so what is on disk
        # when it strikes is what survives. Replaced atomically, so a kill never leaves half a file.
        result.update(fields)
        partial = output.with_name(output.name + ".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        partial.replace(output)

    save()  # the metadata, at once: a run cut off before its first case still says what it ran on
    try:
        if plan["gemm_peak"]:
            # First, on an idle device (no model copies yet), and saved at once: a few seconds in all.
            progress.set_description("GEMM peak")
            shapes = gemm_shapes(model_config, max(s.batch * s.seq for s in plan["shapes"]), device)
            save(gemm_peak={d: gemm_peak(getattr(torch, d), device, shapes, max(1, plan["warmup"]),
                                         plan["iters"]) for d in plan["dtypes"]})
        rows = bench_e2e(hf_master, fast_master, plan["impls"], plan["dtypes"], plan["shapes"], device,
                         plan["warmup"], plan["iters"], args.seed, progress, result["gemm_peak"],
                         on_shape=lambda so_far: save(rows=so_far, dispatch=_dispatch_record()),
                         stream=args.stream)
        kernels = (bench_kernels(model_config, plan["dtypes"], plan["shapes"], device,
                                 max(1, plan["warmup"]), plan["iters"], progress) if plan["kernels"] else [])
    finally:
        progress.close()
    save(rows=rows, kernels=kernels, dispatch=_dispatch_record(), complete=True)

    print(f"device: {result['device_name']}  layers: {model_config.num_hidden_layers}  "
          f"torch {result['versions']['torch']}  median of {plan['iters']} calls after 1 + {plan['warmup']} "
          "untimed")
    if kernels:
        print(format_kernel_table(kernels))
        print()
    print(format_table(rows))
    print(f"\nwrote {output}")
    if args.plot is not None:
        png = output.with_suffix(".png") if args.plot == "auto" else Path(args.plot)
        try:
            write_plot(rows, png)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {png}")
    bad = [r for r in rows if r["status"] != "ok" or r.get("agrees") is False]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rembert_fast.bench ...`: the same as `rembert-fast bench ...`."""
    parser = argparse.ArgumentParser(prog="rembert-fast bench",
                                     description=rembert_fast.bench.__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
