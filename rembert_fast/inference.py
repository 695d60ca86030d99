"""Batch inference: texts in, one ordered record per input line out, fast, resumable, nothing lost.

    engine = InferenceEngine("path/to/model", task="classify", device="cuda", dtype=torch.bfloat16)
    for record in engine.run(["first text", {"text": "second", "id": 7}]):
        print(record)        # {"line": 1, "label": ..., "score": ...}, {"line": 2, "id": 7, ...}

How a run flows:
- A background thread reads the input, cuts it into *windows* of `window` consecutive lines, parses
  and tokenises each window with the fast tokenizer (Rust, batch call), sorts the window's texts by
  token length and groups them into batches of at most `batch_tokens` (rows × longest row) tokens,
  pinning the host tensors when the model is on CUDA. Tokenising overlaps with the model's work.
- The main thread copies each batch to the device (non-blocking), runs the model with the usual
  attention mask (the model's packed fast path drops the padding itself), starts the copy of the
  results back, and post-processes the previous batch while this one runs. When a window is done
  its records are yielded in input order.
- Batches are a function of the input and the settings only, so the same line gets the same bits
  whether the run was interrupted or not (`--resume` writes identical bytes) and whichever process
  of a multi-process run computes it (windows are dealt round-robin to ranks), given the same device
  and thread count. The one exception: on CUDA out-of-memory a batch is split in halves and retried
  (and later forwards are capped at the tokens, rows x width, that fitted), which changes its shape.

Output (`JsonlWriter`, `NpyWriter`): records go to `<output>.partial`, written as whole records and
fsynced in chunks; the finished file is renamed to `<output>`. A crash leaves at most a torn last
record (or row), which `resume=True` cuts off before continuing after the last whole one.
`merge_jsonl` / `merge_npy` put the parts of a multi-process run back in input order.

Records: `{"line": n, "id"?: ..., <result>}` or `{"line": n, "id"?: ..., "error": "<why>"}`, lines
numbered from 1. Results per task:
- embed: `"embedding"`: float32 array (hidden,), pooled by `cls` (first token), `mean` (all real
  tokens, [CLS] and [SEP] included) or `pooler` (the model's tanh pooler).
- classify: `"label"`, `"score"` and with `all_scores` `"scores"`: {label: probability}. Softmax over
  labels, or a sigmoid for one label or `problem_type == "multi_label_classification"`, or the raw
  outputs for `problem_type == "regression"` (as the transformers text-classification pipeline does).
- fill-mask: `"masks"`: one entry per [MASK], `{"index": token index, "predictions": [{"token": id,
  "token_str": decoded, "score": probability}, ...]}`, the `top_k` best first. A text without a
  [MASK] (or whose every [MASK] was truncated away) is an error record.
- token-classify: `"tokens"`: `[{"index", "word", "entity", "score", "start", "end"}]` for every
  non-special token of `text` (not of `text_pair`), with character offsets into `text`. With
  `aggregate="first"` or `"average"`, `"words"`: `[{"word", "entity", "score", "start", "end"}]`,
  one per word (a run of tokens with no whitespace between them), labelled by the first token's
  probabilities or by the average of its tokens' probabilities: the word stage of transformers'
  token-classification pipeline, without its merging of B-/I- entities into groups.
"""

from __future__ import annotations

import codecs
import heapq
import json
import math
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TASKS = ("embed", "classify", "fill-mask", "token-classify")
POOLINGS = ("cls", "mean", "pooler")
AGGREGATIONS = ("none", "first", "average")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_WINDOW = 2048
_MODEL_CLASS = {
    "embed": "RemBertModel",
    "classify": "RemBertForSequenceClassification",
    "fill-mask": "RemBertForMaskedLM",
    "token-classify": "RemBertForTokenClassification",
}
# Weights a task reads that a checkpoint of another task lacks (from_pretrained would initialise them).
_TRAINED_HEAD = {"classify": ("classifier.", "rembert.pooler."), "token-classify": ("classifier.",),
                 "fill-mask": ("cls.",), "pooler": ("pooler.",)}
# The field each command's result records hold (error records hold "error" instead).
RESULT_KEYS = {"embed": "embedding", "classify": "label", "fill-mask": "masks", "token-classify": "tokens"}
_QUEUE_WINDOWS = 2  # windows tokenised ahead of the model: enough to hide tokenising, bounded memory


@dataclass(frozen=True)
class LineError:
    """An input line that could not be read (e.g. invalid UTF-8); the engine turns it into an error record."""

    message: str


@dataclass
class RunStats:
    """Counts of one `run`: records yielded, error records, truncated texts, real tokens through the model."""

    lines: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        seconds = max(self.seconds, 1e-9)
        return (
            f"{self.lines} lines, {self.errors} errors, {self.truncated} truncated, {self.tokens} tokens "
            f"in {self.seconds:.1f} s ({self.lines / seconds:.1f} lines/s, "
            f"{self.tokens / seconds:.0f} tokens/s)"
        )


