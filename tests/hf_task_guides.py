"""The six task guides transformers' RemBERT page points to, each step as the guide writes it, on tiny data.

One function per guide: sequence classification, token classification, question answering, causal and
masked language modeling, multiple choice (transformers' docs/source/en/tasks/*.md; the question-answering
preprocessing is the notebook's, in tests/hf_guides.py). Each takes `lib`, the module the guide imports
its RemBERT classes from (`transformers` or `rembert_fast`: the guide's import line), and `prepare`, applied
to every model the guide loads (`rembert_fast.optimize`, or nothing). Each returns the numbers a user would
look at: the per-step training losses, the evaluation loss, the logits of the guide's inference step and
its pipeline's output.

What is not the guides' own, and why: the data are `Dataset.from_dict` rows instead of the Hub's datasets;
the checkpoint is a local directory of tiny random weights; the `evaluate` metrics (accuracy, seqeval)
are computed by hand or left out; `TrainingArguments` run a few CPU steps without reporting or pushing
(`report_to=[]`, `use_cpu=True`, `logging_steps=1`); the pipelines are given the fine-tuned model and
tokenizer objects (a directory name would make transformers' Auto classes load transformers' model);
the question-answering guide's pipeline step is left out, as transformers 5 removed that pipeline (its
manual inference step, which the guide gives too, runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hf_guides
import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
    DefaultDataCollator,
    Trainer,
    TrainingArguments,
    pipeline,
)
from transformers.tokenization_utils_base import PaddingStrategy, PreTrainedTokenizerBase

Prepare = Callable[[Any], Any]


def training_args(output_dir: str, **overrides: Any) -> TrainingArguments:
    """The guides' TrainingArguments, sized for a few CPU steps.

    `adam_epsilon` is 1e-4, not 1e-8: some gradients are zero in exact arithmetic (the attention key bias,
    as softmax ignores a shift shared by all keys; the multiple-choice classifier bias, shared by all
    choices), so what is computed for them is rounding noise, which AdamW at eps=1e-8 turns into full
    learning-rate steps that differ between any two implementations. At 1e-4 those steps stay noise-sized.
    """
    options = dict(
        output_dir=output_dir,
        learning_rate=1e-3,
        adam_epsilon=1e-4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        num_train_epochs=2,
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        push_to_hub=False,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def _losses(trainer: Trainer, eval_metrics: dict[str, float]) -> dict[str, Any]:
    history = trainer.state.log_history
    return {
        "train_losses": [row["loss"] for row in history if "loss" in row],
        "epoch_eval_losses": [row["eval_loss"] for row in history if "eval_loss" in row],
        "eval_loss": eval_metrics["eval_loss"],
    }


# ------------------------------------------------------------------------------ sequence classification
IMDB = {
    "train": {"text": ["I loved this film, a wonderful story", "terrible acting and a boring plot",
                       "une belle histoire, bien jouée", "schlecht und viel zu lang",
                       "the best movie of the year", "I walked out after ten minutes",
                       "ein wunderbarer Film", "un film ennuyeux"],
              "label": [1, 0, 1, 0, 1, 0, 1, 0]},
    "test": {"text": ["a great film", "what a waste of time", "très bien", "nicht gut"],
             "label": [1, 0, 1, 0]},
}


def sequence_classification(lib, checkpoint: str, output_dir: str, prepare: Prepare) -> dict[str, Any]:
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)
    imdb = DatasetDict({split: Dataset.from_dict(rows) for split, rows in IMDB.items()})

    def preprocess_function(examples):
        return tokenizer(examples["text"], truncation=True)

    tokenized_imdb = imdb.map(preprocess_function, batched=True)
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return {"accuracy": float((predictions == labels).mean())}

    id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    model = prepare(lib.RemBertForSequenceClassification.from_pretrained(
        checkpoint, num_labels=2, id2label=id2label, label2id=label2id
    ))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=tokenized_imdb["train"],
        eval_dataset=tokenized_imdb["test"],
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    text = "This was a masterpiece. Not completely faithful to the books, but enthralling."
    model = prepare(lib.RemBertForSequenceClassification.from_pretrained(os.path.join(output_dir, "final")))
    classifier = pipeline("sentiment-analysis", model=model, tokenizer=tokenizer)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    predicted_class_id = logits.argmax().item()
    return dict(_losses(trainer, metrics), model=model, accuracy=metrics["eval_accuracy"], logits=logits,
                label=model.config.id2label[predicted_class_id], pipeline=classifier(text))


# ------------------------------------------------------------------------------- token classification
WNUT = {
    "train": {"tokens": [["Paris", "is", "in", "France"], ["Angela", "Merkel", "visited", "Berlin", "today"],
                         ["I", "use", "Firefox"], ["Marie", "lives", "in", "Lyon"],
                         ["the", "Rhine", "flows", "to", "Rotterdam"], ["hello", "world"],
                         ["Google", "bought", "YouTube"], ["nothing", "here", "at", "all"]],
              "ner_tags": [[5, 0, 0, 5], [3, 4, 0, 5, 0], [0, 0, 1], [3, 0, 0, 5], [0, 5, 0, 0, 5], [0, 0],
                           [1, 0, 1], [0, 0, 0, 0]]},
    "test": {"tokens": [["Berlin", "is", "big"], ["Jean", "Dupont", "works", "at", "Renault"]],
             "ner_tags": [[5, 0, 0], [3, 4, 0, 0, 1]]},
}
WNUT_LABELS = ["O", "B-corporation", "I-corporation", "B-person", "I-person", "B-location"]


def token_classification(lib, checkpoint: str, output_dir: str, prepare: Prepare,
                         flatten: bool = False) -> dict[str, Any]:
    """`flatten=True`: transformers' padding-free collator instead of the guide's padding one (its -100
    on each sequence's first label falls on [CLS], which the guide's labels ignore already)."""
    wnut = DatasetDict({split: Dataset.from_dict(rows) for split, rows in WNUT.items()})
    label_list = WNUT_LABELS
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)
    hf_guides.tokenizer = tokenizer
    tokenized_wnut = wnut.map(hf_guides.tokenize_and_align_labels, batched=True)
    data_collator = (DataCollatorWithFlattening() if flatten
                     else DataCollatorForTokenClassification(tokenizer=tokenizer))

    id2label = dict(enumerate(label_list))
    label2id = {label: i for i, label in id2label.items()}
    model = prepare(lib.RemBertForTokenClassification.from_pretrained(
        checkpoint, num_labels=len(label_list), id2label=id2label, label2id=label2id
    ))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=tokenized_wnut["train"],
        eval_dataset=tokenized_wnut["test"],
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    text = "The Golden State Warriors are an American professional basketball team based in San Francisco."
    model = prepare(lib.RemBertForTokenClassification.from_pretrained(os.path.join(output_dir, "final")))
    classifier = pipeline("ner", model=model, tokenizer=tokenizer)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    predictions = torch.argmax(logits, dim=2)
    predicted_token_class = [model.config.id2label[t.item()] for t in predictions[0]]
    return dict(_losses(trainer, metrics), model=model, logits=logits, labels=predicted_token_class,
                pipeline=classifier(text),
                grouped=pipeline("ner", model=model, tokenizer=tokenizer, aggregation_strategy="simple")(
                    text))


# -------------------------------------------------------------------------------- question answering
SQUAD_CONTEXTS = [
    "Paris is the capital of France. It lies on the Seine and has many old bridges and museums.",
    "Der Rhein fließt von den Alpen bis zur Nordsee und ist einer der längsten Flüsse Europas.",
    "La tour Eiffel a été construite pour l'exposition universelle de 1889 à Paris.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun all day.",
]
SQUAD_QUESTIONS = ["What is the capital of France?", "Wohin fließt der Rhein?",
                   "Quand la tour a-t-elle été construite?", "What does the fox jump over?"]
SQUAD_ANSWERS = ["Paris", "bis zur Nordsee", "1889", "the lazy dog"]


def _squad(rows: range) -> dict[str, list]:
    contexts = [SQUAD_CONTEXTS[i % 4] for i in rows]
    answers = [SQUAD_ANSWERS[i % 4] for i in rows]
    return {"id": [str(i) for i in rows], "question": [" " + SQUAD_QUESTIONS[i % 4] for i in rows],
            "context": contexts,
            "answers": [{"text": [a], "answer_start": [c.index(a)]} for a, c in zip(answers, contexts,
                                                                                   strict=True)]}


def question_answering(lib, checkpoint: str, output_dir: str, prepare: Prepare) -> dict[str, Any]:
    squad = DatasetDict({"train": Dataset.from_dict(_squad(range(8))),
                         "validation": Dataset.from_dict(_squad(range(8, 12)))})
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)
    hf_guides.tokenizer, hf_guides.pad_on_right = tokenizer, tokenizer.padding_side == "right"
    hf_guides.max_length, hf_guides.doc_stride = 48, 8
    tokenized_squad = squad.map(hf_guides.prepare_train_features, batched=True,
                                remove_columns=squad["train"].column_names)
    data_collator = DefaultDataCollator()

    model = prepare(lib.RemBertForQuestionAnswering.from_pretrained(checkpoint))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=tokenized_squad["train"],
        eval_dataset=tokenized_squad["validation"],
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    question = "How many programming languages does BLOOM support?"
    context = ("BLOOM has 176 billion parameters and can generate text in 46 languages and 13 programming "
               "languages.")
    model = prepare(lib.RemBertForQuestionAnswering.from_pretrained(os.path.join(output_dir, "final")))
    inputs = tokenizer(question, context, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    answer_start_index = outputs.start_logits.argmax()
    answer_end_index = outputs.end_logits.argmax()
    predict_answer_tokens = inputs.input_ids[0, answer_start_index : answer_end_index + 1]
    return dict(_losses(trainer, metrics), model=model, logits=(outputs.start_logits, outputs.end_logits),
                answer=tokenizer.decode(predict_answer_tokens))


# --------------------------------------------------------------------------- causal and masked LM data
ELI5 = {
    "train": {"answers": [{"text": ["The sky is blue because air scatters blue light more than red light.",
                                    "Sunsets are red for the same reason."]},
                          {"text": ["Ice floats because it is less dense than water."]},
                          {"text": ["Le ciel est bleu à cause de la diffusion de la lumière.",
                                    "Die Sonne geht im Westen unter."]},
                          {"text": ["Cats purr when they are happy, and sometimes when they are hurt."]}]},
    "test": {"answers": [{"text": ["Water boils at a lower temperature in the mountains."]},
                         {"text": ["Les chats dorment beaucoup pendant la journée."]}]},
}
block_size = 16


def group_texts(examples):
    # Concatenate all texts.
    concatenated_examples = {k: sum(examples[k], []) for k in examples.keys()}
    total_length = len(concatenated_examples[list(examples.keys())[0]])
    # We drop the small remainder, we could add padding if the model supported it instead of this drop, you
    # can customize this part to your needs.
    if total_length >= block_size:
        total_length = (total_length // block_size) * block_size
    # Split by chunks of block_size.
    result = {
        k: [t[i : i + block_size] for i in range(0, total_length, block_size)]
        for k, t in concatenated_examples.items()
    }
    return result


def _lm_dataset(tokenizer) -> DatasetDict:
    eli5 = DatasetDict({split: Dataset.from_dict(rows) for split, rows in ELI5.items()})
    eli5 = eli5.flatten()

    def preprocess_function(examples):
        return tokenizer([" ".join(x) for x in examples["answers.text"]])

    tokenized_eli5 = eli5.map(preprocess_function, batched=True, remove_columns=eli5["train"].column_names)
    return tokenized_eli5.map(group_texts, batched=True)


def causal_language_modeling(lib, checkpoint: str, output_dir: str, prepare: Prepare) -> dict[str, Any]:
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)
    lm_dataset = _lm_dataset(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    data_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)

    model = prepare(lib.RemBertForCausalLM.from_pretrained(checkpoint))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=lm_dataset["train"],
        eval_dataset=lm_dataset["test"],
        data_collator=data_collator,
        processing_class=tokenizer,
    )
    trainer.train()
    eval_results = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    prompt = "The sky is blue because"
    model = prepare(lib.RemBertForCausalLM.from_pretrained(os.path.join(output_dir, "final")))
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    generated = generator(prompt, max_new_tokens=8, do_sample=False)
    inputs = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(inputs).logits
    torch.manual_seed(0)
    outputs = model.generate(inputs, max_new_tokens=8, do_sample=True, top_k=50, top_p=0.95)
    return dict(_losses(trainer, eval_results), model=model, logits=logits, pipeline=generated,
                sampled=tokenizer.batch_decode(outputs, skip_special_tokens=True))


def masked_language_modeling(lib, checkpoint: str, output_dir: str, prepare: Prepare) -> dict[str, Any]:
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)
    lm_dataset = _lm_dataset(tokenizer)
    data_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)

    model = prepare(lib.RemBertForMaskedLM.from_pretrained(checkpoint))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=lm_dataset["train"],
        eval_dataset=lm_dataset["test"],
        data_collator=data_collator,
    )
    trainer.train()
    eval_results = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    text = f"The sky is {tokenizer.mask_token} because air scatters light."
    model = prepare(lib.RemBertForMaskedLM.from_pretrained(os.path.join(output_dir, "final")))
    mask_filler = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    inputs = tokenizer(text, return_tensors="pt")
    mask_token_index = torch.where(inputs["input_ids"] == tokenizer.mask_token_id)[1]
    with torch.no_grad():
        logits = model(**inputs).logits
    mask_token_logits = logits[0, mask_token_index, :]
    top_3_tokens = torch.topk(mask_token_logits, 3, dim=1).indices[0].tolist()
    return dict(_losses(trainer, eval_results), model=model, logits=logits,
                top_3=[tokenizer.decode([t]) for t in top_3_tokens], pipeline=mask_filler(text, top_k=3))


# ----------------------------------------------------------------------------------- multiple choice
SWAG = {
    "train": {"sent1": ["A man sits at a piano.", "The dog runs to the door.", "Elle ouvre le livre.",
                        "Der Zug fährt ab.", "She picks up the phone.", "The chef cuts onions.",
                        "Il pleut dehors.", "The kids open their presents."],
              "sent2": ["He", "It", "Elle", "Die", "She", "He", "Les", "They"],
              "ending0": ["plays a song.", "barks at the mailman.", "lit la première page.", "Leute winken.",
                          "calls her mother.", "starts crying.", "gens ouvrent leurs parapluies.",
                          "shout with joy."],
              "ending1": ["eats the piano.", "flies away.", "mange le livre.", "Sonne fällt.",
                          "throws it in the sea.", "eats the knife.", "arbres dansent.", "fall asleep."],
              "ending2": ["closes the lid.", "sleeps.", "le ferme.", "Tür geht auf.", "drops it.",
                          "leaves.", "enfants rient.", "look sad."],
              "ending3": ["sings loudly.", "sits down.", "pleure.", "Kinder lachen.", "smiles.", "sings.",
                          "voitures volent.", "run outside."],
              "label": [0, 0, 0, 0, 0, 2, 0, 0]},
    "test": {"sent1": ["A woman enters the kitchen.", "Le chat voit une souris."],
             "sent2": ["She", "Il"],
             "ending0": ["makes coffee.", "la poursuit."], "ending1": ["turns into a bird.", "chante."],
             "ending2": ["leaves again.", "dort."], "ending3": ["sits down.", "s'envole."],
             "label": [0, 0]},
}
ending_names = ["ending0", "ending1", "ending2", "ending3"]


@dataclass
class DataCollatorForMultipleChoice:
    """
    Data collator that will dynamically pad the inputs for multiple choice received.
    """

    tokenizer: PreTrainedTokenizerBase
    padding: bool | str | PaddingStrategy = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, features):
        label_name = "label" if "label" in features[0].keys() else "labels"
        labels = [feature.pop(label_name) for feature in features]
        batch_size = len(features)
        num_choices = len(features[0]["input_ids"])
        flattened_features = [
            [{k: v[i] for k, v in feature.items()} for i in range(num_choices)] for feature in features
        ]
        flattened_features = sum(flattened_features, [])

        batch = self.tokenizer.pad(
            flattened_features,
            padding=self.padding,
            max_length=self.max_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )

        batch = {k: v.view(batch_size, num_choices, -1) for k, v in batch.items()}
        batch["labels"] = torch.tensor(labels, dtype=torch.int64)
        return batch


def multiple_choice(lib, checkpoint: str, output_dir: str, prepare: Prepare) -> dict[str, Any]:
    swag = DatasetDict({split: Dataset.from_dict(rows) for split, rows in SWAG.items()})
    tokenizer = lib.RemBertTokenizerFast.from_pretrained(checkpoint)

    def preprocess_function(examples):
        first_sentences = [[context] * 4 for context in examples["sent1"]]
        question_headers = examples["sent2"]
        second_sentences = [
            [f"{header} {examples[end][i]}" for end in ending_names]
            for i, header in enumerate(question_headers)
        ]

        first_sentences = sum(first_sentences, [])
        second_sentences = sum(second_sentences, [])

        tokenized_examples = tokenizer(first_sentences, second_sentences, truncation=True)
        return {k: [v[i : i + 4] for i in range(0, len(v), 4)] for k, v in tokenized_examples.items()}

    tokenized_swag = swag.map(preprocess_function, batched=True)

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return {"accuracy": float((predictions == labels).mean())}

    model = prepare(lib.RemBertForMultipleChoice.from_pretrained(checkpoint))
    trainer = Trainer(
        model=model,
        args=training_args(output_dir),
        train_dataset=tokenized_swag["train"],
        eval_dataset=tokenized_swag["test"],
        processing_class=tokenizer,
        data_collator=DataCollatorForMultipleChoice(tokenizer=tokenizer),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(output_dir, "final"))

    prompt = "France has a bread law, Le Décret Pain, with strict rules on what is allowed in a baguette."
    candidate1 = "The law does not apply to croissants and brioche."
    candidate2 = "The law applies to baguettes."
    model = prepare(lib.RemBertForMultipleChoice.from_pretrained(os.path.join(output_dir, "final")))
    inputs = tokenizer([[prompt, candidate1], [prompt, candidate2]], return_tensors="pt", padding=True)
    labels = torch.tensor(0).unsqueeze(0)
    with torch.no_grad():
        outputs = model(**{k: v.unsqueeze(0) for k, v in inputs.items()}, labels=labels)
    logits = outputs.logits
    return dict(_losses(trainer, metrics), model=model, accuracy=metrics["eval_accuracy"], logits=logits,
                loss=outputs.loss, predicted_class=logits.argmax().item())


GUIDES = {
    "sequence_classification": (sequence_classification, "RemBertForSequenceClassification", {}),
    "token_classification": (token_classification, "RemBertForTokenClassification", {}),
    "question_answering": (question_answering, "RemBertForQuestionAnswering", {}),
    "causal_language_modeling": (causal_language_modeling, "RemBertForCausalLM", {"is_decoder": True}),
    "masked_language_modeling": (masked_language_modeling, "RemBertForMaskedLM", {}),
    "multiple_choice": (multiple_choice, "RemBertForMultipleChoice", {}),
}
