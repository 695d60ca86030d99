"""Special tokens: how one matches text (`SpecialToken`), and the tokenizers' special-token attributes,
settable as in transformers 4.37.2 (`pad_token = eos_token`, `pad_token_id = 3`, `add_special_tokens`)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


@dataclass
class SpecialToken:
    """A special token and how it matches text (transformers' `AddedToken` fields)."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False
    special: bool = True  # False for a token added by add_tokens (not a special token)

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
        }

    @classmethod
    def coerce(cls, name: str, value: str | dict | SpecialToken) -> SpecialToken:
        """A plain string is a special token that matches raw text exactly (4.37.2's default)."""
        if isinstance(value, SpecialToken):
            token = value
        elif isinstance(value, str):
            token = cls(value)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            token = cls(
                value["content"],
                bool(value.get("lstrip", False)),
                bool(value.get("rstrip", False)),
                bool(value.get("single_word", False)),
                bool(value.get("normalized", False)),
                bool(value.get("special", True)),
            )
        else:
            raise TypeError(
                f"{name} must be a str, a SpecialToken or a dict with 'content'; got {type(value).__name__}"
            )
        if not token.content:
            # An empty token would match between every two characters of the text.
            raise ValueError(f"{name} must be a non-empty string; got {token.content!r}")
        return token


def _token_attribute(name: str) -> property:
    def get(self: SpecialTokensMixin) -> str:
        return self._special[name].content

    def set(self: SpecialTokensMixin, value: str | dict | SpecialToken) -> None:
        self._special[name] = SpecialToken.coerce(name, value)
        self._token_objects.discard(name)
        self._special_tokens_changed()

    return property(get, set, doc=f"The {name.replace('_', ' ')} (settable; its id follows).")


def _id_attribute(name: str) -> property:
    def get(self: SpecialTokensMixin) -> int:
        return self.convert_tokens_to_ids(self._special[name].content)

    def set(self: SpecialTokensMixin, value: int) -> None:
        token = self.convert_ids_to_tokens(value)
        if not isinstance(token, str):
            raise ValueError(f"{name}_id must be the id of a token; got {value!r}")
        setattr(self, name, token)

    return property(get, set, doc=f"The id of the {name.replace('_', ' ')} (settable: sets the token).")


class SpecialTokensMixin:
    """The special-token attributes of both tokenizers. `_special` maps each attribute to its token,
    `_additional` holds the additional special tokens; the tokenizer provides the conversions,
    `_add_tokens` and `_special_tokens_changed`."""

    _special: dict[str, SpecialToken]
    _additional: list[SpecialToken]
    # Attributes set by add_special_tokens: saved with their matching flags, as 4.37.2 saves an AddedToken.
    _token_objects: set[str]

    bos_token = _token_attribute("bos_token")
    eos_token = _token_attribute("eos_token")
    unk_token = _token_attribute("unk_token")
    sep_token = _token_attribute("sep_token")
    pad_token = _token_attribute("pad_token")
    cls_token = _token_attribute("cls_token")
    mask_token = _token_attribute("mask_token")
    bos_token_id = _id_attribute("bos_token")
    eos_token_id = _id_attribute("eos_token")
    unk_token_id = _id_attribute("unk_token")
    sep_token_id = _id_attribute("sep_token")
    pad_token_id = _id_attribute("pad_token")
    cls_token_id = _id_attribute("cls_token")
    mask_token_id = _id_attribute("mask_token")

    @property
    def additional_special_tokens(self) -> list[str]:
        return [token.content for token in self._additional]

    @additional_special_tokens.setter
    def additional_special_tokens(self, value: Sequence[str | dict | SpecialToken]) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(f"additional_special_tokens must be a list of tokens; got {type(value).__name__}")
        self._additional = [SpecialToken.coerce("additional_special_tokens", token) for token in value]
        self._special_tokens_changed()

    @property
    def additional_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.additional_special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, str | list[str]]:
        out: dict[str, str | list[str]] = {name: token.content for name, token in self._special.items()}
        if self._additional:
            out["additional_special_tokens"] = self.additional_special_tokens
        return out

    def _all_special_tokens_extended(self) -> list[SpecialToken]:
        """Unique special tokens in transformers' attribute order (bos, eos, unk, sep, pad, cls, mask,
        then the additional ones)."""
        seen: dict[str, SpecialToken] = {}
        for token in [*(self._special[name] for name in SPECIAL_TOKEN_ATTRIBUTES), *self._additional]:
            seen.setdefault(token.content, token)
        return list(seen.values())

    @property
    def all_special_tokens(self) -> list[str]:
        return [token.content for token in self._all_special_tokens_extended()]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(token) for token in self.all_special_tokens]

    def add_tokens(
        self, new_tokens: str | SpecialToken | Sequence[str | SpecialToken], special_tokens: bool = False
    ) -> int:
        """Add tokens to the vocabulary (ids from `len(tokenizer)` on; a token already known keeps its
        id); they are matched in text before sentencepiece. Returns how many ids were added."""
        if not new_tokens:
            return 0
        if isinstance(new_tokens, (str, SpecialToken)):
            new_tokens = [new_tokens]
        for token in new_tokens:
            if not isinstance(token, (str, SpecialToken)):
                raise TypeError(
                    f"tokens to add must be str or SpecialToken; got {type(token).__name__}: {token!r:.80}"
                )
        return self._add_tokens(list(new_tokens), special_tokens)

    def add_special_tokens(
        self, special_tokens_dict: dict[str, Any], replace_additional_special_tokens: bool = True
    ) -> int:
        """Set special-token attributes (`{"pad_token": "<pad>", "additional_special_tokens": [...]}`) and
        add the tokens to the vocabulary, as transformers 4.37.2; returns how many ids were added."""
        if not isinstance(special_tokens_dict, dict):
            raise TypeError(f"add_special_tokens takes a dict; got {type(special_tokens_dict).__name__}")
        added: list[SpecialToken] = []
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise TypeError(f"additional_special_tokens must be a list; got {type(value).__name__}")
                tokens = [_as_special(key, token) for token in value]
                if not replace_additional_special_tokens:
                    tokens = [t for t in tokens if t.content not in self.additional_special_tokens]
                if replace_additional_special_tokens and tokens:
                    self._additional = list(tokens)
                else:
                    self._additional.extend(tokens)
                added.extend(tokens)
            elif key in SPECIAL_TOKEN_ATTRIBUTES:
                token = _as_special(key, value)
                self._special[key] = token
                self._token_objects.add(key)
                if token not in added:
                    added.append(token)
            else:
                raise ValueError(
                    f"add_special_tokens: {key!r} is not a special-token attribute; use one of "
                    f"{[*SPECIAL_TOKEN_ATTRIBUTES, 'additional_special_tokens']}"
                )
        self._special_tokens_changed()
        return self._add_tokens(added, True) if added else 0

    @abstractmethod
    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]: ...

    @abstractmethod
    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> Any: ...

    @abstractmethod
    def _add_tokens(self, tokens: list[str | SpecialToken], special_tokens: bool) -> int:
        """Add `tokens` to the vocabulary; returns the number of new ids."""

    @abstractmethod
    def _special_tokens_changed(self) -> None:
        """Called after a special-token attribute changed."""


def _as_special(name: str, value: Any) -> SpecialToken:
    """add_special_tokens' reading of a value: a plain string matches raw text exactly."""
    if isinstance(value, str):
        return SpecialToken.coerce(name, value)
    if isinstance(value, SpecialToken):
        return replace(value, special=True)
    raise ValueError(f"{name} must be a str or a SpecialToken; got {type(value).__name__}: {value!r}")
