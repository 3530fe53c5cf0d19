"""The pure half of ``launchers/bench.py``: a finished run's figures, read from its own files (metrics.jsonl and
config.yaml), and the side-by-side results.json / results.md. Nothing here starts a process."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from launchers.compare_runs import read_metrics

FORMAT = 1
"""results.json's `bench_format`: it also marks the file as the bench's, so a re-run may replace it."""
MD_TITLE = "# Bench "
"""results.md's first line starts with it: the same mark for the markdown file."""
PEAK_MEMORY_NOTE = ("peak RSS of the largest process of the run (the launcher or one rank; not a sum over ranks), "
                    "from the rusage os.wait4 returns for the launcher (Linux folds in its reaped workers); GPU "
                    "memory (torch.cuda.max_memory_allocated) is not visible outside the trainer and is not measured")


def step_times(records: dict[int, dict], warmup: int) -> tuple[list[float], int]:
    """Seconds per optimizer step for each step after `warmup`, and the tokens one step trains on.

    The trainer logs (every step here) tokens_per_sec = tokens_per_step x healthy steps / seconds spent in
    train steps since the last log (analysis and checkpoints are off its clock). A skipped (non-finite) step
    is not logged; the next record covers it too, so its time is spread over every step it covers."""
    logged = [(s, r) for s, r in sorted(records.items()) if r.get("tokens_per_sec")]
    times: list[float] = []
    per_step = 0
    prev_step, prev_tokens, prev_skipped = 0, 0, 0
    for step, record in logged:
        covered = step - prev_step
        per_step = (record["tokens_seen"] - prev_tokens) // covered
        healthy = covered - (record.get("skipped_steps", 0) - prev_skipped)
        if step > warmup:
            times += [per_step * healthy / record["tokens_per_sec"] / covered] * min(covered, step - warmup)
        prev_step, prev_tokens, prev_skipped = step, record["tokens_seen"], record.get("skipped_steps", 0)
    return times, per_step


def measure(run_dir: Path, warmup: int) -> dict[str, Any]:
    """Throughput figures of a finished run: the median step time over the measured steps, tokens/s at that
    step time (per device: over the trainer's world size), and the trainer's MFU (median; None without a
    known peak, e.g. on CPU). Raises ValueError when the run logged no measured step."""
    records = read_metrics(run_dir)
    times, tokens_per_step = step_times(records, warmup)
    if not times:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no logged step after the {warmup} warm-up steps")
    measured = [r for s, r in sorted(records.items()) if s > warmup and r.get("tokens_per_sec")]
    world = round(measured[0]["tokens_per_sec"] / measured[0]["tokens_per_sec_per_device"])
    step_time = statistics.median(times)
    mfus = [r.get("mfu") for r in measured]
    return {
        "measured_steps": len(times), "step_time_s": step_time, "step_times_s": times,
        "tokens_per_step": tokens_per_step, "world_size": world,
        "tokens_per_sec": tokens_per_step / step_time, "tokens_per_sec_per_device": tokens_per_step / step_time / world,
        "mfu": statistics.median(mfus) if mfus and None not in mfus else None,
    }


def step_flops(run_dir: Path, tokens_per_step: int) -> dict[str, Any]:
    """The FLOP counter's figures for the config the run wrote (RUN_DIR/config.yaml), built as the trainer
    builds them: its model config for the shards, objective.terms and the decoded positions per sample."""
    from megaconcept.config.loader import config_from_yaml_text
    from megaconcept.data.shards import read_manifest
    from megaconcept.train.builders import decoded_positions, model_config, vocab_multiple
    from megaconcept.train.flops import count_step_flops

    cfg = config_from_yaml_text((run_dir / "config.yaml").read_text())
    manifest = read_manifest(cfg.data.shards)
    model_cfg = model_config(cfg.model, manifest.vocab_size, manifest.seq_len, vocab_multiple(cfg.parallel),
                             manifest.mask_token_id)
    seq_len = manifest.seq_len
    parts = count_step_flops(model_cfg, cfg.objective.terms, seq_len, decoded_positions(cfg.objective.masking, seq_len))
    samples = tokens_per_step // seq_len
    forward = {k: v for k, v in asdict(parts).items() if v}
    return {"seq_len": seq_len, "samples_per_step": samples, "flops_per_sample": parts.train,
            "flops_per_step": parts.train * samples, "forward_flops_per_sample": forward}


