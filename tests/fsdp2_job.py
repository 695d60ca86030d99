"""FSDP2 for tests/test_distributed_training.py, under torchrun (gloo, CPU): `fully_shard` on every
RemBertLayer and on the masked LM; one training forward and backward against the same model unsharded.
Each rank writes the loss difference, the largest gradient difference and how many forwards took the
packed path.

    torchrun --standalone --nproc-per-node 2 tests/fsdp2_job.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import rembert_fast
from rembert_fast.modeling import model as model_module

CONFIG = dict(
    vocab_size=211,
    hidden_size=48,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=60,
    input_embedding_size=20,
    output_embedding_size=28,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    sharded = rembert_fast.RemBertForMaskedLM(rembert_fast.RemBertConfig(**CONFIG)).train()
    reference = rembert_fast.RemBertForMaskedLM(rembert_fast.RemBertConfig(**CONFIG)).train()
    reference.load_state_dict(sharded.state_dict())
    for layer in sharded.rembert.encoder.layer:
        fully_shard(layer)
    fully_shard(sharded)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, CONFIG["vocab_size"], (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    labels = torch.where((torch.rand(3, 11, generator=gen) < 0.5) & mask.bool(), ids, -100)
    calls = []
    forward = model_module.packed.packed_encoder_forward
    model_module.packed.packed_encoder_forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    loss = sharded(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    model_module.packed.packed_encoder_forward = forward
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
    grad_error = max((grads[n] - p.grad).abs().max().item() for n, p in reference.named_parameters())
    record = {
        "loss_error": abs(loss.item() - expected.item()),
        "grad_error": grad_error,
        "packed_calls": len(calls),
    }
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w", encoding="utf-8") as out:
        json.dump(record, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
