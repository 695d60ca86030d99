"""The embedding op: eager `ops.embed` vs transformers, bad ids, the extension's loading and build logic,
and (on a GPU) the CUDA extension `rembert_fast._C` vs the eager reference.

CPU: `ops.embed` equals transformers' RemBertEmbeddings + encoder.embedding_hidden_mapping_in with shared
weights; out-of-range ids raise ValueError naming the value; extension.status()/load() say why there is
no extension; setup.py skips the CUDA build without CUDA and ships the sources in the built package.
GPU (`@pytest.mark.gpu`): fp32/fp16/bf16 up to 64k tokens, with and without the projection, int32 ids,
the scalar and wide-row kernel paths, bad ids raising ValueError with the process still usable, run-to-run
equality, CUDA-graph capture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import assert_within_twice_eager, auto_tuning

from rembert_fast import extension, ops
from rembert_fast.padding import unpad_input

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers
def _tiny_hf_model(vocab: int = 97, embed: int = 16, hidden: int = 24, positions: int = 40, types: int = 3):
    config = transformers.RemBertConfig(
        vocab_size=vocab, input_embedding_size=embed, hidden_size=hidden, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, output_embedding_size=8,
        max_position_embeddings=positions, type_vocab_size=types, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.RemBertModel(config).eval()
    with torch.no_grad():  # fresh random values everywhere, LayerNorm included (its init is ones/zeros)
        for param in model.embeddings.parameters():
            param.normal_()
        model.encoder.embedding_hidden_mapping_in.weight.normal_(std=0.2)
        model.encoder.embedding_hidden_mapping_in.bias.normal_()
    return model


def _weights(model) -> tuple:
    emb = model.embeddings
    proj = model.encoder.embedding_hidden_mapping_in
    return (emb.word_embeddings.weight, emb.position_embeddings.weight, emb.token_type_embeddings.weight,
            emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps, proj.weight, proj.bias)


def _left_padded_batch(vocab: int, types: int, batch: int = 3, seqlen: int = 11):
    """Ids with left padding, and position ids counting real tokens from a per-row offset."""
    lengths = torch.tensor([seqlen, 7, 4])[:batch]
    mask = torch.arange(seqlen)[None, :] >= (seqlen - lengths)[:, None]  # (B, L) True = real token
    input_ids = torch.randint(1, vocab, (batch, seqlen))
    input_ids[~mask] = 0
    input_ids[0, -1], input_ids[1, -1] = vocab - 1, 0  # the table's first and last rows among real tokens
    offsets = torch.tensor([0, 5, 13])[:batch]
    position_ids = ((mask.cumsum(1) - 1).clamp(min=0) + offsets[:, None]) * mask
    token_type_ids = torch.randint(0, types, (batch, seqlen))
    return input_ids, position_ids, token_type_ids, mask


# ----------------------------------------------------------------------------------------- CPU: parity
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_eager_embed_matches_transformers(id_dtype: torch.dtype) -> None:
    model = _tiny_hf_model()
    input_ids, position_ids, token_type_ids, mask = _left_padded_batch(97, 3)
    with torch.no_grad():
        expected_ln = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                       position_ids=position_ids)  # (B, L, E)
        expected = model.encoder.embedding_hidden_mapping_in(expected_ln)  # (B, L, hidden)
        word, pos, typ, ln_w, ln_b, eps, proj_w, proj_b = _weights(model)
        ids = [t.to(id_dtype) for t in (input_ids, position_ids, token_type_ids)]
        got_ln = ops.embed(*ids, word, pos, typ, ln_w, ln_b, eps)
        got = ops.embed(*ids, word, pos, typ, ln_w, ln_b, eps, proj_w, proj_b)
        # The fast path's call: real tokens only, packed as unpad_input packs them.
        _, indices, _, _ = unpad_input(input_ids.unsqueeze(-1), mask)
        packed_ids = [t.flatten()[indices] for t in ids]
        got_packed = ops.embed(*packed_ids, word, pos, typ, ln_w, ln_b, eps, proj_w, proj_b)
    assert got_ln.shape == expected_ln.shape and got.shape == expected.shape
    assert (got_ln - expected_ln).abs().max().item() <= 1e-5
    assert (got[mask] - expected[mask]).abs().max().item() <= 1e-5
    assert (got_packed - expected[mask]).abs().max().item() <= 1e-5
    assert expected[mask].abs().max().item() > 0.1  # the comparison is not between near-zero tensors


@pytest.mark.parametrize(
    "which, value, match",
    [
        ("input_ids", -1, r"input_ids contains -1, outside \[0, 97\) \(vocab_size=97\)"),
        ("input_ids", 97, r"input_ids contains 97, outside \[0, 97\)"),
        ("token_type_ids", 3, r"token_type_ids contains 3, outside \[0, 3\) \(type_vocab_size=3\)"),
        ("position_ids", 40, r"position_ids contains 40, outside \[0, 40\) \(max_position_embeddings=40\)"),
        ("position_ids", -2, r"position_ids contains -2"),
    ],
)
def test_eager_embed_rejects_out_of_range_ids(which: str, value: int, match: str) -> None:
    model = _tiny_hf_model()
    input_ids, position_ids, token_type_ids, _ = _left_padded_batch(97, 3)
    ids = {"input_ids": input_ids, "position_ids": position_ids, "token_type_ids": token_type_ids}
    ids[which][1, 5] = value
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        ops.embed(ids["input_ids"], ids["position_ids"], ids["token_type_ids"], *_weights(model))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_embed_takes_fp32_layer_norm_and_strided_tables_on_any_backend(device: str) -> None:
    """fp32 LN parameters with bf16 tables (the op contract allows them; the CUDA kernel and CUDA's
    F.layer_norm take one dtype) and a strided word table (the kernel takes contiguous tables) run
    on `auto` without an error: LN in fp32 on the bf16 sum, rounded once."""
    vocab, dim = 300, 64
    tables = [torch.randn(shape, device=device) for shape in ((vocab, dim), (40, dim), (3, dim))]
    word, position, types = (t.bfloat16() for t in tables)
    ln_weight, ln_bias = 1 + 0.1 * torch.randn(dim, device=device), torch.randn(dim, device=device)
    ids = (torch.randint(0, vocab, (5, 9), device=device), torch.randint(0, 40, (5, 9), device=device),
           torch.randint(0, 3, (5, 9), device=device))
    x = (F.embedding(ids[0], word) + F.embedding(ids[2], types)) + F.embedding(ids[1], position)
    expected = F.layer_norm(x.float(), (dim,), ln_weight, ln_bias, 1e-12).bfloat16()
    half_ln = (ln_weight.bfloat16(), ln_bias.bfloat16())
    strided_word = torch.empty(vocab, 2 * dim, dtype=torch.bfloat16, device=device)[:, :dim].copy_(word)
    with ops.use_backend("auto"):
        mixed = ops.embed(*ids, word, position, types, ln_weight, ln_bias, 1e-12)
        strided = ops.embed(*ids, strided_word, position, types, *half_ln, 1e-12)
    assert mixed.dtype == torch.bfloat16 and torch.equal(mixed, expected)
    same_dtype = F.layer_norm(x, (dim,), *half_ln, 1e-12)
    assert (strided.float() - same_dtype.float()).abs().max().item() <= 0.07  # bf16 rounding of values < 8


def test_embed_rejects_float_ids() -> None:
    model = _tiny_hf_model()
    input_ids, position_ids, token_type_ids, _ = _left_padded_batch(97, 3)
    match = "input_ids must be int64 or int32, got torch.float32"
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        ops.embed(input_ids.float(), position_ids, token_type_ids, *_weights(model))


# ----------------------------------------------------------------------------------------- CPU: probe
def _fake_extension(monkeypatch, scale: float = 1.0) -> list:
    """An extension that loads on CPU and computes embed_ref (times `scale`: 1.01 is a wrong kernel);
    returns the list of its calls."""
    calls = []

    def embed(module, *args, check_ids=True):
        calls.append(check_ids)
        return ops.embed_ref(*args) * scale

    monkeypatch.setattr(extension, "load", lambda: object())
    monkeypatch.setattr(extension, "embed", embed)
    return calls


def _auto_with_the_extension(monkeypatch, tmp_path):
    """`auto` with a private tuning cache, where the extension counts as available on these CPU tensors
    (a stand-in for a CUDA device with `rembert_fast._C`)."""
    from rembert_fast.ops import dispatch

    auto_tuning(monkeypatch, tmp_path)
    real = dispatch._decide
    monkeypatch.setattr(dispatch, "_decide", lambda op, device_type, requested:
                        "cuda" if op == "embed" else real(op, device_type, requested))


@pytest.mark.skipif(not ops.triton_status()[0], reason="a first use is probed where a fused path runs")
@pytest.mark.parametrize("scale", [1.0, 1.01])
def test_the_extension_is_probed_before_first_use_and_a_wrong_one_never_serves(monkeypatch, tmp_path, scale):
    from rembert_fast.ops import probe, tuning

    calls = _fake_extension(monkeypatch, scale)
    _auto_with_the_extension(monkeypatch, tmp_path)
    model = _tiny_hf_model()
    ids = torch.randint(0, 97, (2, 9))
    positions, types = torch.arange(9).expand(2, 9), torch.randint(0, 3, (2, 9))
    args = (ids, positions, types, *_weights(model))
    ref = ops.embed_ref(*args)
    if scale == 1.0:
        assert probe.run_probe("embed", torch.device("cpu"), torch.float32) is None
        out = ops.embed(*args)
        assert len(calls) == 2 and torch.equal(out, ref)  # the probe, then the call
    else:
        with pytest.warns(RuntimeWarning, match="fused embed disabled.*max error"):
            out = ops.embed(*args)
        assert len(calls) == 1 and torch.equal(out, ref)  # the probe only; eager serves
        assert "max error" in tuning.verdicts()["embed|float32"]


# ----------------------------------------------------------------------------------------- CPU: extension
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given where CUDA is missing")
def test_extension_reports_why_it_is_unavailable() -> None:
    available, reason = extension.status()
    assert not available
    assert "CUDA" in reason
    assert extension.load() is None
    assert extension.status() == (False, reason)  # load()'s cached outcome, the same reason


def test_cuda_backend_request_fails_clearly_on_cpu_tensors() -> None:  # with or without a GPU
    model = _tiny_hf_model()
    input_ids, position_ids, token_type_ids, _ = _left_padded_batch(97, 3)
    with torch.no_grad(), ops.use_backend("cuda"), pytest.raises(RuntimeError, match="CUDA tensors only"):
        ops.embed(input_ids, position_ids, token_type_ids, *_weights(model))


def test_extension_finds_its_sources_in_the_checkout() -> None:
    directory = extension.source_dir()
    assert directory is not None
    for name in extension.SOURCES + extension.HEADERS:
        assert (directory / name).read_bytes() == (ROOT / "csrc" / name).read_bytes()


def test_cache_dir_follows_sources_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")  # so the tag needs no device
    monkeypatch.setenv("REMBERT_FAST_CACHE", str(tmp_path / "cache"))
    sources = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", sources)
    first = extension.cache_dir(sources)
    assert first.parent == tmp_path / "cache"
    assert torch.__version__ in first.name and sys.implementation.cache_tag in first.name
    assert "arch8_0_9_0" in first.name
    assert extension.cache_dir(sources) == first
    with open(sources / "embed_kernel.cu", "a") as f:
        f.write("\n// edited\n")
    assert extension.cache_dir(sources) != first  # an edited kernel never loads a stale build


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks setup.py where torch has no CUDA")
def test_setup_skips_the_cuda_build_without_cuda() -> None:
    code = """
