"""Fine-tune an exported concept encoder on one classification/regression task with the HF Trainer and
return dev-set predictions."""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from megaconcept.model.classification import POOLINGS

from .common import encode, finite_positive_float, load_model, load_tokenizer, positive_int, sequence_length
from .glue_data import TaskData, TaskSpec


@dataclass(frozen=True)
class FinetuneConfig:
    lr: float = 1e-4
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    pooling: str = "mean"
    """classifier_pooling: mean | attention | decoder (megaconcept/model/classification.py)."""
    source: str = "hub"
    """hub | local | stand-in"""
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    trust_remote_code: bool = False
    """Whether the model folder's code may run (evals.common.trust_remote_code decides)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        d = FinetuneConfig()
        p.add_argument("--lr", type=finite_positive_float, default=d.lr)
        p.add_argument("--epochs", type=finite_positive_float, default=d.epochs)
        p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
        p.add_argument("--max-length", type=sequence_length, default=d.max_length,
                       help="tokens per example incl. separators")
        p.add_argument("--pooling", default=d.pooling, choices=POOLINGS.keys(),
                       help="how concepts become the classifier's input")

    @classmethod
    def from_args(cls, args: argparse.Namespace, trust_remote_code: bool) -> "FinetuneConfig":
        source = "stand-in" if args.stand_in else "local" if args.data_dir else "hub"
        return cls(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                   pooling=args.pooling, source=source, data_dir=args.data_dir, limit=args.limit,
                   trust_remote_code=trust_remote_code)


def _dataset(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, regression: bool) -> Any:
    from datasets import Dataset

    encoded = [{**encode(tokenizer, r["text_a"], r["text_b"], max_length),
                "labels": float(r["label"]) if regression else int(r["label"])} for r in rows]
    return Dataset.from_list(encoded)


def training_args(cfg: FinetuneConfig, seed: int, steps_per_epoch: int, work_dir: str) -> Any:
    """Trainer arguments for one fine-tuning run (GLUE and SCROLLS qasper): linear warmup/decay, no saving."""
    import torch
    from transformers import TrainingArguments

    total = max(1, round(cfg.epochs * steps_per_epoch))
    return TrainingArguments(
        output_dir=work_dir, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, warmup_steps=int(cfg.warmup_ratio * total),
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", seed=seed, data_seed=seed, report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), dataloader_num_workers=0,
    )


def finetune(model_dir: Path, init_dir: Path, spec: TaskSpec, data: TaskData, seed: int, cfg: FinetuneConfig,
             keep: Optional[Path] = None) -> dict[str, tuple[list, list]]:
    """Fine-tune from `init_dir` (the export, or an MNLI-tuned model) -> {dev split: (predictions, labels)}.
    `keep` saves the fine-tuned model (the MNLI starting point for the small tasks)."""
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from transformers.utils import logging as hf_logging

    # The load report lists the fresh head and the unused MLM decoder on every seed; expected, so quiet.
    hf_logging.set_verbosity_error()
    set_seed(seed)
    tokenizer = load_tokenizer(model_dir, cfg.trust_remote_code)
    regression = spec.num_labels == 1
    # An MNLI-tuned start was written by this run from the export's own code: the export's decision holds.
    model = load_model("AutoModelForSequenceClassification", init_dir, cfg.trust_remote_code,
                       num_labels=spec.num_labels, classifier_pooling=cfg.pooling,
                       # From an MNLI-tuned model the 3-way output layer is replaced by this task's.
                       ignore_mismatched_sizes=init_dir != model_dir)
    train = _dataset(tokenizer, data.train, cfg.max_length, regression)
    steps = -(-len(train) // cfg.batch_size)
    with tempfile.TemporaryDirectory(prefix="megaconcept-glue-") as work:
        trainer = Trainer(model=model, args=training_args(cfg, seed, steps, work), train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        out = {}
        for split, rows in data.dev.items():
            logits = trainer.predict(_dataset(tokenizer, rows, cfg.max_length, regression)).predictions
            preds = logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
            out[split] = (preds, [r["label"] for r in rows])
    if keep is not None:
        model.save_pretrained(str(keep))
        tokenizer.save_pretrained(str(keep))
    return out
