"""The `rembert-fast` batch subcommands end to end: files in, files out, exit codes, resume, torchrun.

The engine's numbers are checked line by line against transformers in test_inference.py; here the
command's output must hold the same records (embed also against transformers directly), one per input
line in order, and survive interruption and splitting across processes byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_fixtures import Reference, sample_texts
from hub_cache import add_to_hub_cache

from rembert_fast import inference
from rembert_fast.cli import main

MIXED = Path(__file__).parent / "data" / "batch_mixed.jsonl"  # good, malformed and odd lines
MIXED_ERRORS = {3, 4, 5, 10}  # not JSON, no "text", non-string "text", empty line
TASK_DIR = {"embed": "cls", "classify": "cls", "fill-mask": "mlm", "token-classify": "tok"}

pytest_plugins = ["batch_fixtures"]  # the fixtures dirs, ref and one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, task, model, inp, out, *extra):
    code = main([task, "--model", str(model), "--input", str(inp), "--output", str(out), "--window", "4",
                 "--batch-tokens", "80", *extra])
    return code, capsys.readouterr().err


def _started(monkeypatch, capsys, task, model, inp, out, *extra):
    """Run the command, stopped (Ctrl-C) at its first record: the output's settings record and its
    .partial exist, as a crash leaves them; the caller then writes what the crash left in the .partial."""
    def interrupt(self, record):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(inference.JsonlWriter, "write", interrupt)
        patch.setattr(inference.NpyWriter, "write", interrupt)
        assert _run(capsys, task, model, inp, out, *extra)[0] == 130


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("task", ["embed", "classify", "fill-mask", "token-classify"])
def test_every_subcommand_writes_one_record_per_line_in_order(dirs, capsys, tmp_path, task):
    options = {"classify": ["--all-scores"], "fill-mask": ["--top-k", "2"], "token-classify": ["--aggregate",
                                                                                               "first"]}
    out = tmp_path / "out.jsonl"
    code, err = _run(capsys, task, dirs[TASK_DIR[task]], MIXED, out, *options.get(task, []))
    assert code == 1  # the output is complete, and some lines are error records
    records = _lines(out)
    n = inference.count_lines(MIXED)
    assert [r["line"] for r in records] == list(range(1, n + 1))
    errors = {r["line"] for r in records if "error" in r}
    assert errors == (MIXED_ERRORS | {1, 6, 8, 11} if task == "fill-mask" else MIXED_ERRORS)  # no [MASK]
    assert [r.get("id") for r in records if r["line"] in (1, 2, 7, 11)] == ["en-1", 2, "pair", 10.5]
    assert "id" in records[8] and records[8]["id"] is None
    assert f"{n} lines, {len(errors)} errors" in err and err.count("\n") == 1
    engine = inference.InferenceEngine(
        dirs[TASK_DIR[task]], task, device="cpu", window=4, batch_tokens=80, all_scores=True, top_k=2,
        aggregate="first")
    with open(MIXED, "rb") as f:
        expected = [inference.encode_record(r) for r in engine.run(inference.iter_lines(f), jsonl=True)]
    assert out.read_bytes() == b"".join(expected)


def test_embed_output_matches_transformers(dirs, capsys, tmp_path):
    ref = Reference(dirs)
    out = tmp_path / "out.jsonl"
    assert _run(capsys, "embed", dirs["cls"], MIXED, out, "--pooling", "mean")[0] == 1
    for record in _lines(out):
        if "error" in record:
            continue
        item = json.loads(MIXED.read_text(encoding="utf-8").splitlines()[record["line"] - 1])
        expected = ref.embedding(item["text"], "mean", pair=item.get("text_pair"))
        torch.testing.assert_close(torch.tensor(record["embedding"]), expected, atol=1e-5, rtol=0)


def test_txt_stdin_and_jsonl_inputs_agree(dirs, capsys, tmp_path, monkeypatch):
    texts = sample_texts()
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    jsonl = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "in.jsonl").write_text(jsonl, encoding="utf-8")
    assert _run(capsys, "classify", dirs["cls"], tmp_path / "in.txt", tmp_path / "a.jsonl")[0] == 0
    assert _run(capsys, "classify", dirs["cls"], tmp_path / "in.jsonl", tmp_path / "b.jsonl")[0] == 0
    stdin = io.TextIOWrapper(io.BytesIO((tmp_path / "in.txt").read_bytes()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert _run(capsys, "classify", dirs["cls"], "-", tmp_path / "c.jsonl")[0] == 0
    a = (tmp_path / "a.jsonl").read_bytes()
    assert len(a.splitlines()) == len(texts)
    assert (tmp_path / "b.jsonl").read_bytes() == a and (tmp_path / "c.jsonl").read_bytes() == a


def test_npy_output_has_nan_rows_and_an_errors_file(dirs, capsys, tmp_path):
    assert _run(capsys, "embed", dirs["cls"], MIXED, tmp_path / "v.npy")[0] == 1
    assert _run(capsys, "embed", dirs["cls"], MIXED, tmp_path / "v.jsonl")[0] == 1
    rows = np.load(tmp_path / "v.npy")
    records = _lines(tmp_path / "v.jsonl")
    assert rows.shape == (len(records), 32) and rows.dtype == np.float32
    for record, row in zip(records, rows, strict=True):
        if "error" in record:
            assert np.isnan(row).all()
        else:
            np.testing.assert_array_equal(row, np.array(record["embedding"], dtype=np.float32))
    errors = _lines(tmp_path / "v.errors.jsonl")
    assert errors == [r for r in records if "error" in r] and {r["line"] for r in errors} == MIXED_ERRORS
    assert _run(capsys, "embed", dirs["cls"], MIXED, tmp_path / "h.npy", "--npy-dtype", "float16")[0] == 1
    half = np.load(tmp_path / "h.npy")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, rows.astype(np.float16))


def test_embed_takes_a_hub_model_id_from_the_cache(dirs, capsys, tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    add_to_hub_cache(cache, "tiny-org/cls", dirs["cls"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    assert _run(capsys, "embed", dirs["cls"], MIXED, tmp_path / "dir.npy")[0] == 1
    assert _run(capsys, "embed", "tiny-org/cls", MIXED, tmp_path / "hub.npy")[0] == 1
    np.testing.assert_array_equal(np.load(tmp_path / "hub.npy"), np.load(tmp_path / "dir.npy"))
    code, err = _run(capsys, "embed", "tiny-org/absent", MIXED, tmp_path / "none.npy")
    assert code == 2 and err.count("\n") == 1 and "'tiny-org/absent'" in err and str(cache) in err


def test_truncation_is_counted_and_empty_text_is_valid(dirs, capsys, tmp_path):
    text = "short\n\n" + "a much longer line of text " * 10 + "\n"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    code, err = _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", tmp_path / "o.jsonl",
                     "--max-length", "16")
    assert code == 0
    assert "3 lines, 0 errors, 1 truncated" in err and err.count("\n") == 1  # no bar: stderr is no TTY
    code, err = _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", tmp_path / "o.jsonl", "--progress")
    assert code == 0 and "3/3" in err and "line/s" in err and "tokens/s" in err


@pytest.mark.parametrize("case", ["no model dir", "no config", "no input", "input is a dir",
                                  "npy for classify", "bad suffix", "max-length too long"])
def test_usage_errors_exit_2_with_one_line(dirs, capsys, tmp_path, case):
    model, inp, out, task, extra = dirs["cls"], MIXED, tmp_path / "o.jsonl", "classify", []
    if case == "no model dir":
        model = tmp_path / "missing"
    elif case == "no config":
        model = tmp_path
    elif case == "no input":
        inp = tmp_path / "missing.txt"
    elif case == "input is a dir":
        inp = tmp_path
    elif case == "npy for classify":
        out = tmp_path / "o.npy"
    elif case == "bad suffix":
        out = tmp_path / "o.csv"
    else:
        extra = ["--max-length", "100"]
    code, err = _run(capsys, task, model, inp, out, *extra)
    assert code == 2
    assert err.startswith("rembert-fast classify: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "o.jsonl.partial").exists()


@pytest.mark.parametrize("case", ["output is the input", "npy errors file is the input", "output is a dir"])
def test_outputs_that_would_destroy_something_are_usage_errors(dirs, capsys, tmp_path, case):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "keep me"}\n', encoding="utf-8")
    task, out = "classify", inp
    if case == "npy errors file is the input":
        task, inp, out = "embed", tmp_path / "o.errors.jsonl", tmp_path / "o.npy"
        inp.write_text('{"text": "keep me"}\n', encoding="utf-8")
    elif case == "output is a dir":
        out = tmp_path / "d.jsonl"
        out.mkdir()
    code, err = _run(capsys, task, dirs["cls"], inp, out)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert ("is the input file" if "input" in case else "is a directory") in err
    assert inp.read_text(encoding="utf-8") == '{"text": "keep me"}\n'


@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_resume_after_a_crash_gives_the_same_bytes(dirs, capsys, tmp_path, suffix, monkeypatch):
    texts = sample_texts() * 2
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / f"out{suffix}"
    assert _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", out)[0] == 0
    complete = out.read_bytes()
    _started(monkeypatch, capsys, "embed", dirs["cls"], tmp_path / "in.txt", out)
    # A crash while line 11's record (or row) was being written leaves a torn .partial file.
    cut = complete.index(b'{"line": 11,') + 40 if suffix == ".jsonl" else 128 + 10 * 32 * 4 + 17
    partial = tmp_path / f"out{suffix}.partial"
    partial.write_bytes(complete[:cut])
    out.unlink()
    if suffix == ".npy":
        (tmp_path / "out.errors.jsonl").rename(tmp_path / "out.errors.jsonl.partial")
    code, err = _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", out, "--resume")
    assert code == 0 and not partial.exists()
    assert f"{len(texts) - 10} lines, 0 errors" in err and "continued after 10 lines" in err
    assert out.read_bytes() == complete


@pytest.mark.parametrize("aggregate", ["first", "average"])
def test_resume_of_aggregated_token_classify(dirs, capsys, tmp_path, aggregate, monkeypatch):
    """Aggregated records hold "words", not "tokens": --resume must still know its own output."""
    texts = sample_texts()
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    extra = ("--aggregate", aggregate)
    assert _run(capsys, "token-classify", dirs["tok"], tmp_path / "in.txt", out, *extra)[0] == 0
    complete = out.read_bytes()
    _started(monkeypatch, capsys, "token-classify", dirs["tok"], tmp_path / "in.txt", out, *extra)
    partial = tmp_path / "out.jsonl.partial"
    partial.write_bytes(complete[:complete.index(b'{"line": 6,') + 20])
    out.unlink()
    code, err = _run(capsys, "token-classify", dirs["tok"], tmp_path / "in.txt", out, *extra, "--resume")
    assert code == 0 and "continued after 5 lines" in err and out.read_bytes() == complete


def test_npy_run_killed_before_its_first_flush_resumes(dirs, capsys, tmp_path, monkeypatch):
    """The .npy header is on disk when the run starts; an empty .partial (a run killed before even
    that) starts over instead of refusing to resume."""
    texts = sample_texts()
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", out)[0] == 0
    complete = out.read_bytes()
    from rembert_fast.inference import NpyWriter

    writer = NpyWriter(tmp_path / "early.npy", tmp_path / "early.errors.jsonl", 8)
    assert (tmp_path / "early.npy.partial").stat().st_size == 128  # the header, before any write
    writer.close()
    _started(monkeypatch, capsys, "embed", dirs["cls"], tmp_path / "in.txt", out)
    out.unlink()
    (tmp_path / "out.npy.partial").write_bytes(b"")
    (tmp_path / "out.errors.jsonl.partial").write_bytes(b"")
    code, err = _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", out, "--resume")
    assert code == 0 and out.read_bytes() == complete


def test_an_id_that_cannot_be_written_is_an_error_record(dirs, capsys, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "hi", "id": "\\ud800"}\n{"text": "ok", "id": 2}\n',
                                       encoding="utf-8")
    code, _ = _run(capsys, "classify", dirs["cls"], tmp_path / "in.jsonl", tmp_path / "o.jsonl")
    records = _lines(tmp_path / "o.jsonl")
    assert code == 1 and "cannot be written as JSON" in records[0]["error"] and "id" not in records[0]
    assert records[1]["id"] == 2 and "label" in records[1]


@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_torchrun_two_processes_match_one(dirs, capsys, tmp_path, suffix):
    """Two ranks give the bytes one process gives, with a line that is an error record among them: the
    exit status is 1 (from rank 0 alone, after its summary), as for one process."""
    texts = sample_texts()
    (tmp_path / "in.txt").write_bytes("\n".join(texts).encode() + b"\n\xff not UTF-8\n")
    # torchrun gives each process one thread; so does this module to the one-process run: GEMM bits
    # depend on the thread count.
    assert torch.get_num_threads() == 1
    assert _run(capsys, "embed", dirs["cls"], tmp_path / "in.txt", tmp_path / f"one{suffix}")[0] == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "rembert_fast.cli", "embed", "--model", str(dirs["cls"]),
               "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / f"two{suffix}"),
               "--window", "4", "--batch-tokens", "80", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert (tmp_path / f"two{suffix}").read_bytes() == (tmp_path / f"one{suffix}").read_bytes()
    if suffix == ".npy":
        errors = [(tmp_path / f"{name}.errors.jsonl").read_bytes() for name in ("one", "two")]
        assert errors[0] == errors[1] and b"UTF-8" in errors[0] and errors[0].count(b"\n") == 1
    leftovers = {p.name for p in tmp_path.iterdir()} - {"in.txt", f"one{suffix}", f"two{suffix}",
                                                         "one.errors.jsonl", "two.errors.jsonl"}
    assert not leftovers  # rank parts and .partial files are gone
    assert f"{len(texts) + 1} lines, 1 errors" in done.stderr  # rank 0's summary: it was not killed
    assert "<NO_OTHER_FAILURES>" in done.stderr  # torchrun's report: rank 0 alone exited 1


def _fake_process_group(monkeypatch, local_rank: int) -> list:
    """torchrun's environment for rank `local_rank` of 2, with torch.distributed and set_device recorded."""
    import torch.distributed as dist

    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: local_rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", str(device))))
    return calls


