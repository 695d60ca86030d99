"""The batch-inference engine (rembert_fast.inference) against transformers' models, one line at a time.

Every result is compared with `batch_fixtures.Reference`: transformers' model called on each line
alone (fp32, CPU, max abs error <= 1e-5), so batching, length-sorting, padding removal and
post-processing are all checked. Windows and token budgets are tiny so every run sorts, splits and
pads across several batches and windows.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from batch_fixtures import MAX_POSITIONS, sample_texts

from rembert_fast import inference
from rembert_fast.inference import InferenceEngine, LineError
from rembert_fast.tokenization import RemBertTokenizerFast

ATOL = 1e-5

pytest_plugins = ["batch_fixtures"]  # the fixtures dirs, ref and one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _engine(dirs, task, **kwargs):
    directory = {"embed": "cls", "classify": "cls", "fill-mask": "mlm", "token-classify": "tok"}[task]
    kwargs = {"window": 5, "batch_tokens": 96, **kwargs}
    return InferenceEngine(dirs[directory], task, device="cpu", **kwargs)


def _close(actual, expected) -> None:
    actual = torch.as_tensor(actual, dtype=torch.float32)
    torch.testing.assert_close(actual, expected.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_embed_matches_model_line_by_line(dirs, ref, pooling):
    texts = sample_texts()
    records = list(_engine(dirs, "embed", pooling=pooling).run(texts))
    assert [r["line"] for r in records] == list(range(1, len(texts) + 1))
    for text, record in zip(texts, records, strict=True):
        assert record["embedding"].dtype == np.float32 and record["embedding"].shape == (32,)
        _close(record["embedding"], ref.embedding(text, pooling))


def test_batches_sorted_by_length_within_budget(dirs):
    engine = _engine(dirs, "embed", window=8, batch_tokens=100)
    texts = sample_texts()[:8]
    window = engine._prepare(1, texts, jsonl=False)
    lengths = [len(e.ids) for e in window.encodings]
    rows = [row for batch in window.batches for row in batch.rows]
    assert sorted(rows) == list(range(8)) and rows != sorted(rows)  # every line once, reordered
    assert [lengths[r] for r in rows] == sorted(lengths, reverse=True)
    assert len(window.batches) > 1
    for batch in window.batches:
        assert batch.input_ids.shape == (len(batch.rows), lengths[batch.rows[0]])
        assert len(batch.rows) == 1 or batch.input_ids.numel() <= 100
        for i, row in enumerate(batch.rows):
            assert batch.input_ids[i, : lengths[row]].tolist() == window.encodings[row].ids
            assert batch.attention_mask[i].sum() == lengths[row]


def test_classify_matches_model(dirs, ref):
    texts = sample_texts()
    records = list(_engine(dirs, "classify", all_scores=True).run(texts))
    for text, record in zip(texts, records, strict=True):
        probs = ref.class_probs(text)
        best = int(probs.argmax())
        assert record["label"] == ["negative", "neutral", "positive"][best]
        _close(record["score"], probs[best])
        assert list(record["scores"]) == ["negative", "neutral", "positive"]
        _close(list(record["scores"].values()), probs)
    plain = next(iter(_engine(dirs, "classify").run(texts[:1])))
    assert set(plain) == {"line", "label", "score"}


def test_fill_mask_top_k_matches_model(dirs, ref):
    texts = ["Le garçon a mangé des [MASK] à la crème.", "[MASK] quick brown [MASK] jumps.", "no mask here",
             "Wczoraj poszłam do sklepu i [MASK] żółty ser."]
    records = list(_engine(dirs, "fill-mask", top_k=3).run(texts))
    assert records[2] == {"line": 3, "error": "no [MASK] token in the text (after truncation)"}
    for text, record in zip(texts, records, strict=True):
        if "error" in record:
            continue
        positions, probs = ref.mask_probs(text)
        assert [m["index"] for m in record["masks"]] == positions
        for mask, row in zip(record["masks"], probs, strict=True):
            top = row.topk(3)
            assert [p["token"] for p in mask["predictions"]] == top.indices.tolist()
            _close([p["score"] for p in mask["predictions"]], top.values)
            assert [p["token_str"] for p in mask["predictions"]] == [
                ref.tokenizer.decode([t]) for t in top.indices.tolist()
            ]


def test_fill_mask_truncated_away_is_an_error(dirs):
    text = " ".join(["word"] * 40) + " [MASK]"
    (record,) = _engine(dirs, "fill-mask", max_length=16).run([text])
    assert "error" in record and "[MASK]" in record["error"]


def test_token_classify_matches_model(dirs, ref):
    texts = sample_texts()
    records = list(_engine(dirs, "token-classify").run(texts))
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    for text, record in zip(texts, records, strict=True):
        encoding, probs = ref.token_probs(text)
        expected = [i for i, special in enumerate(encoding["special_tokens_mask"]) if not special]
        assert [t["index"] for t in record["tokens"]] == expected
        for token in record["tokens"]:
            i = token["index"]
            assert (token["start"], token["end"]) == tuple(encoding["offset_mapping"][i])
            assert token["word"] == ref.tokenizer.convert_ids_to_tokens(encoding["input_ids"][i])
            assert token["entity"] == labels[int(probs[i].argmax())]
            _close(token["score"], probs[i].max())


@pytest.mark.parametrize("aggregate", ["first", "average"])
def test_token_classify_aggregates_words(dirs, ref, aggregate):
    texts = ["The quick brown fox jumps over the lazy dog.", "El niño comió una manzana en la montaña."]
    records = list(_engine(dirs, "token-classify", aggregate=aggregate).run(texts))
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    for text, record in zip(texts, records, strict=True):
        encoding, probs = ref.token_probs(text)
        words, start = [], 0
        for word in text.split():
            start = text.index(word, start)
            words.append((word, start, start + len(word)))
            start += len(word)
        assert [(w["word"], w["start"], w["end"]) for w in record["words"]] == words
        # A token belongs to the word its first non-space character is in; a whitespace-only token
        # (a lone "▁") belongs to the word right after it.
        owner = {}
        for i, (s, e) in enumerate(encoding["offset_mapping"]):
            if encoding["special_tokens_mask"][i]:
                continue
            while s < e and text[s].isspace():
                s += 1
            owner[i] = next(k for k, (_, begin, end) in enumerate(words)
                            if s < end and (s >= begin or s == e))
        for k, out in enumerate(record["words"]):
            tokens = [i for i in owner if owner[i] == k]
            word_probs = probs[tokens[0]] if aggregate == "first" else probs[tokens].mean(0)
            assert out["entity"] == labels[int(word_probs.argmax())]
            _close(out["score"], word_probs.max())


def test_token_classify_words_and_unknown_pieces_as_the_pipeline(dirs, monkeypatch):
    """Words are runs of tokens with no whitespace between them, also where the normaliser dropped or
    merged characters (a combining accent, the quote pairs ``/''), and whitespace-only tokens (tabs, a
    trailing space) are no word. An unknown piece's `word` is the text it stands for (the pipeline's)."""
    texts = ["ne\u0301ed it", "say ``hi'' now", "a\t\tb", "x ", " "]
    engine = _engine(dirs, "token-classify", aggregate="first")
    records = list(engine.run(texts))
    assert [[w["word"] for w in r["words"]] for r in records] == [
        ["ne\u0301ed", "it"], ["say", "``hi''", "now"], ["a", "b"], ["x"], []]
    for text, record in zip(texts, records, strict=True):
        assert all(text[w["start"]:w["end"]] == w["word"] for w in record["words"])

    engine = _engine(dirs, "token-classify")
    # The fixture's fast tokenizer names "<unk>" (an added id) while its model emits "[UNK]" for unknown
    # text; a real RemBERT checkpoint's tokenizer_config names "[UNK]": make this one do so too.
    unk = engine._backend.token_to_id("[UNK]")
    monkeypatch.setattr(type(engine.tokenizer), "unk_token_id", property(lambda self: unk))
    text = "smile \U0001F642 ok"
    (record,) = engine.run([text])
    unknown = [t for t in record["tokens"] if engine.tokenizer(text)["input_ids"][t["index"]] == unk]
    assert unknown and all(t["word"] == text[t["start"]:t["end"]] for t in unknown)
    assert "\U0001F642" in [t["word"].strip() for t in unknown]


def test_regression_scores_are_raw_outputs(dirs, tmp_path):
    """problem_type "regression" (what Trainer saves for float labels): scores are the model's raw
    outputs, as transformers' text-classification pipeline gives them, not squashed."""
    import transformers

    regression = tmp_path / "regression"
    shutil.copytree(dirs["cls"], regression)
    config = json.loads((regression / "config.json").read_text())
    (regression / "config.json").write_text(json.dumps({**config, "problem_type": "regression"}))
    engine = InferenceEngine(regression, "classify", device="cpu", all_scores=True)
    texts = ["Hello world", "Une autre phrase."]
    records = list(engine.run(texts))
    model = transformers.RemBertForSequenceClassification.from_pretrained(regression).eval()
    for text, record in zip(texts, records, strict=True):
        with torch.no_grad():
            logits = model(**engine.tokenizer(text, return_tensors="pt")).logits[0]
        best = int(logits.argmax())
        assert record["label"] == engine.id2label[best]
        _close(record["score"], logits[best])
        _close(list(record["scores"].values()), logits)


