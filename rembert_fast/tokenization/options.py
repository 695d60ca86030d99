"""`__call__`'s arguments as transformers 4.37.2 reads them: the inputs (a text, a pair, a batch of
either) and the padding / truncation strategies with their maximum length."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# transformers' "no maximum length" sentinel and the threshold it compares against.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)
# RemBertConfig.max_position_embeddings: the limit `max_length` is checked against when the
# tokenizer itself has no model_max_length.
REMBERT_MAX_POSITIONS = 512

PADDING_STRATEGIES = {
    False: "do_not_pad",
    None: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
TRUNCATION_STRATEGIES = {
    False: "do_not_truncate",
    None: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}

# (text, pair or None); with is_split_into_words each is a list of words.
TextPair = tuple["str | list[str]", "str | list[str] | None"]


@dataclass(frozen=True)
class EncodeOptions:
    """`__call__`'s arguments after validation, as the two encoders take them."""

    add_special_tokens: bool
    padding: str  # "do_not_pad", "longest" or "max_length"
    truncation: str  # "do_not_truncate", "longest_first", "only_first" or "only_second"
    max_length: int | None  # the padding / truncation length, when one applies
    pad_to_multiple_of: int | None
    return_token_type_ids: bool
    return_attention_mask: bool
    return_special_tokens_mask: bool
    return_offsets_mapping: bool
    verbose: bool
    stride: int = 0
    is_split_into_words: bool = False
    return_overflowing_tokens: bool = False
    return_length: bool = False
    batched: bool = True  # the input was a batch (not one text or pair)


def check_positive_int(name: str, value: Any, optional: bool) -> None:
    """TypeError unless `value` is an int (or None when `optional`), ValueError unless it is > 0."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be an int{' or None' if optional else ''}; got {type(value).__name__}: {value!r}"
        )
    # Zero too: given max_length=0, 4.37.2 silently neither truncates nor pads.
    if value <= 0:
        raise ValueError(f"{name} must be positive; got {value}")


def normalize_inputs(
    text: Any, text_pair: Any, is_split_into_words: bool = False
) -> tuple[list[TextPair], bool]:
    """(the inputs as (text, pair-or-None) tuples, whether they were a batch); TypeError naming a
    value that is not a str (a list of str with `is_split_into_words`), ValueError when two lists
    differ in length."""
    if is_split_into_words:
        return _normalize_words(text, text_pair)

    def check(value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise TypeError(
                f"{what} must be a str (or a list of str / (str, str) pairs for a batch); "
                f"got {type(value).__name__}: {value!r:.80}"
            )
        return value

    if not isinstance(text, (list, tuple)):
        check(text, "text")
        if text_pair is not None:
            check(text_pair, "text_pair")
        return [(text, text_pair)], False
    if text_pair is not None:
        return _zip_batch(text, text_pair, check, "a list of str"), True
    pairs: list[TextPair] = []
    for i, item in enumerate(text):
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((check(item[0], f"text[{i}][0]"), check(item[1], f"text[{i}][1]")))
        else:
            pairs.append((check(item, f"text[{i}]"), None))
    return pairs, True


def _normalize_words(text: Any, text_pair: Any) -> tuple[list[TextPair], bool]:
    """`normalize_inputs` for `is_split_into_words`: a list of words is one text, a list of such lists
    a batch (4.37.2's rule: a batch when the first entry is itself a list)."""

    def words(value: Any, what: str) -> list[str]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(word, str) for word in value):
            raise TypeError(
                f"{what} must be a list of str (its words) with is_split_into_words=True (a batch: a list "
                f"of such lists); got {type(value).__name__}: {value!r:.80}"
            )
        return list(value)

    batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
    if not batched:
        return [(words(text, "text"), None if text_pair is None else words(text_pair, "text_pair"))], False
    if text_pair is not None:
        return _zip_batch(text, text_pair, words, "a list of word lists"), True
    return [(words(item, f"text[{i}]"), None) for i, item in enumerate(text)], True


