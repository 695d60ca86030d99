"""The six task heads on top of RemBertModel: masked and causal LM, sequence classification,
multiple choice, token classification, extractive QA (transformers' forwards, losses and outputs)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rembert_fast.configuration import RemBertConfig
from rembert_fast.hf_base import GenerationBase
from rembert_fast.modeling.cache_bridge import cache_length, is_cache_object, legacy_past, store_presents
from rembert_fast.modeling.inputs import (
    check_labels,
    check_num_labels,
    flat_positions,
    loss_reads_padding,
    one_cache,
    return_dict_of,
)
from rembert_fast.modeling.lm_loss import prediction_loss
from rembert_fast.modeling.losses import (
    causal_targets,
    cross_entropy,
    no_shift_labels,
    per_item,
    shift_labels_of,
)
from rembert_fast.modeling.model import RemBertModel
from rembert_fast.modeling.modules import RemBertOnlyMLMHead
from rembert_fast.modeling.pretrained import RemBertPreTrainedModel
from rembert_fast.outputs import (
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    PastKeyValues,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from rembert_fast.packed import EncodedBatch


class _RemBertWithLMHead(RemBertPreTrainedModel):
    """The encoder without a pooler plus the untied vocabulary head (`cls.predictions`): the masked and
    the causal language models share this body and differ only in their forward.

    With labels, in training mode (`model.train()`), unless `return_logits=True`: the loss is computed
    at the labelled positions only, chunk by chunk, without the (tokens x vocab) logits
    (`modeling.lm_loss`), and `logits` is None. Otherwise `logits` is transformers' and the loss is
    computed from it.
    """

    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch (see modeling.losses)

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.cls = RemBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    def _sparse_loss(self, labels: torch.Tensor | None, return_logits: bool | None) -> bool:
        """The documented rule (class docstring): labels in training mode, logits not asked for."""
        return labels is not None and self.training and not return_logits

    def _labelled_loss(
        self,
        enc: Any,  # the encoder's EncodedBatch
        flat: torch.Tensor | None,  # (N,) flat positions into B*L the targets belong to; None: all of them
        targets: torch.Tensor,  # (N,) or (B, L) int64, -100 = not scored
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """The LM loss at the labelled positions only (one host read: which positions)."""
        targets = targets.reshape(-1)
        scored = (targets != -100).nonzero().flatten()  # (n,)
        positions = scored if flat is None else flat.index_select(0, scored)
        rows = enc.rows_at(positions)  # (n, hidden)
        return prediction_loss(self.cls.predictions, rows, targets.index_select(0, scored),
                               self.config.hidden_act, num_items_in_batch)


class RemBertForMaskedLM(_RemBertWithLMHead):
    """RemBERT with the masked-language-modelling head (`cls.predictions`, untied from the input)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, L) ids, -100 = ignored
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        masked_positions: torch.Tensor | None = None,  # rembert_fast extra: (B, L) bool or (N, 2) index
        num_items_in_batch: torch.Tensor | int | None = None,  # loss = sum / this (modeling.losses)
        return_logits: bool | None = None,  # rembert_fast extra: logits in training with labels too
        cu_seq_lens_q: torch.Tensor | None = None,  # padding-free batches: see modeling.flattened
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **loss_kwargs: Any,  # shift_labels (causal LM only, see modeling.losses)
    ) -> MaskedLMOutput | tuple[Any, ...]:
        """transformers' MLM forward, plus `masked_positions` and `return_logits`.

        `masked_positions` (a rembert_fast extra) computes the vocabulary-wide decoder only at the given
        positions, which costs as much as the whole encoder per token: either a (B, L) bool mask or an
        (N, 2) tensor of (row, column) pairs. `logits` is then (N, vocab) in row-major order of the
        positions, and `labels`, if given, are read at the same positions. In training mode with labels,
        `logits` is None unless `return_logits=True` (see the class docstring).
        """
        no_shift_labels(type(self).__name__, loss_kwargs)
        enc = self.rembert.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            padding_positions=loss_reads_padding(attention_mask, labels),
            flattening=(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k),
        )
        if labels is not None:
            check_labels("labels", labels, (enc.batch, enc.seqlen), self.config.vocab_size, enc.hidden)
        flat = None if masked_positions is None else flat_positions(masked_positions, enc.batch, enc.seqlen)
        if flat is not None and labels is not None:
            labels = labels.reshape(-1).index_select(0, flat)  # (N,)
        logits = loss = None
        if self._sparse_loss(labels, return_logits):
            loss = self._labelled_loss(enc, flat, labels, num_items_in_batch)
        else:
            logits = self.cls(enc.rows_at(flat)) if flat is not None else enc.pad(self.cls(enc.hidden))
            if labels is not None:  # logits: (N, vocab) at masked_positions, else (B, L, vocab)
                loss = cross_entropy(logits.reshape(-1, self.config.vocab_size), labels.reshape(-1),
                                     num_items_in_batch)
        out = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if return_dict_of(self.config, return_dict) else out.to_tuple()


