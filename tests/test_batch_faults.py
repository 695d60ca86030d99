"""The batch engine and command under faults and hostile input: lines that break a parser, kills at any
moment then `--resume`, other settings on resume, two runs on one output, Ctrl-C, exit statuses.

Kills are mostly simulated in-process (an exception from the writer at its N-th write or flush, the
files left as they were), which is what a SIGKILL leaves once the data written reached the disk; a few
real SIGKILLs of a subprocess check that the simulation is faithful.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from batch_fixtures import tiny_model_dirs

from rembert_fast import inference
from rembert_fast.inference import InferenceEngine


@pytest.fixture(scope="module")
def dirs():
    return tiny_model_dirs()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
