"""Compare rembert_fast's tokenizers with transformers 4.37.2's, which live in another virtualenv.

transformers 4.37.2 (with tokenizers < 0.19) cannot share an environment with this project, so this
script runs itself a second time under that environment's python as a worker: it sends a list of
jobs as JSON on stdin, the worker runs them with transformers' `RemBertTokenizer` /
`RemBertTokenizerFast` and answers JSON on stdout; the same jobs run here with rembert_fast's
classes and every answer is diffed.

Jobs, per tokenizer configuration (slow/fast, default options and equal options): every line of
tests/data/multilingual.txt plus edge strings (quotes, runs of spaces, special tokens in text,
final sigma, unknown characters, contractions) as a batch (ids, token type ids, attention and
special-token masks, offsets for the fast one), tokenize, decode with and without
skip_special_tokens; pairs under every truncation strategy, padding mode and side; the sequence
helpers; attributes; and save_pretrained in one library -> from_pretrained in the other.

    python benches/compare_tokenizers_437.py --python /work/venv437/bin/python
        [--model path/to/sentencepiece.model]    # default: train the tiny test model
        [--data tests/data/multilingual.txt]

Exit status 0 when everything matched, 1 otherwise; a summary (lines matched, jobs matched, the first
differences) goes to stdout. The worker never imports rembert_fast; this side imports it only to run
its own jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EDGE_CASES = [
    "",
    " ",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple    inner   spaces",
    "``quoted'' and ''double''",
    "tab\there and\nnewline",
    "[MASK]",
    "a [MASK] b",
    "a   [MASK]b",
    "[MASK][MASK] [MASK]",
    "x[CLS]y[SEP]z",
    "[PAD] [UNK] <unk> <pad>",
    "[mask] in lower case",
    "ΟΔΟΣ ΚΑΙ ΣΠΙΤΙΑ",
    "İstanbul DİYARBAKIR",
    "ﬁne ㎏ Ⅻ ① ½",
    "unknown 🦜 ꙮ 𓀀 characters",
    "MiXeD CaSe ÀÉÎÕÜ ñÑ",
    "can't won't I'm you're they've it's",
    "Hello , world . Really ? Yes ! ' quoted '",
    "hello newword <extra> world tok_one",
    "tok_one<extra>NEWWORD newwordy",
]
CONFIGS = {
    "slow-default": ("slow", {}),
    "fast-default": ("fast", {}),
    "slow-lower": ("slow", {"do_lower_case": True}),
    "fast-cased-accents": ("fast", {"do_lower_case": False, "keep_accents": True}),
    "fast-lower-accents": ("fast", {"do_lower_case": True, "keep_accents": True}),
    "fast-cased-noaccents": ("fast", {"do_lower_case": False, "keep_accents": False}),
    "slow-fast-specials": ("slow", {"unk_token": "<unk>", "pad_token": "<pad>"}),
    "fast-slow-specials": ("fast", {"unk_token": "[UNK]", "pad_token": "[PAD]"}),
}
# Configurations with tokens added after construction (their saved directories are loaded by both
# libraries, like every configuration's).
ADDED = [
    ["add_tokens", ["newword", "tok_one"], {}],
    ["add_special_tokens", {"additional_special_tokens": ["<extra>"], "pad_token": "<newpad>"}],
]
SETUPS = {"slow-added": ("slow", {}, ADDED), "fast-added": ("fast", {}, ADDED)}


# The job runner and the feature jobs live beside the tests, which replay the recorded answers.
sys.path.insert(0, str(ROOT / "tests"))
from tokenizer_jobs import MODEL_FILE, RECORD_FILE, feature_jobs, run_jobs  # noqa: E402


# ------------------------------------------------------------------------------------------ parent side
def build_jobs(model: str, lines: list[str], save_root: str) -> list[dict[str, Any]]:
    texts = lines + EDGE_CASES
    pair_a, pair_b = lines[0::2][:60], lines[1::2][:60]
    jobs: list[dict[str, Any]] = []
    configs = {name: (cls, init, []) for name, (cls, init) in CONFIGS.items()}
    for name, (cls, init, setup) in {**configs, **SETUPS}.items():
        source = {"vocab_file": model}

        def add(
            op: str,
            suffix: str,
            *args: Any,
            _cls: str = cls,
            _init: dict = init,
            _source: dict = source,
            _name: str = name,
            _setup: list = setup,
            **kwargs: Any,
        ) -> None:
            jobs.append(
                {
                    "id": f"{_name}/{suffix}",
                    "cls": _cls,
                    "init": _init,
                    "source": _source,
                    "op": op,
                    "args": list(args),
                    "kwargs": kwargs,
                    **({"setup": _setup} if _setup else {}),
                }
            )

        fast = cls == "fast"
        add("attrs", "attrs")
        add("call", "lines", texts, return_special_tokens_mask=True, return_offsets_mapping=fast)
        add("tokenize", "tokenize", texts)
        for i, text in enumerate(texts[:40] + EDGE_CASES):
            add("call", f"single/{i}", text, return_special_tokens_mask=True)
        add("call", "pairs", pair_a, pair_b, return_special_tokens_mask=True, return_offsets_mapping=fast)
        add("call", "pairs-no-special", pair_a, pair_b, add_special_tokens=False)
        add("call", "pair-single", lines[3], lines[4])
        for truncation in (True, "longest_first", "only_first", "only_second"):
            for max_length in (9, 24):
                for padding in (False, True, "max_length"):
                    add(
                        "call",
                        f"pairs/{truncation}/{max_length}/{padding}",
                        pair_a,
                        pair_b,
                        truncation=truncation,
                        max_length=max_length,
                        padding=padding,
                        return_special_tokens_mask=True,
                    )
        for max_length in (5, 12):
            add("call", f"lines-trunc/{max_length}", texts, truncation=True, max_length=max_length)
            add("call", f"lines-maxlen-only/{max_length}", texts, max_length=max_length)
        add("call", "lines-pad-longest", texts[:50], padding=True, return_special_tokens_mask=True)
        add("call", "lines-pad-max", texts[:50], padding="max_length", max_length=40, truncation=True)
        add("call", "lines-pad-multiple", texts[:50], padding=True, pad_to_multiple_of=8)
        add("call", "lines-np", texts[:30], padding=True, return_tensors="np")
        add(
            "call",
            "lines-no-mask-types",
            texts[:30],
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        add("encode", "encode", lines[5], lines[6])
        ids = [[2, *range(5, 5 + n), 3] for n in range(0, 40, 3)] + [[2, 4, 5, 3, 0, 0, 1], [4, 4, 3, 2]]
        add("build_inputs_with_special_tokens", "build", [7, 8, 9], [10, 11])
        add("get_special_tokens_mask", "stm", [7, 8, 9], [10, 11])
        add("get_special_tokens_mask", "stm-already", [2, 7, 3, 8, 3, 0, 4], already_has_special_tokens=True)
        add("create_token_type_ids_from_sequences", "types", [7, 8, 9], [10, 11])
        add(
            "convert_tokens_to_ids",
            "t2i",
            ["[CLS]", "[MASK]", "▁", "no-such-piece", "<unk>", "<pad>", "[PAD]"],
        )
        add("convert_ids_to_tokens", "i2t", list(range(0, 60)))
        add("convert_ids_to_tokens", "i2t-skip", list(range(0, 60)), skip_special_tokens=True)
        add("batch_decode", "batch-decode-ids", ids)
        add("batch_decode", "batch-decode-ids-skip", ids, skip_special_tokens=True)
        add("batch_decode", "batch-decode-noclean", ids, clean_up_tokenization_spaces=False)
        add("save", "save", os.path.join(save_root, "{library}", name))
    return jobs


def add_decode_jobs(jobs: list[dict[str, Any]], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Decode, in both libraries, the ids the reference produced for every line."""
    extra = []
    for job in jobs:
        if not job["id"].endswith("/lines") or "ok" not in reference.get(job["id"], {}):
            continue
        ids = _result(reference[job["id"]])["input_ids"]
        base = job["id"][: -len("lines")]
        for skip in (False, True):
            extra.append(
                {
                    **job,
                    "id": f"{base}decode/skip={skip}",
                    "op": "decode",
                    "args": [ids],
                    "kwargs": {"skip_special_tokens": skip},
                }
            )
    return extra