import json, os, runpy
setup = runpy.run_path("setup.py", run_name="setup_probe")  # defines get_extensions, runs nothing
results = {}
for value in (None, "0", "1", "yes"):
    if value is None:
        os.environ.pop("REMBERT_FAST_BUILD_CUDA", None)
    else:
        os.environ["REMBERT_FAST_BUILD_CUDA"] = value
    try:
        results[str(value)] = ["ok", len(setup["get_extensions"]())]
    except Exception as err:
        results[str(value)] = [type(err).__name__, str(err)]
print(json.dumps(results))
"""
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["None"] == ["ok", 0]
    assert results["0"] == ["ok", 0]
    assert results["1"][0] == "RuntimeError"
    assert "REMBERT_FAST_BUILD_CUDA=1" in results["1"][1] and "without CUDA" in results["1"][1]
    assert results["yes"][0] == "ValueError" and "'yes'" in results["yes"][1]


def test_built_package_ships_the_sources(tmp_path: Path) -> None:
    build_lib = tmp_path / "lib"
    command = [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build_lib)]
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "REMBERT_FAST_BUILD_CUDA": "0"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shipped = build_lib / "rembert_fast" / "csrc"
    for name in extension.SOURCES + extension.HEADERS:
        assert (shipped / name).read_bytes() == (ROOT / "csrc" / name).read_bytes()
    # The built copy of extension.py finds them beside itself, as it would in a wheel.
    built_file = build_lib / "rembert_fast" / "extension.py"
    spec = importlib.util.spec_from_file_location("built_extension", built_file)
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    assert built.source_dir() == shipped


_JIT_PROBE = """
import json, os, runpy, sys
import torch
from torch.utils import cpp_extension
from rembert_fast import extension

