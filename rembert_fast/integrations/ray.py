"""Batch inference on Ray Data: callable classes for `Dataset.map_batches`, one per task.

    import ray
    from rembert_fast.integrations.ray import Embedder

    ds = ray.data.read_parquet("s3://bucket/texts/")                  # a "text" column (+ "text_pair"?)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"model_dir": "/models/rembert"},
                        batch_size=2048, batch_format="pyarrow", num_gpus=1,
                        compute=ray.data.ActorPoolStrategy(size=8), max_restarts=-1, max_task_retries=-1)
    ds.write_parquet("s3://bucket/vectors/")                          # input columns + "embedding", "error"

Each actor loads the model once (`InferenceEngine`, on the actor's GPU when Ray gave it one, else on
CPU with the threads Ray gave it) and runs every batch it receives through the same engine as the
`rembert-fast` command: tokenising, length-sorted token-budget batching inside the batch, the
padding-free forward, halving on CUDA out-of-memory. A row the engine cannot compute (no text, a text
the tokenizer refuses, no [MASK] for fill-mask, ...) gets its reason in the `error` column and nulls
in the result columns; it never fails the task. Give `max_restarts` / `max_task_retries` to
`map_batches` so that a lost actor's batches are computed again by its replacement.

Classes: `Embedder`, `Classifier`, `MaskFiller`, `TokenClassifier` (tasks embed, classify, fill-mask,
token-classify); `PREDICTORS` maps task names to them. Constructor arguments: `model_dir` and the
`InferenceEngine` options (device, dtype, batch_tokens, max_length, pooling, top_k, all_scores,
aggregate, window), plus `input_format`:
- "columns" (default): a batch has a string column `text_column` ("text") and optionally
  `pair_column` ("text_pair", nulls for single texts). The output is the batch's columns, unchanged,
  followed by the result columns and `error`; a batch already holding one of those is a ValueError.
- "txt" or "jsonl": a batch has a column `raw` (one input line: the text, or a JSON record
  `{"text", "text_pair"?, "id"?}`) and may have `read_error` (why a line could not be read, a string,
  else null) and `jsonl` (bool: this row's line is a JSON record, else a text; null or no column:
  as `input_format` says). The output drops those three, keeps the others (such as `path` and
  `line`), and for "jsonl" adds `id`: the record's id as JSON text (ids of any JSON type fit one
  string column; null for a row without one, a text row among them).

Result columns (Arrow types; null on error rows), the engine's record fields:
- embed: `embedding` fixed_size_list<float32>[hidden_size].
- classify: `label` string, `score` float64, with `all_scores` `scores` struct<label name: float64>.
- fill-mask: `masks` list<struct<index int64, predictions list<struct<token int64, token_str string,
  score float64>>>>.
- token-classify: `tokens` list<struct<index int64, word string, entity string, score float64, start
  int64, end int64>>, or with `aggregate` "first"/"average" `words` (the same without `index`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from rembert_fast.inference import DEFAULT_WINDOW, InferenceEngine, LineError

INPUT_FORMATS = ("columns", "txt", "jsonl")
RAW_COLUMN, READ_ERROR_COLUMN, JSONL_COLUMN = "raw", "read_error", "jsonl"


def result_schema(engine: InferenceEngine) -> pa.Schema:
    """The result columns of `engine`'s task (error rows: nulls) and the `error` column."""
    if engine.task == "embed":
        fields = [pa.field("embedding", pa.list_(pa.float32(), engine.hidden_size))]
    elif engine.task == "classify":
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float64())]
        if engine.all_scores:
            names = [engine.id2label[i] for i in sorted(engine.id2label)]
            fields.append(pa.field("scores", pa.struct([pa.field(name, pa.float64()) for name in names])))
    elif engine.task == "fill-mask":
        prediction = pa.struct([("token", pa.int64()), ("token_str", pa.string()), ("score", pa.float64())])
        mask = pa.struct([("index", pa.int64()), ("predictions", pa.list_(prediction))])
        fields = [pa.field("masks", pa.list_(mask))]
    else:
        word = [("word", pa.string()), ("entity", pa.string()), ("score", pa.float64()),
                ("start", pa.int64()), ("end", pa.int64())]
        if engine.aggregate == "none":
            fields = [pa.field("tokens", pa.list_(pa.struct([("index", pa.int64()), *word])))]
        else:
            fields = [pa.field("words", pa.list_(pa.struct(word)))]
    return pa.schema([*fields, pa.field("error", pa.string())])