def test_errors_ids_pairs_and_order(dirs, ref):
    lines = [
        '{"text": "hello world", "id": "a"}', "not json", '{"id": 2}', '{"text": 3, "id": [1]}', "[1, 2]",
        '{"text": "x", "text_pair": 5}', "", '{"text": ""}',
        '{"text": "une paire", "text_pair": "de textes"}', LineError("line is not valid UTF-8"),
    ]
    records = list(_engine(dirs, "embed", window=4).run(lines, jsonl=True))
    assert [r["line"] for r in records] == list(range(1, 11))
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 10]
    assert errors[2].startswith("malformed JSON") and errors[7].startswith("malformed JSON")
    assert errors[3] == 'missing "text" field' and errors[4] == '"text" must be a string, got int'
    assert "JSON object" in errors[5] and '"text_pair"' in errors[6] and "UTF-8" in errors[10]
    assert records[0]["id"] == "a" and records[2]["id"] == 2 and records[3]["id"] == [1]
    _close(records[0]["embedding"], ref.embedding("hello world", "cls"))
    _close(records[7]["embedding"], ref.embedding("", "cls"))
    _close(records[8]["embedding"], ref.embedding("une paire", "cls", pair="de textes"))
    # The pair really changed the result (second segment, token type 1).
    assert not np.allclose(records[8]["embedding"], ref.embedding("une paire", "cls").numpy())


