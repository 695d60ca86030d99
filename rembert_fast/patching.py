"""`optimize(model)`: accelerate a transformers `RemBert*` model in place, Liger-Kernel style.

    model = transformers.RemBertForSequenceClassification.from_pretrained(path).eval()
    rembert_fast.optimize(model)           # same object, same parameters, faster forward

What changes, on the model instance only (its class and every other instance are untouched):
- the RemBertModel's `forward` (the model itself, or a head's `.rembert`) takes the packed fast path
  (`rembert_fast.packed`) whenever the call allows it: real tokens only, one fused QKV GEMM per
  layer, varlen attention and fused LayerNorm / bias+GELU through `rembert_fast.ops`. Calls that need
  what only the padded path gives (`rembert_fast.packed.packable`: `output_attentions`, `head_mask`,
  3-D/4-D masks, cross-attention, KV caches, attention-probability dropout in training) run
  transformers' original forward, unchanged;
- the MLM / causal-LM head's `cls.predictions` runs bias+activation and its LayerNorm through the ops;
- a head's call whose loss reads logits at padding positions (question answering with start/end
  positions and a padded mask; a masked-LM, causal-LM or token-classification label other than -100
  scored against a padding position) runs the original RemBertModel forward, as transformers computes
  those logits;
- with `cuda_graphs=True`, inference calls on CUDA replay a captured graph per batch-size bucket
  (`rembert_fast.cuda_graphs.CudaGraphRunner`).
The patched modules say so when printed. Parameters, buffers and state-dict keys are not touched
(the fused QKV weight is one buffer the query/key/value weights are views of: same values, same
keys), so `save_pretrained` still writes a plain transformers checkpoint.

Differences from the unpatched model, as in rembert_fast's own models: hidden states at padding
positions are zeros, and the pooler reads each sequence's first real token (with left padding,
transformers pools position 0, a padding token). Real positions agree to float rounding.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from rembert_fast import ops, packed
from rembert_fast.cuda_graphs import CudaGraphRunner
from rembert_fast.modeling.inputs import loss_reads_padding
from rembert_fast.modeling.modules import prediction_head_forward
from rembert_fast.padding import NoRealTokensError

_STATE = "_rembert_fast"  # instance attribute holding the patch state; its presence means "patched"
_MARK = "rembert_fast: packed fast path"
_HEAD_MARK = "rembert_fast: fused bias+activation and LayerNorm"


def optimize(model: nn.Module, *, cuda_graphs: bool = False) -> nn.Module:
    """Patch a transformers RemBert* model (RemBertModel or any head) in place and return it.

    Args:
        model: a `transformers` RemBertModel, RemBertFor{MaskedLM, CausalLM, SequenceClassification,
            MultipleChoice, TokenClassification, QuestionAnswering}, or a subclass of one. A
            rembert_fast model is returned as it is (it is fast already).
        cuda_graphs: replay CUDA graphs for inference calls on a CUDA device (under `torch.no_grad()`
            or `torch.inference_mode()`, without `output_hidden_states`); see `rembert_fast.cuda_graphs`.

    Calling it again is harmless (it only updates `cuda_graphs`). Raises TypeError for anything else.
    """
    base = _rembert_base(model)
    if type(base).__module__.startswith("rembert_fast."):
        return model
    state = base.__dict__.get(_STATE)
    if state is None:
        state = base.__dict__[_STATE] = {"cuda_graphs": cuda_graphs, "runner": None}
        base.forward = _Patched(_fast_forward, base, "forward")
        base.extra_repr = _Patched(_marked_extra_repr, base, "extra_repr", _MARK)
        for module in model.modules():
            if type(module).__name__ == "RemBertLMPredictionHead" and _op_activation(base.config):
                # transformers keeps only the callable ACT2FN[config.hidden_act] on the head.
                module.__dict__[_STATE] = {"activation": base.config.hidden_act}
                module.forward = _Patched(_lm_head_forward, module, "forward")
                module.extra_repr = _Patched(_marked_extra_repr, module, "extra_repr", _HEAD_MARK)
        loss = _loss_over_positions(model)
        if model is not base and loss is not None:
            state["loss"] = loss
            model.forward = _Patched(_head_forward, model, "forward")
    state["cuda_graphs"] = cuda_graphs
    if not cuda_graphs:
        state["runner"] = None
    return model


def is_optimized(model: nn.Module) -> bool:
    """Whether `optimize` has patched this model (or its `.rembert`)."""
    base = getattr(model, "rembert", model)
    return isinstance(base, nn.Module) and _STATE in base.__dict__


# ----------------------------------------------------------------------------------------- checks
def _rembert_base(model: Any) -> nn.Module:
    """The RemBertModel inside `model`, or TypeError naming what `model` is."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if not isinstance(model, nn.Module) or model_type != "rembert" or not _is_rembert_class(model):
        raise TypeError(
            f"optimize() takes a transformers RemBert* model (RemBertModel or one of its heads); got "
            f"{name} with config.model_type={model_type!r}"
        )
    base = model if hasattr(model, "embeddings") else getattr(model, "rembert", None)
    if not isinstance(base, nn.Module) or not all(hasattr(base, n) for n in ("embeddings", "encoder")):
        raise TypeError(f"{name} has no RemBertModel (no `.rembert` with embeddings and encoder) to optimize")
    return base


