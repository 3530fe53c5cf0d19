"""`python -m evals.concepts --model HF_DIR --data SHARDS_OR_TEXT`: concept health of an exported encoder.

Runs the encoder over up to `--limit` inputs and reports, for all their concept vectors together, the metrics
of `megaconcept/analysis/concept_metrics.py` (effective rank, participation ratio, pairwise cosines,
uniformity, TwoNN dimension, ...; definitions there), the singular-value spectrum (`spectrum.png`) and how
the concepts share the tokens in the last concept layer's cross-attention:

  usage_c          share of real tokens whose top concept is c: for each token, the concept that puts the
                   largest (head-averaged) cross-attention weight on it; ties go to the lowest index
  dead concepts    concepts that are top for no token
  usage entropy    -sum_c usage_c log usage_c (nats); its exp is the effective number of used concepts
  attention entropy  per concept, the entropy of its head-averaged attention over a sample's real tokens
                   divided by log(real tokens), averaged over samples (1 = uniform, 0 = one token)

Slot-attention layers (model.concept_layer=slot) report each token's distribution over the concepts instead;
usage reads it as is (the concept that won the token), the attention entropy after normalising each concept's
row over the real tokens, which is the weighted mean the slot update takes (for cross-attention a no-op).

The attention weights are the exported model's own (`output_attentions=True`: each concept layer's exact
cross-attention softmax), of the last concept layer.
`--data` is a shard directory of `python -m data_prep.shard` (manifest.json + *.tar, each packed row one
input, cut to --max-length) or a text file: .txt (one document per line) or .jsonl (a "text" field per line),
tokenized with the exported tokenizer as pretraining saw documents (tokens + the document separator).
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .common import (EvalError, Report, add_model_arguments, check_length, check_model_dir, check_weights, encode,
                     json_kind, load_model, load_tokenizer, model_config, output_dir, positive_int, run_header,
                     sequence_length, trust_remote_code)
from .data_files import json_records, text_lines

TEXT_SUFFIXES = (".txt", ".jsonl")


def shard_rows(directory: Path, limit: int, max_length: int) -> list[list[int]]:
    """The first `limit` packed rows of a shard directory, each cut to `max_length` ids; checksums verified."""
    from megaconcept.data.shards import ShardError, read_manifest, read_shard

    rows: list[list[int]] = []
    try:
        manifest = read_manifest(str(directory))
        for index, info in enumerate(manifest.shards):
            shard = read_shard(manifest.shard_path(index), info.sha256, manifest.seq_len, info.samples)
            rows.extend(row[:max_length].tolist() for row in shard[: limit - len(rows)])
            if len(rows) >= limit:
                break
    except ShardError as exc:  # already one line naming the file and the fix
        raise EvalError(str(exc)) from None
    return rows


def text_documents(path: Path, limit: int) -> list[str]:
    """Up to `limit` non-blank documents: .txt lines, or the "text" field of .jsonl lines (read lazily)."""
    if path.suffix == ".txt":
        return [line for _, line in itertools.islice(text_lines(path), limit)]
    return [_jsonl_text(where, record) for where, record in itertools.islice(json_records(path), limit)]


def _jsonl_text(where: str, record: dict[str, Any]) -> str:
    if "text" not in record:
        raise EvalError(f"{where} lacks a \"text\" field (one document per line: {{\"text\": \"...\"}})")
    if not isinstance(record["text"], str):
        raise EvalError(f"{where}: \"text\" is {json_kind(record['text'])}, expected a string")
    return record["text"]


def load_rows(data: str, model_dir: Path, limit: int, max_length: int, trust: bool
              ) -> tuple[list[list[int]], dict[str, Any]]:
    """Token id rows to encode and a description of where they came from; EvalError for unusable data."""
    path = Path(data).expanduser()
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise EvalError(f"--data {data!r} is a directory without manifest.json; pass a shard directory "
                            f"(python -m data_prep.shard) or a {'/'.join(TEXT_SUFFIXES)} file")
        rows, kind = shard_rows(path, limit, max_length), "shards"
    elif not path.exists():
        raise EvalError(f"--data {data!r} does not exist; pass a shard directory or a {'/'.join(TEXT_SUFFIXES)} file")
    elif path.suffix not in TEXT_SUFFIXES:
        raise EvalError(f"--data {data!r}: unknown file type {path.suffix or '(none)'!r}; use a shard directory "
                        f"or a {'/'.join(TEXT_SUFFIXES)} file")
    else:
        tokenizer = load_tokenizer(model_dir, trust)
        rows = [encode(tokenizer, doc, None, max_length)["input_ids"] for doc in text_documents(path, limit)]
        kind = path.suffix[1:]
    if not rows:
        raise EvalError(f"--data {data!r} holds no documents")
    vocab = model_config(model_dir).vocab_size
    top = max(max(r) for r in rows if r)
    if top >= vocab:
        raise EvalError(f"--data {data!r} has token id {top} >= the model's vocab_size {vocab}: "
                        f"tokenized with another tokenizer")
    return rows, {"path": str(path.resolve()), "kind": kind, "samples": len(rows), "tokens": sum(map(len, rows))}


@dataclass
class Usage:
    """Running per-concept counts over batches of the last concept layer's cross-attention weights."""

    num_concepts: int
    top_tokens: list[int] = field(init=False)
    """Real tokens whose top concept is c, per concept."""
    entropy_sum: list[float] = field(init=False)
    """Normalized attention entropy per concept, summed over samples."""
    entropy_samples: int = 0

    def __post_init__(self) -> None:
        self.top_tokens = [0] * self.num_concepts
        self.entropy_sum = [0.0] * self.num_concepts

    def add(self, weights: Any, key_mask: Any) -> None:
        """weights (B, C, N) head-averaged attention of each concept over tokens; key_mask (B, N) or None."""
        import torch

        real = key_mask.bool() if key_mask is not None else weights.new_ones(weights[:, 0].shape, dtype=torch.bool)
        top = weights.argmax(dim=1)[real]  # (real tokens,) top concept of each token
        counts = torch.bincount(top, minlength=self.num_concepts).tolist()
        self.top_tokens = [a + b for a, b in zip(self.top_tokens, counts)]
        n_real = real.sum(dim=1)  # (B,)
        keep = n_real > 1  # one token: no spread to measure
        rows = weights.double().masked_fill(~real[:, None, :], 0.0)
        rows = rows / rows.sum(dim=2, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)  # over real tokens
        entropy = torch.special.entr(rows).sum(dim=2)[keep] / n_real[keep, None].log()  # (B', C), [0, 1]
        self.entropy_sum = [a + b for a, b in zip(self.entropy_sum, entropy.sum(dim=0).tolist())]
        self.entropy_samples += int(keep.sum())

    def summary(self) -> dict[str, Any]:
        """Usage shares (sum to 1), dead concepts, usage entropy (nats, / log C, exp) and attention entropy."""
        total = sum(self.top_tokens)
        shares = [n / total for n in self.top_tokens]
        entropy = -sum(u * math.log(u) for u in shares if u > 0)
        attention = [s / self.entropy_samples for s in self.entropy_sum] if self.entropy_samples else None
        return {"tokens": total, "per_concept": shares, "dead_concepts": sum(n == 0 for n in self.top_tokens),
                "entropy": entropy, "entropy_normalized": entropy / math.log(max(self.num_concepts, 2)),
                "perplexity": math.exp(entropy), "attention_entropy": attention,
                "mean_attention_entropy": sum(attention) / len(attention) if attention else None}