def add_load_jobs(
    jobs: list[dict[str, Any]], save_root: str, texts: list[str], pair_a: list[str], pair_b: list[str]
) -> list[dict[str, Any]]:
    """Load each directory the *other* library saved, then encode and decode with it."""
    extra = []
    for job in jobs:
        if job["op"] != "save":
            continue
        name = job["id"].split("/")[0]
        for saved_by in ("transformers", "rembert_fast"):
            directory = os.path.join(save_root, saved_by, name)
            for cls in ("slow", "fast"):
                base = {"cls": cls, "init": {}, "source": {"dir": directory}}
                prefix = f"load/{saved_by}/{name}/{cls}/"
                extra.append({**base, "id": prefix + "attrs", "op": "attrs"})
                extra.append(
                    {
                        **base,
                        "id": prefix + "lines",
                        "op": "call",
                        "args": [texts],
                        "kwargs": {"return_special_tokens_mask": True},
                    }
                )
                extra.append(
                    {
                        **base,
                        "id": prefix + "pairs",
                        "op": "call",
                        "args": [pair_a, pair_b],
                        "kwargs": {"padding": True, "truncation": "only_second", "max_length": 20},
                    }
                )
    return extra


def _resolve_save_dirs(jobs: list[dict[str, Any]], library: str) -> list[dict[str, Any]]:
    return [
        {
            **job,
            "args": [
                arg.replace("{library}", library) if isinstance(arg, str) else arg
                for arg in job.get("args", [])
            ],
        }
        for job in jobs
    ]


