"""The batch engine and command under faults and hostile input: lines that break a parser, kills at any
moment then `--resume`, other settings on resume, two runs on one output, Ctrl-C, exit statuses.

Kills are mostly simulated in-process (an exception from the writer at its N-th write or flush, the
files left as they were), which is what a SIGKILL leaves once the data written reached the disk; a few
real SIGKILLs of a subprocess check that the simulation is faithful.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_fixtures import sample_texts

from rembert_fast import inference
from rembert_fast.cli import main
from rembert_fast.inference import InferenceEngine

pytest_plugins = ["batch_fixtures"]  # the fixtures dirs, ref and one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(dirs, task="embed", **kwargs):
    return InferenceEngine(dirs["cls"], task, device="cpu", window=4, batch_tokens=80, **kwargs)


# ------------------------------------------------------------------------------ per-line failures
def test_lines_that_break_the_parser_are_error_records(dirs, monkeypatch):
    """A line nested too deeply for json (RecursionError), one whose parse runs out of memory and a text
    the tokenizer cannot take (a lone surrogate) are each that line's error record; the rest compute."""
    deep = "[" * 100_000 + "]" * 100_000
    deep_id = '{"text": "x", "id": ' + "[" * 5000 + "]" * 5000 + "}"
    hungry = '{"text": "' + "m" * 50 + '"}'
    lines = ['{"text": "hello"}', deep, deep_id, hungry, '{"text": "bad \\ud800 text"}', '{"text": "bye"}']
    loads = json.loads

    def tight_memory(text, *args, **kwargs):
        if text == hungry:
            raise MemoryError
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(inference.inputs.json, "loads", tight_memory)
    records = list(_engine(dirs).run(lines, jsonl=True))
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert sorted(errors) == [2, 3, 4, 5]
    assert "nested too deeply" in errors[2] and "nested too deeply" in errors[3]
    assert "memory" in errors[4] and "tokenizer failed" in errors[5]
    plain = list(_engine(dirs).run(["hello", "bye"]))
    for got, want in zip((records[0], records[5]), plain, strict=True):
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- helpers
class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, and nothing more is written."""


def _run(capsys, task, model, inp, out, *extra):
    code = main([task, "--model", str(model), "--input", str(inp), "--output", str(out), "--window", "4",
                 "--batch-tokens", "80", "--device", "cpu", *extra])
    return code, capsys.readouterr().err


def _texts(tmp_path, copies=2) -> Path:
    """An input of multilingual lines, one of them not UTF-8 (an error record)."""
    path = tmp_path / "in.txt"
    path.write_bytes(("\n".join(sample_texts() * copies) + "\n").encode() + b"\xff bad\nlast line\n")
    return path


def _started(monkeypatch, capsys, *args):
    """Run the command and kill it at its first record: the settings record and an empty .partial."""
    def die(self, record):
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(inference.JsonlWriter, "write", die)
        patch.setattr(inference.NpyWriter, "write", die)
        with pytest.raises(_Killed):
            _run(capsys, *args)


def _complete(capsys, dirs, inp, out, *extra) -> dict[str, bytes]:
    """The files of an uninterrupted run, by name."""
    assert _run(capsys, "embed", dirs["cls"], inp, out, *extra)[0] == 1
    errors = out.with_name(out.stem + ".errors.jsonl")
    return {p.name: p.read_bytes() for p in (out, errors) if p.exists()}


def _assert_files(tmp_path, expected: dict[str, bytes]) -> None:
    names = {p.name for p in tmp_path.iterdir()} - {"in.txt", "in.jsonl"}
    assert names == set(expected)  # no .partial, .lock or settings record left
    for name, data in expected.items():
        assert (tmp_path / name).read_bytes() == data, name


# ----------------------------------------------------------------------------------- kill, resume
@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_resume_after_kills_at_random_points_gives_the_same_bytes(dirs, capsys, tmp_path, monkeypatch,
                                                                 suffix):
    """What a kill leaves once data reached the disk is a prefix of the uninterrupted output (for a
    .npy: rows after the header, and the errors file at least as far as the rows); from each of many
    such states --resume must give the uninterrupted bytes, error records and exit status included."""
    inp, out = _texts(tmp_path), tmp_path / f"out{suffix}"
    expected = _complete(capsys, dirs, inp, out)
    for path in list(tmp_path.iterdir()):
        if path.name != "in.txt":
            path.unlink()
    rng = random.Random(16)
    data = expected[out.name]
    errors = expected.get("out.errors.jsonl", b"")
    start = 128 if suffix == ".npy" else 0
    for cut in sorted(rng.sample(range(start, len(data)), 7)) + [len(data)]:
        _started(monkeypatch, capsys, "embed", dirs["cls"], inp, out)
        if suffix == ".npy":
            # The header as written at the start (no rows), then `cut` bytes of rows; errors are flushed
            # before rows, so the errors file holds at least the error records of the rows on disk.
            header = inference.writers.npy_header(0, 32, np.dtype(np.float32))
            (tmp_path / "out.npy.partial").write_bytes(header + data[128:cut])
            (tmp_path / "out.errors.jsonl.partial").write_bytes(errors[: rng.randrange(len(errors) + 1)]
                                                               if cut < len(data) - 64 else errors)
        else:
            (tmp_path / "out.jsonl.partial").write_bytes(data[:cut])
        code, err = _run(capsys, "embed", dirs["cls"], inp, out, "--resume")
        assert code == 1, err
        _assert_files(tmp_path, expected)
        out.unlink()


def test_npy_commit_killed_between_its_renames_keeps_the_error_records(dirs, capsys, tmp_path, monkeypatch):
    """commit renames the errors file, then the .npy: a kill after the first rename (or after both,
    before the settings record goes) must still resume to the whole output, and exit 1."""
    inp, out = _texts(tmp_path, copies=1), tmp_path / "out.npy"
    expected = _complete(capsys, dirs, inp, out)
    out.unlink()
    (tmp_path / "out.errors.jsonl").unlink()
    replace = os.replace
    for renames in (1, 2):
        done = []

        def replace_then_die(src, dst, renames=renames, done=done):
            replace(src, dst)
            if not str(dst).endswith(".tmp") and "settings" not in str(dst):
                done.append(dst)
                if len(done) == renames:
                    raise _Killed

        with monkeypatch.context() as patch:
            patch.setattr(inference.writers.os, "replace", replace_then_die)
            with pytest.raises(_Killed):
                _run(capsys, "embed", dirs["cls"], inp, out)
        code, err = _run(capsys, "embed", dirs["cls"], inp, out, "--resume")
        assert code == 1, err
        _assert_files(tmp_path, expected)
        out.unlink()
        (tmp_path / "out.errors.jsonl").unlink()


def _subprocess(dirs, inp, out, *extra) -> subprocess.Popen:
    """The command in a subprocess whose writers flush every few records, so a kill finds data on disk."""
    code = ("import sys; from rembert_fast.inference import writers as w\n"
            "for c in (w.JsonlWriter, w.NpyWriter): c.__init__.__kwdefaults__['flush_bytes'] = 1500\n"
            "from rembert_fast.cli import main; sys.exit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", code, "embed", "--model", str(dirs["cls"]), "--input", str(inp),
               "--output", str(out), "--device", "cpu", "--window", "64", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def as_a_background_job():  # a shell starts `cmd &` with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_a_background_job)


def _when_written(partial: Path, process: subprocess.Popen, least: int) -> None:
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > least):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.01)


@pytest.mark.parametrize("suffix, sig", [(".jsonl", signal.SIGINT), (".npy", signal.SIGKILL)])
def test_a_real_signal_mid_run_then_resume(dirs, capsys, tmp_path, suffix, sig):
    """SIGINT stops the run within seconds with exit 130 (even a background job's, which starts with
    SIGINT ignored), keeps the .partial and says how to resume; SIGKILL leaves what it leaves. Either
    way --resume gives the uninterrupted bytes."""
    inp = _texts(tmp_path, copies=60)
    out = tmp_path / f"out{suffix}"
    process = _subprocess(dirs, inp, out)
    _when_written(tmp_path / f"out{suffix}.partial", process, 128 + random.randrange(20_000))
    sent = time.monotonic()
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert time.monotonic() - sent < 10 and process.returncode == 130, err
        message = err.strip().splitlines()[-1]
        assert "interrupted" in message and "--resume" in message and "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    assert (tmp_path / f"out{suffix}.partial").exists() and not out.exists()
    torch.set_num_threads(1)
    extra = ("--window", "64", "--batch-tokens", "4096")
    assert main(["embed", "--model", str(dirs["cls"]), "--input", str(inp), "--output", str(out),
                 "--device", "cpu", "--resume", *extra]) == 1
    resumed = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "in.txt"}
    for path in tmp_path.iterdir():
        if path.name != "in.txt":
            path.unlink()
    assert main(["embed", "--model", str(dirs["cls"]), "--input", str(inp), "--output", str(out),
                 "--device", "cpu", *extra]) == 1
    capsys.readouterr()
    _assert_files(tmp_path, resumed)


# ------------------------------------------------------------------------- settings, lock, status
@pytest.mark.parametrize("change", ["pooling", "model", "max length", "npy dtype", "no record"])
def test_resume_with_other_settings_is_refused_naming_the_difference(dirs, capsys, tmp_path, monkeypatch,
                                                                     change):
    inp = _texts(tmp_path, copies=1)
    suffix = ".npy" if change == "npy dtype" else ".jsonl"
    out = tmp_path / f"out{suffix}"
    _started(monkeypatch, capsys, "embed", dirs["cls"], inp, out, "--pooling", "cls")
    model, extra, named = dirs["cls"], ["--pooling", "cls"], ""
    if change == "pooling":
        extra, named = ["--pooling", "mean"], "pooling was 'cls', now 'mean'"
    elif change == "model":
        model, named = dirs["mlm"], "model was "
    elif change == "max length":
        extra, named = [*extra, "--max-length", "20"], "max_length was 64, now 20"
    elif change == "npy dtype":
        extra, named = [*extra, "--npy-dtype", "float16"], "npy_dtype was 'float32', now 'float16'"
    else:
        (tmp_path / f"out{suffix}.settings.json").unlink()
        named = "has no record of the settings"
    partial = (tmp_path / f"out{suffix}.partial").read_bytes()
    code, err = _run(capsys, "embed", model, inp, out, *extra, "--resume")
    assert code == 2 and named in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert (tmp_path / f"out{suffix}.partial").read_bytes() == partial and not out.exists()


def test_resume_of_an_output_inside_the_model_directory(dirs, capsys, tmp_path, monkeypatch):
    """The output's own files (.partial, lock, settings record) are not model files that "changed"."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(dirs["cls"], model)
    inp, out = _texts(tmp_path, copies=1), model / "out.jsonl"
    expected = _run(capsys, "embed", model, inp, out)[0], out.read_bytes()
    out.unlink()
    _started(monkeypatch, capsys, "embed", model, inp, out)
    (model / "out.jsonl.partial").write_bytes(expected[1][: len(expected[1]) // 2])
    code, err = _run(capsys, "embed", model, inp, out, "--resume")
    assert (code, out.read_bytes()) == expected, err


def test_a_second_run_on_a_locked_output_exits_2_naming_the_holder(dirs, capsys, tmp_path):
    inp, out = _texts(tmp_path, copies=1), tmp_path / "out.jsonl"
    lock = inference.OutputLock(out)
    try:
        code, err = _run(capsys, "embed", dirs["cls"], inp, out, "--resume")
    finally:
        lock.release()
    assert code == 2 and f"pid {os.getpid()}" in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()
    assert _run(capsys, "embed", dirs["cls"], inp, out)[0] == 1  # released: the next run proceeds
    assert not (tmp_path / "out.jsonl.lock").exists()


@pytest.mark.parametrize("fault", ["disk full", "unwritable output", "crash", "interrupt"])
def test_failures_exit_3_and_interrupts_130_with_one_line(dirs, capsys, tmp_path, monkeypatch, fault):
    """Exit 1 means "output complete, some error records": a failed run must not exit 1 too."""
    inp, out = _texts(tmp_path, copies=1), tmp_path / "out.jsonl"
    if fault == "disk full":
        def full(self):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(inference.JsonlWriter, "flush", full)
    elif fault == "unwritable output":
        out = Path("/proc/out.jsonl")  # a directory no one can create files in, root included
    elif fault == "crash":
        def broken(self, *args):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        monkeypatch.setattr(InferenceEngine, "_forward", broken)
    else:
        def interrupt(self, *args):
            raise KeyboardInterrupt
        monkeypatch.setattr(InferenceEngine, "_forward", interrupt)
    code, err = _run(capsys, "embed", dirs["cls"], inp, out)
    assert code == (130 if fault == "interrupt" else 3), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {"disk full": "No space left", "unwritable output": "/proc/out.jsonl", "crash": "illegal memory",
            "interrupt": "--resume"}[fault] in err
    if fault in ("crash", "interrupt"):
        assert (tmp_path / "out.jsonl.partial").exists() and "out.jsonl.partial" in err
    if fault == "crash":
        code, err = _run(capsys, "embed", dirs["cls"], inp, out, "--debug")
        assert code == 3 and "Traceback" in err and "illegal memory" in err


def _rank_process(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker `rank` among the descendants of `launcher`, or None (not yet)."""
    pending, seen = [launcher], []
    while pending:
        pid = pending.pop()
        seen.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                pending += [int(child) for child in f.read().split()]
        except OSError:
            continue
    for pid in seen[1:]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_torchrun_with_one_rank_killed_resumes_to_the_bytes_of_one_process(dirs, capsys, tmp_path):
    inp = _texts(tmp_path, copies=12)
    extra = ["--window", "16", "--batch-tokens", "256", "--device", "cpu"]
    base = ["embed", "--model", str(dirs["cls"]), "--input", str(inp)]
    assert main([*base, "--output", str(tmp_path / "one.jsonl"), *extra]) == 1  # one thread, as torchrun
    capsys.readouterr()
    script = tmp_path / "flush_often.py"
    script.write_text("import sys\nfrom rembert_fast.inference import writers as w\n"
                      "w.JsonlWriter.__init__.__kwdefaults__['flush_bytes'] = 1500\n"
                      "from rembert_fast.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), *base, "--output", str(tmp_path / "two.jsonl"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _when_written(tmp_path / "two.jsonl.rank1-of-2.partial", launcher, random.randrange(1000, 6000))
    victim = _rank_process(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and not (tmp_path / "two.jsonl").exists(), err[-2000:]
    done = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert {p.name for p in tmp_path.iterdir()} == {"in.txt", "flush_often.py", "one.jsonl", "two.jsonl"}


# ------------------------------------------------------------------------------------- long lines
def _hostile_line(rng: random.Random, words: list[str], length: int) -> str:
    """About `length` characters of multilingual words joined by the separators that could break a
    cut: runs of spaces, tabs, no-break and ideographic spaces, a zero-width space, combining marks,
    an Arabic Prepend sign before a space, quote pairs the normaliser replaces, capital sigmas, [MASK]."""
    odd = ["  ", "   ", "\t", "\u00a0", "\u3000", " \u200b ", "\u0301 ", " \u0301", "\u0600 ", "'' ", "``",
           " ΣΑΣ ", "Σ ", " [MASK] ", "[MASK] ", " \n ", "\r\n"]
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(words))
        parts.append(rng.choice(odd) if rng.random() < 0.3 else " ")
    return "".join(parts)[:length]


def test_long_lines_cut_before_tokenising_give_the_ids_of_the_whole_line(dirs):
    """encode_prefix against tokenising the whole line then truncating, on random multilingual lines
    cut with every window size, for several max lengths: ids, type ids, offsets,
    special-token masks and the truncated flag all equal, and most lines really took the prefix."""
    from tokenizer_fixtures import read_multilingual_lines

    words = " ".join(read_multilingual_lines()).split(" ")
    rng = random.Random(9)
    engine = _engine(dirs)
    backend = engine._backend
    assert inference.truncation.prefix_safe(backend)
    prefixed = 0
    for max_length in (8, 23, 64):
        backend.enable_truncation(max_length)
        for _ in range(25):
            text = _hostile_line(rng, words, rng.randrange(8 * max_length))
            whole = backend.encode(text, add_special_tokens=True)
            # Every window size (in steps of a few characters), so that some prefixes end just past
            # the max_length-th token, where a cut that changed the last word would show.
            for window in range(1, len(text) + 2, rng.randrange(1, 4)):
                cut = inference.truncation.encode_prefix(backend, text, window)
                assert cut.ids == whole.ids, (text, window)
                assert cut.offsets == whole.offsets and cut.type_ids == whole.type_ids, (text, window)
                assert cut.special_tokens_mask == whole.special_tokens_mask, (text, window)
                assert bool(cut.overflowing) == bool(whole.overflowing), (text, window)
                prefixed += len(cut.overflowing) < len(whole.overflowing)
    assert prefixed > 600


class _Recording:
    """A tokenizers.Tokenizer that records the inputs it is asked to encode."""

    def __init__(self, backend):
        self._backend, self.seen = backend, []

    def encode(self, text, **kwargs):
        self.seen.append(text)
        return self._backend.encode(text, **kwargs)

    def encode_batch(self, inputs, **kwargs):
        self.seen.extend(inputs)
        return self._backend.encode_batch(inputs, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_long_line_is_not_tokenised_whole(dirs, ref):
    """A 1 MB line costs what its first window costs (it took 120 s for 5 MB tokenised whole)."""
    engine = _engine(dirs)
    engine._backend = recording = _Recording(engine._backend)
    line = " ".join(sample_texts()) * 100
    line = (line * (1_000_000 // len(line) + 1))[:1_000_000]
    [record] = engine.run([line])
    assert max(map(len, recording.seen)) < 10_000 and engine.stats.truncated == 1
    # The reference tokenises a 20000-character prefix whole: far more than 64 tokens either way.
    np.testing.assert_allclose(record["embedding"], ref.embedding(line[:20_000], "cls"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", ["no split", "strip", "collapse after nfkd", "rstrip token", "pair"])
def test_tokenizer_settings_no_cut_is_proven_for_are_tokenised_whole(dirs, change):
    from tokenizers import Tokenizer

    engine = _engine(dirs)
    spec = json.loads(engine._backend.to_str())
    steps = spec["normalizer"]["normalizers"]
    if change == "no split":
        spec["pre_tokenizer"]["split"] = False
    elif change == "strip":
        steps.append({"type": "Strip", "strip_left": True, "strip_right": True})
    elif change == "collapse after nfkd":
        steps.append(steps.pop(2))
    elif change == "rstrip token":
        spec["added_tokens"][2]["rstrip"] = True
    if change != "pair":
        assert inference.truncation.prefix_safe(engine._backend)
        assert not inference.truncation.prefix_safe(Tokenizer.from_str(json.dumps(spec)))
        return
    engine._backend = recording = _Recording(engine._backend)
    long = "word " * 5000
    [record] = engine.run([{"text": long, "text_pair": "pair"}])
    assert recording.seen == [(long, "pair")] and "embedding" in record


# ---------------------------------------------------------------------------------- linked shards
@pytest.mark.parametrize("layout", ["shard outside", "single file outside", "link inside", "hub cache"])
def test_weights_linked_from_outside_the_model_directory_are_refused(dirs, capsys, tmp_path, layout):
    """A checkpoint directory (or its shard index) whose weights are links to files elsewhere would make
    loading read any file on the disk: refused, except the Hub cache's snapshot -> blobs links."""
    import shutil

    import rembert_fast

    model = rembert_fast.RemBertModel.from_pretrained(str(dirs["cls"]))
    directory = tmp_path / "model"
    if layout == "hub cache":
        directory = tmp_path / "models--org--tiny" / "snapshots" / "0123abc"
    directory.mkdir(parents=True)
    model.save_pretrained(directory, max_shard_size="20KB" if layout == "shard outside" else "1GB")
    shutil.copy(dirs["cls"] / "sentencepiece.model", directory)
    weights = sorted(p for p in directory.iterdir() if p.suffix == ".safetensors")
    victim = weights[-1]
    elsewhere = {"link inside": directory / "stored" / victim.name,
                 "hub cache": directory.parent.parent / "blobs" / "4f2e9a"}.get(layout, tmp_path / "secret")
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    victim.rename(elsewhere)
    victim.symlink_to(os.path.relpath(elsewhere, directory))
    if layout in ("link inside", "hub cache"):
        loaded = rembert_fast.RemBertModel.from_pretrained(str(directory))
        torch.testing.assert_close(loaded.state_dict(), model.state_dict(), atol=0, rtol=0)
        return
    with pytest.raises(ValueError, match="outside the model directory"):
        rembert_fast.RemBertModel.from_pretrained(str(directory))
    code, err = _run(capsys, "embed", directory, _texts(tmp_path, copies=1), tmp_path / "o.jsonl")
    assert code == 2 and "outside the model directory" in err and err.count("\n") == 1
