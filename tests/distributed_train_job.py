"""A Trainer run for tests/test_distributed_training.py, in one process or under torchrun (gloo, CPU):
a tiny masked LM with fixed random weights trains a few steps on a fixed dataset; rank 0 saves the final
weights and every rank how many forwards took the packed path.

    python tests/distributed_train_job.py OUT_DIR PER_DEVICE_BATCH [fsdp]
    torchrun --nproc-per-node 2 tests/distributed_train_job.py OUT_DIR PER_DEVICE_BATCH [fsdp]
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from transformers import Trainer, TrainingArguments

import rembert_fast
from rembert_fast import packed
from rembert_fast.modeling import model as model_module

CONFIG = dict(
    vocab_size=211,
    hidden_size=48,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=60,
    input_embedding_size=20,
    output_embedding_size=28,
    max_position_embeddings=64,
    pad_token_id=0,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.0,
)
LENGTHS = (7, 12, 5, 9, 11, 6, 10, 8, 4, 12, 7, 9)


def dataset() -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(50)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(3, CONFIG["vocab_size"], (length,), generator=gen)
        labels = torch.where(torch.rand(length, generator=gen) < 0.4, ids, -100)
        labels[1] = ids[1]
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return rows


def pad(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.zeros(len(features), width, dtype=torch.long),
        "attention_mask": torch.zeros(len(features), width, dtype=torch.long),
        "labels": torch.full((len(features), width), -100),
    }
    for row, f in enumerate(features):
        batch["input_ids"][row, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        batch["attention_mask"][row, : len(f["input_ids"])] = 1
        batch["labels"][row, : len(f["labels"])] = torch.tensor(f["labels"])
    return batch


def main(out_dir: str, per_device_batch: int, fsdp: bool) -> None:
    torch.manual_seed(0)
    model = rembert_fast.RemBertForMaskedLM(rembert_fast.RemBertConfig(**CONFIG))
    packed_calls = []
    forward = packed.packed_encoder_forward

    def counting(*args, **kwargs):
        packed_calls.append(1)
        return forward(*args, **kwargs)

    model_module.packed.packed_encoder_forward = counting
    extra = (
        {"fsdp": "full_shard", "fsdp_config": {"transformer_layer_cls_to_wrap": ["RemBertLayer"]}}
        if fsdp
        else {}
    )
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",  # linear in the gradient (AdamW makes rounding noise of tiny gradients lr-sized)
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        logging_steps=1,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        **extra,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args, train_dataset=dataset(), data_collator=pad)
        trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as record:
        json.dump(
            {
                "packed_calls": len(packed_calls),
                "losses": losses,
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "wrappers": sorted(
                    {
                        type(m).__name__
                        for m in trainer.model_wrapped.modules()
                        if "FSDP" in type(m).__name__ or "DistributedDataParallel" in type(m).__name__
                    }
                ),
            },
            record,
        )
    state = trainer.accelerator.get_state_dict(trainer.model)
    if rank == 0:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(out_dir, "weights.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "fsdp")