def with_ratios(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """Each row's step time and FLOPs per step over the reference's: the first run that finished."""
    ref = next((r for r in rows if r["status"] == "ok"), None)
    for row in rows:
        ok = ref is not None and row["status"] == "ok"
        row["step_time_vs_ref"] = row["step_time_s"] / ref["step_time_s"] if ok else None
        row["flops_per_step_vs_ref"] = row["flops_per_step"] / ref["flops_per_step"] if ok else None
    return rows, None if ref is None else ref["name"]


def _cell(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    text = format(value, spec) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def _status(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return "ok"
    return f"failed (exit {row['exit_status']}): {row['reason']}"


def _figures(row: dict[str, Any]) -> list[str]:
    memory = [_cell(row["peak_rss_mib"], ".0f"), _cell(row["wall_s"], ".0f")]
    if row["status"] != "ok":
        return ["-"] * 7 + memory
    gflops = row["flops_per_step"] / 1e9
    mfu = None if row["mfu"] is None else f"{row['mfu']:.1%}"
    return [_cell(row["step_time_s"]), _cell(row["step_time_vs_ref"], ".3f"), _cell(row["tokens_per_sec"], ",.0f"),
            _cell(row["tokens_per_sec_per_device"], ",.0f"), _cell(mfu), _cell(gflops),
            _cell(row["flops_per_step_vs_ref"], ".3f"), *memory]


HEADER = ["run", "status", "step time (s)", "× ref", "tokens/s", "tokens/s/device", "MFU", "GFLOP/step",
          "× ref", "peak RSS (MiB)", "wall (s)", "overrides"]


def markdown(data: dict[str, Any]) -> str:
    """results.md: a line on how it was measured, then one row per run."""
    ref = data["reference"]
    lines = [f"{MD_TITLE}{data['name']}", "",
             f"Spec `{data['spec']}` on {data['device']}: {data['launcher']} x {data['nproc']} "
             f"process{'es' if data['nproc'] != 1 else ''}, "
             f"{data['warmup']} warm-up + {data['steps']} measured steps per run. Step time: the median over the "
             "measured steps (the trainer's clock: analysis and checkpoints excluded); tokens/s at that step time; "
             "MFU: the trainer's (needs a known device peak or train.peak_tflops; '-' on CPU). FLOPs: "
             "megaconcept.train.flops.count_step_flops (model FLOPs, forward + backward, x samples per step). "
             + (f"× ref: over run `{ref}`, the first that finished." if ref else "× ref: no run finished."),
             f"Peak memory: {PEAK_MEMORY_NOTE}.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in data["runs"]:
        own = " ".join(row["overrides"]) or "(base)"
        lines.append("| " + " | ".join([_cell(row["name"]), _cell(_status(row)), *_figures(row), _cell(own)]) + " |")
    return "\n".join(lines) + "\n"


def owned(path: Path) -> bool:
    """Whether `path` is absent or a results file the bench wrote (so it may be replaced)."""
    if not path.exists():
        return True
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".md":
        return text.startswith(MD_TITLE)
    try:
        return json.loads(text).get("bench_format") == FORMAT
    except (ValueError, AttributeError):
        return False


def write_results(out: Path, data: dict[str, Any]) -> None:
    """results.json (every figure, each run's step times and FLOP parts) and results.md (the table)."""
    # NaN and infinities as null (as metrics.jsonl writes them): results.json stays valid JSON for every reader.
    finite = json.loads(json.dumps(data, default=str), parse_constant=lambda _: None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"bench_format": FORMAT, **finite}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(data))
