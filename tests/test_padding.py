"""padding.unpad_input / pad_input against boolean indexing, and the one-device-read promise.

The reference is PyTorch's own boolean-mask indexing (`hidden[mask]`, `mask.nonzero()`), which shares
no code with unpad_input (that one sizes `nonzero_static` from a single host read).
"""

from __future__ import annotations

import pytest
import torch

from rembert_fast import padding


def _random_mask(batch: int, seqlen: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(0, seqlen + 1, (batch,), generator=generator)
    columns = torch.arange(seqlen)
    if kind == "right":
        return columns[None, :] < lengths[:, None]
    if kind == "left":
        return columns[None, :] >= (seqlen - lengths)[:, None]
    return torch.rand(batch, seqlen, generator=generator) < 0.6  # holes anywhere


@pytest.mark.parametrize("kind", ["right", "left", "holes"])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_unpad_matches_boolean_indexing_and_round_trips(kind: str, mask_dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(hash((kind, str(mask_dtype))) % 2**31)
    for batch, seqlen in [(1, 1), (3, 7), (6, 33)]:
        mask = _random_mask(batch, seqlen, kind, generator)
        mask[0, 0] = True  # at least one real token
        hidden = torch.randn(batch, seqlen, 5, generator=generator)
        packed, indices, cu_seqlens, max_seqlen = padding.unpad_input(hidden, mask.to(mask_dtype))

        torch.testing.assert_close(packed, hidden[mask], rtol=0, atol=0)
        assert indices.dtype == torch.int64
        assert indices.tolist() == mask.flatten().nonzero().flatten().tolist()
        lengths = mask.sum(dim=1)
        assert cu_seqlens.dtype == torch.int32
        assert cu_seqlens.tolist() == [0] + torch.cumsum(lengths, 0).tolist()
        assert max_seqlen == int(lengths.max())

        restored = padding.pad_input(packed, indices, batch, seqlen)
        torch.testing.assert_close(restored, hidden * mask[..., None], rtol=0, atol=0)


def test_unpad_handles_empty_batches_and_all_padding() -> None:
    packed, indices, cu_seqlens, max_seqlen = padding.unpad_input(torch.randn(0, 4, 3),
                                                                   torch.ones(0, 4, dtype=torch.bool))
    assert packed.shape == (0, 3) and indices.numel() == 0 and cu_seqlens.tolist() == [0] and max_seqlen == 0
    packed, indices, cu_seqlens, max_seqlen = padding.unpad_input(torch.randn(2, 4, 3), torch.zeros(2, 4))
    assert packed.shape == (0, 3) and indices.numel() == 0 and cu_seqlens.tolist() == [0, 0, 0]
    assert max_seqlen == 0
    for dtype in (torch.bool, torch.long, torch.float32):  # no token per row: (B, 0), any mask dtype
        packed, indices, cu_seqlens, max_seqlen = padding.unpad_input(torch.randn(2, 0, 3),
                                                                       torch.ones(2, 0, dtype=dtype))
        assert packed.shape == (0, 3) and cu_seqlens.tolist() == [0, 0, 0] and max_seqlen == 0


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float32])
def test_unpad_without_empty_rows_names_the_first_empty_row(mask_dtype: torch.dtype) -> None:
    mask = (torch.rand(5, 6) < 0.6).to(mask_dtype)
    mask[:, 0] = 1
    mask[3] = 0
    mask[4] = 0
    with pytest.raises(padding.NoRealTokensError, match="attention_mask row 3 marks no token as real"):
        padding.unpad_input(torch.randn(5, 6, 3), mask, allow_empty_rows=False)
    mask[3:] = 1
    packed, _, cu_seqlens, _ = padding.unpad_input(torch.randn(5, 6, 3), mask, allow_empty_rows=False)
    assert packed.shape == (int(mask.bool().sum()), 3) and cu_seqlens[-1] == packed.shape[0]


@pytest.mark.parametrize("value", [-float("inf"), 0.5, 2.0])
def test_unpad_names_a_mask_value_that_is_not_0_or_1(value: float) -> None:
    mask = torch.ones(2, 5)
    mask[1, 3] = value
    with pytest.raises(ValueError, match=f"attention_mask contains {value:g}"):
        padding.unpad_input(torch.randn(2, 5, 3), mask)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_unpad_reads_the_device_once_and_never_calls_nonzero(monkeypatch: pytest.MonkeyPatch,
                                                             mask_dtype: torch.dtype) -> None:
    """Every host read goes through tolist/item/int/bool; a sized nonzero_static replaces nonzero, whose
    output size is a host read of its own on CUDA."""
    reads: list[str] = []
    for name in ("tolist", "item", "__int__", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: object, _original=original, _name=name) -> object:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)

    def no_nonzero(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpad_input called torch.nonzero (a device sync on CUDA)")

    monkeypatch.setattr(torch, "nonzero", no_nonzero)
    monkeypatch.setattr(torch.Tensor, "nonzero", no_nonzero)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]]).to(mask_dtype)
    padding.unpad_input(torch.randn(2, 4, 3), mask)
    assert reads == ["tolist"]
    reads.clear()
    padding.unpad_input(torch.randn(2, 4, 3), mask, allow_empty_rows=False)  # checked in the same read
    assert reads == ["tolist"]


@pytest.mark.gpu
def test_unpad_syncs_once_on_cuda() -> None:
    """On a GPU, CUDA's sync debug mode fails every synchronising call except the one allowed read."""
    mask = torch.rand(8, 64, device="cuda") < 0.7
    hidden = torch.randn(8, 64, 16, device="cuda")
    original = torch.Tensor.tolist
    allowed = []

    def allowed_read(self: torch.Tensor) -> list:
        torch.cuda.set_sync_debug_mode(0)
        try:
            allowed.append(1)
            return original(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", allowed_read)
        torch.cuda.set_sync_debug_mode("error")
        try:
            packed, indices, _, max_seqlen = padding.unpad_input(hidden, mask)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert allowed == [1]
    torch.testing.assert_close(packed, hidden[mask], rtol=0, atol=0)
    assert max_seqlen == int(mask.sum(dim=1).max())