def encode_all(model_dir: Path, rows: list[list[int]], batch_size: int, trust: bool) -> tuple[Any, Usage]:
    """Concepts (S, C, D) of every row, float32 on CPU, and the cross-attention usage collected on the way."""
    import torch
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model("AutoModel", model_dir, trust).to(device).eval()
    usage = Usage(model.config.num_concepts)
    pad = 0  # any id: padded positions are masked out of the cross-attention
    chunks = []
    for start in tqdm(range(0, len(rows), batch_size), desc="encoding", unit="batch"):
        batch = rows[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=device)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        if not out.attentions:
            raise EvalError(f"{model_dir} returned no attention weights with output_attentions=True; "
                            f"concept usage cannot be measured")
        usage.add(out.attentions[-1].mean(dim=1), mask)  # (B, C, N) head-averaged, last concept layer
        chunks.append(out.last_hidden_state.float().cpu())
    return torch.cat(chunks), usage


def plot_spectrum(concepts: Any, path: Path) -> None:
    """Singular values of all concept vectors stacked (uncentered and centered), relative to the largest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megaconcept.analysis import concept_spectrum

    flat = concepts.flatten(0, 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    scale = float(concept_spectrum(flat)[0])  # the uncentered scale, as the metrics use (float noise is no variance)
    for center, label in ((False, "uncentered (global effective rank)"), (True, "centered (PCA)")):
        s = concept_spectrum(flat, center=center, scale=scale)
        s = s[s > 0]
        if len(s):
            ax.plot(range(1, len(s) + 1), (s / s[0]).tolist(), marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(f"concept spectrum: {flat.shape[0]} vectors, D = {flat.shape[1]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: a value that cannot be measured (see the metric docs) is written as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def write_results(out: Path, model_dir: Path, args: argparse.Namespace, data: dict[str, Any],
                  metrics: dict[str, float], usage: dict[str, Any]) -> Path:
    payload = {**run_header("concepts", False, model_dir, args), "data": data,
               "metrics": {k: _finite(v) for k, v in metrics.items()}, "usage": usage}
    rows = [[k, "-" if _finite(v) is None else f"{v:.4g}"] for k, v in metrics.items()]
    rows += [["usage: dead concepts", str(usage["dead_concepts"])],
             ["usage: entropy / log C", f"{usage['entropy_normalized']:.4g}"],
             ["usage: perplexity (concepts used)", f"{usage['perplexity']:.4g}"]]
    if usage["mean_attention_entropy"] is not None:
        rows.append(["attention entropy (mean over concepts)", f"{usage['mean_attention_entropy']:.4g}"])
    top = sorted(range(len(usage["per_concept"])), key=lambda c: -usage["per_concept"][c])[:5]
    notes = [f"model: {model_dir}", f"data: {data['path']} ({data['kind']}, {data['samples']} samples, "
             f"{data['tokens']} tokens)", "metric definitions: megaconcept/analysis/concept_metrics.py",
             "usage_c = share of tokens whose top concept (head-averaged last-layer cross-attention) is c",
             "most used concepts: " + ", ".join(f"{c} ({100 * usage['per_concept'][c]:.1f}%)" for c in top)]
    path = Report(out).write(payload, ["metric", "value"], rows, notes)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.concepts", description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--data", required=True, help="shard directory (data_prep.shard) or a .txt / .jsonl file")
    p.add_argument("--limit", type=positive_int, default=1000,
                   help="inputs encoded, default 1000 (all their concepts are held in memory: limit x C x D floats)")
    p.add_argument("--max-length", type=sequence_length, default=512,
                   help="tokens per input, default 512 (longer ones are cut)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="inputs per forward pass, default 16")
    p.add_argument("--out", type=output_dir, help="results folder (default evals_results/concepts-<model name>)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model)
        check_weights(model_dir)
        check_length(model_dir, args.max_length, "mean")
        trust = trust_remote_code(model_dir, args.trust_remote_code)
        rows, data = load_rows(args.data, model_dir, args.limit, args.max_length, trust)
        concepts, usage = encode_all(model_dir, rows, args.batch_size, trust)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from megaconcept.analysis import concept_metrics

    out = Path(args.out or f"evals_results/concepts-{model_dir.name}")
    path = write_results(out, model_dir, args, data, concept_metrics(concepts), usage.summary())
    plot_spectrum(concepts, out / "spectrum.png")
    print(path.with_name("results.md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