class RemBertForCausalLM(_RemBertWithLMHead, GenerationBase):
    """RemBERT as a left-to-right decoder (`config.is_decoder=True`), with KV cache and cross-attention.

    `past_key_values` is transformers' legacy format: one tuple per layer of self-attention (k, v),
    each (B, heads, past_length, head_dim), followed by the cross-attention (k, v) when the model has
    cross-attention. It is returned when `use_cache` (default `config.use_cache`; off when `labels`
    are given, as in transformers 4). A transformers `DynamicCache` (what `generate()` passes) is read
    and extended in place, and returned as the output's `cache` (also readable as `past_key_values`).
    """

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        labels: torch.Tensor | None = None,  # (B, L); position i is predicted from tokens <= i-1
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: PastKeyValues | None = None,  # transformers 5's name for past_key_values
        num_items_in_batch: torch.Tensor | int | None = None,  # loss = sum / this (modeling.losses)
        return_logits: bool | None = None,  # rembert_fast extra: logits in training with labels too
        cu_seq_lens_q: torch.Tensor | None = None,  # padding-free batches: see modeling.flattened
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **loss_kwargs: Any,  # shift_labels (causal LM only, see modeling.losses)
    ) -> CausalLMOutputWithCrossAttentions | tuple[Any, ...]:
        """transformers' causal-LM forward (loss: transformers' `ForCausalLMLoss`, with `shift_labels`
        and `num_items_in_batch`), plus `return_logits`: in training mode with labels, `logits` is None
        unless `return_logits=True` (see the class docstring)."""
        shift_labels = shift_labels_of(type(self).__name__, loss_kwargs)
        if labels is not None:
            use_cache = False
        past = one_cache(past_key_values, cache)
        cache_object = past if is_cache_object(past) else None  # generate()'s DynamicCache
        if cache_object is not None:
            past = legacy_past(cache_object)
            use_cache = True if use_cache is None else use_cache
        enc = self.rembert.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            padding_positions=(loss_reads_padding(attention_mask, shift_labels) if shift_labels is not None
                               else loss_reads_padding(attention_mask, labels, shift=1)),
            flattening=(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k),
        )
        presents = enc.past_key_values
        if cache_object is not None and presents is not None:
            store_presents(cache_object, presents, cache_length(past))
            presents = cache_object
        targets = None
        if labels is not None:
            shape, vocab = (enc.batch, enc.seqlen), self.config.vocab_size
            check_labels("labels", labels, shape, vocab, enc.hidden)
            if shift_labels is not None:
                check_labels("shift_labels", shift_labels, shape, vocab, enc.hidden)
            targets = causal_targets(labels, shift_labels)  # (B, L): position i's target
        logits = loss = None
        if self._sparse_loss(targets, return_logits):
            loss = self._labelled_loss(enc, None, targets, num_items_in_batch)
        else:
            logits = enc.pad(self.cls(enc.hidden))  # (B, L, vocab)
            if targets is not None:
                loss = cross_entropy(logits.reshape(-1, self.config.vocab_size), targets.reshape(-1),
                                     num_items_in_batch)
        out = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            cache=presents,
            hidden_states=enc.padded_hidden_states(),
            attentions=enc.attentions,
            cross_attentions=enc.cross_attentions,
        )
        return out if return_dict_of(self.config, return_dict) else out.to_tuple()