guess = cpp_extension.CUDA_HOME
setup = runpy.run_path("setup.py", run_name="setup_probe")  # defines get_extensions, runs nothing
extensions = setup["get_extensions"]()  # auto mode: optional, so a failed compile cannot fail the install
result = {"guess": guess, "setup_extensions": [[e.name, e.optional] for e in extensions],
          "setup_home": cpp_extension.CUDA_HOME}
cpp_extension.CUDA_HOME = guess  # undo setup.py's correction: compile_jit must make its own
os.environ.pop("CUDA_HOME", None)
module, how = extension.compile_jit(extension.source_dir())
result.update(home=cpp_extension.CUDA_HOME, how=how)
if module is not None:
    result["max_dim"] = module.MAX_DIM
    ids, table = torch.zeros(3, dtype=torch.long), torch.randn(10, 8)
    try:
        module.embed(ids, ids, ids, table, table, table, table[0], table[0], 1e-5)
    except ValueError as err:  # TORCH_CHECK_VALUE reaches Python as ValueError
        result["error"] = str(err)
print(json.dumps(result))
"""


@pytest.mark.skipif(torch.version.cuda is None,
                    reason="torch is built without CUDA: no CUDA headers and libraries to build against")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="a CUDA device is visible: the GPU tests below load (or build) the extension")
def test_extension_builds_links_and_imports_without_a_gpu(tmp_path: Path) -> None:
    """setup.py's and the first-use (JIT) build with a CUDA torch and nvcc: compile, link, import, call.

    The nvcc on PATH is a wrapper script outside the toolkit, from which torch guesses a CUDA_HOME that
    has no headers (as /usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc does): both build
    paths must find the real toolkit. Compiles for sm_90 only, into a fresh cache (about 30 s).
    """
    wrapper = tmp_path / "wrapped" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("nvcc")} "$@"\n')
    wrapper.chmod(0o755)
    unset = ("CUDA_HOME", "CUDA_PATH", "REMBERT_FAST_BUILD_CUDA")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PATH=f"{wrapper.parent}{os.pathsep}{env['PATH']}", TORCH_CUDA_ARCH_LIST="9.0",
               REMBERT_FAST_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", _JIT_PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["guess"] == str(tmp_path / "wrapped")  # the premise: torch's guess has no headers
    assert result["setup_extensions"] == [["rembert_fast._C", True]]
    for home in (result["setup_home"], result["home"]):
        assert (Path(home) / "include" / "cuda_runtime.h").is_file(), result
    assert result["how"].startswith("JIT-compiled extension from " + str(tmp_path / "cache")), result["how"]
    assert result["max_dim"] == 4096
    assert result["error"].startswith("input_ids is on cpu"), result["error"]


# ----------------------------------------------------------------------------------------- GPU
GPU_VOCAB, GPU_POSITIONS, GPU_TYPES, GPU_HIDDEN = 250300, 512, 2, 1152
TOLERANCE_FP32 = 2e-5  # fused fp32 sums vs eager's: a few ulp of values up to ~10


@pytest.fixture(scope="module")
def ext():
    module = extension.load()
    if module is None:  # a GPU machine must build it: failing here beats skipping every test below
        pytest.fail(f"the CUDA extension did not load: {extension.status()[1]}")
    return module


def _gpu_weights(dtype: torch.dtype, dim: int = 256, vocab: int = GPU_VOCAB, hidden: int = GPU_HIDDEN):
    """Random (fp32 master, dtype copy) weights on the GPU: tables, LN weight/bias, projection."""
    g = torch.Generator(device="cuda").manual_seed(1234)
    shapes = [(vocab, dim), (GPU_POSITIONS, dim), (GPU_TYPES, dim), (dim,), (dim,), (hidden, dim), (hidden,)]
    master = [torch.randn(s, device="cuda", generator=g) for s in shapes]
    master[3] = 1.0 + 0.1 * master[3]  # LN weight around one
    master[5] = master[5] / dim**0.5  # projection weights of a trained model's scale
    return master, [t.to(dtype) for t in master]


def _random_ids(tokens: int, vocab: int = GPU_VOCAB) -> tuple[torch.Tensor, ...]:
    input_ids = torch.randint(0, vocab, (tokens,), device="cuda")
    input_ids[0] = 0
    input_ids[-1] = vocab - 1
    position_ids = torch.randint(0, GPU_POSITIONS, (tokens,), device="cuda")
    position_ids[-1] = GPU_POSITIONS - 1
    token_type_ids = torch.randint(0, GPU_TYPES, (tokens,), device="cuda")
    token_type_ids[-1] = GPU_TYPES - 1
    return input_ids, position_ids, token_type_ids


def _poison_allocator(nbytes: int) -> None:
    """Leave a NaN-filled block of `nbytes` in the caching allocator so rows the kernel skips show up."""
    block = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del block


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _assert_accurate(got: torch.Tensor, ids: tuple, master: list, weights: list, eps: float,
                     project: bool) -> None:
    """fp32: within a few ulp of eager fp32; fp16/bf16: at most twice eager's error in the same dtype."""
    exact = ops.embed_ref(*ids, *master[:5], eps, *(master[5:] if project else ()))
    err = _max_err(got, exact)
    if got.dtype == torch.float32:
        assert err <= TOLERANCE_FP32 * (8 if project else 1), err
    else:
        eager = ops.embed_ref(*ids, *weights[:5], eps, *(weights[5:] if project else ()))
        assert_within_twice_eager(got, exact, eager, floor=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 1000, 65536])
