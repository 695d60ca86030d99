"""Tokenizer jobs that run alike on transformers' RemBERT tokenizers and on rembert_fast's, and the jobs
that check the features the task guides use against transformers 4.37.2.

A job is a JSON object: `cls` ("slow"/"fast"), `init` (constructor keywords), `source`
({"vocab_file": path} or {"dir": path}; "{model}" in a path stands for the sentencepiece model),
`setup` (calls made on the new tokenizer first: ["setattr", name, value], ["add_tokens", tokens,
kwargs], ["add_special_tokens", dict]), `op`, `args`, `kwargs`. `run_jobs` answers {"ok": result} or
{"error": "Type: message"} per job id; `setup` results (add_tokens counts) are part of the result.

benches/compare_tokenizers_437.py runs these under transformers 4.37.2 (`--record` writes
tests/data/tokenizers_437.json: the reference outputs, made by 4.37.2, never by rembert_fast);
tests/test_tokenization.py runs the same jobs with rembert_fast and compares.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hf_guides

DATA = Path(__file__).parent / "data"
MODEL_FILE = DATA / "tiny_sentencepiece.model"
RECORD_FILE = DATA / "tokenizers_437.json"
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict) or hasattr(value, "keys"):
        return {str(key): jsonable(value[key]) for key in value.keys()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def load_classes(library: str) -> tuple[type, type]:
    if library == "transformers":
        from transformers import RemBertTokenizer, RemBertTokenizerFast
    else:
        from rembert_fast.tokenization import RemBertTokenizer, RemBertTokenizerFast
    return RemBertTokenizer, RemBertTokenizerFast


def saved_files(directory: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name == "tokenizer.json":
            # The serialization format differs between tokenizers versions; what it encodes is compared
            # through the load jobs instead.
            out[name] = "present"
        elif name.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                out[name] = json.load(handle)
        else:
            out[name] = os.path.getsize(path)
    return out


def _resolve(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, path in places.items():
            value = value.replace("{" + name + "}", path)
        return value
    if isinstance(value, dict):
        return {key: _resolve(item, places) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, places) for item in value]
    return value


def run_jobs(library: str, jobs: list[dict[str, Any]], model: str = "", save: str = "") -> dict[str, Any]:
    """Run `jobs` with `library`'s classes ("transformers" or "rembert_fast"); job id -> result.
    "{model}" and "{save}" in a job's paths become `model` and `save`."""
    slow_cls, fast_cls = load_classes(library)
    cache: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for job in jobs:
        job = _resolve(job, {"model": model, "save": save})
        key = json.dumps([job["cls"], job["source"], job["init"], job.get("setup", [])], sort_keys=True)
        try:
            setup_results: list[Any] = []
            if key not in cache:
                cls = slow_cls if job["cls"] == "slow" else fast_cls
                source = job["source"]
                if "dir" in source:
                    tok = cls.from_pretrained(source["dir"], **job["init"])
                elif job["cls"] == "slow":
                    tok = cls(source["vocab_file"], **job["init"])
                else:
                    tok = cls(vocab_file=source["vocab_file"], **job["init"])
                for step in job.get("setup", []):
                    setup_results.append(_setup(tok, step))
                cache[key] = (tok, setup_results)
            tok, setup_results = cache[key]
            result = run_op(tok, job)
            results[job["id"]] = {
                "ok": {"setup": setup_results, "result": result} if job.get("setup") else result
            }
        except BaseException as err:  # a job that fails in both libraries matches
            if not isinstance(err, Exception) and type(err).__name__ != "PanicException":  # tokenizers'
                raise
            results[job["id"]] = {"error": f"{type(err).__name__}: {err}"[:200]}
    return results


def _setup(tok: Any, step: list[Any]) -> Any:
    if step[0] == "setattr":
        setattr(tok, step[1], step[2])
        return None
    if step[0] == "add_tokens":
        return tok.add_tokens(step[1], **step[2])
    if step[0] == "add_special_tokens":
        return tok.add_special_tokens(step[1])
    raise ValueError(f"unknown setup step {step!r}")


