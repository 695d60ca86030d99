"""RemBertPreTrainedModel: the base of every RemBERT model (config, transformers' weight init,
loading and saving, the PreTrainedModel methods users call: embeddings accessors, resizing,
gradient checkpointing)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rembert_fast import checkpoint, ops
from rembert_fast.configuration import RemBertConfig
from rembert_fast.hf_base import TRANSFORMERS, ModelBase
from rembert_fast.modeling.modules import RemBertEmbeddings, RemBertSelfAttention

if TYPE_CHECKING:
    from rembert_fast.modeling.model import RemBertModel
from rembert_fast.packed import fused_qkv


# ================================================================================== base class
class RemBertPreTrainedModel(ModelBase):
    """Base of every RemBERT model: the config, transformers' weight init, loading and saving.

    With transformers installed this is a `transformers.PreTrainedModel` (see `rembert_fast.hf_base`),
    so Trainer, pipelines and PEFT take these models; `from_pretrained`, `save_pretrained`, the weight
    init and the embedding resizing stay rembert_fast's own (strict loading, its errors). Without
    transformers it is a `torch.nn.Module` with the same methods.

    Models can be built on the meta device (`with torch.device("meta"): Model(config)`); after weights
    are assigned, `_post_load()` rebuilds the derived state (position ids, fused QKV weights).
    """

    config_class = RemBertConfig
    base_model_prefix = "rembert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RemBertEmbeddings", "RemBertLayer"]
    # As transformers' RemBERT: its config then says "eager", so a transformers model can be built from it.
    # rembert_fast's attention is the same for every `attn_implementation`.
    _supports_sdpa = False
    _tied_weights_keys = None  # RemBERT ties nothing; q/k/v share one buffer but are distinct weights

    def __init__(self, config: RemBertConfig) -> None:
        if not isinstance(config, RemBertConfig):
            raise ValueError(f"config must be a rembert_fast.RemBertConfig, got {type(config).__name__}")
        if config.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(
                f"hidden_act={config.hidden_act!r} is not supported; choose one of {ops.ACTIVATIONS}"
            )
        if TRANSFORMERS:
            super().__init__(config)
        else:
            super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """Initialise each module not initialised yet (transformers' `_is_hf_initialized` flag: a second
        `post_init()`, or one after loading or resizing, keeps the weights), then rebuild derived state."""
        with torch.no_grad():
            for module in self.modules():
                if not getattr(module, "_is_hf_initialized", False):
                    self._init_weights(module)
                    module._is_hf_initialized = True
        self._post_load()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: normal(0, initializer_range) weights, zero biases and padding row, LN 1/0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()

    @torch.no_grad()
    def _post_load(self) -> None:
        """Rebuild what the state dict does not hold: position ids and the fused QKV buffers.

        Called at the end of `__init__` and by `checkpoint.load_pretrained` after it assigned weights.
        """
        for module in self.modules():
            if isinstance(module, RemBertEmbeddings):
                module.reset_position_ids()
            elif isinstance(module, RemBertSelfAttention):
                fused_qkv(module, rebuild=True)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> RemBertPreTrainedModel:
        """Load a transformers (or rembert_fast) checkpoint directory or Hub id (None: from `config=` and
        `state_dict=` alone); see `rembert_fast.checkpoint.load_pretrained`."""
        return checkpoint.load_pretrained(cls, pretrained_model_name_or_path, dtype=dtype, device=device,
                                          **config_overrides)

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json and the weights in transformers' layout; see `rembert_fast.checkpoint`."""
        checkpoint.save_pretrained(self, path, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --------------------------------------------------------- transformers' PreTrainedModel methods
    @property
    def base_model(self) -> RemBertModel:
        """The RemBertModel of a head (`.rembert`), or the model itself."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The vocabulary projection of a language-model head; None for the others."""
        return None

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to tie: RemBERT's output embeddings are separate from its input embeddings."""

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters in the model (as transformers counts them; shared ones once)."""
        embedding_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable)
                   and not (exclude_embeddings and id(p) in embedding_weights))

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens: int | None = None,
                                pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the vocabulary of the input embeddings (and of an LM head's decoder) to `new_num_tokens`
        rows (rounded up to `pad_to_multiple_of`), keeping the existing rows; `config.vocab_size` follows.

        New rows are the mean of the old rows with `mean_resizing` (transformers samples them around
        that mean), else transformers' normal(0, initializer_range) init. Returns the input embedding.
        """
        old = self.get_input_embeddings()
        size = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):
                raise ValueError(  # transformers' message, word for word
                    f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is "
                    "not and integer. Please make sure to pass an integer"
                )
            if pad_to_multiple_of < 1:
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be a positive integer")
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size < 1:
            raise ValueError(f"new_num_tokens must be at least 1, got {new_num_tokens}")
        if size == old.num_embeddings:
            return old

        def grown(weight: torch.Tensor) -> torch.Tensor:  # (old rows, ...) -> (size, ...)
            rows = weight.new_empty((size, *weight.shape[1:]))
            keep = min(size, weight.shape[0])
            rows[:keep] = weight[:keep]
            if size > keep:
                if mean_resizing and weight.dim() > 1:
                    rows[keep:] = weight.float().mean(0).to(weight.dtype)
                elif weight.dim() > 1:
                    rows[keep:].normal_(0.0, self.config.initializer_range)
                else:
                    rows[keep:] = weight.float().mean().to(weight.dtype) if mean_resizing else 0
            return rows

        padding_idx = old.padding_idx if old.padding_idx is not None and old.padding_idx < size else None
        embedding = nn.Embedding(size, old.embedding_dim, padding_idx=padding_idx,
                                 device=old.weight.device, dtype=old.weight.dtype)
        embedding.weight.copy_(grown(old.weight))
        embedding.weight.requires_grad_(old.weight.requires_grad)  # a frozen embedding stays frozen
        embedding._is_hf_initialized = True  # a later post_init() keeps the resized rows
        self.set_input_embeddings(embedding)
        decoder = self.get_output_embeddings()
        if decoder is not None:
            new_decoder = nn.Linear(decoder.in_features, size, bias=decoder.bias is not None,
                                    device=decoder.weight.device, dtype=decoder.weight.dtype)
            new_decoder.weight.copy_(grown(decoder.weight))
            new_decoder.weight.requires_grad_(decoder.weight.requires_grad)
            if decoder.bias is not None:
                new_decoder.bias.copy_(grown(decoder.bias))
                new_decoder.bias.requires_grad_(decoder.bias.requires_grad)
            new_decoder._is_hf_initialized = True
            self.set_output_embeddings(new_decoder)
        self.config.vocab_size = size
        self.vocab_size = size  # transformers sets both
        return embedding
