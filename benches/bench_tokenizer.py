"""Batch-encoding throughput: RemBertTokenizerFast vs RemBertTokenizer, measured in the same run.

Workload: N sentences (default 100,000) built from tests/data/multilingual.txt (lines without
special-token text), each the join of two lines picked by a seeded generator (so sentences are
mostly distinct and mix scripts), encoded in batches of 1,000 with `padding=True, truncation=True,
max_length=128` (what an inference job asks for). The fast tokenizer encodes all N; the slow one
encodes a subset (default 10,000) and its rate is extrapolated per sentence, which is fair because it
encodes sentence by sentence. For context the two engines alone run on the subset too: `tokenizers`'
encode_batch (no padding) and `sentencepiece`'s encode. Each figure is the median of `--repeats`
rounds after one warm-up round; a round runs all four in turn, so they share the machine's load.

The vocabulary is the tiny test model trained on the spot (tests/tokenizer_fixtures.py) unless
`--model` names another sentencepiece .model (e.g. RemBERT's own); absolute rates on RemBERT's
250k-piece model differ, the ratio is the point.

    python benches/bench_tokenizer.py [--sentences 100000] [--slow-sentences 10000] [--model M]
    python -m pytest benches/bench_tokenizer.py --benchmark-only     # pytest-benchmark, smaller sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tokenizer_fixtures import read_multilingual_lines, train_tiny_sentencepiece  # noqa: E402

from rembert_fast.tokenization import RemBertTokenizer, RemBertTokenizerFast  # noqa: E402

BATCH = 1000
ENCODE_KWARGS = dict(padding=True, truncation=True, max_length=128)


def make_sentences(count: int, seed: int = 0) -> list[str]:
    # Lines with special-token text are left out: there 4.37.2's slow and fast classes (and so ours)
    # tokenize differently, and the two rates must measure the same output.
    lines = [line for line in read_multilingual_lines() if "[" not in line]
    rng = random.Random(seed)
    return [f"{rng.choice(lines)} {rng.choice(lines)}" for _ in range(count)]


def encode_all(tokenizer: RemBertTokenizer | RemBertTokenizerFast, sentences: list[str]) -> int:
    """Encode in batches; returns the number of real tokens (a checksum that the work happened)."""
    tokens = 0
    for start in range(0, len(sentences), BATCH):
        out = tokenizer(sentences[start : start + BATCH], **ENCODE_KWARGS)
        tokens += sum(sum(mask) for mask in out["attention_mask"])
    return tokens


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function; one warm-up round, then rounds that run every function in turn,
    so that all of them see the same machine load (the CPUs here are shared)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def build_tokenizers(model: str) -> tuple[RemBertTokenizerFast, RemBertTokenizer]:
    fast = RemBertTokenizerFast(vocab_file=model, do_lower_case=False, keep_accents=True, pad_token="[PAD]")
    slow = RemBertTokenizer(model)
    return fast, slow


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--slow-sentences", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="sentencepiece .model (default: train the tiny test model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_tiny_sentencepiece(tmp)
        fast, slow = build_tokenizers(model)
        sentences = make_sentences(args.sentences)
        subset = sentences[: args.slow_sentences]
        # Same ids on the subset: the rates compare equal work.
        assert (
            fast(subset[:200], **ENCODE_KWARGS)["input_ids"]
            == slow(subset[:200], **ENCODE_KWARGS)["input_ids"]
        )
        backend, sp = fast.backend_tokenizer, slow.sp_model
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def engine_tokenizers() -> None:
            fast._configure(None, None)  # the engine alone: no padding or truncation
            encode_batch(subset)

        load_before = os.getloadavg()[0]
        seconds = interleaved_medians(
            {
                "fast": lambda: encode_all(fast, sentences),
                "slow": lambda: encode_all(slow, subset),
                "tokenizers engine": engine_tokenizers,
                "sentencepiece engine": lambda: sp.encode(subset),
            },
            args.repeats,
        )
        load_after = os.getloadavg()[0]
    rates = {
        name: (len(sentences) if name == "fast" else len(subset)) / value for name, value in seconds.items()
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, load average {load_before:.1f} -> "
        f"{load_after:.1f}, python {platform.python_version()}, "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}"
    )
    print(
        f"vocabulary: {args.model or 'tiny test model'} ({fast.vocab_size} pieces); "
        f"batches of {BATCH}, {ENCODE_KWARGS}"
    )
    print(f"median of {args.repeats} interleaved rounds after 1 warm-up round")
    for name, value in seconds.items():
        count = len(sentences) if name == "fast" else len(subset)
        note = "" if name == "fast" else f"  (per sentence, extrapolated to {len(sentences)}: "
        note += "" if name == "fast" else f"{len(sentences) / rates[name]:.2f} s)"
        print(f"{name:22s} {count:>7} sentences  {value:8.3f} s  {rates[name]:10,.0f} sentences/s{note}")
    print(f"fast / slow: {rates['fast'] / rates['slow']:.2f}x")


# ------------------------------------------------------------------------------------- pytest-benchmark
def _bench(benchmark, which: str, count: int, tmp_path) -> None:
    fast, slow = build_tokenizers(train_tiny_sentencepiece(tmp_path))
    tokenizer = fast if which == "fast" else slow
    sentences = make_sentences(count)
    benchmark.extra_info.update(sentences=count, batch=BATCH, tokenizer=type(tokenizer).__name__)
    tokens = benchmark.pedantic(encode_all, args=(tokenizer, sentences), rounds=3, warmup_rounds=1)
    assert tokens > count * 3


def test_bench_fast_batch_encode(benchmark, tmp_path):
    _bench(benchmark, "fast", 20_000, tmp_path)


def test_bench_slow_batch_encode(benchmark, tmp_path):
    _bench(benchmark, "slow", 2_000, tmp_path)


if __name__ == "__main__":
    main()
