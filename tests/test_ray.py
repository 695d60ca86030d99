"""Batch inference on Ray Data (a local cluster of 2 CPUs): the same records as the single-process
command, per-row error rows for hostile lines, every row exactly once after an actor is killed.

Skipped where `ray[data]` is not installed (marker `ray`: `-m "not ray"` leaves them out); test_cli
checks that `--ray` then exits 2.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from batch_fixtures import sample_texts

from rembert_fast.cli import main

pytest.importorskip("ray.data", reason="needs ray[data]: pip install 'rembert_fast[ray]'")
from rembert_fast.integrations.ray import Classifier, Embedder  # noqa: E402  (needs pyarrow, from ray[data])

pytest_plugins = ["batch_fixtures"]  # the fixtures dirs, ref and one_thread
pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent
MODEL = {"embed": "cls", "classify": "cls", "fill-mask": "mlm", "token-classify": "tok"}
RESULT = {"embed": "embedding", "classify": "label", "fill-mask": "masks", "token-classify": "tokens"}
SETTINGS = ["--window", "4", "--batch-tokens", "80"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # Workers import this module to unpickle its fault-injecting class.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_console():
    """What Ray Data's console log handlers print during the test. They write to the stderr of the time
    `ray.data` was imported, which capsys does not see: here to a StringIO instead."""
    stream = io.StringIO()
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert handlers, "Ray Data has no console log handler: the quiet-output checks would check nothing"
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(stream)
    yield stream
    for handler, previous in zip(handlers, streams, strict=True):
        handler.setStream(previous)


def _hostile_input(tmp_path: Path) -> Path:
    """The batch-engine tests' mixed JSONL lines, multilingual texts, a non-UTF-8 line, a lone surrogate,
    a BOM before the first line and a CRLF line end."""
    mixed = (HERE / "data" / "batch_mixed.jsonl").read_bytes().splitlines()
    texts = [json.dumps({"text": text, "id": f"t{i}"}).encode() for i, text in enumerate(sample_texts())]
    lines = [b"\xef\xbb\xbf" + mixed[0], *mixed[1:], *texts, b'{"text": "\xff not utf-8"}',
             b'{"text": "bad \\ud800 text"}', b'{"text": "crlf [MASK] line"}\r', b'{"text": "last"}']
    (tmp_path / "inputs").mkdir()
    path = tmp_path / "inputs" / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _command_records(capsys, task: str, model: Path, inp: Path, out: Path, *extra: str,
                     code: int = 1) -> list[dict]:
    """The plain command's records for `inp` (exit status `code`: 1, the hostile lines are errors)."""
    got = main([task, "--model", str(model), "--input", str(inp), "--output", str(out), "--device", "cpu",
                *SETTINGS, *extra])
    capsys.readouterr()
    assert got == code
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _assert_same(task: str, got: dict, want: dict, atol: float) -> None:
    """One Ray row against the command's record of the same line."""
    assert got["line"] == want["line"]
    assert (None if got.get("id") is None else json.loads(got["id"])) == want.get("id")
    if "error" in want:
        assert got["error"] == want["error"] and got[RESULT[task]] is None
        return
    assert got["error"] is None
    if task == "embed":
        np.testing.assert_allclose(np.asarray(got["embedding"]), want["embedding"], atol=atol, rtol=0)
    elif atol == 0:
        assert {key: got[key] for key in want if key not in ("line", "id")} == {
            key: value for key, value in want.items() if key not in ("line", "id")}
    else:
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=atol)


@pytest.mark.ray
@pytest.mark.parametrize("task,fmt", [("embed", "parquet"), ("classify", "jsonl"), ("fill-mask", "parquet"),
                                      ("token-classify", "parquet")])
def test_ray_command_gives_the_records_of_the_command(ray_cluster, dirs, capsys, tmp_path, task, fmt):
    """`--ray` over a directory (or a glob) of one JSONL file: a row per line, in order, equal to the
    command's records (errors and all); embeddings within 1e-6, labels and scores identical (JSON:
    to 15 digits)."""
    inp = _hostile_input(tmp_path)
    want = _command_records(capsys, task, dirs[MODEL[task]], inp, tmp_path / "want.jsonl")
    out = tmp_path / "ray_out"
    where = inp.parent if fmt == "parquet" else inp.parent / "*.jsonl"  # a directory, a glob
    code = main([task, "--ray", "--model", str(dirs[MODEL[task]]), "--input", str(where),
                 "--output", str(out), "--format", fmt, "--device", "cpu", *SETTINGS])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{len(want)} lines, {sum('error' in r for r in want)} errors" in err
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = [json.loads(line) for f in sorted(out.iterdir()) for line in f.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, len(want) + 1))
    assert {r["path"] for r in rows} == {str(inp)}
    assert sum("error" in r for r in want) >= 6  # the hostile lines did reach the engine
    for got, expected in zip(rows, want, strict=True):
        _assert_same(task, got, expected, atol=1e-6 if task == "embed" else (1e-14 if fmt == "jsonl" else 0))