@pytest.mark.parametrize("project", [False, True])
def test_extension_matches_eager(ext, dtype: torch.dtype, tokens: int, project: bool) -> None:
    master, weights = _gpu_weights(dtype)
    ids = _random_ids(tokens)
    _poison_allocator(tokens * 256 * dtype.itemsize)  # the kernel's (T, E) output reuses this block
    got = extension.embed(ext, *ids, *weights[:5], 1e-12, *(weights[5:] if project else ()))
    assert got.shape == (tokens, GPU_HIDDEN if project else 256) and got.dtype == dtype
    assert torch.isfinite(got).all()
    _assert_accurate(got, ids, master, weights, 1e-12, project)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extension_int32_ids_and_dispatch(ext, dtype: torch.dtype) -> None:
    master, weights = _gpu_weights(dtype)
    ids64 = _random_ids(4097)
    ids32 = tuple(t.to(torch.int32) for t in ids64)
    got32 = extension.embed(ext, *ids32, *weights[:5], 1e-12, *weights[5:])
    mixed = extension.embed(ext, ids32[0], ids64[1], ids32[2], *weights[:5], 1e-12, *weights[5:])
    with ops.use_backend("auto"):
        dispatched = ops.embed(*ids64, *weights[:5], 1e-12, *weights[5:])
    _assert_accurate(got32, ids64, master, weights, 1e-12, True)
    assert torch.equal(got32, mixed)
    assert torch.equal(dispatched, extension.embed(ext, *ids64, *weights[:5], 1e-12, *weights[5:]))