@dataclass
class _Batch:
    rows: list[int]  # window-local line indices, longest first
    input_ids: torch.Tensor  # (B, L) int64, padded with pad_token_id
    attention_mask: torch.Tensor  # (B, L) int64
    token_type_ids: torch.Tensor  # (B, L) int64


@dataclass
class _Window:
    first_line: int  # line number of the window's first line
    heads: list[dict[str, Any]]  # per line: {"line": n} plus "id" when the input had one
    records: list[dict[str, Any] | None]  # per line: the finished record, None while pending
    texts: list[str | None]  # per line: `text`, for character offsets
    encodings: list[Any]  # per line: tokenizers.Encoding, None for error lines
    truncated: list[bool]  # per line: the text was cut to max_length
    batches: list[_Batch] = field(default_factory=list)


# Rows [start, end) of a batch and their host outputs, or the ValueError the model raised for that row.
_Chunk = tuple[int, int, dict[str, torch.Tensor] | ValueError]


class _WorkerFailed:
    """Carries an exception raised in the tokenising thread to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` -> CUDA when available, else CPU; checks that a CUDA device asked for exists."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {str(device)!r} is not a device name: use cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: torch sees {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported: use cpu, cuda or cuda:N")
    return device


def _load_tokenizer(model_dir: Path) -> Any:
    from rembert_fast.tokenization import RemBertTokenizerFast

    return RemBertTokenizerFast.from_pretrained(str(model_dir))


class InferenceEngine:
    """A model, its fast tokenizer and the batching policy for one task.

    Args:
        model_dir: a transformers-layout directory: `config.json`, weights, `sentencepiece.model`
            and/or `tokenizer.json`.
        task: one of `TASKS`.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        dtype: the model's dtype; None -> bfloat16 on CUDA, float32 on CPU. Results are float32.
        batch_tokens: most tokens (rows × longest row) per batch; None -> 16384 on CUDA, 4096 on CPU.
        max_length: longer texts are truncated (counted in `stats.truncated`); None -> the model's
            `max_position_embeddings`.
        pooling, top_k, all_scores, aggregate: the task options described in the module docstring.
        window: lines sorted together; the same value must be used to resume a run or to combine
            the parts of a multi-process run.
    """

    def __init__(
        self,
        model_dir: str | Path,
        task: str = "embed",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        *,
        pooling: str = "cls",
        top_k: int = 5,
        all_scores: bool = False,
        aggregate: str = "none",
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        from rembert_fast import ops

        ops.requested_backend()  # a bad $REMBERT_FAST_BACKEND fails here, not in every batch
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate {aggregate!r} is not one of {AGGREGATIONS}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if window < 1:
            raise ValueError(f"window must be at least 1 line, got {window}")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model directory {str(self.model_dir)!r} has no config.json")
        self.task = task
        self.device = resolve_device(device)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r} is not one of {tuple(DTYPES)}")
            dtype = DTYPES[dtype]
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        if batch_tokens is None:
            batch_tokens = 16384 if self.device.type == "cuda" else 4096
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
        self.batch_tokens = batch_tokens
        self.pooling, self.top_k, self.all_scores, self.aggregate = pooling, top_k, all_scores, aggregate
        self.window = window

        import rembert_fast

        model_class = getattr(rembert_fast, _MODEL_CLASS[task])
        self.model = model_class.from_pretrained(str(self.model_dir), dtype=dtype, device=self.device).eval()
        self.config = self.model.config
        head = _TRAINED_HEAD.get("pooler" if task == "embed" and pooling == "pooler" else task, ())
        fresh = [key for key in getattr(self.model, "newly_initialized_keys", ()) if key.startswith(head)]
        if fresh:
            # The head would be random weights: every output line would be a confident-looking guess.
            raise ValueError(f"{str(self.model_dir)!r} has no trained weights for {task}: {fresh} are not in "
                             f"the checkpoint (is it a checkpoint of another task?)")
        positions = self.config.max_position_embeddings
        if max_length is None:
            max_length = positions
        if not 2 <= max_length <= positions:
            raise ValueError(
                f"max_length {max_length} must be between 2 and the model's "
                f"max_position_embeddings {positions}"
            )
        self.max_length = max_length
        self.hidden_size = self.config.hidden_size
        self.id2label = {int(k): str(v) for k, v in self.config.id2label.items()}
        if task in ("classify", "token-classify"):
            classes = self.model.num_labels
            missing = sorted(set(range(classes)) - set(self.id2label))
            if missing:
                raise ValueError(f"config.json's id2label has no name for label ids {missing} of the "
                                 f"model's {classes} labels: its keys must be 0..{classes - 1}")

        self.tokenizer = _load_tokenizer(self.model_dir)
        from tokenizers import Tokenizer

        # A private copy: truncation and padding are settings of the Rust object, not of each call.
        self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._backend.no_padding()
        self._backend.enable_truncation(max_length)
        self.mask_token_id = self.tokenizer.mask_token_id
        self.pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        self._token_strs: dict[int, str] = {}
        # Set after a CUDA out-of-memory: the most (rows x width) tokens a forward may take from then on.
        self._token_cap: int | None = None
        self.stats = RunStats()

    # ------------------------------------------------------------------------------------- public
    def run(
        self,
        inputs: Iterable[str | Mapping[str, Any] | LineError],
        *,
        jsonl: bool = False,
        skip_through: int = 0,
        shard: tuple[int, int] = (0, 1),
        progress: bool = False,
        total: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield one record per input line, in input order.

        Args:
            inputs: per line a text (`str`), a mapping `{"text", "text_pair"?, "id"?}`, or a
                `LineError`. With `jsonl=True` a `str` is a JSON line to parse into such a mapping.
            skip_through: lines 1..skip_through are already done (resume): no record is yielded
                for them, and windows holding only such lines are not computed.
            shard: (rank, world_size): compute and yield only the windows w with w % world == rank.
            progress: show a tqdm bar on stderr (lines/s, tokens/s); `total` lines if known.
        """
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {shard} is not (rank, world_size) with 0 <= rank < world_size")
        from tqdm import tqdm

        self.stats = RunStats()
        start = time.perf_counter()
        windows: queue.Queue[_Window | _WorkerFailed | None] = queue.Queue(maxsize=_QUEUE_WINDOWS)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(inputs, jsonl, skip_through, shard, windows, stop), daemon=True
        )
        bar = tqdm(total=total, initial=0, unit="line", disable=not progress, dynamic_ncols=True)
        last_postfix = 0.0

        def advance(window: _Window, rows: list[int]) -> None:
            """Move the bar by the lines of `rows` that will be yielded; refresh tokens/s twice a second."""
            nonlocal last_postfix
            bar.update(sum(window.first_line + row > skip_through for row in rows))
            now = time.perf_counter()
            if progress and now - last_postfix > 0.5:
                last_postfix = now
                bar.set_postfix_str(f"{self.stats.tokens / max(now - start, 1e-9):.0f} tokens/s")

        worker.start()
        try:
            while True:
                item = windows.get()
                if item is None:
                    break
                if isinstance(item, _WorkerFailed):
                    raise item.error
                self._compute(item, advance)
                advance(item, [row for row, e in enumerate(item.encodings) if e is None])  # error lines
                for index, record in enumerate(item.records):
                    if item.first_line + index <= skip_through:
                        continue
                    assert record is not None, "every line of a computed window has a record"
                    self.stats.lines += 1
                    self.stats.errors += "error" in record
                    self.stats.truncated += item.truncated[index]
                    yield record
                self.stats.seconds = time.perf_counter() - start
        finally:
            stop.set()
            bar.close()
            self.stats.seconds = time.perf_counter() - start

    # --------------------------------------------------------------------- reading and tokenising
    def _produce(
        self,
        inputs: Iterable[str | Mapping[str, Any] | LineError],
        jsonl: bool,
        skip_through: int,
        shard: tuple[int, int],
        out: queue.Queue,
        stop: threading.Event,
    ) -> None:
        def put(item: _Window | _WorkerFailed | None) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def wanted(first_line: int, count: int) -> bool:
            """The window is this rank's and holds a line not done yet."""
            rank, world = shard
            return ((first_line - 1) // self.window) % world == rank and first_line + count - 1 > skip_through

        try:
            pending: list[Any] = []
            first_line = 1
            for item in inputs:
                pending.append(item)
                if len(pending) < self.window:
                    continue
                if wanted(first_line, len(pending)) and not put(self._prepare(first_line, pending, jsonl)):
                    return
                first_line += len(pending)
                pending = []
            if pending and wanted(first_line, len(pending)):
                if not put(self._prepare(first_line, pending, jsonl)):
                    return
            put(None)
        except BaseException as error:  # handed to the main thread, which raises it
            put(_WorkerFailed(error))

    def _prepare(self, first_line: int, items: list[Any], jsonl: bool) -> _Window:
        n = len(items)
        window = _Window(first_line, [], [None] * n, [None] * n, [None] * n, [False] * n)
        todo: list[int] = []
        inputs: list[str | tuple[str, str]] = []
        for index, item in enumerate(items):
            head: dict[str, Any] = {"line": first_line + index}
            window.heads.append(head)
            parsed = _parse_item(item, jsonl, head)
            if isinstance(parsed, str):
                window.records[index] = {**head, "error": parsed}
                continue
            text, pair = parsed
            window.texts[index] = text
            todo.append(index)
            inputs.append(text if pair is None else (text, pair))
        try:
            encodings = self._backend.encode_batch(inputs, add_special_tokens=True)
        except Exception:
            # One bad input fails the whole Rust batch call: encode one by one to find it.
            encodings = []
            for one in inputs:
                try:
                    encodings.append(self._backend.encode_batch([one], add_special_tokens=True)[0])
                except Exception as error:
                    encodings.append(f"tokenizer failed: {error}")
        for index, encoding in zip(todo, encodings, strict=True):
            if not isinstance(encoding, str):
                encoding = self._unusable(encoding) or encoding
            if isinstance(encoding, str):
                window.records[index] = {**window.heads[index], "error": encoding}
                continue
            window.encodings[index] = encoding
            window.truncated[index] = bool(encoding.overflowing)
        window.batches = self._batches([i for i in todo if window.encodings[i] is not None], window.encodings)
        return window

    def _unusable(self, encoding: Any) -> str | None:
        """Why the model cannot take this encoding (the line becomes an error record), or None."""
        ids = encoding.ids
        if len(ids) > self.max_length:  # a pair too long for its 3 special tokens is not truncated
            return (f"encoded to {len(ids)} tokens, more than max_length {self.max_length}, and the "
                    "tokenizer could not truncate it (a text pair needs at least 3 tokens for its special "
                    "tokens)")
        vocab, highest = self.config.vocab_size, max(ids, default=-1)
        if highest >= vocab:
            return (f"token id {highest} ({self.tokenizer.convert_ids_to_tokens(highest)!r}) is outside the "
                    f"model's vocab_size {vocab}: the tokenizer does not match the checkpoint")
        types, highest_type = self.config.type_vocab_size, max(encoding.type_ids, default=-1)
        if highest_type >= types:
            return (f"token type {highest_type} is outside the model's type_vocab_size {types} "
                    "(a text pair needs type_vocab_size >= 2)")
        return None

    def _batches(self, rows: list[int], encodings: list[Any]) -> list[_Batch]:
        lengths = {row: len(encodings[row].ids) for row in rows}
        order = sorted(rows, key=lambda row: (-lengths[row], row))
        groups: list[list[int]] = []
        for row in order:
            if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= self.batch_tokens:
                groups[-1].append(row)
            else:
                groups.append([row])
        pin = self.device.type == "cuda"
        batches = []
        for group in groups:
            width = lengths[group[0]]
            ids = np.full((len(group), width), self.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            types = np.zeros((len(group), width), dtype=np.int64)
            for i, row in enumerate(group):
                encoding = encodings[row]
                ids[i, : lengths[row]] = encoding.ids
                mask[i, : lengths[row]] = 1
                types[i, : lengths[row]] = encoding.type_ids
            tensors = [torch.from_numpy(a) for a in (ids, mask, types)]
            if pin:
                tensors = [t.pin_memory() for t in tensors]
            batches.append(_Batch(group, *tensors))
        return batches

    # ---------------------------------------------------------------------------- running the model
    @torch.inference_mode()
    def _compute(self, window: _Window, advance: Any) -> None:
        """Run the window's batches, filling `window.records`; `advance(window, rows)` after each."""
        previous: tuple[_Batch, list[_Chunk], Any] | None = None
        for batch in window.batches:
            self.stats.tokens += int(batch.attention_mask.sum())
            launched = self._launch(batch)
            if previous is not None:
                self._finish(window, *previous)
                advance(window, previous[0].rows)
            previous = (batch, *launched)
        if previous is not None:
            self._finish(window, *previous)
            advance(window, previous[0].rows)

    def _launch(self, batch: _Batch) -> tuple[list[_Chunk], Any]:
        """Start a batch on the device: its (start, end, host outputs) row chunks and a CUDA event.

        The chunks are one unless CUDA ran out of memory, which splits rows in halves until they fit,
        and caps later forwards at the tokens (rows x width) that fitted: a later batch of shorter rows
        still takes as many rows as fit in that many tokens. A ValueError from the model (bad input)
        reruns the batch a row at a time, so only the refused lines become error records.
        """
        chunks: list[_Chunk] = []
        retrying: list[tuple[int, int]] = []  # row ranges whose forward raised ValueError, rerun by row
        rows = len(batch.rows)
        width = batch.input_ids.shape[1]  # the longest row's length: rows are longest first
        step = rows if self._token_cap is None else max(1, min(rows, self._token_cap // width))
        pending = [(start, min(start + step, rows)) for start in range(0, rows, step)]
        while pending:
            start, end = pending.pop(0)
            try:
                outputs = self._forward_rows(batch, start, end)
            except ValueError as error:
                # The model refused an input the checks in _prepare let through: find its line (one row
                # at a time), which becomes an error record; the other lines still get their results.
                if end - start > 1:
                    retrying.append((start, end))
                    pending = [(row, row + 1) for row in range(start, end)] + pending
                    continue
                chunks.append((start, end, error))
                if _refused_alike(chunks, retrying):
                    raise error
                continue
            except torch.cuda.OutOfMemoryError:
                if end - start == 1:
                    raise
                torch.cuda.empty_cache()
                step = (end - start) // 2
                self._token_cap = step * width
                pending = [(s, min(s + step, rows)) for s in range(start, rows, step)]
                continue
            chunks.append((start, end, outputs))
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            # On the model's device: the copies back run on its stream, which is not the current device's
            # when the engine was given cuda:N and another device is current.
            event.record(torch.cuda.current_stream(self.device))
        return chunks, event

    def _forward_rows(self, batch: _Batch, start: int, end: int) -> dict[str, torch.Tensor]:
        width = int(batch.attention_mask[start].sum())  # rows are longest first
        non_blocking = self.device.type == "cuda"
        ids, mask, types = (
            t[start:end, :width].to(self.device, non_blocking=non_blocking)
            for t in (batch.input_ids, batch.attention_mask, batch.token_type_ids)
        )
        outputs = self._forward(ids, mask, types)
        return {k: v.to("cpu", non_blocking=non_blocking) for k, v in outputs.items()}

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.task == "embed":
            out = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            if self.pooling == "pooler":
                return {"embedding": out.pooler_output.float()}
            hidden = out.last_hidden_state.float()
            if self.pooling == "cls":
                return {"embedding": hidden[:, 0]}
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return {"embedding": (hidden * weights).sum(1) / weights.sum(1)}
        if self.task == "classify":
            logits = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.float()
            if self.config.problem_type == "regression":  # scores are the raw outputs (the pipeline's rule)
                return {"probs": logits}
            sigmoid = logits.shape[-1] == 1 or self.config.problem_type == "multi_label_classification"
            return {"probs": logits.sigmoid() if sigmoid else logits.softmax(-1)}
        if self.task == "token-classify":
            logits = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.float()
            return {"probs": logits.softmax(-1)}
        # fill-mask: run the vocabulary projection on [MASK] rows only, not on every token.
        hidden = self.model.rembert(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
        where = (ids == self.mask_token_id) & mask.bool()
        positions = where.nonzero()  # (M, 2): row, token index
        probs = self.model.cls(hidden[where]).float().softmax(-1)
        top = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        return {"positions": positions, "scores": top.values, "tokens": top.indices}

    def _finish(
        self,
        window: _Window,
        batch: _Batch,
        chunks: list[_Chunk],
        event: Any,
    ) -> None:
        if event is not None:
            event.synchronize()
        for start, end, outputs in chunks:
            if isinstance(outputs, ValueError):
                for row in batch.rows[start:end]:
                    refused = f"the model refused this line: {outputs}"
                    window.records[row] = {**window.heads[row], "error": refused}
            else:
                self._records(window, batch, start, end, outputs)

    # ----------------------------------------------------------------------------- post-processing
    def _records(self, window: _Window, batch: _Batch, start: int, end: int, outputs: dict[str, Any]) -> None:
        masks: dict[int, list[dict[str, Any]]] = {}
        if self.task == "fill-mask":
            positions = outputs["positions"].tolist()
            scores, tokens = outputs["scores"].tolist(), outputs["tokens"].tolist()
            for (local, index), row_scores, row_tokens in zip(positions, scores, tokens, strict=True):
                predictions = [
                    {"token": token, "token_str": self._token_str(token), "score": score}
                    for token, score in zip(row_tokens, row_scores, strict=True)
                ]
                masks.setdefault(local, []).append({"index": index, "predictions": predictions})
        for local, row in enumerate(batch.rows[start:end]):
            if self.task == "embed":
                result: dict[str, Any] = {"embedding": outputs["embedding"][local].numpy()}
            elif self.task == "classify":
                result = self._classification(outputs["probs"][local])
            elif self.task == "token-classify":
                result = self._token_labels(window, row, outputs["probs"][local])
            elif local in masks:
                result = {"masks": masks[local]}
            else:
                result = {"error": "no [MASK] token in the text (after truncation)"}
            window.records[row] = {**window.heads[row], **result}

    def _classification(self, probs: torch.Tensor) -> dict[str, Any]:
        values = probs.tolist()
        best = max(range(len(values)), key=values.__getitem__)
        result: dict[str, Any] = {"label": self.id2label[best], "score": values[best]}
        if self.all_scores:
            result["scores"] = {self.id2label[i]: value for i, value in enumerate(values)}
        return result

    def _token_str(self, token: int) -> str:
        text = self._token_strs.get(token)
        if text is None:
            text = self._backend.decode([token], skip_special_tokens=False)
            self._token_strs[token] = text
        return text

    def _token_labels(self, window: _Window, row: int, probs: torch.Tensor) -> dict[str, Any]:
        encoding, text = window.encodings[row], window.texts[row]
        specials, sequences = encoding.special_tokens_mask, encoding.sequence_ids
        keep = [i for i in range(len(encoding.ids)) if not specials[i] and sequences[i] == 0]
        probs = probs[: len(encoding.ids)]
        if self.aggregate == "none":
            best_scores, best = probs.max(-1)
            best_scores, best = best_scores.tolist(), best.tolist()
            tokens = []
            unk = self.tokenizer.unk_token_id
            for i in keep:
                start, end = encoding.offsets[i]
                # An unknown piece shows the text it stands for (the pipeline's rule), not "[UNK]".
                piece = encoding.ids[i]
                word = text[start:end] if piece == unk else self._backend.id_to_token(piece)
                tokens.append({
                    "index": i, "word": word,
                    "entity": self.id2label[best[i]], "score": best_scores[i], "start": start, "end": end,
                })
            return {"tokens": tokens}
        words: list[list[int]] = []
        previous_end = None
        for i in keep:
            start, end = encoding.offsets[i]
            # A word is a run of tokens with no whitespace between them. Offsets of a token that starts a
            # word include the space before it; a lone "▁" token's offsets overlap the next token's,
            # which continues the same word; a gap without whitespace (characters the normaliser dropped
            # or merged: combining marks, quote pairs) does not end a word.
            gap = text[previous_end:start] if previous_end is not None else ""
            new_word = (
                previous_end is None
                or any(c.isspace() for c in gap)
                or (start >= previous_end and text[start : start + 1].isspace())
            )
            if new_word:
                words.append([i])
            else:
                words[-1].append(i)
            previous_end = end
        result = []
        for tokens_of_word in words:
            if self.aggregate == "first":
                word_probs = probs[tokens_of_word[0]]
            else:
                word_probs = probs[tokens_of_word].mean(0)
            score, label = word_probs.max(-1)
            start = encoding.offsets[tokens_of_word[0]][0]
            end = encoding.offsets[tokens_of_word[-1]][1]
            while start < end and text[start].isspace():
                start += 1
            if not text[start:end].strip():  # only whitespace tokens (a tab, a trailing space): no word
                continue
            result.append({
                "word": text[start:end], "entity": self.id2label[int(label)], "score": float(score),
                "start": start, "end": end,
            })
        return {"words": result}


def _refused_alike(chunks: list[_Chunk], ranges: list[tuple[int, int]]) -> bool:
    """Whether every row of a range rerun row by row was refused with one message: then a setting is at
    fault (a bad backend, say), not the input, and the run stops rather than turn every line into an
    error record that `--resume` would then skip."""
    refused = {start: str(out) for start, _, out in chunks if isinstance(out, ValueError)}
    for first, last in ranges:
        messages = {refused.get(row) for row in range(first, last)}
        if None not in messages and len(messages) == 1:
            return True
    return False


def _parse_item(item: Any, jsonl: bool, head: dict[str, Any]) -> tuple[str, str | None] | str:
    """(text, text_pair) of one input, or the reason it is not usable. Sets head["id"] when present."""
    if isinstance(item, LineError):
        return item.message
    if isinstance(item, str) and not jsonl:
        return item, None
    if isinstance(item, str):
        try:
            item = json.loads(item)
        except ValueError as error:
            return f"malformed JSON: {error}"
    if not isinstance(item, Mapping):
        return f"expected a JSON object with a \"text\" field, got {type(item).__name__}"
    if "id" in item:
        try:  # NaN, Infinity and lone surrogates parse, but a record carrying them is not valid JSON
            json.dumps(item["id"], allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            return (f'"id" {item["id"]!r} cannot be written as JSON (NaN, Infinity and lone surrogates '
                    "are not allowed)")
        head["id"] = item["id"]
    if "text" not in item:
        return 'missing "text" field'
    text, pair = item["text"], item.get("text_pair")
    if not isinstance(text, str):
        return f'"text" must be a string, got {type(text).__name__}'
    if pair is not None and not isinstance(pair, str):
        return f'"text_pair" must be a string, got {type(pair).__name__}'
    return text, pair


def iter_lines(stream: Any) -> Iterator[str | LineError]:
    """The lines of a binary stream as text, split on "\\n" only, without the line end ("\\r\\n" too).

    A UTF-8 byte-order mark opening the stream is dropped (editors on Windows write one; kept, it would
    be tokenized into the first line). A line that is not UTF-8 becomes a `LineError` instead of
    stopping the run.
    """
    first = True
    for raw in stream:
        if first:
            raw = raw.removeprefix(codecs.BOM_UTF8)
            first = False
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield LineError(f"line is not valid UTF-8: {error}")


def count_lines(path: str | Path) -> int:
    """Number of lines `iter_lines` yields for a file (a last line without "\\n" counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def shard_line(row: int, rank: int, world: int, window: int) -> int:
    """Input line number of the `row`-th (1-based) line computed by `rank` of `world` (0 for row 0)."""
    if row == 0:
        return 0
    k = row - 1
    window_index = rank + (k // window) * world
    return window_index * window + k % window + 1


def nan_row(width: int) -> np.ndarray:
    """The `.npy` row written for an error line."""
    return np.full(width, math.nan, dtype=np.float32)


# ------------------------------------------------------------------------------------------- output
class ResumeError(ValueError):
    """A partial output that cannot be continued (not written by this command, or other settings)."""


_LINE_PREFIX = re.compile(rb'^\{"line": (\d+)[,}]')
_NPY_HEADER_BYTES = 128  # fixed, so the row count can be written in place when the run ends


def _record_line(raw: bytes) -> int | None:
    match = _LINE_PREFIX.match(raw)
    return int(match.group(1)) if match else None


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as a UTF-8 JSON line (arrays as lists; floats round-trip exactly)."""
    return (json.dumps(record, ensure_ascii=False, default=_to_json) + "\n").encode("utf-8")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _recover_jsonl(
    path: Path, through: int | None = None, result_key: str | None = None
) -> tuple[int, int, int]:
    """Cut a JSON-lines output after its last good record (and after line `through` if given).

    Returns (records kept, last line number kept, error records kept). A torn last record (no "\\n",
    or not valid JSON) is cut off, so it is computed again. With `result_key`, the first result
    record must hold that field: an output of another command is refused, not silently continued.
    """
    kept, last, errors, good_bytes = 0, 0, 0, 0
    checked = result_key is None
    with open(path, "rb") as f:
        lines = f.readlines()
    for index, raw in enumerate(lines):
        number = _record_line(raw)
        if not raw.endswith(b"\n") or number is None or number <= last:
            break
        if through is not None and number > through:
            break
        is_error = b'"error": ' in raw
        if is_error or index == len(lines) - 1:
            try:
                record = json.loads(raw)
            except ValueError:
                break
            is_error = "error" in record
        if not checked and not is_error:
            try:
                fields = list(json.loads(raw))
            except ValueError:
                break
            if result_key not in fields:
                raise ResumeError(f"cannot resume: {str(path)!r} holds records with fields {fields}, not "
                                  f"{result_key!r}: it is the output of another command")
            checked = True
        kept, last, errors, good_bytes = kept + 1, number, errors + is_error, good_bytes + len(raw)
    if kept == 0 and lines and through is None and _record_line(lines[0]) is None:
        raise ResumeError(f"cannot resume: {str(path)!r} does not start with a record of this command")
    with open(path, "r+b") as f:
        f.truncate(good_bytes)
    return kept, last, errors


class JsonlWriter:
    """Writes records as JSON lines to `path`, through `path.partial`, flushed and fsynced in chunks.

    Only whole records are written, so a crash leaves at most one torn last record, which `resume`
    cuts off. `commit()` renames the finished file to `path`; until then `path` is not touched.
    With `resume=True`, an existing `path.partial` (or a finished `path`) is continued: `done_through`
    is the last line already written and `prior_errors` the error records among them; `result_key`
    (the command's field, see RESULT_KEYS) refuses to continue another command's output.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, flush_bytes: int = 1 << 22,
                 flush_seconds: float = 5.0, result_key: str | None = None) -> None:
        self.path = Path(path)
        self.partial = _partial(self.path)
        self.done_through = self.prior_errors = self.prior_records = 0
        if resume and not self.partial.exists() and self.path.exists():
            os.replace(self.path, self.partial)
        if resume and self.partial.exists():
            self.prior_records, self.done_through, self.prior_errors = _recover_jsonl(
                self.partial, result_key=result_key
            )
        self._file = open(self.partial, "ab" if resume else "wb")
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flush_bytes, self._flush_seconds = flush_bytes, flush_seconds
        self._last_flush = time.monotonic()

    def write(self, record: Mapping[str, Any]) -> None:
        data = encode_record(record)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self._flush_bytes or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0
        self._file.flush()
        os.fsync(self._file.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is written and close, leaving `path.partial` for a later `resume`."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def commit(self) -> None:
        """Flush, close and rename `path.partial` to `path`: the output is complete."""
        self.close()
        os.replace(self.partial, self.path)


def _npy_header(rows: int, width: int, dtype: np.dtype) -> bytes:
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    text = text.ljust(_NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _npy_rows(path: Path, width: int, dtype: np.dtype) -> int:
    """Whole rows in a partial `.npy` of ours; cuts off a torn last row."""
    with open(path, "rb") as f:
        header = f.read(_NPY_HEADER_BYTES)
        f.seek(0, os.SEEK_END)
        size = f.tell()
    if len(header) < _NPY_HEADER_BYTES or not header.startswith(b"\x93NUMPY"):
        raise ResumeError(f"cannot resume: {str(path)!r} is not a .npy written by this command")
    expected = _npy_header(0, width, dtype)
    descr = np.lib.format.dtype_to_descr(dtype).encode()
    if descr not in header or f", {width}), ".encode() not in header or len(header) != len(expected):
        raise ResumeError(
            f"cannot resume: {str(path)!r} does not hold {width}-wide {dtype} rows; its header is "
            f"{header[10:].decode('latin1').strip()}"
        )
    row_bytes = width * dtype.itemsize
    rows = (size - _NPY_HEADER_BYTES) // row_bytes
    with open(path, "r+b") as f:
        f.truncate(_NPY_HEADER_BYTES + rows * row_bytes)
    return rows


class NpyWriter:
    """Writes embeddings as an (N, width) `.npy`, a NaN row per error line, and the error records to
    `errors_path` (JSON lines, written even when empty). Both go through `.partial` files; errors are
    flushed before rows, so every row on disk has its error record on disk.

    `line_of_row(k)` is the input line of the k-th row (1-based; identity unless the rows are one
    rank's share of a multi-process run); it turns the rows found on `resume` into `done_through`.
    """

    def __init__(self, path: str | Path, errors_path: str | Path, width: int, *, dtype: Any = np.float32,
                 resume: bool = False, line_of_row: Any = None, flush_bytes: int = 1 << 22,
                 flush_seconds: float = 5.0) -> None:
        self.path, self.errors_path = Path(path), Path(errors_path)
        self.partial, self.errors_partial = _partial(self.path), _partial(self.errors_path)
        self.width, self.dtype = width, np.dtype(dtype)
        self.done_through = self.prior_errors = self.prior_records = 0
        line_of_row = line_of_row or (lambda row: row)
        if resume and not self.partial.exists() and self.path.exists():
            os.replace(self.path, self.partial)
            if self.errors_path.exists():
                os.replace(self.errors_path, self.errors_partial)
        if resume and self.partial.exists() and self.partial.stat().st_size == 0:
            self.partial.unlink()  # killed before its header reached the disk: nothing was done
        if resume and self.partial.exists():
            self.prior_records = _npy_rows(self.partial, width, self.dtype)
            self.done_through = line_of_row(self.prior_records)
            if self.errors_partial.exists():
                _, _, self.prior_errors = _recover_jsonl(self.errors_partial, through=self.done_through)
            self._file = open(self.partial, "r+b")
            self._file.seek(0, os.SEEK_END)
            self._errors = open(self.errors_partial, "ab")
        else:
            self._file = open(self.partial, "wb")
            self._file.write(_npy_header(0, width, self.dtype))
            # On disk at once: a run killed before its first flush must still be a .npy to resume.
            self._file.flush()
            os.fsync(self._file.fileno())
            self._errors = open(self.errors_partial, "wb")
        self.rows = self.prior_records
        self._rows: list[np.ndarray] = []
        self._error_lines: list[bytes] = []
        self._flush_rows = max(1, flush_bytes // (width * self.dtype.itemsize))
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def write(self, record: Mapping[str, Any]) -> None:
        if "error" in record:
            self._error_lines.append(encode_record(record))
            self._rows.append(nan_row(self.width))
        else:
            self._rows.append(np.asarray(record["embedding"]))
        if len(self._rows) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        rows = np.stack(self._rows).astype(self.dtype).tobytes() if self._rows else b""
        for f, data in ((self._errors, b"".join(self._error_lines)), (self._file, rows)):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.rows += len(self._rows)
        self._rows, self._error_lines = [], []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is written and close, leaving the `.partial` files for a later `resume`."""
        if not self._file.closed:
            self.flush()
            self._file.close()
            self._errors.close()

    def commit(self) -> None:
        """Write the final row count into the header and rename both files: the output is complete."""
        self.flush()
        self._file.seek(0)
        self._file.write(_npy_header(self.rows, self.width, self.dtype))
        self.close()
        os.replace(self.errors_partial, self.errors_path)
        os.replace(self.partial, self.path)


def merge_jsonl(parts: list[Path], path: Path) -> None:
    """Merge finished JSON-lines parts (each in line order) into `path`, in line order; removes the parts."""
    files = [open(part, "rb") for part in parts]
    try:
        with open(_partial(path), "wb") as out:
            for raw in heapq.merge(*files, key=_record_line):
                out.write(raw)
            out.flush()
            os.fsync(out.fileno())
    finally:
        for f in files:
            f.close()
    os.replace(_partial(path), path)
    for part in parts:
        part.unlink()


def merge_npy(parts: list[tuple[Path, Path]], path: Path, errors_path: Path, window: int) -> None:
    """Merge the (rows, errors) parts of ranks 0..world-1 into one `.npy` and one errors file.

    Rank r holds windows r, r + world, ... of `window` lines each, in order; rows are dealt back in
    window order. Removes the parts.
    """
    arrays = [np.load(npy, mmap_mode="r") for npy, _ in parts]
    width, dtype = arrays[0].shape[1], arrays[0].dtype
    total = sum(len(a) for a in arrays)
    cursors = [0] * len(arrays)
    with open(_partial(path), "wb") as out:
        out.write(_npy_header(total, width, dtype))
        for window_index in range((total + window - 1) // window):
            rank = window_index % len(arrays)
            count = min(window, total - window_index * window)
            rows = arrays[rank][cursors[rank] : cursors[rank] + count]
            out.write(np.ascontiguousarray(rows).tobytes())
            cursors[rank] += count
        out.flush()
        os.fsync(out.fileno())
    del arrays
    merge_jsonl([errors for _, errors in parts], errors_path)
    os.replace(_partial(path), path)
    for npy, _ in parts:
        npy.unlink()