def _alignment(encoding: Any, texts: list[Any]) -> dict[str, Any]:
    """Every alignment answer of every row of a fast BatchEncoding."""
    rows = []
    ids = encoding["input_ids"]
    ids = [ids] if ids and isinstance(ids[0], int) else ids
    for i in range(len(ids)):
        n = len(ids[i])
        row = {
            "word_ids": encoding.word_ids(i),
            "sequence_ids": encoding.sequence_ids(i),
            "tokens": encoding.tokens(i),
            "token_to_word": [encoding.token_to_word(i, t) for t in range(n)],
            "token_to_sequence": [encoding.token_to_sequence(i, t) for t in range(0, n, 5)],
            "token_to_chars": [jsonable(encoding.token_to_chars(i, t)) for t in range(n)],
        }
        words = max((w for w in row["word_ids"] if w is not None), default=-1) + 1
        for seq in (0, 1):
            row[f"word_to_tokens/{seq}"] = [
                jsonable(encoding.word_to_tokens(i, w, seq)) for w in range(words)
            ]
            row[f"char_to_token/{seq}"] = [encoding.char_to_token(i, c, seq) for c in range(0, 60, 3)]
            row[f"char_to_word/{seq}"] = [encoding.char_to_word(i, c, seq) for c in range(1, 60, 4)]
        enc = encoding.encodings[i]
        row["encoding"] = [enc.ids[:8], jsonable(enc.offsets[:8]), len(enc.overflowing)]
        rows.append(row)
    first = {
        "token_to_word(1)": encoding.token_to_word(1),
        "char_to_token(3)": encoding.char_to_token(3),
        "word_to_tokens(0)": jsonable(encoding.word_to_tokens(0)),
        "token_to_chars(1)": jsonable(encoding.token_to_chars(1)),
        "char_to_word(2)": encoding.char_to_word(2),
        "batch[0].ids": encoding[0].ids,
        "is_fast": encoding.is_fast,
        "n_sequences": encoding.n_sequences,
    }
    return {"features": jsonable(dict(encoding)), "rows": rows, "first": first}


def run_op(tok: Any, job: dict[str, Any]) -> Any:
    op, args, kwargs = job["op"], job.get("args", []), job.get("kwargs", {})
    if op == "call":
        return jsonable(dict(tok(*args, **kwargs)))
    if op == "align":
        return _alignment(tok(*args, **kwargs), args)
    if op == "slow_align":  # each alignment method of a BatchEncoding from the slow tokenizer
        encoding = tok(*args, **kwargs)
        out = {}
        for name, call in (
            ("word_ids", lambda: encoding.word_ids(0)),
            ("sequence_ids", lambda: encoding.sequence_ids(0)),
            ("tokens", lambda: encoding.tokens(0)),
            ("token_to_word", lambda: encoding.token_to_word(0, 1)),
            ("char_to_token", lambda: encoding.char_to_token(0, 1)),
            ("word_to_tokens", lambda: encoding.word_to_tokens(0, 0)),
            ("token_to_chars", lambda: encoding.token_to_chars(0, 1)),
            ("char_to_word", lambda: encoding.char_to_word(0, 1)),
        ):
            try:
                out[name] = jsonable(call())
            except Exception as err:
                out[name] = f"raises {type(err).__name__}"
        out["encodings"] = encoding.encodings
        out["is_fast"] = encoding.is_fast
        return out
    if op == "guide":
        hf_guides.tokenizer = tok
        hf_guides.pad_on_right = tok.padding_side == "right"
        hf_guides.max_length, hf_guides.doc_stride = kwargs["max_length"], kwargs["doc_stride"]
        examples = json.loads(json.dumps(args[1]))
        out = getattr(hf_guides, args[0])(examples)
        result: dict[str, Any] = {"features": jsonable(dict(out))}
        rows = len(out["input_ids"])
        result["word_ids"] = [out.word_ids(i) for i in range(rows)]
        result["sequence_ids"] = [out.sequence_ids(i) for i in range(rows)]
        return result
    if op == "tokenize":
        return [tok.tokenize(text) for text in args[0]]
    if op == "decode":
        return [tok.decode(ids, **kwargs) for ids in args[0]]
    if op == "batch_decode":
        return tok.batch_decode(args[0], **kwargs)
    if op in (
        "convert_ids_to_tokens",
        "convert_tokens_to_ids",
        "build_inputs_with_special_tokens",
        "get_special_tokens_mask",
        "create_token_type_ids_from_sequences",
        "encode",
    ):
        return jsonable(getattr(tok, op)(*args, **kwargs))
    if op == "attrs":
        out = {name: getattr(tok, name) for name in SPECIAL_NAMES}
        out.update({name + "_id": getattr(tok, name + "_id") for name in SPECIAL_NAMES})
        out.update(
            len=len(tok),
            vocab_size=tok.vocab_size,
            all_special_tokens=tok.all_special_tokens,
            all_special_ids=tok.all_special_ids,
            model_max_length=tok.model_max_length,
            do_lower_case=tok.do_lower_case,
            keep_accents=tok.keep_accents,
        )
        return out
    if op == "features":  # the attributes issue 15 added
        vocab = tok.get_vocab()
        return {
            "is_fast": tok.is_fast,
            "len": len(tok),
            "vocab_len": len(vocab),
            "vocab_past_pieces": sorted([token, index] for token, index in vocab.items() if index >= 990),
            "vocab_sample": [vocab.get(token) for token in ("[CLS]", "▁the", "[MASK]", "<unk>", "<pad>")],
            "model_max_length": tok.model_max_length,
            "padding_side": tok.padding_side,
            "truncation_side": tok.truncation_side,
            "special_tokens_map": tok.special_tokens_map,
            "all_special_tokens": tok.all_special_tokens,
            "all_special_ids": tok.all_special_ids,
            "additional_special_tokens": tok.additional_special_tokens,
            **{name: getattr(tok, name) for name in SPECIAL_NAMES},
            **{name + "_id": getattr(tok, name + "_id") for name in SPECIAL_NAMES},
        }
    if op == "save":
        tok.save_pretrained(args[0])
        return saved_files(args[0])
    raise ValueError(f"unknown op {op!r}")


