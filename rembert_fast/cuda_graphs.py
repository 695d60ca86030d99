"""CUDA graphs for the packed encoder: one captured forward per bucket, replayed for every batch that fits.

Small batches spend more time launching ~10 kernels per layer than computing them; a CUDA graph
replays the whole encoder with one launch. A graph needs static shapes, so a batch is packed on the
host (real tokens only, as the fast path does) and padded up to a bucket:

    key = (token bucket >= T real tokens, seqlen bucket >= longest sequence, batch bucket >= B)
    static buffers: ids, position ids, token types (T_bucket,), cu_seqlens (B_bucket + D + 1,)

The tokens past T belong to *dummy sequences* of at most `seqlen bucket` tokens each, every one with
its own cu_seqlens entry, so attention never mixes them with real tokens and `max_seqlen` (a launch
parameter baked into the graph) stays a true upper bound; unused cu_seqlens entries repeat the end,
i.e. empty sequences, whose attention programs exit at once. Dummy rows are computed and dropped.
`max_seqlen` is the bucket, known on the host: no device sync for it.

Before a bucket is captured, every dispatch decision its forward needs is made for its shapes
(`ops.tune.decide_ahead`: probe, timing, choice), so nothing is probed or timed inside the capture.
Each bucket is then warmed up once on a side stream (Triton autotunes there, once per bucket, never per
shape) and captured; later batches only copy their packed ids in (one host-to-device copy of a
pinned staging buffer) and replay. All graphs share one memory pool: safe because replays are
sequential and each replay's output is copied out before the next one.

Batches that fit no bucket and a model on the CPU run the same packed forward eagerly, with exact
shapes. Whatever serves each op is captured: the Triton kernels, the extension, and the eager paths
(attention's eager reference and its SDPA competitors find every row from the offsets on the device,
with no host read). Threads may share a runner (`optimize` keeps
one per model): a lock serialises the bucketed runs, whose buffers are shared, provided the threads
also share the CUDA stream (as they do unless they set one). A runner holds pointers to the model's
weights: after moving or re-casting the model (`.to(...)`) the runner notices and captures again;
in-place weight updates are seen by the graphs as they are.

A capture that fails (an op in the forward that CUDA cannot record, such as a host sync) warns once
and leaves the runner eager for every bucket not yet captured: the answers stay right, only the launch
savings are lost; `capture_error` says why. Warm-up errors (out of memory, a kernel that fails to
compile) are real errors and are raised. A copy of a runner (`copy.deepcopy`, pickle, or a deep copy of
a model `optimize` patched) starts with no graphs and captures its own.
"""

from __future__ import annotations

import bisect
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rembert_fast import capture_failure, ops
from rembert_fast.ops import tune
from rembert_fast.packed import EncodedBatch, encode_rows

DEFAULT_TOKEN_BUCKETS = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
DEFAULT_SEQLEN_BUCKETS = (32, 64, 128, 256, 512)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _base_model(model: Any) -> Any:
    """The encoder-holding module: the model itself, or a head's `.rembert`."""
    base = getattr(model, "rembert", model)
    for name in ("embeddings", "encoder", "config"):
        if not hasattr(base, name):
            raise TypeError(f"{type(model).__name__} has no RemBERT `{name}`; CudaGraphRunner needs a "
                            "RemBertModel (rembert_fast's or transformers') or one of its heads")
    return base


@dataclass
class HostBatch:
    """The packed inputs of a batch built on the host (int64 CPU tensors), for callers that lay them out
    in buffers of their own before the device sees them (the CUDA-graph runner). Built by
    `pack_on_host`."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    types: torch.Tensor  # (T,)
    indices: torch.Tensor  # (T,) flat indices into batch * seqlen
    lengths: torch.Tensor  # (B,) real tokens per sequence
    batch: int
    seqlen: int

    @property
    def tokens(self) -> int:
        return self.ids.numel()

    @property
    def max_seqlen(self) -> int:
        return int(self.lengths.max()) if self.batch else 0


def pack_on_host(
    config: Any,  # RemBertConfig (ours or transformers'): the tables' sizes
    input_ids: torch.Tensor,  # (B, L) int
    attention_mask: torch.Tensor | None = None,  # (B, L), non-zero = real token; None = all real
    token_type_ids: torch.Tensor | None = None,  # (B, L) or None (zeros)
    position_ids: torch.Tensor | None = None,  # (B, L) or (1, L) or None (the column index)
) -> HostBatch:
    """Pack the real tokens of a batch on the CPU and check every id against its table.

    Inputs on a GPU are copied to the host first (one sync); inputs from a tokenizer cost none.
    Position ids default to the column index, as in transformers, so left padding keeps its positions.
    Raises ValueError naming a bad shape or the first id outside its table.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
    batch, seqlen = input_ids.shape
    ids = input_ids.to("cpu", torch.int64)
    mask = (torch.ones(batch, seqlen, dtype=torch.bool) if attention_mask is None
            else attention_mask.to("cpu").bool())
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; input_ids has {tuple(ids.shape)}")
    indices = mask.flatten().nonzero().flatten()
    if position_ids is None:
        positions = indices % seqlen
    else:
        positions = position_ids.to("cpu", torch.int64).expand(batch, seqlen).flatten()[indices]
    types = (torch.zeros_like(indices) if token_type_ids is None
             else token_type_ids.to("cpu", torch.int64).expand(batch, seqlen).flatten()[indices])
    packed = ids.flatten()[indices]
    ops.check_ids("input_ids", packed, config.vocab_size, "vocab_size")
    ops.check_ids("position_ids", positions, config.max_position_embeddings, "max_position_embeddings")
    ops.check_ids("token_type_ids", types, config.type_vocab_size, "type_vocab_size")
    return HostBatch(packed, positions, types, indices, mask.sum(dim=1), batch, seqlen)


