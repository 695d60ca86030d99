"""Two gloo ranks on CPU under torchrun. Trainer with DDP (tests/distributed_train_job.py) keeps the
packed path and ends on the weights one process reaches with the same global batch (Trainer's
`num_items_in_batch`, averaged over the ranks, makes the loss the global batch's mean). FSDP2
(`fully_shard` on every layer, tests/fsdp2_job.py) runs the classic path, which calls every module so
its hooks gather the shards, with the unsharded model's loss and gradients. (Trainer's `fsdp` option
on CPU runs DDP: accelerate applies FSDP only on accelerators.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

JOB = Path(__file__).with_name("distributed_train_job.py")
ROOT = JOB.parents[1]


def _run(out: Path, per_device_batch: int, ranks: int, *extra: str) -> list[dict]:
    out.mkdir()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    prefix = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ranks),
        ]
        if ranks > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*prefix, str(JOB), str(out), str(per_device_batch), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def test_ddp_two_ranks_equal_one_process_with_the_global_batch(tmp_path):
    single = _run(tmp_path / "single", 4, 1)
    ranks = _run(tmp_path / "ddp", 2, 2)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["wrappers"] == ["DistributedDataParallel"] for r in ranks), ranks
    assert all(r["packed_calls"] == 3 for r in ranks + single)  # every training forward, packed
    expected = torch.load(tmp_path / "single" / "weights.pt", weights_only=True)
    got = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    initial = _initial_weights()
    assert any(not torch.equal(expected[n], initial[n]) for n in initial)  # training moved the weights


def _initial_weights() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(JOB.parent))
    try:
        from distributed_train_job import CONFIG
    finally:
        sys.path.pop(0)
    import rembert_fast

    torch.manual_seed(0)
    return rembert_fast.RemBertForMaskedLM(rembert_fast.RemBertConfig(**CONFIG)).state_dict()


def test_fsdp2_sharded_layers_run_the_classic_path_with_the_same_gradients(tmp_path):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(JOB.with_name("fsdp2_job.py")),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["packed_calls"] == 0  # the layers' own forwards gather their shards
        assert record["loss_error"] <= 1e-5 and record["grad_error"] <= 1e-5, record
