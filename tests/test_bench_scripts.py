"""The kernel benchmark scripts run end to end on this machine (on CPU: their eager rows only).

Speed is not asserted here (benchmarks measure it); this proves each script still imports, checks
agreement, times, prints its table and writes well-formed JSON, so a GPU session finds them working.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parents[1] / "benches"


@pytest.mark.parametrize("script", ["bench_layer_norm.py", "bench_bias_act.py", "bench_attention.py",
                                    "bench_embed.py", "bench_layer_norm_backward.py",
                                    "bench_bias_act_backward.py", "bench_attention_backward.py"])
def test_kernel_bench_script_writes_rows(script: str, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    # No CUDA device in the script, even on a GPU machine: the GPU tables are gpu_check.sh's, minutes long.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(BENCHES / script), "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["rows"], f"{script} wrote no rows"
    # Rows are saved after every shape (complete: false), so a run cut off by a time limit keeps them.
    assert record["complete"] is True and not list(tmp_path.glob("*.partial"))
    for row in record["rows"]:
        assert row["impl"]
        assert row["median_us"] > 0
    assert "eager" in result.stdout