# ------------------------------------------------------------------------------------ the feature jobs
FAST_EQUAL = {"do_lower_case": False, "keep_accents": True, "unk_token": "[UNK]", "pad_token": "[PAD]"}
CONFIGS = {"slow": ("slow", {}), "fast": ("fast", {}), "fast-equal": ("fast", FAST_EQUAL)}
ADDED_TEXTS = [
    "hello newword world",
    "Newword and NEWWORD, newwordy newword.",
    "a <extra> b<extra>c [MASK] <newpad> d",
    "tok_one tok_two tok_onetok_two",
    "<extra>",
]
SETUPS = {
    "pad=eos": [["setattr", "pad_token", "[SEP]"]],
    "pad_id=3,mask=[CLS]": [["setattr", "pad_token_id", 3], ["setattr", "mask_token", "[CLS]"]],
    "eos,bos,unk,sep,cls": [
        ["setattr", "eos_token", "[MASK]"],
        ["setattr", "bos_token", "[SEP]"],
        ["setattr", "unk_token", "[PAD]"],
        ["setattr", "sep_token", "[CLS]"],
        ["setattr", "cls_token", "[SEP]"],
    ],
    "add_tokens": [["add_tokens", ["newword", "tok_one", "tok_two", "[CLS]", "newword"], {}]],
    "add_tokens-special": [["add_tokens", ["<extra>", "tok_one"], {"special_tokens": True}]],
    "add_special_tokens": [
        [
            "add_special_tokens",
            {"additional_special_tokens": ["<extra>", "tok_two"], "pad_token": "<newpad>"},
        ],
        ["add_tokens", ["newword"], {}],
    ],
    "sides-left": [["setattr", "padding_side", "left"], ["setattr", "truncation_side", "left"]],
}


def _examples_ner(lines: list[str]) -> dict[str, list]:
    tokens = [line.split() for line in lines]
    return {
        "tokens": tokens,
        "ner_tags": [[(len(word) * 7 + i) % 9 for i, word in enumerate(ws)] for ws in tokens],
    }


def _examples_qa(lines: list[str]) -> dict[str, list]:
    out: dict[str, list] = {"id": [], "question": [], "context": [], "answers": []}
    for k in range(6):
        context = " ".join(lines[k * 9 : k * 9 + 3 + k])
        words = context.split()
        answer = words[(k * 13) % len(words)] if k != 4 else None  # one question without an answer
        out["id"].append(f"q{k}")
        out["question"].append("   " * (k % 2) + " ".join(lines[200 + k].split()[:6]) + "?")
        out["context"].append(context)
        if answer is None:
            out["answers"].append({"text": [], "answer_start": []})
        else:
            out["answers"].append({"text": [answer], "answer_start": [context.index(answer)]})
    return out