def test_truncation_is_counted_not_an_error(dirs, ref):
    texts = sample_texts()
    engine = _engine(dirs, "embed", max_length=24)
    records = list(engine.run(texts))
    long = sum(len(ref.tokenizer(t)["input_ids"]) > 24 for t in texts)
    assert long >= 3 and engine.stats.truncated == long and engine.stats.errors == 0
    assert engine.stats.lines == len(texts)
    for text, record in zip(texts, records, strict=True):
        _close(record["embedding"], ref.embedding(text, "cls", max_length=24))


def test_shards_and_skip_give_the_same_bits(dirs):
    texts = sample_texts()
    engine = _engine(dirs, "embed", window=3)
    full = list(engine.run(texts))
    assert engine.stats.truncated == 1  # line 13, three sentences
    parts = []
    for rank in range(2):
        parts.append(list(engine.run(texts, shard=(rank, 2))))
        assert engine.stats.truncated == 1 - rank
    assert {r["line"] for r in parts[0]} == {1, 2, 3, 7, 8, 9, 13, 14}
    merged = sorted(parts[0] + parts[1], key=lambda r: r["line"])
    resumed = list(engine.run(texts, skip_through=13))
    assert engine.stats.truncated == 0 and engine.stats.lines == 1
    resumed = list(engine.run(texts, skip_through=5))
    assert engine.stats.truncated == 1
    assert [r["line"] for r in resumed] == list(range(6, len(texts) + 1))
    for got in (merged, full[5:]):
        want = full if got is merged else full[5:]
        assert [inference.encode_record(r) for r in got] == [inference.encode_record(r) for r in want]
    assert [inference.encode_record(r) for r in resumed] == [inference.encode_record(r) for r in full[5:]]