@pytest.mark.gpu
def test_cuda_backend_request_names_what_the_kernel_cannot_read(ext) -> None:
    """use_backend("cuda") with weights the kernel does not take (no LN bias, fp32 LN parameters with
    half tables) raises ValueError saying so, where `auto` runs them eagerly."""
    _, weights = _gpu_weights(torch.bfloat16)
    ids = _random_ids(64)
    no_bias = weights[:4] + [None]
    fp32_ln = weights[:3] + [weights[3].float(), weights[4].float()]
    for bad, match in ((no_bias, "LayerNorm bias \\(got None\\)"), (fp32_ln, "got torch.float32")):
        with ops.use_backend("cuda"), pytest.raises(ValueError, match=match):
            ops.embed(*ids, *bad, 1e-12)
        with ops.use_backend("auto"):
            assert ops.embed(*ids, *bad, 1e-12).shape == (64, 256)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dim, offset",  # E, and the word table's data pointer offset in elements
    [
        (250, 0),  # E not a multiple of 8: scalar loads, row in registers
        (256, 1),  # a table 2 bytes past a 16-byte boundary: scalar loads
        (768, 0),  # 16-byte loads, 3 of 4 register slots used per lane
        (1001, 0),  # scalar loads, three-pass loop
        (4096, 0),  # 16-byte loads, three-pass loop, the widest E
    ],
)
def test_extension_other_widths_and_alignment(ext, dim: int, offset: int) -> None:
    master, weights = _gpu_weights(torch.float16, dim=dim, vocab=5000, hidden=64)
    if offset:
        storage = torch.empty(weights[0].numel() + offset, dtype=torch.float16, device="cuda")
        weights[0] = storage[offset:].view_as(weights[0]).copy_(weights[0])
    ids = _random_ids(3001, vocab=5000)
    _poison_allocator(3001 * dim * 2)
    got = extension.embed(ext, *ids, *weights[:5], 1e-5)
    _assert_accurate(got, ids, master, weights, 1e-5, False)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "which, value, limit",
    [
        ("input_ids", GPU_VOCAB, f"[0, {GPU_VOCAB}) (vocab_size={GPU_VOCAB})"),
        ("input_ids", -3, f"[0, {GPU_VOCAB}) (vocab_size={GPU_VOCAB})"),
        ("position_ids", GPU_POSITIONS, f"[0, {GPU_POSITIONS}) (max_position_embeddings={GPU_POSITIONS})"),
        ("token_type_ids", 2, f"[0, {GPU_TYPES}) (type_vocab_size={GPU_TYPES})"),
    ],
)
def test_extension_rejects_bad_ids_and_survives(ext, which: str, value: int, limit: str) -> None:
    master, weights = _gpu_weights(torch.bfloat16)
    ids = dict(zip(("input_ids", "position_ids", "token_type_ids"), _random_ids(2048), strict=True))
    ids[which][777] = value
    ids[which][1500] = value  # a later bad token: the lowest index is reported
    match = re.escape(f"{which} contains {value} (flat index 777), outside {limit}")
    with pytest.raises(ValueError, match=match):
        extension.embed(ext, *ids.values(), *weights[:5], 1e-12)
    with ops.use_backend("auto"), pytest.raises(ValueError, match=re.escape(f"{which} contains {value}")):
        ops.embed(*ids.values(), *weights[:5], 1e-12)
    good = _random_ids(2048)  # the context is intact: the next call works
    got = extension.embed(ext, *good, *weights[:5], 1e-12)
    _assert_accurate(got, good, master, weights, 1e-12, False)
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_extension_without_check_zeroes_bad_rows(ext) -> None:
    master, weights = _gpu_weights(torch.float32)
    ids = _random_ids(300)
    ids[0][5] = GPU_VOCAB + 10**9  # far outside the table: a read there would fault
    ids[1][9] = -1
    got = extension.embed(ext, *ids, *weights[:5], 1e-12, check_ids=False)
    torch.cuda.synchronize()
    bad = torch.zeros(300, dtype=torch.bool, device="cuda")
    bad[[5, 9]] = True
    assert torch.equal(got[bad], torch.zeros_like(got[bad]))
    good = tuple(t[~bad] for t in ids)
    _assert_accurate(got[~bad], good, master, weights, 1e-12, False)