def record(python: str, out_file: str, lines: list[str]) -> int:
    """Write the 4.37.2 answers of the feature jobs to `out_file` (JSON: versions, the model's sha256,
    jobs, answers)."""
    jobs = feature_jobs(lines)
    answers = run_reference(python, jobs, model=str(MODEL_FILE))
    versions = subprocess.run(
        [python, "-c", "import transformers, tokenizers, sentencepiece as s; "
         "print(transformers.__version__, tokenizers.__version__, s.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    content = {
        "generated_by": "benches/compare_tokenizers_437.py --record",
        "transformers": versions[0],
        "tokenizers": versions[1],
        "sentencepiece": versions[2],
        "model_sha256": hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest(),
        "jobs": jobs,
        "answers": answers,
    }
    with open(out_file, "w", encoding="utf-8") as handle:
        json.dump(content, handle, ensure_ascii=False, separators=(",", ":"))
        handle.write("\n")
    errors = sum("error" in answer for answer in answers.values())
    print(f"recorded {len(jobs)} jobs ({errors} raise under 4.37.2) into {out_file}")
    return 0


def run_reference(python: str, jobs: list[dict[str, Any]], model: str = "") -> dict[str, Any]:
    jobs = _resolve_save_dirs(jobs, "transformers")
    env = {
        **os.environ,
        "PYTHONIOENCODING": "utf-8",
        "TRANSFORMERS_VERBOSITY": "critical",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [python, __file__, "--worker"],
        input=json.dumps({"jobs": jobs, "model": model}),
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the transformers 4.37.2 worker ({python}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def run_ours(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    # The reference runs with transformers' logging at "error"; its error lines are silenced here too.
    logging.getLogger("rembert_fast").setLevel(logging.CRITICAL)
    return run_jobs("rembert_fast", _resolve_save_dirs(jobs, "rembert_fast"))


def _result(answer: dict[str, Any]) -> Any:
    """A job's answer without the results of its setup steps."""
    ok = answer.get("ok")
    return ok["result"] if isinstance(ok, dict) and sorted(ok) == ["result", "setup"] else ok


def _line_mismatches(ours: Any, reference: Any) -> list[int]:
    """Indices of batch rows that differ in any field."""
    if "ok" not in ours or "ok" not in reference:
        return [-1]
    a, b = _result(ours), _result(reference)
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            return [-1]
        rows = len(b["input_ids"])
        return [i for i in range(rows) if any(a[key][i] != b[key][i] for key in b)]
    return [i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]]


def compare(ours: dict[str, Any], reference: dict[str, Any]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    differences = []
    per_line: dict[str, tuple[int, int]] = {}
    for job_id, expected in reference.items():
        got = ours.get(job_id)
        if job_id.endswith(("/lines", "/tokenize")) or "/decode/" in job_id:
            bad = _line_mismatches(got, expected)
            rows = (
                len(_result(expected)["input_ids"])
                if isinstance(_result(expected), dict)
                else len(_result(expected) or [])
            )
            per_line[job_id] = (rows - len(bad), rows)
            if bad:
                differences.append(f"{job_id}: {len(bad)} rows differ, first {bad[:5]}")
            continue
        if ("error" in expected) != ("error" in (got or {})) or expected.get("ok") != (got or {}).get("ok"):
            differences.append(
                f"{job_id}: ours {json.dumps(got, ensure_ascii=False)[:300]} | 4.37.2 "
                f"{json.dumps(expected, ensure_ascii=False)[:300]}"
            )
    return differences, per_line


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--python",
        default=os.environ.get("REMBERT_FAST_TF437_PYTHON"),
        help="python of the transformers 4.37.2 venv (default: $REMBERT_FAST_TF437_PYTHON)",
    )
    parser.add_argument(
        "--model", help="sentencepiece .model to compare on (default: train the tiny test model)"
    )
    parser.add_argument("--data", default=str(ROOT / "tests" / "data" / "multilingual.txt"))
    parser.add_argument(
        "--record",
        nargs="?",
        const=str(RECORD_FILE),
        help="run the feature jobs (tests/tokenizer_jobs.py) under 4.37.2 on tests/data's model and write "
        f"their answers as the tests' reference (default {RECORD_FILE.relative_to(ROOT)})",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        request = json.load(sys.stdin)
        if isinstance(request, list):
            request = {"jobs": request}
        with tempfile.TemporaryDirectory() as save:
            answers = run_jobs("transformers", request["jobs"], request.get("model", ""), save)
        json.dump(answers, sys.stdout, ensure_ascii=False)
        return 0
    if not args.python:
        parser.error("pass --python /path/to/venv437/bin/python or set REMBERT_FAST_TF437_PYTHON")
    if args.record:
        return record(args.python, args.record, Path(args.data).read_text(encoding="utf-8").splitlines())
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tokenizer_fixtures import train_tiny_sentencepiece

            model = train_tiny_sentencepiece(os.path.join(tmp, "model"))
        lines = Path(args.data).read_text(encoding="utf-8").splitlines()
        texts = lines + EDGE_CASES
        jobs = build_jobs(model, lines, os.path.join(tmp, "saved"))
        reference = run_reference(args.python, jobs)
        ours = run_ours(jobs)
        follow_up = add_decode_jobs(jobs, reference) + add_load_jobs(
            jobs, os.path.join(tmp, "saved"), texts, lines[0::2][:60], lines[1::2][:60]
        )
        reference.update(run_reference(args.python, follow_up))
        ours.update(run_ours(follow_up))
    differences, per_line = compare(ours, reference)
    print(
        f"model: {model if args.model else 'tiny test model (trained now)'}; data: {args.data} "
        f"({len(lines)} lines + {len(EDGE_CASES)} edge cases)"
    )
    for job_id, (good, total) in per_line.items():
        if job_id.endswith("/lines") and not job_id.startswith("load/"):
            print(f"  {job_id:40s} {good}/{total} rows identical (ids, type ids, masks, offsets)")
    rows_good = sum(good for good, _ in per_line.values())
    rows_total = sum(total for _, total in per_line.values())
    print(f"row-level checks (encode/tokenize/decode, all configs, cross-loaded): {rows_good}/{rows_total}")
    print(f"jobs: {len(reference) - len(differences)}/{len(reference)} identical")
    for line in differences[:30]:
        print("  DIFF", line)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
