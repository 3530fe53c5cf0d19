"""Final step of `make demo`: summarize the run and try the exported model with the fill-mask pipeline."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PROMPTS = [
    "The capital of France is {mask}.",
    "He was born in the United {mask}.",
    "The film was directed by Steven {mask}.",
]


def _records(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def loss_summary(metrics: Path) -> str:
    rows = [r for r in _records(metrics) if "loss" in r]
    if not rows:
        return "no metrics logged"
    first, last = rows[0], rows[-1]
    return (
        f"loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']}), "
        f"{last['tokens_seen']:,} tokens, {last['tokens_per_sec']:,.0f} tok/s at the end"
    )


def concept_summary(metrics: Path) -> str:
    """The last live concept-health record (megaconcept.train.analysis), held-out batch."""
    rows = [r for r in _records(metrics) if "concepts/effective_rank" in r]
    if not rows:
        return "not measured (analysis.interval=0)"
    r = rows[-1]
    loss = f"held-out MLM loss {r['heldout_loss']:.3f}, " if "heldout_loss" in r else ""
    return (f"step {r['step']}: {loss}effective rank {r['concepts/effective_rank']:.1f} of {r['concepts/num_concepts']:.0f} "
            f"concepts, mean pairwise cosine {r['concepts/mean_pairwise_cosine']:.3f}, "
            f"uniformity {r['concepts/uniformity']:.3f} (held-out batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--shards", required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import pipeline

    fill = pipeline("fill-mask", model=args.export_dir, trust_remote_code=True)
    print("\n== megaconcept demo ==")
    print(f"shards      : {args.shards} (manifest.json)")
    print(f"run         : {args.run_dir} (config.yaml, metrics.jsonl, checkpoints/)")
    print(f"training    : {loss_summary(Path(args.run_dir) / 'metrics.jsonl')}")
    print(f"concepts    : {concept_summary(Path(args.run_dir) / 'metrics.jsonl')}")
    print(f"HF export   : {args.export_dir} (AutoModelForMaskedLM, trust_remote_code=True)")
    for prompt in PROMPTS:
        text = prompt.format(mask=fill.tokenizer.mask_token)
        guesses = ", ".join(f"{p['token_str']!r} {p['score']:.2f}" for p in fill(text, top_k=3))
        print(f"fill-mask   : {text!r} -> {guesses}")


if __name__ == "__main__":
    main()