@pytest.mark.gpu
@pytest.mark.parametrize("project", [False, True])
def test_extension_takes_empty_and_batched_ids(ext, project: bool) -> None:
    master, weights = _gpu_weights(torch.bfloat16)
    proj = weights[5:] if project else ()
    width = GPU_HIDDEN if project else 256
    empty = tuple(torch.empty(0, 7, dtype=torch.int64, device="cuda") for _ in range(3))
    assert extension.embed(ext, *empty, *weights[:5], 1e-12, *proj).shape == (0, 7, width)
    batched = tuple(t.view(4, 25) for t in _random_ids(100))  # (B, L) ids keep their shape
    got = extension.embed(ext, *batched, *weights[:5], 1e-12, *proj)
    assert got.shape == (4, 25, width)
    _assert_accurate(got, batched, master, weights, 1e-12, project)


@pytest.mark.gpu
def test_extension_rejects_bad_arguments(ext) -> None:
    _, weights = _gpu_weights(torch.float32, vocab=100)
    word, pos, typ, ln_w, ln_b, proj_w, proj_b = weights
    ids = _random_ids(16, vocab=100)
    cases = [
        ((ids[0].cpu(), *ids[1:], *weights[:5]), "input_ids is on cpu"),
        ((ids[0].float(), *ids[1:], *weights[:5]), "input_ids must be int64 or int32"),
        ((*ids, word.half(), pos, typ, ln_w, ln_b), "position_weight has dtype"),
        ((*ids, word.t().contiguous().t(), pos, typ, ln_w, ln_b), "word_weight with strides"),
        ((*ids, word, pos[:, :128], typ, ln_w, ln_b), r"position_weight has shape \[512, 128\]"),
        ((*ids, torch.zeros(100, 4097, device="cuda"), pos, typ, ln_w, ln_b), "E=4097"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            extension.embed(ext, *args, 1e-12)
    with pytest.raises(ValueError, match=r"proj_weight has shape \[1152, 128\]"):
        extension.embed(ext, *ids, *weights[:5], 1e-12, proj_w[:, :128], proj_b)


@pytest.mark.gpu
def test_extension_is_deterministic(ext) -> None:
    _, weights = _gpu_weights(torch.bfloat16)
    ids = _random_ids(65536)
    first = extension.embed(ext, *ids, *weights[:5], 1e-12)
    second = extension.embed(ext, *ids, *weights[:5], 1e-12)
    assert torch.equal(first, second)


@pytest.mark.gpu
def test_extension_under_cuda_graph_capture(ext) -> None:
    _, weights = _gpu_weights(torch.bfloat16)
    static_ids = _random_ids(1024)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture, on the stream the capture then uses,
        extension.embed(ext, *static_ids, *weights[:5], 1e-12, *weights[5:])  # so its workspaces exist
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        captured = extension.embed(ext, *static_ids, *weights[:5], 1e-12, *weights[5:])
    fresh = _random_ids(1024)
    for static, new in zip(static_ids, fresh, strict=True):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    expected = extension.embed(ext, *fresh, *weights[:5], 1e-12, *weights[5:])
    assert torch.equal(captured, expected)