def test_out_of_memory_halves_the_batch_and_caps_later_tokens(dirs, ref, monkeypatch):
    """A forward over 200 tokens runs out of memory (simulated): the batch is halved until it fits, later
    forwards are capped at the tokens that fitted, so a later batch of shorter rows still takes more
    rows than the halved one, and no line is lost or changed."""
    texts = sample_texts()
    engine = _engine(dirs, "embed", window=len(texts), batch_tokens=400)
    forward = engine._forward
    calls = []  # (rows, width, fitted)

    def tight_memory(ids, mask, types):
        calls.append((ids.shape[0], ids.shape[1], ids.numel() <= 200))
        if not calls[-1][2]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(ids, mask, types)

    monkeypatch.setattr(engine, "_forward", tight_memory)
    records = list(engine.run(texts))
    failed = [call for call in calls if not call[2]]
    assert failed and calls[:len(failed)] == failed  # the first, widest batch did not fit
    halved_rows = calls[len(failed)][0]
    assert engine._token_cap == halved_rows * calls[0][1]
    later = calls[len(failed) + 1:]
    assert all(fitted and rows * width <= engine._token_cap for rows, width, fitted in later)
    assert max(rows for rows, _, _ in later) > halved_rows
    assert len(records) == len(texts)
    for text, record in zip(texts, records, strict=True):
        _close(record["embedding"], ref.embedding(text, "cls"))


def test_a_line_the_model_refuses_becomes_an_error_record(dirs, ref, monkeypatch):
    """A ValueError from the model (bad input the engine's own checks missed) reruns that batch a row at
    a time: the refusing line is an error record naming the reason, every other line its right result."""
    texts = sample_texts()
    engine = _engine(dirs, "embed", window=len(texts), batch_tokens=400)
    forward = engine._forward
    poisoned = engine.tokenizer(texts[3])["input_ids"]  # line 4
    rows_per_call = []

    def picky(ids, mask, types):
        rows_per_call.append(ids.shape[0])
        for row, real in zip(ids.tolist(), mask.tolist(), strict=True):
            if row[:sum(real)] == poisoned:
                raise ValueError(f"input_ids holds line 4's {len(poisoned)} ids, refused (simulated)")
        return forward(ids, mask, types)

    monkeypatch.setattr(engine, "_forward", picky)
    records = list(engine.run(texts))
    assert max(rows_per_call) > 1 and rows_per_call.count(1) >= 2
    assert len(records) == len(texts) and engine.stats.errors == 1
    for i, (text, record) in enumerate(zip(texts, records, strict=True)):
        assert record["line"] == i + 1
        if i == 3:
            reason = f"input_ids holds line 4's {len(poisoned)} ids, refused (simulated)"
            assert record["error"] == f"the model refused this line: {reason}"
        else:
            _close(record["embedding"], ref.embedding(text, "cls"))


def test_a_setting_every_line_fails_on_stops_the_run(dirs, monkeypatch):
    """Every line of a batch refused with one message is a setting at fault, not the input: the run
    raises it instead of writing the whole input as error records (which --resume would then skip). A
    bad REMBERT_FAST_BACKEND is refused when the engine is made."""
    engine = _engine(dirs, "embed", window=8, batch_tokens=400)

    def misconfigured(ids, mask, types):
        raise ValueError("backend 'cuda' runs on CUDA tensors only (simulated)")

    monkeypatch.setattr(engine, "_forward", misconfigured)
    with pytest.raises(ValueError, match="backend 'cuda' runs on CUDA tensors only"):
        list(engine.run(sample_texts()))
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "tritn")
    with pytest.raises(ValueError, match="REMBERT_FAST_BACKEND='tritn' is not one of"):
        _engine(dirs, "embed")