def encode_packed(
    model: Any,  # a RemBertModel (rembert_fast's or transformers')
    ids: torch.Tensor,  # (T,) int token ids, already range-checked
    positions: torch.Tensor,  # (T,) int
    types: torch.Tensor,  # (T,) int
    cu_seqlens: torch.Tensor,  # (N+1,) int32, may describe dummy and empty sequences
    max_seqlen: int,  # an upper bound of the sequence lengths
) -> torch.Tensor:
    """The packed path's embeddings and layers (`packed.encode_rows`) on rows checked on the host;
    (T, hidden). No host sync, so it can be captured."""
    return encode_rows(model.embeddings, model.encoder, model.config, ids.long(), types.long(),
                       positions.long(), cu_seqlens, max_seqlen, ids_checked=True)


def _bucket(value: int, buckets: Sequence[int]) -> int | None:
    i = bisect.bisect_left(buckets, value)
    return buckets[i] if i < len(buckets) else None


class _Graph:
    """One bucket: static device inputs, a pinned staging buffer, the captured graph and its output."""

    def __init__(self, tokens: int, max_seqlen: int, batch: int) -> None:
        self.tokens, self.max_seqlen, self.batch = tokens, max_seqlen, batch
        # Dummy sequences fill tokens past T in chunks of at most max_seqlen.
        self.slots = batch + math.ceil(tokens / max_seqlen)
        # One int32 layout for ids | positions | types | cu_seqlens | indices, so a batch is one copy.
        self.size = 4 * tokens + self.slots + 1
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: torch.Tensor | None = None
        self.staging: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None
        self.output: torch.Tensor | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.tokens, self.max_seqlen, self.batch)

    def views(self, buffer: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = self.tokens
        return (buffer[:t], buffer[t:2 * t], buffer[2 * t:3 * t], buffer[3 * t:3 * t + self.slots + 1],
                buffer[3 * t + self.slots + 1:])

    def fill(self, buffer: torch.Tensor, host: HostBatch) -> None:
        """Write a batch into a host or device buffer of this layout (dummy tokens: id 0, position 0)."""
        ids, positions, types, cu, indices = self.views(buffer)
        n = host.tokens
        for dst, src in ((ids, host.ids), (positions, host.positions), (types, host.types),
                         (indices, host.indices)):
            dst[:n] = src
            dst[n:] = 0
        real = torch.cumsum(host.lengths, 0)
        dummy = torch.tensor(range(n + self.max_seqlen, self.tokens, self.max_seqlen), dtype=torch.int64)
        ends = torch.cat((real, dummy, torch.tensor([self.tokens])))
        cu[0] = 0
        cu[1:1 + ends.numel()] = ends
        cu[1 + ends.numel():] = self.tokens


class CudaGraphRunner:
    """Run a RemBERT encoder on packed batches, through a CUDA graph per bucket when the batch fits.

    Args:
        model: a RemBertModel (rembert_fast's, or a transformers one; a head's `.rembert` is used), in
            eval mode, on its final device and dtype.
        token_buckets: sizes T is rounded up to (ascending); batches with more real tokens run eagerly.
        seqlen_buckets: sizes the longest sequence is rounded up to (ascending).
        batch_buckets: sizes the number of sequences is rounded up to (ascending).
        use_graphs: capture and replay graphs (default: when the model is on CUDA). With False the
            bucketed shapes still run, eagerly (what the CPU tests exercise).

    Call it like the model's encoder: `runner(input_ids, attention_mask, token_type_ids, position_ids)`
    returns a `EncodedBatch`.
    """

    def __init__(
        self,
        model: Any,
        token_buckets: Sequence[int] = DEFAULT_TOKEN_BUCKETS,
        seqlen_buckets: Sequence[int] = DEFAULT_SEQLEN_BUCKETS,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        use_graphs: bool | None = None,
    ) -> None:
        self.model = _base_model(model)
        for name, buckets in (("token_buckets", token_buckets), ("seqlen_buckets", seqlen_buckets),
                              ("batch_buckets", batch_buckets)):
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
                raise ValueError(f"{name}={tuple(buckets)} must be distinct positive sizes, ascending")
        self.token_buckets = tuple(token_buckets)
        self.seqlen_buckets = tuple(seqlen_buckets)
        self.batch_buckets = tuple(batch_buckets)
        device = self._device()
        if use_graphs and device.type != "cuda":
            raise ValueError(f"use_graphs=True needs the model on a CUDA device; it is on {device}")
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self._graphs: dict[tuple[int, int, int], _Graph] = {}
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None
        # Two threads in one bucket would refill its staging and static buffers under each other's replay.
        self._lock = threading.Lock()
        self._weights = self._weights_key()
        self.capture_error: str | None = None

    # ------------------------------------------------------------------ public
    def bucket(self, tokens: int, max_seqlen: int, batch: int) -> tuple[int, int, int] | None:
        """The (tokens, max_seqlen, batch) bucket a batch runs in, or None when it runs eagerly."""
        key = (_bucket(tokens, self.token_buckets), _bucket(max_seqlen, self.seqlen_buckets),
               _bucket(batch, self.batch_buckets))
        return None if None in key else key  # type: ignore[return-value]

    @property
    def captured(self) -> list[tuple[int, int, int]]:
        """The buckets captured so far."""
        return [key for key, g in self._graphs.items() if g.graph is not None]

    def reset(self) -> None:
        """Drop every graph (they are captured again on demand, and a failed capture is tried again)."""
        self._graphs.clear()
        self._pool = None
        self._stream = None
        self.capture_error = None

    def __getstate__(self) -> dict[str, Any]:
        # Graphs, their memory pool, stream and lock belong to this process and to these weights: a copy
        # captures its own. The weights key is taken on the copy's first call, since a deep copy of a
        # patched model reaches this runner before the model's own parameters are restored.
        state = self.__dict__.copy()
        state.update(_graphs={}, _pool=None, _stream=None, _lock=None, _weights=None, capture_error=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L)
        token_type_ids: torch.Tensor | None = None,  # (B, L)
        position_ids: torch.Tensor | None = None,  # (B, L) or (1, L)
    ) -> EncodedBatch:
        host = pack_on_host(self.model.config, input_ids, attention_mask, token_type_ids, position_ids)
        key = self.bucket(host.tokens, host.max_seqlen, host.batch)
        if host.tokens == 0 or key is None:
            return self._eager(host)
        with self._lock:
            if self._weights_key() != self._weights:
                self.reset()
                self._weights = self._weights_key()
            # A capture failed earlier (buckets captured before it still replay).
            if self.use_graphs and self.capture_error is not None and key not in self._graphs:
                return self._eager(host)
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = _Graph(*key)
            packed = self._run_bucket(graph, host)
            # The first run may build derived weights (a transformers model's fused QKV buffer, made on
            # first use): the graphs read those now, so they are not a re-cast model on the next call.
            self._weights = self._weights_key()
            return packed

    # ------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        return self.model.embeddings.word_embeddings.weight.device

    def _weights_key(self) -> tuple[Any, ...]:
        # Moving or re-casting the model allocates new weights; the graphs would still read the old.
        layers = self.model.encoder.layer
        probes = (self.model.embeddings.word_embeddings.weight, layers[0].attention.self.query.weight,
                  layers[-1].output.dense.weight)
        return tuple((p.data_ptr(), p.dtype, p.device) for p in probes)

    def _eager(self, host: HostBatch) -> EncodedBatch:
        device = self._device()
        cu = torch.nn.functional.pad(torch.cumsum(host.lengths, 0), (1, 0)).to(device, torch.int32)
        if host.tokens == 0:
            hidden = self.model.embeddings.word_embeddings.weight.new_zeros(0, self.model.config.hidden_size)
        else:
            hidden = encode_packed(self.model, host.ids.to(device), host.positions.to(device),
                                   host.types.to(device), cu, host.max_seqlen)
        return EncodedBatch(hidden, host.indices.to(device), cu, host.max_seqlen, host.batch, host.seqlen)

    def _decide_before_capture(self, graph: _Graph) -> None:
        """Every dispatch decision the bucket's forward needs, made now (probe, timing): inside the capture
        each op finds its decision made and nothing is probed or timed."""
        dtype = self.model.encoder.layer[0].attention.self.query.weight.dtype
        tune.decide_ahead(tune.shapes_of_config(self.model.config), graph.tokens, graph.max_seqlen,
                          self._device(), dtype)

    def _body(self, graph: _Graph, static: torch.Tensor) -> torch.Tensor:
        ids, positions, types, cu, _ = graph.views(static)
        return encode_packed(self.model, ids, positions, types, cu, graph.max_seqlen)

    def _run_bucket(self, graph: _Graph, host: HostBatch) -> EncodedBatch:
        device = self._device()
        if not self.use_graphs:
            static = torch.empty(graph.size, dtype=torch.int32)
            graph.fill(static, host)
            static = static.to(device)
            hidden = self._body(graph, static)
        else:
            # The capture and the event use the current device's stream: make that the model's (for a model
            # on cuda:1 while cuda:0 is current, the event would be recorded on cuda:0 and the staging
            # buffer refilled before its copy to cuda:1 was done).
            with torch.cuda.device(device):
                if graph.graph is None:
                    self._capture(graph, device)
                if graph.graph is None:
                    del self._graphs[graph.key]
                    return self._eager(host)
                graph.copied.synchronize()  # the previous batch's copy out of the staging buffer is done
                graph.fill(graph.staging, host)
                graph.static.copy_(graph.staging, non_blocking=True)
                graph.copied.record()
                graph.graph.replay()
            static, hidden = graph.static, graph.output
        n = host.tokens
        _, _, _, cu, indices = graph.views(static)
        # Fresh tensors: the static buffers belong to the next replay.
        return EncodedBatch(hidden[:n].clone(), indices[:n].long(), cu[:host.batch + 1].clone(),
                            host.max_seqlen, host.batch, host.seqlen)

    def _capture(self, graph: _Graph, device: torch.device) -> None:
        if capture_failure.disabled_reason() is not None:  # an earlier failure left torch unable to capture
            self.capture_error = capture_failure.disabled_reason()
            return
        # Written in place by every later call: made outside inference mode, or a graph captured under
        # torch.inference_mode() would refuse the batches of a later torch.no_grad() call.
        with torch.inference_mode(False):
            graph.staging = torch.zeros(graph.size, dtype=torch.int32, pin_memory=True)
            graph.static = torch.zeros(graph.size, dtype=torch.int32, device=device)
        # A valid layout to warm up on: every token in dummy sequences.
        graph.fill(graph.staging, HostBatch(*(torch.zeros(0, dtype=torch.int64),) * 5, batch=0, seqlen=0))
        graph.static.copy_(graph.staging)
        graph.copied = torch.cuda.Event()
        graph.copied.record()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            # One side stream for every warm-up and capture: blocks a capture frees are reused by the next
            # one only on the same stream, and torch.cuda.graph's default stream is made once per process
            # on whichever device was current then.
            self._stream = torch.cuda.Stream(device)
        self._decide_before_capture(graph)
        side = self._stream
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            # Warm-up outside capture: Triton compiles and autotunes here, once per bucket; lazily
            # built state (the fused QKV weight) is created here too.
            for _ in range(2):
                self._body(graph, graph.static)
        torch.cuda.current_stream(device).wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls other threads make meanwhile (a data loader pinning memory, a
        # tokenizer thread) must not invalidate this capture; this thread's own unsafe calls still fail.
        caller_stream = torch.cuda.current_stream(device)
        try:
            with torch.cuda.graph(cuda_graph, pool=self._pool, stream=side,
                                  capture_error_mode="thread_local"):
                graph.output = self._body(graph, graph.static)
        except RuntimeError as error:  # torch's CUDA errors (and torch.AcceleratorError) are RuntimeErrors
            # torch.cuda.graph's exit ends the capture before it leaves the side stream: when ending the
            # capture raises too, this thread is left on the side stream. Back to the caller's.
            torch.cuda.set_stream(caller_stream)
            self.capture_error = f"{type(error).__name__}: {error}"
            graph.output = None
            if capture_failure.record_failure(self.capture_error) is not None:
                return  # capturing is off for the process: record_failure said so, once
            warnings.warn(f"rembert_fast: capturing a CUDA graph for bucket (tokens, max_seqlen, batch)="
                          f"{graph.key} failed ({self.capture_error}); batches run eagerly from now on "
                          "(same answers, without the graph's launch savings)", RuntimeWarning, stacklevel=2)
            return
        graph.graph = cuda_graph