@pytest.mark.ray
def test_map_batches_keeps_the_callers_columns(ray_cluster, dirs, ref):
    """The Python API over a "text" / "text_pair" dataset: the caller's columns pass through unchanged,
    a null text is an error row, and every label and score is transformers' on that line alone."""
    texts = sample_texts()
    items = [{"doc": i, "text": text, "text_pair": "second text" if i % 3 == 0 else None}
             for i, text in enumerate(texts)] + [{"doc": len(texts), "text": None, "text_pair": None}]
    ds = ray_cluster.data.from_items(items).map_batches(
        Classifier,
        fn_constructor_kwargs={"model_dir": str(dirs["cls"]), "device": "cpu", "all_scores": True},
        batch_size=5, batch_format="pyarrow", compute=ray_cluster.data.ActorPoolStrategy(size=2),
    )
    rows = sorted(ds.take_all(), key=lambda row: row["doc"])
    assert [r["doc"] for r in rows] == list(range(len(items)))
    assert rows[-1]["error"] == '"text" must be a string, got NoneType' and rows[-1]["label"] is None
    labels = ["negative", "neutral", "positive"]
    for row, item in zip(rows[:-1], items[:-1], strict=True):
        assert row["text"] == item["text"] and row["text_pair"] == item["text_pair"] and row["error"] is None
        probs = ref.class_probs(item["text"], item["text_pair"])
        assert row["label"] == labels[int(probs.argmax())]
        np.testing.assert_allclose([row["scores"][name] for name in labels], probs.numpy(), atol=1e-5)