def test_lines_the_model_cannot_take_are_error_records(dirs, ref):
    """Checked while tokenising: a pair that max_length 2 cannot hold (the tokenizer leaves it whole), ids
    past the model's vocabulary (a tokenizer that does not match the checkpoint). The job goes on."""
    engine = _engine(dirs, "embed", max_length=2)
    records = list(engine.run(['{"text": "une paire", "text_pair": "de textes"}', '{"text": "seul"}'],
                              jsonl=True))
    assert "more than max_length 2" in records[0]["error"] and "embedding" in records[1]
    assert engine.stats.errors == 1

    texts = sample_texts()
    engine = _engine(dirs, "embed")
    top = [max(engine.tokenizer(text)["input_ids"]) for text in texts]
    cut = sorted(set(top))[len(set(top)) // 2]  # half the lines hold an id >= cut
    engine.config.vocab_size = cut
    records = list(engine.run(texts))
    for text, highest, record in zip(texts, top, records, strict=True):
        if highest >= cut:
            assert record["error"].startswith(f"token id {highest} (")
            assert f"vocab_size {cut}" in record["error"]
        else:
            _close(record["embedding"], ref.embedding(text, "cls"))
    assert 0 < engine.stats.errors < len(texts)


def test_label_names_with_gaps_and_ids_that_are_not_json(dirs, tmp_path):
    """id2label must name every label id (transformers accepts gaps; the records could not name the
    label); an "id" of NaN parses in Python but would make the output invalid JSON: an error record."""
    gappy = tmp_path / "gappy"
    shutil.copytree(dirs["cls"], gappy)
    config = json.loads((gappy / "config.json").read_text())
    names = list(config["id2label"].values())
    assert len(names) == 3
    config["id2label"] = {"0": names[0], "1": names[1], "5": names[2]}
    config["label2id"] = {names[0]: 0, names[1]: 1, names[2]: 5}
    (gappy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no name for label ids \[2\] of the model's 3 labels"):
        InferenceEngine(gappy, "classify", device="cpu")

    records = list(_engine(dirs, "embed").run(['{"text": "a", "id": NaN}', '{"text": "b", "id": 7}'],
                                              jsonl=True))
    assert records[0] == {"line": 1, "error": '"id" nan cannot be written as JSON (NaN, Infinity and lone '
                                      'surrogates are not allowed)'}
    assert records[1]["id"] == 7 and "embedding" in records[1]
    assert all(json.loads(inference.encode_record(r)) for r in records)


def test_tokenizer_thread_errors_reach_the_caller(dirs):
    def lines():
        yield "fine"
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        list(_engine(dirs, "embed").run(lines()))


def test_bad_settings_name_the_value(dirs):
    with pytest.raises(ValueError, match="'summarize'"):
        InferenceEngine(dirs["cls"], "summarize")
    with pytest.raises(ValueError, match="max_length 65"):
        _engine(dirs, "embed", max_length=MAX_POSITIONS + 1)
    with pytest.raises(ValueError, match="'max'"):
        _engine(dirs, "embed", pooling="max")
    with pytest.raises(FileNotFoundError, match="config.json"):
        InferenceEngine(dirs["cls"].parent, "embed")


def test_iter_lines_and_count_lines(tmp_path):
    data = b"one\r\ntwo\n\n\xff\xfe bad\nlast without newline"
    assert len(list(inference.iter_lines(io.BytesIO(data)))) == 5
    lines = list(inference.iter_lines(io.BytesIO(data)))
    assert lines[:3] == ["one", "two", ""] and isinstance(lines[3], LineError)
    assert lines[4] == "last without newline"
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "b.txt").write_bytes(b"x\ny\n")
    assert inference.count_lines(tmp_path / "a.txt") == 5 and inference.count_lines(tmp_path / "b.txt") == 2
    assert [inference.shard_line(k, 1, 2, 3) for k in range(0, 6)] == [0, 4, 5, 6, 10, 11]


def _records(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"line": i, "error": "bad line"} if i % 4 == 0 else
            {"line": i, "id": f"é{i}", "embedding": rng.standard_normal(6).astype(np.float32)}
            for i in range(1, n + 1)]


