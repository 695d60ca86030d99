"""`rembert-fast TASK --ray [ADDRESS]`: the batch command's job on a Ray cluster, through Ray Data.

    rembert-fast embed --ray --model DIR --input 'texts/*.jsonl' --output vectors/ --format parquet

Reads every input file (a directory: its files; a glob: the files it matches; or one file; local paths
or any URI Ray's readers take) as lines, each file read by one task and cut into lines as the command
reads a file (split on "\\n", a UTF-8 BOM dropped, a line that is not UTF-8 an error row), each file in
the format the command would read it in (`--input-format`, else JSON lines for a ".jsonl" name, else
text: a directory may mix both; rows of a JSON-lines file carry their `id`). Rows go
to `--window` lines per `map_batches` call on `--actors` actors running the task's `PREDICTORS` class
(one GPU each when the cluster has GPUs, else one CPU each); lost actors are restarted and their
batches computed again. Ray's writers write the rows to the `--output` directory as Parquet or JSON
lines, in input order (`preserve_order`), each row with `path` and `line` (numbered from 1 per file)
so the input line it answers is known whatever the file layout. See `rembert_fast.integrations.ray`
for the columns.

The output directory is created and written to (a probe file, removed) before any work: one that
cannot be written fails the run at once. Ray's own logging is quiet unless `--debug` (then all of
it, workers' output included); its progress bars show in a terminal or with `--progress`.

Exit status as the command's: 0 every row has a result, 1 some rows are error rows, 2 a usage error
(no Ray installed, an output directory that is not empty, a model that does not load for the task:
the command's message), 3 the run failed: one line naming the innermost error (`--debug`: Ray's
whole error chain).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import inspect
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rembert_fast.inference import LineError, iter_lines, reads_jsonl
from rembert_fast.integrations.ray_errors import job_error

INSTALL_HINT = "--ray needs Ray Data: pip install 'rembert_fast[ray]'"
FORMATS = ("parquet", "jsonl")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs it; a bare `ray` lacks it)
    except ImportError:
        return None
    return ray


def _input_paths(spec: str) -> list[str]:
    """The files of a directory, the files a glob matches, one file, or a URI passed to Ray as it is."""
    if "://" in spec:
        return [spec]
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [spec]
    else:
        files = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise ValueError(f"input {spec!r} is no file, no directory with files and no glob matching files")
    return files


def _check_output(spec: str) -> None:
    """A local `--output` must be a new or empty directory; it is created and a probe file written and
    removed in it, so that one the writers could not write fails now (OSError), not after the job."""
    if "://" in spec:
        return
    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output {spec!r} is a file: with --ray it is a directory the writers fill")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"--output directory {spec!r} is not empty: choose a new one (a run never mixes "
                         "its files with another's)")
    path.mkdir(parents=True, exist_ok=True)
    descriptor, probe = tempfile.mkstemp(dir=path, prefix=".rembert-fast-write-probe-")
    os.close(descriptor)
    os.unlink(probe)


def split_lines(batch: dict[str, Any], rows: int, input_format: str | None) -> Iterator[Any]:
    """Whole files (`bytes`, `path`) -> tables of `rows` lines (a file's last may be shorter), columns
    `path`, `line`, `raw`, `read_error`, `jsonl` (the file is read as JSON lines: `input_format`, else
    its name, as the command decides): blocks small enough for every actor to get some."""
    import pyarrow as pa

    def table(lines: list[tuple[str, int, str | LineError]]) -> Any:
        return pa.table({
            "path": pa.array([path for path, _, _ in lines], pa.string()),
            "line": pa.array([number for _, number, _ in lines], pa.int64()),
            "raw": pa.array([None if isinstance(i, LineError) else i for _, _, i in lines], pa.string()),
            "read_error": pa.array([i.message if isinstance(i, LineError) else None for _, _, i in lines],
                                   pa.string()),
            "jsonl": pa.array([reads_jsonl(path, input_format) for path, _, _ in lines], pa.bool_()),
        })

    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        lines: list[tuple[str, int, str | LineError]] = []
        for number, item in enumerate(iter_lines(io.BytesIO(bytes(data))), start=1):
            lines.append((str(path), number, item))
            if len(lines) == rows:
                yield table(lines)
                lines = []
        if lines:
            yield table(lines)


def _actors(ray: Any, args: argparse.Namespace) -> tuple[int, float]:
    """(number of actors, GPUs per actor): one actor per GPU of the cluster, else one per CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if args.device in (None, "cuda") else 0
    if args.device == "cuda" and not gpus:
        raise ValueError("--device cuda asked for, but the Ray cluster has no GPU")
    actors = args.actors or max(1, gpus or int(resources.get("CPU", 1)))
    return actors, 1.0 if gpus else 0.0


def run_job(args: argparse.Namespace) -> int:
    """Run `args.command` over `args.input` on Ray; the exit status. ValueError: a usage error."""
    ray = _import_ray()
    if ray is None:
        raise ValueError(INSTALL_HINT)
    if args.resume:
        raise ValueError("--resume does not apply to --ray: Ray retries failed tasks itself; rerun into a "
                         "new --output directory")
    if args.device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {args.device!r} with --ray: use cpu or cuda (an actor uses its own GPU)")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise ValueError(f"model directory {args.model!r} has no config.json")
    paths = _input_paths(args.input)
    _check_output(args.output)
    start = time.perf_counter()
    if not ray.is_initialized():  # unless --debug, workers' output stays in their log files
        ray.init(address=args.ray or None, log_to_driver=args.debug,
                 logging_level=logging.INFO if args.debug else logging.ERROR)
    actors, gpus = _actors(ray, args)
    try:
        with _ray_output(ray, args):
            rows, errors = _write(ray, _dataset(ray, args, paths, actors, gpus), args)
    except Exception as error:
        raise job_error(error, args.model if "://" in args.model else str(model)) from error
    seconds = time.perf_counter() - start
    print(f"rembert-fast {args.command}: {rows} lines, {errors} errors in {seconds:.1f} s "
          f"({rows / max(seconds, 1e-9):.1f} lines/s, ray: {actors} actors) -> {args.output}",
          file=sys.stderr)
    return 1 if errors else 0


def _dataset(ray: Any, args: argparse.Namespace, paths: list[str], actors: int, gpus: float) -> Any:
    """The job's rows: the input files' lines through `split_lines` and the task's predictor."""
    from rembert_fast.integrations.ray import PREDICTORS

    # The `id` column is decided once for all rows; only a URI's files are not known here.
    any_jsonl = any("://" in p or reads_jsonl(p, args.input_format) for p in paths)
    options = {name: getattr(args, name) for name in ("pooling", "top_k", "all_scores", "aggregate")
               if hasattr(args, name)}
    ds = ray.data.read_binary_files(paths, include_paths=True, **_no_cpu(ray.data.read_binary_files))
    ds = ds.map_batches(split_lines, fn_kwargs={"rows": args.window, "input_format": args.input_format},
                        batch_size=1, batch_format="pyarrow", num_cpus=0)
    return ds.map_batches(
        PREDICTORS[args.command],
        fn_constructor_kwargs=dict(
            model_dir=str(Path(args.model).resolve()) if "://" not in args.model else args.model,
            input_format="jsonl" if any_jsonl else "txt", window=args.window, device=args.device,
            dtype=args.dtype, batch_tokens=args.batch_tokens, max_length=args.max_length, **options,
        ),
        batch_size=args.window, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus, num_cpus=1,
        max_restarts=-1, max_task_retries=-1,
    )


def _write(ray: Any, ds: Any, args: argparse.Namespace) -> tuple[int, int]:
    """Write `ds` to `args.output` in `args.format`; (rows written, error rows)."""
    if args.format == "parquet":
        ds.write_parquet(args.output, **_no_cpu(ds.write_parquet))
        written = ray.data.read_parquet(args.output).select_columns(["error"])
    else:
        # 15 significant digits (pandas' most): float32 embeddings round-trip, float64 scores to 1e-15.
        ds.write_json(args.output, double_precision=15, **_no_cpu(ds.write_json))
        written = ray.data.read_json(args.output).select_columns(["error"])
    counts = written.map_batches(_count_errors, batch_format="pyarrow").sum(["rows", "errors"])
    return int(counts["sum(rows)"] or 0), int(counts["sum(errors)"] or 0)


@contextlib.contextmanager
def _ray_output(ray: Any, args: argparse.Namespace) -> Iterator[None]:
    """Ray Data's console output for one job: its progress bars with `--progress` or on a terminal (as
    the command's own bar), its log lines only with `--debug` or `--progress` (outside a terminal Ray
    Data writes its progress as log lines), Ray's warnings only with `--debug`; its log file keeps
    everything. Restored afterwards."""
    with warnings.catch_warnings():
        if not args.debug:  # Ray's API changes and tuning hints: nothing the command's user acts on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        context = ray.data.DataContext.get_current()
        consoles = [h for h in logging.getLogger("ray.data").handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        before = (context.execution_options.preserve_order, context.enable_progress_bars,
                  [handler.level for handler in consoles])
        context.execution_options.preserve_order = True
        context.enable_progress_bars = args.debug or args.progress or sys.stderr.isatty()
        if not (args.debug or args.progress):
            for handler in consoles:
                handler.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars, levels = before
            for handler, level in zip(consoles, levels, strict=True):
                handler.setLevel(level)


def _no_cpu(reader_or_writer: Any) -> dict[str, Any]:
    """Arguments asking a Ray Data read or write for no CPU: the actors hold the cluster's CPUs (one each
    when there is no GPU), and these light tasks must not wait for one to be free. Newer Ray takes
    `num_cpus`, older only `ray_remote_args` (deprecated since)."""
    if "num_cpus" in inspect.signature(reader_or_writer).parameters:
        return {"num_cpus": 0}
    return {"ray_remote_args": {"num_cpus": 0}}


def _count_errors(table: Any) -> dict[str, list[int]]:
    return {"rows": [table.num_rows], "errors": [table.num_rows - table.column("error").null_count]}
