"""pytest-benchmark: the whole model on CPU, rembert_fast against transformers eager (same weights, same run).

4 layers at RemBERT's real widths, float32, torch.inference_mode, batch 8 x 256: ``padded`` (real
lengths {256,32,64,200,48,128,96,40}) and ``full``. Both implementations of a batch share a group, so
pytest-benchmark prints them side by side; each row's extra_info holds the real tokens/s. The
interleaved table with ratios and the JSON record come from `model_cpu_table.py` (same models and
batches). Run:

    python -m pytest benches/bench_model_cpu.py --benchmark-columns=median,min,max,rounds
"""

import pytest
import torch
from model_cpu_table import MAX_ABS_ERROR, batches, build_models, max_abs_error

ROUNDS = 5


@pytest.fixture(scope="module")
def models():
    ours, theirs = build_models()
    return {"rembert_fast": ours, "transformers": theirs}


@pytest.fixture(scope="module")
def inputs(models):
    """The batches, after checking the two models agree on them (a wrong answer's speed is worthless)."""
    named = batches()
    for name, batch in named.items():
        error = max_abs_error(models["rembert_fast"], models["transformers"], batch)
        assert error <= MAX_ABS_ERROR, f"{name}: max abs error {error:.3g} on real positions"
    return named


@pytest.mark.parametrize("batch_name", ["padded", "full"])
@pytest.mark.parametrize("impl", ["transformers", "rembert_fast"])
def test_model_cpu(benchmark, models, inputs, impl, batch_name):
    batch = inputs[batch_name]
    model = models[impl]
    real_tokens = int(batch["attention_mask"].sum())
    benchmark.group = f"model_cpu {batch_name} 8x256 fp32 ({real_tokens} real tokens)"
    benchmark.extra_info.update(
        real_tokens=real_tokens, dtype="float32", shape=list(batch["input_ids"].shape),
        threads=torch.get_num_threads(),
    )

    def forward():
        with torch.inference_mode():
            model(**batch)

    benchmark.pedantic(forward, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    benchmark.extra_info["real_tokens_per_s"] = real_tokens / benchmark.stats.stats.median
