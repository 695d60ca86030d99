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
record (or row), which `resume=True` cuts off before continuing after the last whole one; a `.npy`
commit killed between its two renames is recovered. Given `settings`, a writer records them in
`<output>.settings.json` before the `.partial` exists and continues a `.partial` only with the same
ones (`guards.check_settings`); `OutputLock` keeps a second run off an output being written.
`merge_jsonl` / `merge_npy` put the parts of a multi-process run back in input order.

Long texts are cut at a space before tokenising where that provably gives the ids of the whole text
then truncated (`truncation`), so a line of megabytes costs what its first window costs.

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


from rembert_fast.inference.engine import (
    DEFAULT_WINDOW,
    DTYPES,
    InferenceEngine,
    RunStats,
    resolve_device,
)
from rembert_fast.inference.guards import OutputInUse, OutputLock, ResumeError
from rembert_fast.inference.inputs import LineError, count_lines, iter_lines, reads_jsonl, shard_line
from rembert_fast.inference.merge import merge_jsonl, merge_npy
from rembert_fast.inference.tasks import AGGREGATIONS, POOLINGS, RESULT_KEYS, TASKS
from rembert_fast.inference.writers import JsonlWriter, NpyWriter, encode_record, nan_row

__all__ = [
    "AGGREGATIONS", "DEFAULT_WINDOW", "DTYPES", "POOLINGS", "RESULT_KEYS", "TASKS", "InferenceEngine",
    "JsonlWriter", "LineError", "NpyWriter", "OutputInUse", "OutputLock", "ResumeError", "RunStats",
    "count_lines", "encode_record", "iter_lines", "merge_jsonl", "merge_npy", "nan_row", "reads_jsonl",
    "resolve_device", "shard_line",
]