def _as_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block(batch)  # a dict of numpy arrays or a pandas DataFrame
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)


class RemBertPredictor:
    """A `map_batches` callable for one task (set by the subclasses); see the module docstring."""

    task = "embed"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        input_format: str = "columns",
        text_column: str = "text",
        pair_column: str = "text_pair",
        window: int = DEFAULT_WINDOW,
        **engine_options: Any,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format {input_format!r} is not one of {INPUT_FORMATS}")
        self.input_format, self.text_column, self.pair_column = input_format, text_column, pair_column
        self.engine = InferenceEngine(model_dir, self.task, window=window, **engine_options)
        self.schema = result_schema(self.engine)

    def __call__(self, batch: Any) -> pa.Table:
        """One output row per row of `batch` (an Arrow table, a pandas DataFrame or a dict of arrays)."""
        table = _as_table(batch)
        if self.input_format == "columns":
            items, kept = self._column_items(table), table
        else:
            items = self._raw_items(table)
            kept = table.drop_columns([c for c in (RAW_COLUMN, READ_ERROR_COLUMN, JSONL_COLUMN)
                                       if c in table.column_names])
        clash = sorted(set(kept.column_names) & set(self.schema.names))
        if clash:
            raise ValueError(f"the batch already has the output column(s) {clash}: rename them first")
        records = list(self.engine.run(items, jsonl=self.input_format == "jsonl"))
        if self.input_format == "jsonl":
            ids = [json.dumps(r["id"], ensure_ascii=False) if "id" in r else None for r in records]
            kept = kept.append_column(pa.field("id", pa.string()), pa.array(ids, pa.string()))
        for field in self.schema:
            values = [record.get(field.name) for record in records]
            kept = kept.append_column(field, pa.array(values, type=field.type))
        return kept

    def _column_items(self, table: pa.Table) -> list[dict[str, Any]]:
        if self.text_column not in table.column_names:
            raise ValueError(f"the batch has no text column {self.text_column!r}: its columns are "
                             f"{table.column_names} (set text_column)")
        texts = table.column(self.text_column).to_pylist()
        if self.pair_column not in table.column_names:
            return [{"text": text} for text in texts]
        pairs = table.column(self.pair_column).to_pylist()
        return [{"text": text} if pair is None else {"text": text, "text_pair": pair}
                for text, pair in zip(texts, pairs, strict=True)]

    def _raw_items(self, table: pa.Table) -> list[str | dict[str, str] | LineError]:
        """Per row what `engine.run(jsonl=input_format == "jsonl")` reads as that row's line."""
        if RAW_COLUMN not in table.column_names:
            raise ValueError(f"input_format {self.input_format!r} needs a column {RAW_COLUMN!r} of input "
                             f"lines; the batch's columns are {table.column_names}")
        raws = table.column(RAW_COLUMN).to_pylist()

        def column(name: str) -> list[Any]:
            return table.column(name).to_pylist() if name in table.column_names else [None] * len(raws)

        default = self.input_format == "jsonl"
        items: list[str | dict[str, str] | LineError] = []
        for raw, error, jsonl in zip(raws, column(READ_ERROR_COLUMN), column(JSONL_COLUMN), strict=True):
            if error is not None or raw is None:
                items.append(LineError(error or "the line has no text (null)"))
            elif default and jsonl is False:
                items.append({"text": raw})  # a text line in a JSON-lines run: the record it stands for
            elif not default and jsonl:
                raise ValueError(f"a row marked {JSONL_COLUMN}=true needs input_format 'jsonl' (which adds "
                                 "the id column), not 'txt'")
            else:
                items.append(raw)
        return items


class Embedder(RemBertPredictor):
    """`embed`: an `embedding` column (pooling "cls", "mean" or "pooler")."""

    task = "embed"


class Classifier(RemBertPredictor):
    """`classify`: `label` and `score` columns (and `scores` with all_scores=True)."""

    task = "classify"


class MaskFiller(RemBertPredictor):
    """`fill-mask`: a `masks` column, the top_k predictions at each [MASK]."""

    task = "fill-mask"


class TokenClassifier(RemBertPredictor):
    """`token-classify`: a `tokens` column (or `words` with aggregate "first" / "average")."""

    task = "token-classify"


PREDICTORS: dict[str, type[RemBertPredictor]] = {
    cls.task: cls for cls in (Embedder, Classifier, MaskFiller, TokenClassifier)
}