class _RemBertClassifier(RemBertPreTrainedModel):
    """The encoder, dropout and a linear classifier over `config.num_labels`: sequence classification (on
    the pooled output) and token classification (on every token) share this body and forward, and
    differ in `_classify`. A padding-free batch (`modeling.flattened`) gives one pooled row per sequence
    it concatenates."""

    pools = True  # whether the classifier reads the pooled output (else every token)
    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch (see modeling.losses)

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        check_num_labels(type(self).__name__, config)
        self.num_labels = config.num_labels
        self.rembert = RemBertModel(config, add_pooling_layer=self.pools)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # see the subclass
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,  # loss = sum / this (modeling.losses)
        cu_seq_lens_q: torch.Tensor | None = None,  # padding-free batches: see modeling.flattened
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **loss_kwargs: Any,  # shift_labels (causal LM only, see modeling.losses)
    ) -> SequenceClassifierOutput | TokenClassifierOutput | tuple[Any, ...]:
        no_shift_labels(type(self).__name__, loss_kwargs)
        reads_padding = not self.pools and loss_reads_padding(attention_mask, labels)
        enc = self.rembert.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask,
                                  inputs_embeds, output_attentions=output_attentions,
                                  output_hidden_states=output_hidden_states, padding_positions=reads_padding,
                                  flattening=(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k))
        out = self._classify(enc, labels, num_items_in_batch)
        return out if return_dict_of(self.config, return_dict) else out.to_tuple()

    def _classify(self, enc: EncodedBatch, labels: torch.Tensor | None,
                  num_items_in_batch: torch.Tensor | int | None) -> Any:
        """The head's output (logits, and the loss when `labels` are given) from the encoder's rows."""
        raise NotImplementedError


class RemBertForSequenceClassification(_RemBertClassifier):
    """Pooled output -> dropout -> linear. The loss follows `config.problem_type`, decided like transformers
    when unset: one label -> regression (MSE); integer labels -> single-label (cross-entropy); otherwise
    multi-label (BCE with logits). The pooler reads each sequence's first real token (see RemBertModel).
    `labels`: (B,) class ids, (B,) or (B, 1) targets, or (B, num_labels); one per sequence of a
    padding-free batch."""

    def _classify(self, enc: EncodedBatch, labels: torch.Tensor | None,
                  num_items_in_batch: torch.Tensor | int | None) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(enc.pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            batch = logits.shape[0]
            if self.config.problem_type == "regression":
                if self.num_labels == 1:
                    if labels.numel() != batch:
                        check_labels("labels", labels, (batch,), None, logits)
                    loss = per_item(F.mse_loss, logits.squeeze(), labels.squeeze(), num_items_in_batch)
                else:
                    check_labels("labels", labels, tuple(logits.shape), None, logits)
                    loss = per_item(F.mse_loss, logits, labels, num_items_in_batch)
            elif self.config.problem_type == "single_label_classification":
                check_labels("labels", labels.reshape(-1) if labels.numel() == batch else labels, (batch,),
                              self.num_labels, logits)
                loss = cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), num_items_in_batch)
            else:
                check_labels("labels", labels, tuple(logits.shape), None, logits)
                loss = per_item(F.binary_cross_entropy_with_logits, logits, labels.to(logits.dtype),
                                num_items_in_batch)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )


class RemBertForMultipleChoice(RemBertPreTrainedModel):
    """(B, choices, L) inputs -> one score per choice from the pooled output; cross-entropy over choices."""

    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch (see modeling.losses)

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, choices, L)
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, choices, L, input_embedding_size)
        labels: torch.Tensor | None = None,  # (B,) index of the right choice
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,  # loss = sum / this (modeling.losses)
        **loss_kwargs: Any,  # shift_labels (causal LM only, see modeling.losses)
    ) -> MultipleChoiceModelOutput | tuple[Any, ...]:
        no_shift_labels(type(self).__name__, loss_kwargs)
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("pass exactly one of input_ids and inputs_embeds (got neither)")
        if source.dim() != (3 if input_ids is not None else 4):
            raise ValueError(
                f"multiple-choice inputs must be (batch, choices, seqlen[, embed]), got shape "
                f"{tuple(source.shape)}"
            )
        num_choices = source.shape[1]
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                             ("position_ids", position_ids)):
            # Per choice (B, choices, L) or already flattened (B*choices, L), as transformers views them;
            # position_ids may also be one row shared by all.
            allowed = [tuple(source.shape[:3]), (source.shape[0] * num_choices, source.shape[2])]
            allowed += [(1, source.shape[2])] if name == "position_ids" else []
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) not in allowed:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; multiple-choice inputs of shape "
                                 f"{tuple(source.shape)} need {' or '.join(map(str, allowed))}")

        def flat(t: torch.Tensor | None, trailing: int = 1) -> torch.Tensor | None:
            return None if t is None else t.reshape(-1, *t.shape[t.dim() - trailing :])

        enc = self.rembert.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                                  flat(position_ids), head_mask, flat(inputs_embeds, 2),
                                  output_attentions=output_attentions,
                                  output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(enc.pooled)).view(-1, num_choices)  # (B, choices)
        loss = None
        if labels is not None:
            check_labels("labels", labels, (logits.shape[0],), num_choices, logits)
            loss = cross_entropy(logits, labels, num_items_in_batch)
        out = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if return_dict_of(self.config, return_dict) else out.to_tuple()


