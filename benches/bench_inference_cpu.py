"""Batch embedding throughput on CPU: the `rembert-fast embed` engine against a plain transformers loop.

Input: 10,000 multilingual lines, generated deterministically (seeded) from tests/data/multilingual.txt:
each line joins 1 to 3 random sentences, so lengths vary as in real batch jobs (about 10 to 128
tokens; longer lines are truncated to 128 by both sides).
Model: RemBERT-shaped, random weights, hidden 288, 4 layers, 6 heads, intermediate 1152, input
embedding 128, the tiny test sentencepiece vocabulary; float32; saved once with transformers'
`save_pretrained` and loaded by both sides.

- engine: `rembert_fast.inference.InferenceEngine(..., task="embed", pooling="cls")`: background
  tokenising, length-sorting inside 2048-line windows, 4096-token batches, rembert_fast's packed model.
- reference: what a user writes with transformers: batches of 32 lines in input order, tokenised
  with padding to the longest and truncation at 128, `transformers.RemBertModel`, CLS row.

Both run the same lines in the same process, under `torch.inference_mode`, after a warm-up of 256
lines; the 10,000 lines are timed as 5 slices of 2,000, alternating reference and engine on each
slice, and the median slice's lines/s is reported with the total and the median per-slice speed-up.
Embeddings are checked to agree (max abs error) before the figures are trusted.
Run (about a minute on 2 cores):

    python benches/bench_inference_cpu.py [--lines 10000] [--json benches/results/inference_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tokenizer_fixtures import read_multilingual_lines, train_tiny_sentencepiece  # noqa: E402

MAX_LENGTH = 128
REFERENCE_BATCH = 32
SLICES = 5
WARMUP_LINES = 256
MAX_ABS_ERROR = 1e-4  # fp32; different batch shapes and padding change summation order only


def make_lines(count: int, seed: int = 0) -> list[str]:
    """`count` lines, each 1-4 sentences of the multilingual test data, chosen by a seeded RNG."""
    sentences = [s for s in read_multilingual_lines() if s.strip()]
    rng = random.Random(seed)
    return [" ".join(rng.choice(sentences) for _ in range(rng.choice((1, 1, 2, 3)))) for _ in range(count)]


def build_model(directory: Path) -> Path:
    import transformers

    from rembert_fast.tokenization import RemBertTokenizerFast

    spm = train_tiny_sentencepiece(directory / "spm")
    config = transformers.RemBertConfig(
        vocab_size=len(RemBertTokenizerFast.from_pretrained(str(directory / "spm"))), hidden_size=288,
        num_hidden_layers=4, num_attention_heads=6, intermediate_size=1152, input_embedding_size=128,
        output_embedding_size=256, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model_dir = directory / "model"
    transformers.RemBertModel(config).save_pretrained(model_dir)
    shutil.copy(spm, model_dir / "sentencepiece.model")
    return model_dir


def engine_runner(model_dir: Path):
    from rembert_fast.inference import InferenceEngine

    engine = InferenceEngine(model_dir, "embed", device="cpu", dtype=torch.float32, max_length=MAX_LENGTH)

    def run(lines: list[str]) -> tuple[torch.Tensor, int]:
        rows = [torch.from_numpy(r["embedding"]) for r in engine.run(lines)]
        return torch.stack(rows), engine.stats.tokens

    return run


def reference_runner(model_dir: Path):
    import transformers

    from rembert_fast.tokenization import RemBertTokenizerFast

    tokenizer = RemBertTokenizerFast.from_pretrained(str(model_dir))
    model = transformers.RemBertModel.from_pretrained(model_dir).eval()

    def run(lines: list[str]) -> tuple[torch.Tensor, int]:
        rows, tokens = [], 0
        with torch.inference_mode():
            for start in range(0, len(lines), REFERENCE_BATCH):
                batch = tokenizer(lines[start : start + REFERENCE_BATCH], padding=True, truncation=True,
                                  max_length=MAX_LENGTH, return_tensors="pt")
                tokens += int(batch["attention_mask"].sum())
                rows.append(model(**batch).last_hidden_state[:, 0])
        return torch.cat(rows), tokens

    return run


def measure(runners: dict, lines: list[str]) -> tuple[dict, float]:
    """Figures per runner, and the max abs difference of their embeddings.

    Slices alternate between the runners (reference, engine, reference, ...), so a change in the
    machine's load during the run hits both alike; the speed-up is the median of per-slice ratios.
    """
    for run in runners.values():
        run(lines[:WARMUP_LINES])
    size = len(lines) // SLICES
    seconds = {name: [] for name in runners}
    tokens = dict.fromkeys(runners, 0)
    error = 0.0
    for i in range(SLICES):
        piece = lines[i * size : (i + 1) * size]
        outputs = {}
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name], piece_tokens = run(piece)
            seconds[name].append(time.perf_counter() - start)
            tokens[name] += piece_tokens
        first, *others = outputs.values()
        error = max([error] + [float((first - other).abs().max()) for other in others])
    figures = {
        name: {
            "median_lines_per_s": statistics.median(size / s for s in seconds[name]),
            "total_lines_per_s": size * SLICES / sum(seconds[name]),
            "tokens_per_s": tokens[name] / sum(seconds[name]),
            "seconds": sum(seconds[name]),
        }
        for name in runners
    }
    ratios = [r / e for r, e in zip(seconds["reference"], seconds["engine"], strict=True)]
    figures["engine"]["speedup_median_of_slices"] = statistics.median(ratios)
    return figures, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    lines = make_lines(args.lines)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        runners = {"reference": reference_runner(model_dir), "engine": engine_runner(model_dir)}
        results, error = measure(runners, lines)
    if error > MAX_ABS_ERROR:
        raise SystemExit(f"engine and reference disagree: max abs error {error:.3g} > {MAX_ABS_ERROR}")
    record = {
        "benchmark": "embed throughput, CPU",
        "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "dtype": "float32",
        "model": "hidden 288, 4 layers, 6 heads, intermediate 1152, random weights",
        "lines": len(lines), "max_length": MAX_LENGTH, "slices": SLICES, "warmup_lines": WARMUP_LINES,
        "torch": torch.__version__, "max_abs_error": error,
        "reference": "transformers RemBertModel, batch 32 in input order, padding to the longest",
    }
    for name, figures in results.items():
        record.update({f"{name}_{key}": round(value, 2) for key, value in figures.items()})
    width = max(map(len, record))
    for key, value in record.items():
        print(f"{key:>{width}}: {value}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
