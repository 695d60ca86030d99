"""The `rembert-fast` command.

    rembert-fast doctor                          versions and available backends
    rembert-fast tune                            probe and time the fused ops, fill the tuning cache
    rembert-fast embed --model DIR_OR_HUB_ID --input texts.txt --output vectors.npy
    rembert-fast classify | fill-mask | token-classify --model DIR --input in.jsonl --output out.jsonl

The batch subcommands are a thin shell over `rembert_fast.inference`: they check the arguments, lock
the output, pick the writer for the output's suffix, continue a partial output with `--resume` (same
settings only), and under `torchrun` split the input across processes and merge the parts
(`inference.distributed`).

Exit status of a batch subcommand, each failure with a one-line message (a traceback with --debug):
    0    every line has a result
    1    the output is complete and some lines are error records
    2    usage or settings error: bad arguments, a --resume with other settings, an output in use
    3    the run failed (I/O error, crash): the .partial output is kept for --resume
    130  interrupted (Ctrl-C): the .partial output is kept for --resume
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

EXIT_ERROR_RECORDS, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 130


def _doctor(args: argparse.Namespace) -> int:
    from rembert_fast import __version__, ops

    info = ops.backend_info()
    info = {"rembert_fast": __version__, **info}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key not in ("backends", "tuning"):
            print(f"{key:>18}: {value}")
    for name, entry in info["backends"].items():
        mark = "yes" if entry["available"] else "no "
        print(f"{'backend ' + name:>18}: {mark}  {entry['reason']}")
    tune = info["tuning"]
    choices = tune.get("choices") or {}
    print(f"{'tuning':>18}: {tune['mode']}, cache {tune['cache']} ({tune['verdicts']} verdicts, "
          f"{len(choices)} per-bucket choices)")
    for name, why in (tune.get("disabled") or {}).items():
        print(f"{'disabled ' + name:>18}: {why}")
    for name, choice in choices.items():
        print(f"{'chosen':>18}: {name} -> {choice}")
    return 0


class UsageError(Exception):
    """A mistake in the command line or its files: printed as one line, exit status 2."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _open_input(name: str) -> Any:
    if name == "-":
        return sys.stdin.buffer
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"input {name!r} is a directory, not a file")
    try:
        return open(path, "rb")
    except OSError as error:
        raise UsageError(f"cannot read input {name!r}: {error.strerror}") from None


