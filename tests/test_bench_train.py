"""`rembert-fast bench --train` on CPU with a tiny config: each implementation in a fresh process, the
first-step losses of rembert_fast and transformers agree, the row fields and the JSON record. Numbers
are not asserted (speed and memory are measured in benchmarks, not tests)."""

from __future__ import annotations

import json

import pytest

from rembert_fast import cli
from tests.test_bench import TINY

ROW_FIELDS = {"impl", "status", "first_loss", "median_ms", "times_ms", "real_tokens", "labelled",
              "tokens_per_s", "peak_step_mb", "resident_before_mb", "speedup_vs_transformers",
              "memory_vs_transformers", "loss_agrees"}


@pytest.mark.parametrize("head", ["mlm", "clm", "cls"])
def test_bench_train_rows_and_losses_agree(head, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    output = tmp_path / "train.json"
    args = cli.build_parser().parse_args(
        ["bench", "--train", "--head", head, "--device", "cpu", "--config", str(config),
         "--shapes", "2x16:variable", "--iters", "1", "--threads", "1", "--output", str(output)])
    assert args.func(args) == 0
    result = json.loads(output.read_text())
    assert result["complete"] is True and result["head"] == head and result["memory"] == "process VmHWM"
    (case,) = result["cases"]
    assert case["shape"] == "2x16 variable" and case["dtype"] == "fp32"
    rows = {row["impl"]: row for row in case["rows"]}
    assert set(rows) == {"rembert_fast", "transformers"}
    for row in rows.values():
        assert set(row) == ROW_FIELDS and row["status"] == "ok" and row["loss_agrees"] is True, row
        assert 0 < row["real_tokens"] <= 32 and row["median_ms"] > 0
    if head == "clm":
        assert rows["rembert_fast"]["labelled"] == rows["rembert_fast"]["real_tokens"]
    assert rows["transformers"]["speedup_vs_transformers"] == 1.0
    assert "rembert_fast" in capsys.readouterr().out


def test_bench_train_bad_fraction_is_a_usage_error(tmp_path, capsys):
    args = cli.build_parser().parse_args(["bench", "--train", "--device", "cpu", "--mlm-fraction", "0",
                                          "--output", str(tmp_path / "x.json")])
    assert args.func(args) == 2
    assert "--mlm-fraction 0.0 must lie in (0, 1]" in capsys.readouterr().err
