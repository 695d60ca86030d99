"""End-to-end RemBERT forward: rembert_fast against transformers eager, same weights, same inputs.

    python benches/bench_e2e.py [options of `rembert-fast bench`]    # the full table and JSON
    python -m pytest benches/bench_e2e.py --benchmark-columns=median,min,max,rounds

The `__main__` entry is `rembert-fast bench` (see `rembert_fast/bench/` for what it measures and
writes). Under pytest-benchmark, one case per implementation, on the device's default case:
- CPU: RemBERT's widths with 2 layers, float32, 8 sequences padded to 512 with lengths uniform in
  32..512 (the padded-batch case the CPU target is about);
- CUDA: the full 32 layers, bfloat16, 64 sequences padded to 512, lengths uniform in 32..512.
transformers runs first; rembert_fast's `extra_info` then holds the ratio of real tokens/s to it,
measured in the same session, and both hold the max abs error vs transformers in float32.
"""

from __future__ import annotations

import statistics
import sys

import pytest
import torch

import rembert_fast
import rembert_fast.bench.environment
from rembert_fast import bench

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
LAYERS = None if CUDA else 2
SHAPE = bench.Shape(64, 512, "variable") if CUDA else bench.Shape(8, 512, "variable")
IMPLS = ("transformers", "rembert_fast")
ROUNDS = 10 if CUDA else 3

_medians: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("transformers")
    config = rembert_fast.RemBertConfig().to_dict()
    hf_model, fast_model = bench.build_masters(config, None, LAYERS, want_hf=True, want_fast=True)
    ids, mask = bench.make_inputs(SHAPE, config["vocab_size"], DEVICE, seed=0)
    with torch.inference_mode():  # the reference: transformers in float32, before the cast
        reference = hf_model.to(DEVICE)(input_ids=ids, attention_mask=mask).last_hidden_state
    models = {"transformers": hf_model.to(DEVICE, DTYPE), "rembert_fast": fast_model.to(DEVICE, DTYPE)}
    return models, ids, mask, reference


@pytest.mark.parametrize("impl", IMPLS)
def test_e2e_forward(benchmark, setup, impl: str) -> None:
    models, ids, mask, reference = setup
    fn = bench.e2e._make_callable(impl, models["transformers"], models["rembert_fast"])

    def forward() -> torch.Tensor:
        out = fn(ids, mask)
        if CUDA:
            torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        error = bench.e2e._max_error(forward(), reference, mask)
        benchmark.pedantic(forward, rounds=ROUNDS, warmup_rounds=1)
    real_tokens = int(mask.sum())
    median_s = statistics.median(benchmark.stats.stats.data)
    _medians[impl] = median_s
    benchmark.extra_info.update(
        device=bench.environment.device_name(DEVICE), dtype=str(DTYPE), batch=SHAPE.batch, seq=SHAPE.seq,
        lengths=SHAPE.lengths, layers=LAYERS or "all", real_tokens=real_tokens,
        tokens_per_s=real_tokens / median_s, max_abs_err_vs_fp32=error,
    )
    if impl != "transformers" and "transformers" in _medians:
        benchmark.extra_info["ratio_vs_transformers"] = _medians["transformers"] / median_s


if __name__ == "__main__":
    sys.exit(bench.main(sys.argv[1:]))