def test_jsonl_writer_resumes_after_a_torn_record(tmp_path):
    out = tmp_path / "out.jsonl"
    writer = inference.JsonlWriter(out)
    for record in _records(9):
        writer.write(record)
    assert not out.exists()
    writer.commit()
    complete = out.read_bytes()
    assert [json.loads(line)["line"] for line in complete.splitlines()] == list(range(1, 10))
    cut = complete.index(b'{"line": 6') + 25  # inside record 6
    (tmp_path / "out.jsonl.partial").write_bytes(complete[:cut])
    out.unlink()
    writer = inference.JsonlWriter(out, resume=True)
    assert (writer.done_through, writer.prior_records, writer.prior_errors) == (5, 5, 1)
    for record in _records(9)[5:]:
        writer.write(record)
    writer.commit()
    assert out.read_bytes() == complete
    # A finished output resumed again is kept as it is.
    writer = inference.JsonlWriter(out, resume=True)
    assert (writer.done_through, writer.prior_errors) == (9, 2)
    writer.commit()
    assert out.read_bytes() == complete


def test_npy_writer_nan_rows_errors_file_and_resume(tmp_path):
    out, errors = tmp_path / "v.npy", tmp_path / "v.errors.jsonl"
    writer = inference.NpyWriter(out, errors, 6)
    for record in _records(9):
        writer.write(record)
    writer.commit()
    rows = np.load(out)
    assert rows.shape == (9, 6) and rows.dtype == np.float32
    for record, row in zip(_records(9), rows, strict=True):
        if "error" in record:
            assert np.isnan(row).all()
        else:
            np.testing.assert_array_equal(row, record["embedding"])
    assert [json.loads(x) for x in errors.read_text().splitlines()] == [
        {"line": 4, "error": "bad line"}, {"line": 8, "error": "bad line"}]
    complete, complete_errors = out.read_bytes(), errors.read_bytes()
    # Crash after row 5 was half written, with the error record of line 8 already on disk.
    (tmp_path / "v.npy.partial").write_bytes(complete[: 128 + 4 * 6 * 5 + 10])
    (tmp_path / "v.errors.jsonl.partial").write_bytes(complete_errors)
    out.unlink()
    errors.unlink()
    writer = inference.NpyWriter(out, errors, 6, resume=True)
    assert (writer.done_through, writer.prior_errors) == (5, 1)
    for record in _records(9)[5:]:
        writer.write(record)
    writer.commit()
    assert out.read_bytes() == complete and errors.read_bytes() == complete_errors
    writer = inference.NpyWriter(tmp_path / "w.npy", tmp_path / "w.errors.jsonl", 6)
    writer.write(_records(1)[0])
    writer.close()
    with pytest.raises(inference.ResumeError, match="8-wide"):
        inference.NpyWriter(tmp_path / "w.npy", tmp_path / "w.errors.jsonl", 8, resume=True)


def test_merging_rank_parts_restores_input_order(dirs, tmp_path):
    texts = sample_texts() + ["not json"]
    engine = _engine(dirs, "embed", window=3)
    lines = [json.dumps({"text": t}) for t in texts[:-1]] + ["not json"]

    def write(writer, records):
        for record in records:
            writer.write(record)
        writer.commit()

    write(inference.NpyWriter(tmp_path / "one.npy", tmp_path / "one.errors.jsonl", 32),
          engine.run(lines, jsonl=True))
    write(inference.JsonlWriter(tmp_path / "one.jsonl"), engine.run(lines, jsonl=True))
    npy_parts, jsonl_parts = [], []
    for rank in range(2):
        npy_parts.append((tmp_path / f"p{rank}.npy", tmp_path / f"p{rank}.errors.jsonl"))
        write(inference.NpyWriter(*npy_parts[-1], 32), engine.run(lines, jsonl=True, shard=(rank, 2)))
        jsonl_parts.append(tmp_path / f"p{rank}.jsonl")
        write(inference.JsonlWriter(jsonl_parts[-1]), engine.run(lines, jsonl=True, shard=(rank, 2)))
    inference.merge_npy(npy_parts, tmp_path / "two.npy", tmp_path / "two.errors.jsonl", window=3)
    inference.merge_jsonl(jsonl_parts, tmp_path / "two.jsonl")
    for name in ("npy", "errors.jsonl", "jsonl"):
        assert (tmp_path / f"two.{name}").read_bytes() == (tmp_path / f"one.{name}").read_bytes()
    assert np.isnan(np.load(tmp_path / "two.npy")[-1]).all()
    assert not any(p.exists() for pair in npy_parts for p in pair)
    assert not any(p.exists() for p in jsonl_parts)


