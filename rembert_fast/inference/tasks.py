"""What each batch task is: its model class, the head it needs trained, the forward that turns a batch
into host tensors, and the post-processing that turns those into records (see the package docstring
for the record fields)."""

from __future__ import annotations

from typing import Any

import torch

from rembert_fast.inference.window import Batch, Window

TASKS = ("embed", "classify", "fill-mask", "token-classify")
POOLINGS = ("cls", "mean", "pooler")
AGGREGATIONS = ("none", "first", "average")
# Weights a task reads that a checkpoint of another task lacks (from_pretrained would initialise them).
TRAINED_HEAD = {"classify": ("classifier.", "rembert.pooler."), "token-classify": ("classifier.",),
                 "fill-mask": ("cls.",), "pooler": ("pooler.",)}
# The field each command's result records hold (error records hold "error" instead).
RESULT_KEYS = {"embed": "embedding", "classify": "label", "fill-mask": "masks", "token-classify": "tokens"}


def model_class(task: str) -> type:
    """The model class a task loads. Imported at the first engine, not with `rembert_fast.inference`:
    the command's argument parser imports the package, and the models import transformers."""
    from rembert_fast.modeling import (
        RemBertForMaskedLM,
        RemBertForSequenceClassification,
        RemBertForTokenClassification,
        RemBertModel,
    )

    return {"embed": RemBertModel, "classify": RemBertForSequenceClassification,
            "fill-mask": RemBertForMaskedLM, "token-classify": RemBertForTokenClassification}[task]


class TaskOutputs:
    """The per-task half of a batch run: the forward of one batch and its records, for one loaded model
    and tokenizer and the engine's settings (`InferenceEngine` holds one)."""

    def __init__(
        self,
        task: str,  # one of TASKS
        model: Any,  # the loaded model_class(task), in eval mode
        tokenizer: Any,  # the model's RemBertTokenizerFast
        backend: Any,  # its tokenizers.Tokenizer: decodes ids, names pieces
        id2label: dict[int, str],
        *,
        pooling: str,  # embed: one of POOLINGS
        top_k: int,  # fill-mask: predictions per [MASK]
        all_scores: bool,  # classify: every label's probability too
        aggregate: str,  # token-classify: one of AGGREGATIONS
    ) -> None:
        self.task, self.model, self.config = task, model, model.config
        self.tokenizer, self._backend, self.id2label = tokenizer, backend, id2label
        self.mask_token_id = tokenizer.mask_token_id
        self.pooling, self.top_k, self.all_scores, self.aggregate = pooling, top_k, all_scores, aggregate
        self._token_strs: dict[int, str] = {}

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> dict[str, torch.Tensor]:
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

    # ----------------------------------------------------------------------------- post-processing
    def records(self, window: Window, batch: Batch, start: int, end: int, outputs: dict[str, Any]) -> None:
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

    def _token_labels(self, window: Window, row: int, probs: torch.Tensor) -> dict[str, Any]:
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
