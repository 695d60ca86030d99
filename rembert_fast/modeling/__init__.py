"""RemBERT and its heads, one job per file:

- `modules.py`: the encoder's modules (classic padded path), embeddings, pooler, LM head and its
  forward (`prediction_head_forward`, also `optimize()`'s for transformers' LM head);
- `pretrained.py`: `RemBertPreTrainedModel`, the base (init, loading, saving, resizing, checkpointing);
- `model.py`: `RemBertModel`, which picks the packed or the classic path;
- `heads.py`: the six task heads;
- `inputs.py`: input validation and the classic path's masks;
- `cache_bridge.py`: transformers' `DynamicCache` read and extended for `generate`.

Module tree, parameter names and state-dict keys are exactly transformers' `modeling_rembert.py`
(a transformers state dict loads here with `strict=True`, and the reverse), and so are the forward
arguments, the loss rules and the output fields. transformers is not imported at run time.

Two paths compute the same encoder:

- The packed fast path (`rembert_fast.packed`), taken whenever `packed.packable` allows it. The real
  tokens are packed once into (T, hidden) rows; embeddings, one fused QKV GEMM per layer, varlen
  attention, the bias+residual LayerNorms and bias+GELU run on those rows through the op API
  (`rembert_fast.ops`), and the result is padded once at the exit. Heads that need one row per
  sequence read packed rows directly; token-level heads run on packed rows and are padded after.
- The classic padded path: transformers' math on (B, L, hidden) tensors, for attention
  probabilities, head masks, 3-D/4-D masks, cross-attention and KV-cache decoding.
  `F.scaled_dot_product_attention` where probabilities are not returned, an explicit softmax where
  they are.

Deliberate differences from transformers (documented for users):
- Outputs at padding positions (hidden states, token logits) are zeros on the packed path; only real
  positions are specified. Losses over labels that are -100 at padding are equal.
- The pooler (and so sequence classification and multiple choice) reads each sequence's first real
  token, not position 0: with left padding transformers pools a padding position. With right padding
  or no padding the two agree.
- Ids outside their tables are rejected only where they are used: ids at padding positions are
  never read on the packed path.
"""

from rembert_fast.modeling.heads import (
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForMultipleChoice,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertForTokenClassification,
)
from rembert_fast.modeling.model import RemBertModel
from rembert_fast.modeling.modules import (
    RemBertAttention,
    RemBertEmbeddings,
    RemBertEncoder,
    RemBertIntermediate,
    RemBertLayer,
    RemBertLMPredictionHead,
    RemBertOnlyMLMHead,
    RemBertOutput,
    RemBertPooler,
    RemBertSelfAttention,
    RemBertSelfOutput,
)
from rembert_fast.modeling.pretrained import RemBertPreTrainedModel
from rembert_fast.packed import (
    EncodedBatch,
    embed_tokens,
    fused_qkv,
    packed_encoder_forward,
    packed_layer_forward,
)

__all__ = [
    "RemBertPreTrainedModel",
    "RemBertModel",
    "RemBertForMaskedLM",
    "RemBertForCausalLM",
    "RemBertForSequenceClassification",
    "RemBertForMultipleChoice",
    "RemBertForTokenClassification",
    "RemBertForQuestionAnswering",
    "RemBertEncoder",
    "RemBertLayer",
    "RemBertAttention",
    "RemBertSelfAttention",
    "RemBertSelfOutput",
    "RemBertIntermediate",
    "RemBertOutput",
    "RemBertEmbeddings",
    "RemBertPooler",
    "RemBertLMPredictionHead",
    "RemBertOnlyMLMHead",
    "fused_qkv",
    "packed_layer_forward",
    "packed_encoder_forward",
    "embed_tokens",
    "EncodedBatch",
]