def test_model_dir_with_tokenizer_json_only(dirs, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(dirs["cls"], directory)
    RemBertTokenizerFast.from_pretrained(str(directory)).save_pretrained(str(directory))
    (directory / "sentencepiece.model").unlink()
    assert (directory / "tokenizer.json").is_file()
    texts = sample_texts()
    got = list(_engine({"cls": directory}, "embed").run(texts))
    want = list(_engine(dirs, "embed").run(texts))
    assert [inference.encode_record(r) for r in got] == [inference.encode_record(r) for r in want]


def test_multi_label_classify_uses_sigmoid(dirs, ref, tmp_path):
    directory = tmp_path / "multi"
    shutil.copytree(dirs["cls"], directory)
    config = json.loads((directory / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (directory / "config.json").write_text(json.dumps(config))
    texts = sample_texts()[:4]
    records = _engine({"cls": directory}, "classify", all_scores=True).run(texts)
    for text, record in zip(texts, records, strict=True):
        with torch.no_grad():
            logits = ref.classifier(**ref._inputs(ref.encode(text))).logits[0]
        _close(list(record["scores"].values()), logits.sigmoid())
        assert record["score"] == max(record["scores"].values())


def test_rank_part_resumes_from_its_own_rows(dirs, tmp_path):
    """A torn `.npy` part of rank 1 of 2 continues after its last whole row, at the right input line."""
    texts = sample_texts()
    engine = _engine(dirs, "embed", window=3)

    def line_of_row(row):
        return inference.shard_line(row, 1, 2, 3)

    paths = (tmp_path / "p.npy", tmp_path / "p.errors.jsonl")
    writer = inference.NpyWriter(*paths, 32, line_of_row=line_of_row)
    for record in engine.run(texts, shard=(1, 2)):
        writer.write(record)
    writer.commit()
    complete = paths[0].read_bytes()
    (tmp_path / "p.npy.partial").write_bytes(complete[: 128 + 4 * 32 * 4 + 50])  # rows of lines 4, 5, 6, 10
    (tmp_path / "p.errors.jsonl.partial").write_bytes(b"")
    writer = inference.NpyWriter(*paths, 32, resume=True, line_of_row=line_of_row)
    assert writer.done_through == 10
    records = list(engine.run(texts, shard=(1, 2), skip_through=writer.done_through))
    assert [r["line"] for r in records] == [11, 12]
    for record in records:
        writer.write(record)
    writer.commit()
    assert paths[0].read_bytes() == complete


@pytest.mark.gpu
@pytest.mark.parametrize("task", ["embed", "classify"])
def test_engine_on_cuda_matches_the_model_on_cpu(dirs, ref, task):
    """The CUDA path: batches pinned in the tokenizer thread, non-blocking copies both ways, each batch's
    results read after its event while the next one runs; fp32, so the CPU reference holds."""
    from rembert_fast import ops

    texts = sample_texts()
    engine = InferenceEngine(dirs["cls"], task, device="cuda", dtype=torch.float32, window=5,
                             batch_tokens=96, pooling="mean", all_scores=True)
    assert engine.model.device.type == "cuda"
    with ops.use_backend("auto"):  # the kernels, not conftest's eager default
        records = list(engine.run(texts))
    assert [r["line"] for r in records] == list(range(1, len(texts) + 1))
    for text, record in zip(texts, records, strict=True):
        if task == "embed":
            got, want = torch.as_tensor(record["embedding"]), ref.embedding(text, "mean")
        else:
            got, want = torch.tensor(list(record["scores"].values())), ref.class_probs(text)
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=0)