def _is_rembert_class(model: nn.Module) -> bool:
    return any(cls.__name__.startswith("RemBert") for cls in type(model).__mro__)


def _op_activation(config: Any) -> bool:
    """Whether config.hidden_act is one the ops implement (others, callables too, keep the original)."""
    return isinstance(config.hidden_act, str) and config.hidden_act in ops.ACTIVATIONS


class _Patched:
    """`function` bound to one module in place of its method `name`: what types.MethodType does, but it
    pickles and deep-copies with its module (a MethodType pickles as getattr(module, function name),
    which the class lacks), and it shows the original method's signature (transformers' Trainer reads
    `model.forward`'s parameters to pick the dataset columns to keep)."""

    def __init__(self, function: Any, module: nn.Module, name: str, *extra: Any) -> None:
        self.__func__, self.__self__, self.name, self.extra = function, module, name, extra

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *self.extra, *args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(getattr(type(self.__self__), self.name).__get__(self.__self__))


def _marked_extra_repr(self: nn.Module, mark: str) -> str:
    original = type(self).extra_repr(self)
    return f"{original}, {mark}" if original else mark


# ----------------------------------------------------------------------------------------- forwards
@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _packable(self: nn.Module, args: dict[str, Any], extra: dict[str, Any]) -> bool:
    """Whether this call can take the packed path (everything else runs the original forward):
    `packed.packable`'s rule, on a call the packed path reads as transformers would (one of input_ids
    and inputs_embeds, of the model's float dtype; no argument this transformers version does not name)
    and on modules it may read instead of calling (no hooks, no wrappers)."""
    ids, embeds = args.get("input_ids"), args.get("inputs_embeds")
    return (
        (ids is None) != (embeds is None)
        and (ids.dim() == 2 if ids is not None else embeds.dim() == 3)
        and (embeds is None or embeds.dtype in ops.FLOAT_DTYPES)
        and all(value is None for value in extra.values())  # an argument this version does not name
        and args.get("cache") is None  # transformers 5's name for past_key_values
        and packed.packable(
            self,
            args.get("attention_mask"),
            output_attentions=args.get("output_attentions"),
            use_cache=args.get("use_cache"),
            head_mask=args.get("head_mask"),
            encoder_hidden_states=args.get("encoder_hidden_states"),
            encoder_attention_mask=args.get("encoder_attention_mask"),
            past_key_values=args.get("past_key_values"),
        )
        and reads_what_it_would_call(self.embeddings, self.encoder)
    )


