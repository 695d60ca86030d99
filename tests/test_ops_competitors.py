"""Every candidate of `ops.attention` against the eager reference, on the op's whole contract: packed
variable lengths, empty sequences, a full batch (no padding), causal masks aligned bottom-right with
len_q != len_k (queries that see no key give zeros), a softmax scale, strided q/k/v views.

SDPA on the padded batch runs on CPU; torch's varlen attention is CUDA-only (fp16/bf16), tested on a GPU.
"""

import pytest
import torch
from conftest import assert_within_twice_eager

from rembert_fast import ops
from rembert_fast.ops import competitors

CUDA = torch.cuda.is_available()


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


CASES = [  # (query lengths, key lengths)
    ([5, 9, 2], [5, 9, 2]),
    ([4, 4, 4], [4, 4, 4]),  # full: a plain (B, L) batch
    ([3, 0, 6], [3, 0, 6]),  # an empty sequence
    ([2, 7], [5, 3]),  # cross lengths: causal queries before the first key see none
    ([1], [1]),
]


@pytest.mark.parametrize("lengths_q,lengths_k", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_padded_matches_the_reference(lengths_q, lengths_k, causal):
    heads, dim = 3, 16
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    same = lengths_q == lengths_k
    cu_k = cu_q if same else cu_k
    qkv = torch.randn(sum(lengths_q), 3, heads, dim)
    q = qkv[:, 0]  # a strided view, as the model's fused QKV gives
    if same:
        k, v = qkv[:, 1], qkv[:, 2]
    else:
        k, v = torch.randn(sum(lengths_k), heads, dim), torch.randn(sum(lengths_k), heads, dim)
    args = (q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal, 0.3)
    out = competitors.attention_sdpa_padded(*args)
    ref = ops.attention_per_sequence(q, k, v, cu_q, cu_k, causal=causal, softmax_scale=0.3)
    assert out.shape == ref.shape == (sum(lengths_q), heads, dim) and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if causal and lengths_q == [2, 7]:
        assert (out[2:6] == 0).all()  # the second sequence's first 4 queries see no key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_padded_in_half_precision_within_twice_eager(dtype):
    lengths = [6, 11, 3]
    cu = _cu(lengths)
    q, k, v = (torch.randn(sum(lengths), 2, 32) for _ in range(3))
    truth = ops.attention_per_sequence(q.double(), k.double(), v.double(), cu, cu, causal=True)
    half = [t.to(dtype) for t in (q, k, v)]
    eager = ops.attention_per_sequence(*half, cu, cu, causal=True)
    out = competitors.attention_sdpa_padded(*half, cu, cu, 11, 11, True)
    assert_within_twice_eager(out, truth, eager, what="sdpa_padded")


def test_torch_varlen_status_names_what_it_cannot_serve():
    assert "CUDA only" in (competitors.torch_varlen_status("cpu", torch.float16, 64, True) or "")
    if CUDA:
        assert "float16/bfloat16" in competitors.torch_varlen_status("cuda", torch.float32, 64, True)
        assert "multiple of 8" in competitors.torch_varlen_status("cuda", torch.float16, 60, True)
        assert "one offset table" in competitors.torch_varlen_status("cuda", torch.float16, 64, False)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="torch's varlen attention runs on CUDA only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[5, 9, 2], [64, 64], [3, 0, 130]])
def test_torch_varlen_matches_the_reference_on_cuda(dtype, causal, lengths):
    if competitors.torch_varlen_status("cuda", dtype, 64, True) is not None:
        pytest.skip(competitors.torch_varlen_status("cuda", dtype, 64, True))
    cu = _cu(lengths, "cuda")
    q, k, v = (torch.randn(sum(lengths), 4, 64, device="cuda") for _ in range(3))
    truth = ops.attention_ref(q.double(), k.double(), v.double(), cu, cu, max(lengths), max(lengths), causal)
    half = [t.to(dtype) for t in (q, k, v)]
    eager = ops.attention_ref(*half, cu, cu, max(lengths), max(lengths), causal)
    out = competitors.attention_torch_varlen(*half, cu, cu, max(lengths), max(lengths), causal)
    assert_within_twice_eager(out, truth, eager, what="torch_varlen")