def _shard_lines(total: int, rank: int, world: int, window: int) -> int:
    """How many of `total` input lines rank `rank` of `world` computes (windows dealt round-robin)."""
    windows = range(rank, (total + window - 1) // window, world)
    return sum(min(window, total - w * window) for w in windows)


def _distributed(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world size, device) under torchrun (`inference.distributed.join`); (0, 1, device) otherwise."""
    from rembert_fast.inference import distributed

    try:  # cuda:LOCAL_RANK may not exist (more processes than GPUs): say so, not a CUDA traceback
        return distributed.join(device)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _model_directory(name: str) -> Path:
    """`--model`: a local directory, or a Hub model id fetched into (offline: found in) the Hub cache."""
    if Path(name).is_dir():
        return Path(name)
    from rembert_fast import hub
    from rembert_fast.inference.model_files import model_directory

    try:
        return Path(model_directory(name))
    except hub.PretrainedNotFoundError as error:
        raise UsageError(f"model directory: {error}") from None


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    model = _model_directory(args.model)
    if not model.is_dir():
        raise UsageError(f"model directory {args.model!r} does not exist")
    args.model = str(model)  # a Hub id's snapshot directory: what the engine loads and a --resume records
    if not (model / "config.json").is_file():
        raise UsageError(f"{args.model!r} has no config.json: not a model directory")
    output = Path(args.output)
    if output.suffix not in (".jsonl", ".npy"):
        raise UsageError(f"output {args.output!r} must end in .jsonl (or .npy for embed)")
    if output.suffix == ".npy" and args.command != "embed":
        raise UsageError(f"{args.command} writes .jsonl, not {args.output!r}: only embed writes .npy")
    if not output.parent.resolve().is_dir():
        raise UsageError(f"the directory of output {args.output!r} does not exist")
    if output.is_dir():
        raise UsageError(f"output {args.output!r} is a directory")
    errors = output.with_name(output.stem + ".errors.jsonl") if output.suffix == ".npy" else None
    if args.input != "-":
        for written in (output, errors):
            if written is not None and written.resolve() == Path(args.input).resolve():
                raise UsageError(f"the run would write {str(written)!r}, which is the input file "
                                 f"{args.input!r}: choose another output")
    return model, output, errors


def _part(path: Path, rank: int, world: int) -> Path:
    """Where rank `rank` of a `world`-process run writes its share of `path`."""
    return path.with_name(f"{path.name}.rank{rank}-of-{world}") if world > 1 else path


def _result_key(args: argparse.Namespace) -> str:
    """The field every record of this command holds (how --resume knows its own output)."""
    from rembert_fast import inference

    if args.command == "token-classify" and getattr(args, "aggregate", "none") != "none":
        return "words"
    return inference.RESULT_KEYS[args.command]


# The files of a model directory a run reads (besides weights, matched by suffix below).
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "sentencepiece.model", "spiece.model")


def _settings(args: argparse.Namespace, engine: Any, jsonl: bool, world: int) -> dict[str, Any]:
    """What a run's output bytes depend on: a --resume must match it (recorded beside the .partial)."""
    import torch

    from rembert_fast import __version__, ops

    model = Path(args.model).resolve()
    read = [p for p in model.iterdir() if p.is_file()
            and (p.name in _MODEL_FILES or p.name.endswith((".safetensors", ".bin", ".index.json")))]
    files = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in read)
    options = ("pooling", "npy_dtype", "top_k", "all_scores", "aggregate")
    return {
        "command": args.command, "model": str(model), "model_files": files,
        "input": args.input if args.input == "-" else str(Path(args.input).resolve()),
        "input_format": "jsonl" if jsonl else "txt", "max_length": engine.max_length,
        "dtype": str(engine.dtype).removeprefix("torch."), "device": engine.device.type,
        "cpu_threads": torch.get_num_threads() if engine.device.type == "cpu" else None,
        "backend": ops.requested_backend(), "batch_tokens": engine.batch_tokens, "window": args.window,
        "world_size": world, "rembert_fast": __version__, "torch": torch.__version__,
        **{name: getattr(args, name) for name in options if hasattr(args, name)},
    }


def _make_writer(args: argparse.Namespace, output: Path, errors: Path | None, width: int,
                 rank: int, world: int, settings: dict[str, Any]) -> Any:
    from rembert_fast import inference

    def part(path: Path) -> Path:
        return _part(path, rank, world)

    try:
        if errors is None:
            return inference.JsonlWriter(part(output), resume=args.resume,
                                         result_key=_result_key(args), settings=settings)
        return inference.NpyWriter(
            part(output), part(errors), width, dtype=args.npy_dtype, resume=args.resume,
            line_of_row=lambda row: inference.shard_line(row, rank, world, args.window), settings=settings,
        )
    except inference.ResumeError as error:
        raise UsageError(str(error)) from None


def _lock(paths: list[Path]) -> list[Any]:
    from rembert_fast import inference

    locks: list[Any] = []
    try:
        for path in paths:
            locks.append(inference.OutputLock(path))
    except inference.OutputInUse as error:
        for lock in locks:
            lock.release()
        raise UsageError(str(error)) from None
    return locks