def feature_jobs(lines: list[str]) -> list[dict[str, Any]]:
    """The jobs that check issue 15's features (is_split_into_words, return_length, settable and added
    special tokens, the fast BatchEncoding's alignment, overflow with stride, the guides)."""
    jobs: list[dict[str, Any]] = []
    words = [line.split() for line in lines[:40]]
    texts = lines[40:52]
    pair_a, pair_b = lines[60:66], lines[66:72]

    def add(
        name: str, op: str, cls: str, init: dict, *args: Any, setup: list | None = None, **kwargs: Any
    ) -> None:
        job = {
            "id": name,
            "cls": cls,
            "init": init,
            "source": {"vocab_file": "{model}"},
            "op": op,
            "args": list(args),
            "kwargs": kwargs,
        }
        if setup:
            job["setup"] = setup
        jobs.append(job)

    for config, (cls, init) in CONFIGS.items():
        fast = cls == "fast"
        call = "align" if fast else "call"
        # is_split_into_words: single, pair, batch, batch of pairs, with truncation and padding.
        add(f"{config}/words/single", call, cls, init, words[0], is_split_into_words=True)
        add(f"{config}/words/pair", call, cls, init, words[1], words[2], is_split_into_words=True)
        add(
            f"{config}/words/batch",
            call,
            cls,
            init,
            words[:12],
            is_split_into_words=True,
            return_special_tokens_mask=True,
        )
        add(
            f"{config}/words/batch-pairs",
            call,
            cls,
            init,
            words[12:20],
            words[20:28],
            is_split_into_words=True,
        )
        add(
            f"{config}/words/tuples",
            "call",
            cls,
            init,
            [(words[3], words[4]), (words[5], words[6])],
            is_split_into_words=True,
        )
        for truncation, max_length, padding in (
            ("longest_first", 9, True),
            ("only_second", 14, "max_length"),
            ("only_second", 40, "max_length"),
            (True, 7, False),
            ("only_first", 12, True),
            ("only_first", 40, True),
        ):
            add(
                f"{config}/words/trunc/{truncation}/{max_length}/{padding}",
                call,
                cls,
                init,
                words[12:20],
                words[20:28],
                is_split_into_words=True,
                truncation=truncation,
                max_length=max_length,
                padding=padding,
            )
        add(
            f"{config}/words/single-padded",
            "call",
            cls,
            init,
            words[7],
            is_split_into_words=True,
            padding="max_length",
            max_length=30,
            return_length=True,
        )
        add(f"{config}/words/empty", "call", cls, init, [], is_split_into_words=True)
        add(f"{config}/words/one-empty-word", "call", cls, init, [["a", "", "b"]], is_split_into_words=True)
        # return_length
        add(f"{config}/length/batch", "call", cls, init, texts, return_length=True)
        add(f"{config}/length/batch-padded", "call", cls, init, texts, return_length=True, padding=True)
        add(f"{config}/length/single", "call", cls, init, texts[0], return_length=True)
        add(
            f"{config}/length/single-padded",
            "call",
            cls,
            init,
            texts[0],
            return_length=True,
            padding="max_length",
            max_length=40,
        )
        add(
            f"{config}/length/pt",
            "call",
            cls,
            init,
            texts,
            return_length=True,
            padding=True,
            return_tensors="np",
        )
        # attributes
        add(f"{config}/features", "features", cls, init)
        # settable special tokens, sides, added tokens
        for setup_name, setup in SETUPS.items():
            prefix = f"{config}/setup/{setup_name}/"
            add(prefix + "features", "features", cls, init, setup=setup)
            add(
                prefix + "call",
                "call",
                cls,
                init,
                ADDED_TEXTS + texts[:4],
                padding=True,
                return_special_tokens_mask=True,
                setup=setup,
            )
            add(
                prefix + "pairs",
                "call",
                cls,
                init,
                pair_a,
                pair_b,
                truncation=True,
                max_length=16,
                padding="max_length",
                setup=setup,
            )
            add(prefix + "tokenize", "tokenize", cls, init, ADDED_TEXTS, setup=setup)
            ids = [[2, 7, 8, 4, 3, 0, 0], [2, 5, 999, 3, 9, 3, 1, 4]]
            if setup_name.startswith("add"):
                ids.append([2, 1000, 5, 1001, 3, 1002, 4, 0, 1003, 3])
            add(prefix + "decode", "decode", cls, init, ids, setup=setup)
            add(prefix + "decode-skip", "decode", cls, init, ids, skip_special_tokens=True, setup=setup)
            add(
                prefix + "stm",
                "get_special_tokens_mask",
                cls,
                init,
                [2, 7, 3, 1000, 4, 1001],
                already_has_special_tokens=True,
                setup=setup,
            )
            add(prefix + "save", "save", cls, init, "{save}/" + f"{config}-{setup_name}", setup=setup)
            if fast:
                add(prefix + "align", "align", cls, init, ADDED_TEXTS, setup=setup)
        if fast:
            # overflow with stride, with and without offsets, pairs both ways, padding
            add(
                f"{config}/overflow/single",
                "align",
                cls,
                init,
                " ".join(texts),
                truncation=True,
                max_length=16,
                stride=4,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            add(
                f"{config}/overflow/batch",
                "align",
                cls,
                init,
                texts,
                truncation=True,
                max_length=10,
                stride=3,
                return_overflowing_tokens=True,
                padding=True,
                return_length=True,
            )
            questions = [" ".join(line.split()[:4]) for line in pair_a[:4]]
            add(
                f"{config}/overflow/only_second",
                "align",
                cls,
                init,
                questions,
                [" ".join(lines[k : k + 2]) for k in range(4)],
                truncation="only_second",
                max_length=40,
                stride=8,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding="max_length",
            )
            add(
                f"{config}/overflow/only_first-left",
                "align",
                cls,
                init,
                [" ".join(lines[k : k + 2]) for k in range(4)],
                questions,
                truncation="only_first",
                max_length=40,
                stride=8,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                padding="max_length",
                setup=SETUPS["sides-left"],
            )
            add(
                f"{config}/overflow/no-truncation",
                "align",
                cls,
                init,
                texts[:3],
                return_overflowing_tokens=True,
            )
            add(
                f"{config}/overflow/pt",
                "call",
                cls,
                init,
                texts[:3],
                truncation=True,
                max_length=10,
                stride=2,
                return_overflowing_tokens=True,
                padding=True,
                return_tensors="np",
            )
            add(
                f"{config}/overflow/words",
                "align",
                cls,
                init,
                words[:4],
                is_split_into_words=True,
                truncation=True,
                max_length=8,
                stride=2,
                return_overflowing_tokens=True,
            )
            # the guides
            add(
                f"{config}/guide/ner",
                "guide",
                cls,
                init,
                "tokenize_and_align_labels",
                _examples_ner(lines[100:140]),
                max_length=0,
                doc_stride=0,
            )
            for fn in ("prepare_train_features", "prepare_validation_features"):
                for max_length, doc_stride in ((64, 16), (48, 12)) if config == "fast" else ((64, 16),):
                    add(
                        f"{config}/guide/{fn}/{max_length}",
                        "guide",
                        cls,
                        init,
                        fn,
                        _examples_qa(lines),
                        max_length=max_length,
                        doc_stride=doc_stride,
                    )
                add(
                    f"{config}/guide/{fn}/left",
                    "guide",
                    cls,
                    init,
                    fn,
                    _examples_qa(lines),
                    max_length=64,
                    doc_stride=16,
                    setup=[["setattr", "padding_side", "left"]],
                )
        else:
            add(f"{config}/slow-align", "slow_align", cls, init, texts[:2])
            add(f"{config}/slow-offsets", "call", cls, init, texts[:2], return_offsets_mapping=True)
            add(
                f"{config}/slow-overflow-offsets",
                "call",
                cls,
                init,
                texts[:2],
                truncation=True,
                max_length=8,
                stride=2,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            # the slow tokenizer's own overflow: overflowing_tokens / num_truncated_tokens per row
            for name, args, kwargs in (
                ("single", [" ".join(texts[:3])], dict(truncation=True, max_length=12, stride=3)),
                ("batch", [texts], dict(truncation=True, max_length=10, stride=2, padding=True)),
                ("short", [texts[:3]], dict(truncation=True, max_length=200)),
                ("pairs-longest", [pair_a, pair_b], dict(truncation=True, max_length=16, stride=2)),
                ("only_second", [pair_a, pair_b], dict(truncation="only_second", max_length=24, stride=4)),
                ("only_first-left", [pair_a, pair_b], dict(truncation="only_first", max_length=24, stride=4)),
                ("no-max-length", [texts[:2]], {}),
            ):
                add(
                    f"{config}/slow-overflow/{name}",
                    "call",
                    cls,
                    init,
                    *args,
                    return_overflowing_tokens=True,
                    setup=SETUPS["sides-left"] if name.endswith("left") else None,
                    **kwargs,
                )
            add(
                f"{config}/slow-guide-ner",
                "guide",
                cls,
                init,
                "tokenize_and_align_labels",
                _examples_ner(lines[100:110]),
                max_length=0,
                doc_stride=0,
            )
    return jobs
