"""Test helper: a transformers RemBERT model and a rembert_fast one with identical random weights.

Every parameter (biases and LayerNorm affine included, which transformers' init leaves at 0/1) gets
fresh random values, so a parity test fails if any weight is misplaced or ignored. The transformers
model runs in eval mode with eager attention and is the independent reference.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch
import transformers

import rembert_fast.modeling as modeling
from rembert_fast.configuration import RemBertConfig

# Widths that are not powers of two and head_dim != 64 (12 and 18); bos/eos inside the tiny vocab.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "h60": dict(
        vocab_size=97,
        hidden_size=60,
        num_attention_heads=5,
        num_hidden_layers=2,
        intermediate_size=84,
        input_embedding_size=20,
        output_embedding_size=28,
        max_position_embeddings=40,
        type_vocab_size=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="gelu",
    ),
    "h72": dict(
        vocab_size=101,
        hidden_size=72,
        num_attention_heads=4,
        num_hidden_layers=3,
        intermediate_size=100,
        input_embedding_size=24,
        output_embedding_size=36,
        max_position_embeddings=48,
        type_vocab_size=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="gelu_new",
    ),
}

DROPOUT_OFF = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)


def config_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    kwargs = dict(SMALL_CONFIGS[name], **DROPOUT_OFF)
    kwargs.update(overrides)
    return kwargs


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter (LayerNorm weights around 1, padding row included)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        values = torch.randn(param.shape, generator=gen) * 0.2
        if name.endswith("LayerNorm.weight"):
            values += 1.0
        param.copy_(values)


def make_pair(class_name: str, config_name: str, seed: int = 0, **overrides: Any) -> tuple[Any, Any]:
    """(transformers model, rembert_fast model) of `class_name`, eval mode, same random weights."""
    kwargs = config_kwargs(config_name, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = transformers.RemBertConfig(attn_implementation="eager", **kwargs)
        hf_model = getattr(transformers, class_name)(hf_config).eval()
    randomize(hf_model, seed)
    ours = getattr(modeling, class_name)(RemBertConfig(**kwargs)).eval()
    ours.load_state_dict(hf_model.state_dict(), strict=True)
    return hf_model, ours


def batch_inputs(
    config_name: str, batch: int = 3, seqlen: int = 9, seed: int = 0, pattern: str = "right"
) -> dict[str, torch.Tensor]:
    """input_ids, token_type_ids and a mask with right padding, left padding or a hole in a row."""
    cfg = SMALL_CONFIGS[config_name]
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, cfg["vocab_size"], (batch, seqlen), generator=gen)
    token_type_ids = torch.randint(0, cfg["type_vocab_size"], (batch, seqlen), generator=gen)
    lengths = [seqlen, max(1, seqlen - 4), max(1, seqlen // 3)][:batch] + [seqlen] * max(0, batch - 3)
    mask = torch.zeros(batch, seqlen, dtype=torch.long)
    for row, length in enumerate(lengths):
        if pattern == "left":
            mask[row, seqlen - length :] = 1
        else:
            mask[row, :length] = 1
    if pattern == "hole":
        mask[0, 2:4] = 0
    elif pattern != "right" and pattern != "left":
        raise ValueError(f"pattern {pattern!r} is not one of right, left, hole")
    input_ids = input_ids.masked_fill(mask == 0, cfg["pad_token_id"])
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type_ids}


@functools.cache
def transformers_decoder_is_causal() -> bool:
    """Whether the installed transformers' RemBERT decoder (`is_decoder=True`) hides later tokens.

    transformers 5.17.0 (the GPU machine's version) does not: its RemBertForCausalLM's first position
    changes when the last token does, so it is no reference for a decoder; 5.24.0 masks them, as 4.x
    did. Probed on a tiny random model: change the last token, watch the first position.
    """
    config = transformers.RemBertConfig(**config_kwargs("h60", is_decoder=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.RemBertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(3, config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, -1] = 3 if int(ids[0, -1]) != 3 else 4
    with torch.no_grad():
        first = model(input_ids=ids).last_hidden_state[0, 0]
        first_after_change = model(input_ids=changed).last_hidden_state[0, 0]
    return torch.equal(first, first_after_change)


NON_CAUSAL_REFERENCE = (f"transformers {transformers.__version__}'s RemBERT decoder attends to later tokens "
                        "(seen in 5.17.0; 5.24.0 masks them): no reference for a causal model")
needs_causal_reference = pytest.mark.skipif(not transformers_decoder_is_causal(), reason=NON_CAUSAL_REFERENCE)