class _DiesOnce(Embedder):
    """Exits its process at its first call, once in the whole run (the marker file says it happened)."""

    def __init__(self, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker = marker

    def __call__(self, batch):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return super().__call__(batch)
        os._exit(1)


@pytest.mark.ray
def test_an_actor_killed_mid_run_still_gives_every_row_once(ray_cluster, dirs, capsys, tmp_path):
    """One actor dies at its first batch; Ray restarts it and retries that batch: every line once, equal
    to the command's record."""
    inp = tmp_path / "in.txt"
    texts = sample_texts() * 2
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    code = main(["embed", "--model", str(dirs["cls"]), "--input", str(inp), "--output",
                 str(tmp_path / "want.jsonl"), "--device", "cpu", *SETTINGS])
    capsys.readouterr()
    assert code == 0
    want = [json.loads(line) for line in (tmp_path / "want.jsonl").read_text().splitlines()]
    marker = tmp_path / "died"
    ds = ray_cluster.data.from_items([{"line": i + 1, "raw": text} for i, text in enumerate(texts)])
    ds = ds.map_batches(
        _DiesOnce, fn_constructor_kwargs={"marker": str(marker), "model_dir": str(dirs["cls"]),
                                          "input_format": "txt", "device": "cpu", "window": 4,
                                          "batch_tokens": 80},
        batch_size=4, batch_format="pyarrow", compute=ray_cluster.data.ActorPoolStrategy(size=2),
        max_restarts=2, max_task_retries=-1,
    )
    rows = sorted(ds.take_all(), key=lambda row: row["line"])
    assert marker.exists()  # an actor did die
    assert [r["line"] for r in rows] == list(range(1, len(texts) + 1))
    for got, expected in zip(rows, want, strict=True):
        assert got["error"] is None
        np.testing.assert_allclose(np.asarray(got["embedding"]), expected["embedding"], atol=1e-6, rtol=0)


@pytest.mark.ray
@pytest.mark.parametrize("case", ["output_not_empty", "resume", "no_input"])
def test_ray_usage_errors_exit_2(ray_cluster, dirs, capsys, tmp_path, case):
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    out = tmp_path / "out"
    out.mkdir()
    extra = []
    if case == "output_not_empty":
        (out / "old.parquet").write_text("x")
    elif case == "resume":
        extra = ["--resume"]
    else:
        inp = tmp_path / "nothing-*.txt"
    code = main(["embed", "--ray", "--model", str(dirs["cls"]), "--input", str(inp), "--output", str(out),
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    said = {"output_not_empty": "not empty", "resume": "--resume", "no_input": "no glob matching"}[case]
    assert said in err


@pytest.mark.ray
@pytest.mark.parametrize("input_format", [None, "txt"])
def test_ray_reads_each_file_of_a_mixed_directory_as_the_command_does(ray_cluster, dirs, capsys, tmp_path,
                                                                     ray_console, input_format):
    """A directory of a .jsonl and a .txt file: each file's rows are the command's records for that file
    (JSON lines with their ids, malformed records as errors; text lines, a JSON-looking one as text), or
    all text with `--input-format txt`. The command's summary is all it prints: no Ray log line, no
    warning of Ray's."""
    inp = _hostile_input(tmp_path)
    text = inp.parent / "plain.txt"
    texts = [*sample_texts()[:5], '{"text": "a JSON-looking text line", "id": 9}', "{not json"]
    text.write_text("\n".join(texts) + "\n", encoding="utf-8")
    extra = [] if input_format is None else ["--input-format", input_format]
    want = {path: _command_records(capsys, "embed", dirs["cls"], path, tmp_path / f"{path.stem}.jsonl",
                                   *extra, code=1 if path == inp else 0)
            for path in (inp, text)}
    out = tmp_path / "ray_out"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        code = main(["embed", "--ray", "--model", str(dirs["cls"]), "--input", str(inp.parent), "--output",
                     str(out), "--device", "cpu", *SETTINGS, *extra])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    rays = [w for w in warned if issubclass(w.category, DeprecationWarning) or "/ray/" in w.filename]
    assert ray_console.getvalue() == "" and [str(w.message) for w in rays] == []
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    assert [(r["path"], r["line"]) for r in rows] == [(str(path), record["line"])
                                                      for path in sorted(want) for record in want[path]]
    assert ("id" in rows[0]) == (input_format is None)
    for got, expected in zip(rows, [record for path in sorted(want) for record in want[path]], strict=True):
        _assert_same("embed", got, expected, atol=1e-6)


def _writable(path: Path) -> bool:
    try:
        (path / "probe").touch()
    except OSError:
        return False
    (path / "probe").unlink()
    return True


def _make_unwritable(path: Path) -> None:
    """Read-only for this process, root included (an immutable directory then)."""
    path.chmod(0o555)
    if _writable(path):
        subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if _writable(path):
        pytest.skip("cannot make a directory unwritable here (root, and no chattr +i)")


@pytest.fixture
def unwritable(tmp_path):
    """An existing, empty directory this process cannot write; writable again after the test."""
    path = tmp_path / "read-only"
    path.mkdir()
    yield path
    subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    path.chmod(0o755)


@pytest.mark.ray
def test_ray_unwritable_output_fails_before_the_job_as_the_command(ray_cluster, dirs, capsys, tmp_path,
                                                                   unwritable, monkeypatch):
    """An existing, empty, read-only --output: the command's exit status (3) and one line naming the
    error and the directory, before any input is read."""
    _make_unwritable(unwritable)
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    plain = main(["embed", "--model", str(dirs["cls"]), "--input", str(inp), "--output",
                  str(unwritable / "out.jsonl"), "--device", "cpu"])
    capsys.readouterr()

    def started(*args, **kwargs):
        raise AssertionError("the Ray job started")

    monkeypatch.setattr(ray_cluster.data, "read_binary_files", started)
    code = main(["embed", "--ray", "--model", str(dirs["cls"]), "--input", str(inp), "--output",
                 str(unwritable), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == plain == 3 and len(err.strip().splitlines()) == 1, err
    assert "PermissionError" in err and str(unwritable) in err and "\x1b" not in err


@pytest.mark.ray
@pytest.mark.parametrize("debug", [False, True])
def test_ray_job_failure_is_one_line_naming_the_innermost_error(ray_cluster, dirs, capsys, tmp_path,
                                                                unwritable, monkeypatch, ray_console, debug):
    """The output directory turns read-only once checked: Ray's writer fails inside a Ray task. Exit 3,
    one line naming the worker's error (type, message, file) without colour codes; --debug prints
    Ray's whole chain (its RayTaskError with the remote traceback) and Ray's own log lines."""
    from rembert_fast.integrations import ray_job

    checked = ray_job._check_output

    def check_then_lock(spec: str) -> None:
        checked(spec)
        _make_unwritable(Path(spec))

    monkeypatch.setattr(ray_job, "_check_output", check_then_lock)
    inp = tmp_path / "in.txt"
    inp.write_text("hello\nworld\n")
    code = main(["embed", "--ray", "--model", str(dirs["cls"]), "--input", str(inp), "--output",
                 str(unwritable), "--device", "cpu", *(["--debug"] if debug else [])])
    err = capsys.readouterr().err
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rembert-fast embed: failed: RayJobFailed: PermissionError: ")
    assert str(unwritable) in last
    assert "\x1b" not in last
    if debug:
        assert "RayTaskError(PermissionError)" in err and "The above exception was the direct cause" in err
        assert "Dataset" in ray_console.getvalue()  # Ray Data's own log lines
    else:
        assert len(err.strip().splitlines()) == 1 and ray_console.getvalue() == "", err


@pytest.mark.ray
def test_ray_model_without_the_task_head_exits_2_with_the_command_message(ray_cluster, dirs, capsys,
                                                                           tmp_path):
    """classify on a masked-LM checkpoint (no classifier weights): the actors' engine refuses it; exit 2
    with the plain command's one-line message."""
    inp = tmp_path / "in.txt"
    inp.write_text("hello\n")
    plain = main(["classify", "--model", str(dirs["mlm"]), "--input", str(inp), "--output",
                  str(tmp_path / "plain.jsonl"), "--device", "cpu"])
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rembert-fast")]
    code = main(["classify", "--ray", "--model", str(dirs["mlm"]), "--input", str(inp), "--output",
                 str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == plain == 2 and "has no trained weights for classify" in said[0]
    assert err.strip().splitlines() == said


def _raises_oserror(path: str) -> None:
    raise FileNotFoundError(2, "No such file or directory", path)


class _RefusesModel:
    def __init__(self, error: Exception) -> None:
        raise error

    def ping(self) -> None:
        """Never runs: the constructor raised."""


@pytest.mark.ray
def test_job_error_unwraps_ray_to_the_workers_exception(ray_cluster):
    """A task's error, also through a task that waits on it, is reported as the worker's exception (type,
    message, path) in one line without colour codes; an actor constructor's as the command's model
    message (a ValueError: exit 2)."""
    from rembert_fast.integrations.ray_errors import RayJobFailed, job_error

    inner = ray_cluster.remote(_raises_oserror)

    @ray_cluster.remote
    def outer(path: str) -> None:
        ray_cluster.get(inner.remote(path))

    for task in (inner, outer):
        with pytest.raises(ray_cluster.exceptions.RayTaskError) as caught:
            ray_cluster.get(task.remote("/no/such/file.txt"))
        assert "\x1b" in str(caught.value)  # what the command printed before: Ray's coloured header
        reported = job_error(caught.value, "/models/m")
        assert isinstance(reported, RayJobFailed)
        assert str(reported) == "FileNotFoundError: [Errno 2] No such file or directory: '/no/such/file.txt'"
    actor_class = ray_cluster.remote(num_cpus=0)(_RefusesModel)
    for error, said in [(ValueError("no head\nsecond line"), "/models/m: no head"),
                        (OSError("unreadable weights"), "cannot load model '/models/m': unreadable weights")]:
        with pytest.raises(ray_cluster.exceptions.RayActorError) as caught:
            ray_cluster.get(actor_class.remote(error).ping.remote())
        reported = job_error(caught.value, "/models/m")
        assert type(reported) is ValueError and str(reported) == said


def test_predictor_reads_each_row_in_its_marked_format(dirs, ref):
    """Rows marked `jsonl` false in a "jsonl" predictor are texts (no id, a JSON-looking text embedded
    as it is), the others JSON records; each embedding is transformers' on that text alone. A "txt"
    predictor refuses rows marked JSON (it has no id column to give them)."""
    import pyarrow as pa

    raws = ['{"text": "first line", "id": 4}', '{"text": "a text that looks like JSON"}', "{bad"]
    batch = pa.table({"line": [1, 2, 3], "raw": raws, "jsonl": [True, False, None]})
    rows = Embedder(model_dir=str(dirs["cls"]), input_format="jsonl", device="cpu")(batch).to_pylist()
    assert [r["id"] for r in rows] == ["4", None, None] and "jsonl" not in rows[0]
    assert rows[2]["embedding"] is None and rows[2]["error"].startswith("malformed JSON")
    for got, text in zip(rows[:2], ["first line", raws[1]], strict=True):
        np.testing.assert_allclose(np.asarray(got["embedding"]), ref.embedding(text, "cls").numpy(),
                                   atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="jsonl=true needs input_format 'jsonl'"):
        Embedder(model_dir=str(dirs["cls"]), input_format="txt", device="cpu")(batch)