def _call_arguments(self: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's arguments by name (whatever the transformers version's order), and its **kwargs."""
    signature = _signature(type(self))
    named = dict(signature.bind(self, *args, **kwargs).arguments)
    extra: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = named.pop(name, {})
    return named, extra


def _fast_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """RemBertModel.forward on the packed path when the call allows it, else the original."""
    original = type(self).forward
    params, extra = _call_arguments(self, args, kwargs)
    if self.__dict__[_STATE].get("padding_positions") or not _packable(self, params, extra):
        return original(self, *args, **kwargs)
    config = self.config
    ids, mask = params.get("input_ids"), params.get("attention_mask")
    token_type_ids, position_ids = params.get("token_type_ids"), params.get("position_ids")
    output_hidden_states = params.get("output_hidden_states")
    if output_hidden_states is None:
        output_hidden_states = getattr(config, "output_hidden_states", False)
    return_dict = params.get("return_dict")
    if return_dict is None:
        return_dict = getattr(config, "return_dict", True)

    # A mask row with no real token has nothing to pack: such a call gets transformers' own answer.
    # The check costs no extra device read: the graph path copies the mask to the host anyway, and
    # unpad_input reports it from the one read it makes.
    state = self.__dict__[_STATE]
    if (state["cuda_graphs"] and ids is not None and ids.is_cuda and not output_hidden_states
            and not torch.is_grad_enabled()):
        host_mask = None if mask is None else mask.to("cpu")
        if host_mask is not None and (host_mask.numel() == 0 or not bool(host_mask.ne(0).any(dim=1).all())):
            return original(self, *args, **kwargs)
        out = _graph_runner(self, state)(ids, host_mask, token_type_ids, position_ids)
    else:
        try:
            out = packed.packed_encoder_forward(
                self.embeddings, self.encoder, ids, mask, token_type_ids, position_ids, config,
                inputs_embeds=params.get("inputs_embeds"), output_hidden_states=bool(output_hidden_states))
        except NoRealTokensError:
            return original(self, *args, **kwargs)

    sequence_output = out.padded()
    # transformers' pooler reads position 0 of a (B, L, hidden) tensor: hand it the first real rows.
    pooled = self.pooler(out.first_tokens()[:, None, :]) if self.pooler is not None else None
    hidden_states = out.padded_hidden_states() if output_hidden_states else None
    if not return_dict:
        return (sequence_output, pooled) + ((hidden_states,) if hidden_states is not None else ())
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    return BaseModelOutputWithPoolingAndCrossAttentions(
        last_hidden_state=sequence_output, pooler_output=pooled, hidden_states=hidden_states
    )


# The heads whose loss reads logits position by position: the shift between a label and its logit.
_TOKEN_LOSS_SHIFT = {"RemBertForMaskedLM": 0, "RemBertForTokenClassification": 0, "RemBertForCausalLM": 1}


def _loss_over_positions(model: nn.Module) -> str | int | None:
    """"spans" for a question-answering head, a token head's label shift, None for the others."""
    if hasattr(model, "qa_outputs"):
        return "spans"
    for cls in type(model).__mro__:
        if cls.__name__ in _TOKEN_LOSS_SHIFT:
            return _TOKEN_LOSS_SHIFT[cls.__name__]
    return None


def _head_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """transformers' head forward; where its loss reads logits at padding positions (question answering's
    softmax over every position; a token label other than -100 scored against a padding position's
    logit), its RemBertModel runs transformers' padded forward for the call."""
    params, _ = _call_arguments(self, args, kwargs)
    state = self.rembert.__dict__[_STATE]
    loss, mask = state["loss"], params.get("attention_mask")
    if loss == "spans":
        reads = (params.get("start_positions") is not None and params.get("end_positions") is not None
                 and loss_reads_padding(mask, spans=True))
    else:
        reads = loss_reads_padding(mask, params.get("labels"), shift=loss)
    if not reads:
        return type(self).forward(self, *args, **kwargs)
    state["padding_positions"] = True
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        state["padding_positions"] = False


def _graph_runner(self: nn.Module, state: dict[str, Any]) -> CudaGraphRunner:
    if state["runner"] is None:
        state["runner"] = CudaGraphRunner(self)
    return state["runner"]


def _lm_head_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' RemBertLMPredictionHead: decoder(LN(act(dense(x)))), with the ops fusing bias+act."""
    # transformers' own head for float64, hooks and wrapped layers
    if hidden_states.dtype not in ops.FLOAT_DTYPES or not reads_what_it_would_call(
            self._modules["dense"], self._modules["LayerNorm"]):
        return type(self).forward(self, hidden_states)
    return prediction_head_forward(self, hidden_states, self.__dict__[_STATE]["activation"])


# ----------------------------------------------------------------------------------------- hooks, wrappers
# Modules a transformers model's packed path may read instead of calling: exactly these types, or
# transformers' own (RemBERT's blocks, its activation modules).
_PLAIN_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Dropout, nn.ModuleList)


def _read_as_called(module: nn.Module) -> bool:
    """No forward hook or pre-hook on `module`, and its type is one whose forward the packed path
    reproduces (a plain torch layer or container, or transformers' own)."""
    return (not module._forward_hooks and not module._forward_pre_hooks
            and (type(module) in _PLAIN_TYPES or type(module).__module__.startswith("transformers.")))


def reads_what_it_would_call(*roots: nn.Module) -> bool:
    """Whether a fused forward that reads the weights of the modules under `roots` instead of calling
    them gives what calling them would: no forward hook or pre-hook on any of them (nor a global one),
    and no module replaced by a wrapper with a forward of its own (a PEFT LoRA layer, a quantised
    Linear), whose extra term would be silently skipped. A walk of the modules on every call, since
    hooks and wrappers can come at any time."""
    return not packed.global_hooks() and all(_read_as_called(m) for root in roots for m in root.modules())
