"""Reading a sentencepiece `.model` file: the processor, and the few ModelProto fields the fast
tokenizer's pipeline needs, read from the protobuf wire format (so no protobuf package is needed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sentencepiece as spm

from rembert_fast.tokenization.files import as_path, check_file


def read_model_bytes(vocab_file: Any, owner: str) -> bytes:
    """The bytes of the `.model` file; errors name the path and `owner` (the class reading it)."""
    path = as_path(vocab_file, "vocab_file")
    check_file(path, "sentencepiece model file", owner)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise OSError(f"{owner}: cannot read sentencepiece model file {path!r}: {err}") from err


def load_sentencepiece(data: bytes, path: str, owner: str) -> spm.SentencePieceProcessor:
    """A processor of the serialized model `data` (read from `path`); ValueError when it is not one."""
    try:
        return spm.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError, TypeError) as err:
        raise ValueError(f"{owner}: {path!r} is not a valid sentencepiece model: {err}") from err


def _proto_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, wanted: Iterable[int]) -> dict[int, list]:
    """The values of the `wanted` top-level fields of a serialized protobuf message (last one wins in
    protobuf; callers take [-1]). A reader of the wire format, so that building the fast tokenizer
    needs no protobuf package."""
    wanted = set(wanted)
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _proto_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _proto_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _proto_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in field {number}")
        if number in wanted:
            fields.setdefault(number, []).append(value)
    return fields


def model_spec(data: bytes) -> tuple[int, bool, bytes]:
    """(model_type, byte_fallback, precompiled_charsmap) of a serialized sentencepiece ModelProto.

    ModelProto: trainer_spec = 2, normalizer_spec = 3. TrainerSpec: model_type = 3 (UNIGRAM = 1,
    the default), byte_fallback = 35. NormalizerSpec: precompiled_charsmap = 2.
    """
    top = _proto_fields(data, (2, 3))
    trainer = _proto_fields(top[2][-1], (3, 35)) if 2 in top else {}
    normalizer = _proto_fields(top[3][-1], (2,)) if 3 in top else {}
    model_type = trainer[3][-1] if 3 in trainer else 1
    byte_fallback = bool(trainer[35][-1]) if 35 in trainer else False
    charsmap = bytes(normalizer[2][-1]) if 2 in normalizer else b""
    return model_type, byte_fallback, charsmap
