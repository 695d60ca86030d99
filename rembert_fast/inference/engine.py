"""`InferenceEngine`: the model, its tokenizer and the batching of one task; threads, batches, OOM."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rembert_fast import ops
from rembert_fast.inference import truncation
from rembert_fast.inference.inputs import LineError, parse_item
from rembert_fast.inference.tasks import AGGREGATIONS, POOLINGS, TASKS, TRAINED_HEAD, TaskOutputs, model_class
from rembert_fast.inference.window import Batch, Window

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_WINDOW = 2048
_QUEUE_WINDOWS = 2  # windows tokenised ahead of the model: enough to hide tokenising, bounded memory


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
            and/or `tokenizer.json`; or a Hub model id ("google/rembert"), whose files are fetched into
            (offline: found in) the Hub cache by `model_files.model_directory`. `model_dir` is then the
            snapshot directory.
        task: one of `TASKS`.
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        dtype: the model's dtype; None -> bfloat16 on CUDA, float32 on CPU. Results are float32.
        batch_tokens: most tokens (rows × longest row) per batch; None -> 16384 on CUDA, 4096 on CPU.
        max_length: longer texts are truncated (counted in `stats.truncated`); None -> the model's
            `max_position_embeddings`.
        pooling, top_k, all_scores, aggregate: the task options described in the module docstring.
        window: lines sorted together; the same value must be used to resume a run or to combine
            the parts of a multi-process run.
        hub_keywords: for a Hub id, `rembert_fast.hub.HUB_KEYWORDS` (revision, cache_dir,
            local_files_only, token, subfolder, force_download), as from_pretrained takes them.

    Raises:
        rembert_fast.hub.PretrainedNotFoundError: `model_dir` is neither a local path nor a Hub model
            that could be found (one line naming the id, the cache and the revision).
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
        **hub_keywords: Any,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        ops.requested_backend()  # a bad $REMBERT_FAST_BACKEND fails here, not in every batch
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate {aggregate!r} is not one of {AGGREGATIONS}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if window < 1:
            raise ValueError(f"window must be at least 1 line, got {window}")
        from rembert_fast.inference.model_files import model_directory

        self.model_dir = Path(model_directory(model_dir, **hub_keywords))
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

        self.model = model_class(task).from_pretrained(str(self.model_dir), dtype=dtype,
                                                       device=self.device).eval()
        self.config = self.model.config
        head = TRAINED_HEAD.get("pooler" if task == "embed" and pooling == "pooler" else task, ())
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
        # Texts longer than this many characters are cut before tokenising (same ids, see truncation),
        # when the tokenizer allows it; 0: always tokenise the whole text.
        self._char_window = 16 * max_length if truncation.prefix_safe(self._backend) else 0
        self.pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        self._outputs = TaskOutputs(task, self.model, self.tokenizer, self._backend, self.id2label,
                                    pooling=pooling, top_k=top_k, all_scores=all_scores, aggregate=aggregate)
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
        windows: queue.Queue[Window | _WorkerFailed | None] = queue.Queue(maxsize=_QUEUE_WINDOWS)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(inputs, jsonl, skip_through, shard, windows, stop), daemon=True
        )
        bar = tqdm(total=total, initial=0, unit="line", disable=not progress, dynamic_ncols=True)
        last_postfix = 0.0

        def advance(window: Window, rows: list[int]) -> None:
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
        def put(item: Window | _WorkerFailed | None) -> bool:
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

    def _prepare(self, first_line: int, items: list[Any], jsonl: bool) -> Window:
        n = len(items)
        window = Window(first_line, [], [None] * n, [None] * n, [None] * n, [False] * n)
        todo: list[int] = []
        inputs: list[str | tuple[str, str]] = []
        for index, item in enumerate(items):
            head: dict[str, Any] = {"line": first_line + index}
            window.heads.append(head)
            parsed = parse_item(item, jsonl, head)
            if isinstance(parsed, str):
                window.records[index] = {**head, "error": parsed}
                continue
            text, pair = parsed
            window.texts[index] = text
            todo.append(index)
            inputs.append(text if pair is None else (text, pair))
        encodings = self._encode(inputs)
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

    def _encode(self, inputs: list[str | tuple[str, str]]) -> list[Any]:
        """Per input its truncated encoding, or the tokenizer's error message (a str)."""
        window = self._char_window
        long = [i for i, one in enumerate(inputs) if window and isinstance(one, str) and len(one) > window]
        cut = set(long)
        short = [one for i, one in enumerate(inputs) if i not in cut]
        try:
            encodings = self._backend.encode_batch(short, add_special_tokens=True)
        except Exception:
            # One bad input fails the whole Rust batch call: encode one by one to find it.
            encodings = []
            for one in short:
                try:
                    encodings.append(self._backend.encode_batch([one], add_special_tokens=True)[0])
                except Exception as error:
                    encodings.append(f"tokenizer failed: {error}")
        if not long:
            return encodings
        for i in long:
            try:
                encodings.insert(i, truncation.encode_prefix(self._backend, inputs[i], window))
            except Exception as error:
                encodings.insert(i, f"tokenizer failed: {error}")
        return encodings

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

    def _batches(self, rows: list[int], encodings: list[Any]) -> list[Batch]:
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
            batches.append(Batch(group, *tensors))
        return batches

    # ---------------------------------------------------------------------------- running the model
    @torch.inference_mode()
    def _compute(self, window: Window, advance: Any) -> None:
        """Run the window's batches, filling `window.records`; `advance(window, rows)` after each."""
        previous: tuple[Batch, list[_Chunk], Any] | None = None
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

    def _launch(self, batch: Batch) -> tuple[list[_Chunk], Any]:
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

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task's forward of one batch on the device: named output tensors (`TaskOutputs.forward`)."""
        return self._outputs.forward(ids, mask, types)

    def _forward_rows(self, batch: Batch, start: int, end: int) -> dict[str, torch.Tensor]:
        width = int(batch.attention_mask[start].sum())  # rows are longest first
        non_blocking = self.device.type == "cuda"
        ids, mask, types = (
            t[start:end, :width].to(self.device, non_blocking=non_blocking)
            for t in (batch.input_ids, batch.attention_mask, batch.token_type_ids)
        )
        outputs = self._forward(ids, mask, types)
        return {k: v.to("cpu", non_blocking=non_blocking) for k, v in outputs.items()}

    def _finish(
        self,
        window: Window,
        batch: Batch,
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
                self._outputs.records(window, batch, start, end, outputs)


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