def _zip_batch(text: list, text_pair: Any, check: Callable[[Any, str], Any], kind: str) -> list[TextPair]:
    """A batch given as two lists, each entry through `check`."""
    if not isinstance(text_pair, (list, tuple)):
        raise TypeError(f"text_pair must be {kind} when text is a batch; got {type(text_pair).__name__}")
    if len(text_pair) != len(text):
        raise ValueError(f"text_pair has {len(text_pair)} entries but text has {len(text)}")
    return [
        (check(a, f"text[{i}]"), check(b, f"text_pair[{i}]"))
        for i, (a, b) in enumerate(zip(text, text_pair, strict=True))
    ]


def resolve_strategies(
    padding: Any,
    truncation: Any,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    verbose: bool,
    model_max_length: int,
    warn_once: Callable[[str, str], None],
) -> tuple[str, str, int | None]:
    """(padding strategy, truncation strategy, max_length) with transformers 4.37.2's rules."""
    for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
        check_positive_int(name, value, optional=True)
    if max_length is not None and padding is False and truncation is None:
        if verbose:
            warn_once(
                "truncation-not-explicit",
                "Truncation was not explicitly activated but `max_length` is provided a specific value; "
                "defaulting to the 'longest_first' truncation strategy. Pass truncation=True (or a "
                "strategy) to silence this.",
            )
        truncation = "longest_first"
    try:
        padding_strategy = PADDING_STRATEGIES[padding]
    except (KeyError, TypeError):
        raise ValueError(
            f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}"
        ) from None
    try:
        truncation_strategy = TRUNCATION_STRATEGIES[truncation]
    except (KeyError, TypeError):
        raise ValueError(
            f"truncation must be True, False, None, 'longest_first', 'only_first', "
            f"'only_second' or 'do_not_truncate'; got {truncation!r}"
        ) from None
    if (
        padding is True
        and max_length is not None
        and truncation_strategy == "do_not_truncate"
        and verbose
    ):
        warnings.warn(
            "`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
            "To pad to max length, use `padding='max_length'`.",
            stacklevel=3,
        )
    if max_length is None:
        if padding_strategy == "max_length":
            if model_max_length > LARGE_INTEGER:
                # 4.37.2 warns and does not pad; a batch of unequal lengths is not what was asked for.
                raise ValueError(
                    "padding='max_length' needs a length: pass max_length=N (or padding=True to pad "
                    "to the longest sequence); got max_length=None and the tokenizer has no "
                    "model_max_length"
                )
            max_length = model_max_length
        if truncation_strategy != "do_not_truncate":
            if model_max_length > LARGE_INTEGER:
                if verbose:
                    warn_once(
                        "truncate-no-max-length",
                        "Asking to truncate to max_length but no maximum length is provided and "
                        "the tokenizer has no model_max_length. Default to no truncation.",
                    )
                truncation_strategy = "do_not_truncate"
            else:
                max_length = model_max_length
    if (
        truncation_strategy != "do_not_truncate"
        and padding_strategy != "do_not_pad"
        and pad_to_multiple_of is not None
        and max_length is not None
        and max_length % pad_to_multiple_of
    ):
        raise ValueError(
            f"Truncation and padding are both on; max_length ({max_length}) must be a multiple "
            f"of pad_to_multiple_of ({pad_to_multiple_of})."
        )
    if max_length is not None and (
        padding_strategy == "max_length" or truncation_strategy != "do_not_truncate"
    ):
        check_max_length(max_length, model_max_length, warn_once)
    return padding_strategy, truncation_strategy, max_length


def check_max_length(max_length: int, model_max_length: int, warn_once: Callable[[str, str], None]) -> None:
    """Warn (once) when `max_length` exceeds what the model's position embeddings take."""
    if model_max_length <= LARGE_INTEGER:
        limit, source = model_max_length, "this tokenizer's model_max_length"
    else:
        limit, source = REMBERT_MAX_POSITIONS, "RemBERT's max_position_embeddings"
    if max_length > limit:
        warn_once(
            "max-length-over-positions",
            f"max_length={max_length} is larger than {source} ({limit}): longer sequences will not fit "
            f"the model's position embeddings. Use max_length <= {limit}.",
        )