def test_torchrun_on_gpus_counts_through_gloo(monkeypatch):
    """The collectives carry a few host-side counts: gloo, which (unlike NCCL, at the first collective,
    after all the work) also takes two ranks sharing one GPU."""
    from rembert_fast import cli

    calls = _fake_process_group(monkeypatch, 1)
    monkeypatch.setattr(inference, "resolve_device", torch.device)  # no GPU needed to pick the backend
    assert cli._distributed("cuda:0") == (1, 2, "cuda:0")
    assert calls == [("set_device", "cuda:0"), ("init", "gloo")]
    calls.clear()
    assert cli._distributed(None if torch.cuda.is_available() else "cuda") == (1, 2, "cuda:1")
    assert calls == [("set_device", "cuda:1"), ("init", "gloo")]


def test_torchrun_with_more_processes_than_gpus_is_a_usage_error(monkeypatch):
    from rembert_fast import cli

    calls = _fake_process_group(monkeypatch, 64)
    with pytest.raises(cli.UsageError, match="cuda:64"):
        cli._distributed("cuda")
    assert calls == []


def test_doctor_still_works(capsys, monkeypatch):
    assert main(["doctor", "--json"]) == 0
    assert "backends" in json.loads(capsys.readouterr().out)
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "bogus")  # the diagnosis shows it instead of crashing
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requested_backend"].startswith(
        "invalid: REMBERT_FAST_BACKEND='bogus' is not one of")