class RemBertForTokenClassification(_RemBertClassifier):
    """Per-token dropout -> linear (NER, POS); cross-entropy with -100 ignored. `labels`: (B, L)."""

    pools = False

    def _classify(self, enc: EncodedBatch, labels: torch.Tensor | None,
                  num_items_in_batch: torch.Tensor | int | None) -> TokenClassifierOutput:
        logits = enc.pad(self.classifier(self.dropout(enc.hidden)))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            check_labels("labels", labels, (enc.batch, enc.seqlen), self.num_labels, logits)
            loss = cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), num_items_in_batch)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )


class RemBertForQuestionAnswering(RemBertPreTrainedModel):
    """Extractive QA: per-token start/end logits; loss = mean of the two cross-entropies, positions
    outside the sequence ignored (clamped to L, as transformers does, without modifying the inputs).

    transformers' loss is a softmax over every position, padding included, so a call with positions and
    a padded `attention_mask` runs the padded path, which gives padding positions transformers' logits
    (the packed path leaves them 0). Without positions, padding logits are 0, as for every head.
    A padding-free batch (`modeling.flattened`) gives per-token logits; its spans cannot be scored (one
    softmax would run across the sequences it concatenates), so positions with it raise ValueError.
    """

    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch (see modeling.losses)

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"RemBertForQuestionAnswering needs num_labels=2 (start and end logits), got "
                             f"{config.num_labels}; pass num_labels=2")
        self.num_labels = config.num_labels
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,  # (B,)
        end_positions: torch.Tensor | None = None,  # (B,)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,  # loss = sum / this (modeling.losses)
        cu_seq_lens_q: torch.Tensor | None = None,  # padding-free batches: see modeling.flattened
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **loss_kwargs: Any,  # shift_labels (causal LM only, see modeling.losses)
    ) -> QuestionAnsweringModelOutput | tuple[Any, ...]:
        no_shift_labels(type(self).__name__, loss_kwargs)
        reads_padding = (start_positions is not None and end_positions is not None
                         and loss_reads_padding(attention_mask, spans=True))
        enc = self.rembert.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            padding_positions=reads_padding,
            flattening=(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k),
        )
        logits = enc.pad(self.qa_outputs(enc.hidden))  # (B, L, num_labels)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # (B, L)
        loss = None
        if start_positions is not None and end_positions is not None:
            sequences = enc.cu_seqlens.numel() - 1
            if sequences != enc.batch:
                raise ValueError(f"start/end positions with a padding-free batch ({sequences} sequences in "
                                 "one row): span losses need one row per sequence; pad instead")
            for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
                if isinstance(positions, torch.Tensor) and positions.numel() == enc.batch:
                    positions = positions.reshape(-1)
                # Any integer position is allowed: outside [0, L) it is clamped and ignored (transformers).
                check_labels(name, positions, (enc.batch,), None, start_logits)
                if positions.dtype != torch.int64:
                    raise ValueError(f"{name} must be int64 token positions, got {positions.dtype} "
                                     "(use .long())")
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (
                cross_entropy(start_logits, start, num_items_in_batch, ignore_index=ignored)
                + cross_entropy(end_logits, end, num_items_in_batch, ignore_index=ignored)
            ) / 2
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=enc.padded_hidden_states(),
            attentions=enc.attentions,
        )
        return out if return_dict_of(self.config, return_dict) else out.to_tuple()