def _run_task(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from rembert_fast.integrations.ray_job import run_job

        try:
            return run_job(args)
        except ValueError as error:  # a setting, or an actor's engine refusing the model (a RayTaskError)
            raise UsageError(_first_line(error)) from None
    model, output, errors = _check_paths(args)
    stream = _open_input(args.input)
    try:
        return _run_on(args, stream, model, output, errors)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _run_on(args: argparse.Namespace, stream: Any, model: Path, output: Path, errors: Path | None) -> int:
    """Load the engine, write (this rank's part of) the output, merge parts, report; the exit status."""
    from rembert_fast import inference

    jsonl = inference.reads_jsonl(args.input, args.input_format)
    rank, world, device = _distributed(args.device)
    if world > 1 and args.input == "-":
        raise UsageError("a multi-process run (torchrun) needs an input file, not stdin")
    try:
        device = inference.resolve_device(device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    locks = _lock([_part(output, rank, world)] + ([output] if rank == 0 and world > 1 else []))
    try:
        engine = _load_engine(args, model, device)
        return _write(args, stream, engine, jsonl, output, errors, rank, world)
    finally:
        for lock in locks:
            lock.release()


def _load_engine(args: argparse.Namespace, model: Path, device: Any) -> Any:
    from rembert_fast import inference

    try:
        return inference.InferenceEngine(
            model, args.command, device=device, dtype=args.dtype, batch_tokens=args.batch_tokens,
            max_length=args.max_length, pooling=getattr(args, "pooling", "cls"),
            top_k=getattr(args, "top_k", 5), all_scores=getattr(args, "all_scores", False),
            aggregate=getattr(args, "aggregate", "none"), window=args.window,
        )
    except ValueError as error:  # a setting that does not fit this model, or an invalid config
        raise UsageError(f"{args.model}: {_first_line(error)}") from None
    except (OSError, RuntimeError) as error:
        raise UsageError(f"cannot load model {args.model!r}: {_first_line(error)}") from None


def _write(args: argparse.Namespace, stream: Any, engine: Any, jsonl: bool, output: Path, errors: Path | None,
           rank: int, world: int) -> int:
    from rembert_fast import inference

    settings = _settings(args, engine, jsonl, world)
    writer = _make_writer(args, output, errors, engine.hidden_size, rank, world, settings)
    args.written = writer.partial
    progress = rank == 0 and (args.progress or sys.stderr.isatty())
    total = None
    if progress and args.input != "-":
        lines_in = inference.count_lines(args.input)
        total = _shard_lines(lines_in, rank, world, args.window) - writer.prior_records
    records = engine.run(
        inference.iter_lines(stream), jsonl=jsonl, skip_through=writer.done_through, shard=(rank, world),
        progress=progress, total=total,
    )
    try:
        for record in records:
            writer.write(record)
    except BaseException:
        writer.close()  # what is written stays in the .partial file for --resume
        raise
    writer.commit()

    stats = engine.stats
    counts = [stats.lines, stats.errors, stats.truncated, stats.tokens]
    counts += [writer.prior_records, writer.prior_errors]
    seconds = stats.seconds
    if world > 1:
        from rembert_fast.inference import distributed

        counts, seconds = distributed.combine(counts, seconds)
        errors_now, prior_errors = counts[1], counts[5]
        if rank == 0 and errors is None:
            inference.merge_jsonl([_part(output, r, world) for r in range(world)], output)
        elif rank == 0:
            parts = [(_part(output, r, world), _part(errors, r, world)) for r in range(world)]
            inference.merge_npy(parts, output, errors, args.window)
        distributed.leave(rank, wait_for_others=bool(errors_now + prior_errors))
    lines, errors_now, truncated, tokens, prior_records, prior_errors = counts
    if rank == 0:
        summary = inference.RunStats(lines, errors_now, truncated, tokens, seconds).summary()
        resumed = f" (continued after {prior_records} lines done before)" if prior_records else ""
        print(f"rembert-fast {args.command}: {summary}{resumed} -> {args.output}", file=sys.stderr)
    # Rank 0 alone reports error lines: under torchrun a rank exiting 1 first would get the others,
    # rank 0 before its summary among them, killed as if it had crashed.
    return EXIT_ERROR_RECORDS if errors_now + prior_errors and rank == 0 else 0


def _infer(args: argparse.Namespace) -> int:
    """Run a batch subcommand; every failure is one line on stderr and its exit status."""
    name = f"rembert-fast {args.command}"
    args.written = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        # A shell starts background jobs with SIGINT ignored, and Python then keeps ignoring it: `kill
        # -INT` would not stop the run. Ctrl-C always stops a batch run (keeping its .partial).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_task(args)
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        again = shlex.join(["rembert-fast", *args.argv, *([] if args.resume else ["--resume"])])
        kept = f"what was written is kept in {str(args.written)!r}; " if args.written else ""
        print(f"{name}: interrupted: {kept}to continue, run: {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # I/O failures and crashes: not the input's fault, not a usage error
        if args.debug:
            traceback.print_exc()
        kept = f"; what was written is kept in {str(args.written)!r} for --resume" if args.written else ""
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"{name}: failed: {type(error).__name__}: {_first_line(error)}{kept}{hint}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------------------- tune
_TUNE_DTYPES = ("fp32", "fp16", "bf16")


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--config", choices=("default",), default="default",
                       help="RemBERT's published widths (default)")
    which.add_argument("--model", help="a model directory or config.json whose widths to tune for")
    parser.add_argument("--dtype", choices=_TUNE_DTYPES, default=None,
                        help="default: bf16 on CUDA, fp32 on the CPU interpreter")
    parser.add_argument("--shapes", default="128,512",
                        help="comma-separated token counts, each rounded up to its power-of-two bucket "
                             "(default: 128,512)")
    parser.add_argument("--seqlens", default="128,512",
                        help="comma-separated longest-sequence lengths for attention (default: 128,512)")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON to PATH")


def _tune_shapes(model: str | None) -> Any:
    """The widths of `model` (a directory holding config.json, or the file), or RemBERT's defaults."""
    from rembert_fast.ops.tune import Shapes

    if model is None:
        return Shapes()
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model}: cannot read {path}: {error}") from None
    return Shapes(cfg.get("hidden_size", 1152), cfg.get("intermediate_size", 4608),  # RemBERT's defaults
                  cfg.get("num_attention_heads", 18), cfg.get("hidden_act", "gelu"),
                  cfg.get("input_embedding_size", 256), bool(cfg.get("is_decoder", False)))


def _sizes(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of sizes") from None


def format_tune_table(rows: list[Any], key: str) -> str:
    """The table `rembert-fast tune` prints: op, key, bucket, each candidate's ms, choice, probe error."""
    lines = [f"{'op (variant, width)':<40} {'key':<26} {'bucket':<11} {'candidates (ms)':<52} {'choice':<12} "
             "probe"]
    for r in rows:
        call, _, width, _ = r.entry.split("|")
        bucket = f"t{r.tokens}" + (f" s{r.seqlen}" if r.seqlen else "")
        ms = " ".join(f"{name}={value:.3f}" for name, value in r.ms.items())
        lines.append(f"{call + ' ' + width:<40} {key:<26} {bucket:<11} {ms:<52} {r.choice:<12} "
                     f"{r.probe_error or 'ok'}")
    return "\n".join(lines)


def _tune(args: argparse.Namespace) -> int:
    """`rembert-fast tune`: probe and time the fused ops, fill the cache, print the table."""
    import dataclasses

    import torch

    from rembert_fast.kernels._launch import interpreting
    from rembert_fast.ops import tune, tuning

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    elif interpreting():
        device = torch.device("cpu")
    else:
        print("rembert-fast tune: no CUDA device and TRITON_INTERPRET is not set: only eager runs here, "
              "nothing to tune", file=sys.stderr)
        return EXIT_USAGE
    dtypes = dict(zip(_TUNE_DTYPES, (torch.float32, torch.float16, torch.bfloat16), strict=True))
    try:
        shapes = _tune_shapes(args.model)
        tokens = _sizes("--shapes", args.shapes)
        seqlens = _sizes("--seqlens", args.seqlens)
        dtype = dtypes[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
        rows = tune.tune(device, dtype, shapes, tokens, seqlens)
    except ValueError as error:
        print(f"rembert-fast tune: {error}", file=sys.stderr)
        return EXIT_USAGE
    key = tuning.device_key(device.type)
    print(format_tune_table(rows, f"{key['gpu']} {key['capability'] or ''} {str(dtype)[6:]}".strip()))
    print(f"cache: {tuning.cache_path(device.type)}")
    if args.json:
        table = {"schema": "rembert_fast.tune/1", "key": key, "dtype": str(dtype).removeprefix("torch."),
                 "rows": [dataclasses.asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_task(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from rembert_fast.inference import DEFAULT_WINDOW, DTYPES

    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True,
                   help="model directory (config.json, weights, tokenizer files) or Hub model id")
    p.add_argument("--input", required=True,
                   help='.txt (a text per line), .jsonl ({"text", "text_pair"?, "id"?} a line) or - (stdin)')
    p.add_argument("--output", required=True, help=".jsonl: one record per input line, in input order")
    p.add_argument("--input-format", choices=("txt", "jsonl"),
                   help="how to read --input (default: jsonl for a .jsonl name, else txt; stdin is txt)")
    p.add_argument("--max-length", type=_positive,
                   help="truncate texts to this many tokens (default: the model's max_position_embeddings)")
    p.add_argument("--batch-tokens", type=_positive,
                   help="most tokens per batch, rows x longest row (default: 16384 on CUDA, 4096 on CPU)")
    p.add_argument("--dtype", choices=tuple(DTYPES),
                   help="model dtype (default: bfloat16 on CUDA, else float32)")
    p.add_argument("--device",
                   help="cpu, cuda or cuda:N (default: cuda when available); under torchrun cuda:LOCAL_RANK")
    p.add_argument("--resume", action="store_true",
                   help="continue a partial output; refused (exit 2) unless written with the same settings")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of a failure (with --ray: Ray's error chain and its own logs)")
    p.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a TTY (with --ray: Ray Data's)")
    p.add_argument("--window", type=_positive, default=DEFAULT_WINDOW,
                   help="lines sorted by length together (resume and torchrun parts need the same value)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on a Ray cluster (ADDRESS, else $RAY_ADDRESS or a local one): --input is a "
                        "directory, glob or URI, --output a directory (needs rembert_fast[ray])")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet",
                   help="with --ray: the files written to the --output directory (default: parquet)")
    p.add_argument("--actors", type=_positive,
                   help="with --ray: model replicas (default: one per GPU of the cluster, else per CPU)")
    p.set_defaults(func=_infer)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rembert-fast", description="Accelerated RemBERT.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="print versions and which backends are available, and why not")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=_doctor)

    embed = _add_task(sub, "embed", "one embedding per line, to .jsonl or .npy (+ .errors.jsonl)")
    embed.add_argument("--pooling", choices=("cls", "mean", "pooler"), default="cls",
                       help="first token, mean of real tokens, or the model's tanh pooler (default: cls)")
    embed.add_argument("--npy-dtype", choices=("float32", "float16"), default="float32",
                       help="row type of a .npy output (default: float32)")
    classify = _add_task(sub, "classify", "sequence classification: label and score per line")
    classify.add_argument("--all-scores", action="store_true", help="also write every label's probability")
    fill = _add_task(sub, "fill-mask", "the top-k tokens and scores at each [MASK]")
    fill.add_argument("--top-k", type=_positive, default=5, help="predictions per [MASK] (default: 5)")
    tokens = _add_task(sub, "token-classify", "per-token labels with character offsets")
    tokens.add_argument("--aggregate", choices=("none", "first", "average"), default="none",
                        help="label words instead of tokens, by the first token or the average of its tokens")
    from rembert_fast import bench as bench_module

    bench = sub.add_parser("bench", help="benchmark rembert_fast vs transformers and torch.compile",
                           description=bench_module.__doc__.splitlines()[0])
    bench_module.add_arguments(bench)
    bench.set_defaults(func=bench_module.run)
    tune = sub.add_parser("tune", help="probe and time the fused ops on this GPU, fill the tuning cache",
                          description="make, ahead of time, the per-bucket choices a model's first calls "
                                      "would make")
    _tune_arguments(tune)
    tune.set_defaults(func=_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
