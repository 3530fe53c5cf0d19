"""Efficiency: forward+backward time and peak memory of a concept encoder vs a full-attention encoder.

`python -m evals.efficiency [--model HF_DIR | --config YAML] [--lengths 512,1024,...] [--tokens-per-step T]`

Same tokens per step at every length: a concept encoder (O(C*N) per sequence) stays flat, full attention (O(N^2))
grows linearly. Both score the same masked positions with the project's sparse chunked LM-head loss, so only the
encoders differ. A second section measures the LM-head loss alone: sparse + chunked vs dense logits. The results
say how each number was taken (`notes`). CPU defaults are a quick check; the target run is a GPU up to 16384 tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import gc
import json
import math
import multiprocessing
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from megaconcept.model import ConceptMLM, ConceptModelConfig
from megaconcept.model.lm_loss import chunked_cross_entropy

from .common import (EvalError, exported_config, finite_positive_float, nonnegative_int, output_dir, positive_int,
                     versions)

DEFAULT_LENGTHS = "512,1024,2048,4096"
GPU_LENGTHS = "512,1024,2048,4096,8192,16384"
DEFAULT_LOSS_SHAPES = "1x1024,4x1024,1x4096"
MASK_RATE = 0.15
LOSS_VOCAB = 49152  # SmolLM2's vocabulary, the project's tokenizer (also the default when a config leaves it unset)
MODELS = ("concept", "full")
LOSSES = ("sparse_chunked", "dense")
# What the forkserver imports once, so each fresh measuring process starts in milliseconds, not seconds.
PRELOAD = ["torch", "megaconcept.model", "transformers.models.bert.modeling_bert"]
Workload = tuple[nn.Module, Callable[[], torch.Tensor]]  # what holds the parameters, and the loss of one step


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload (a model or a loss path) at one shape, run in one process."""

    kind: str  # concept | full | sparse_chunked | dense
    model: dict  # ConceptModelConfig.to_dict()
    seq_len: int
    batch: int
    device: str
    dtype: str  # fp32 | bf16
    warmup: int
    repeats: int
    ce_chunk_size: int
    threads: int  # CPU intra-op threads; 0 = torch's default

    @property
    def masked(self) -> int:  # scored positions per sequence
        return max(1, round(MASK_RATE * self.seq_len))


def full_encoder_shape(cfg: ConceptModelConfig) -> dict[str, int]:
    """BertModel dimensions matched to the concept model.

    Depth = backbone layers + concept layers + decoder layers: each concept or decoder layer is one
    attention + MLP block, so the baseline has as many blocks, each over all N tokens. Width, heads and
    MLP width are the token path's (the backbone's when there is one). BERT's GELU MLP has two matrices
    where the gated MLP has three, which makes the baseline slightly cheaper per token (conservative).
    """
    bb = cfg.backbone
    return {"hidden_size": cfg.token_dim, "num_hidden_layers": bb.num_layers + cfg.num_layers + cfg.decoder_layers,
            "num_attention_heads": bb.num_heads if bb.enabled else cfg.num_heads,
            "intermediate_size": bb.intermediate_size if bb.enabled else cfg.mlp_dim}


class FullEncoderMLM(nn.Module):
    """Full-attention bidirectional encoder + the concept model's tied, sparse, chunked MLM head."""

    def __init__(self, cfg: ConceptModelConfig, max_len: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(vocab_size=cfg.vocab_size, max_position_embeddings=max_len, attn_implementation="sdpa",
                              hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                              **full_encoder_shape(cfg))
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        """ids (B, N), positions/labels (B, M) -> mean MLM loss over the B*M scored positions."""
        hidden = self.bert(input_ids=ids).last_hidden_state  # (B, N, D)
        states = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, M, D)
        return chunked_cross_entropy(states.flatten(0, 1), self.bert.embeddings.word_embeddings.weight, self.lm_bias,
                                     labels.flatten(), chunk)


def _masked_batch(cell: Cell, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random input ids (B, N), distinct sorted masked positions (B, M) and their labels (B, M)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (cell.batch, cell.seq_len), generator=gen)
    positions = torch.rand(cell.batch, cell.seq_len, generator=gen).argsort(-1)[:, :cell.masked].sort(-1).values
    labels = torch.randint(0, vocab, (cell.batch, cell.masked), generator=gen)
    return ids.to(device), positions.to(device), labels.to(device)


def _model_workload(cell: Cell, cfg: ConceptModelConfig, device: torch.device) -> Workload:
    ids, positions, labels = _masked_batch(cell, cfg.vocab_size, device)
    if cell.kind == "concept":
        model: nn.Module = ConceptMLM(cfg)
        loss = lambda: chunked_cross_entropy(model(ids, positions=positions).states.flatten(0, 1),  # MLM term's maths
                                             model.output_embedding(), model.lm_bias, labels.flatten(), cell.ce_chunk_size)
    else:
        model = FullEncoderMLM(cfg, cfg.max_position_embeddings)
        loss = lambda: model(ids, positions, labels, cell.ce_chunk_size)
    return model, loss


def _loss_workload(cell: Cell, cfg: ConceptModelConfig, device: torch.device) -> Workload:
    """The LM-head loss alone from leaf decoder states: of the B*M scored positions (sparse) or all B*N (dense)."""
    _, positions, labels = _masked_batch(cell, LOSS_VOCAB, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    rows, dim = cell.batch * (cell.masked if cell.kind == "sparse_chunked" else cell.seq_len), cfg.token_dim
    held = nn.ParameterDict({"states": nn.Parameter(torch.randn(rows, dim, generator=gen)),  # (rows, D)
                             "weight": nn.Parameter(torch.randn(LOSS_VOCAB, dim, generator=gen) * 0.02),
                             "bias": nn.Parameter(torch.zeros(LOSS_VOCAB))})
    order = ("states", "weight", "bias")  # a ParameterDict built from a dict sorts its keys
    if cell.kind == "sparse_chunked":
        flat = labels.flatten().to(device)
        return held, lambda: chunked_cross_entropy(*(held[k] for k in order), flat, cell.ce_chunk_size)
    full = torch.full((cell.batch, cell.seq_len), -100).scatter_(1, positions, labels).flatten().to(device)

    def dense() -> torch.Tensor:
        logits = F.linear(*(held[k] for k in order)).float()  # (B*N, V)
        return F.cross_entropy(logits, full)  # mean over the scored positions (-100 ignored)

    return held, dense


def _proc_bytes(path: str, *keys: str) -> list[int]:
    """`Key: N kB` fields of a Linux /proc file, in bytes (VmHWM is the counter behind ru_maxrss)."""
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
    return [int(fields[k].split()[0]) * 1024 for k in keys]


def _memory_baseline(device: torch.device) -> int:
    """Bytes in use before the timed steps; from here on the peak is tracked."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError, AttributeError, TypeError):  # glibc keeps freed warmup tensors resident in
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # its heap: return them, so reuse counts as RSS
    try:  # Linux: reset the peak RSS to the current RSS, so an earlier transient cannot hide anything
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_bytes("/proc/self/status", "VmRSS")[0]
    except OSError:  # otherwise the peak so far is the baseline
        return _proc_bytes("/proc/self/status", "VmHWM")[0]


def _steps(module: nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device, n: int) -> list[float]:
    """Seconds of n forward+backward steps; gradients are freed around each, so they count in every step's peak."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(n):
        module.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        loss_fn().backward()
        sync()
        times.append(time.perf_counter() - start)
    module.zero_grad(set_to_none=True)
    return times


def _run(cell: Cell) -> dict[str, Any]:
    device, dtype = torch.device(cell.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[cell.dtype]
    if cell.threads:
        torch.set_num_threads(cell.threads)
    cfg = ConceptModelConfig.from_dict(dict(cell.model))
    torch.manual_seed(0)
    module, loss_fn = (_model_workload if cell.kind in MODELS else _loss_workload)(cell, cfg, device)
    module.to(device=device, dtype=dtype)  # bf16 weights as DeepSpeed's bf16 engine runs them
    # Warmup also faults in library code, thread pools and kernels: one-off costs kept out of the baseline.
    _steps(module, loss_fn, device, cell.warmup)
    gc.collect()
    base = _memory_baseline(device)
    times = _steps(module, loss_fn, device, cell.repeats)
    cuda = device.type == "cuda"
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _proc_bytes("/proc/self/status", "VmHWM")[0]) - base
    return {"status": "ok", "time_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times],
            "peak_mib": max(peak, 0) / 2**20, "params": sum(p.numel() for p in module.parameters())}


def measure_cell(cell: Cell) -> dict[str, Any]:
    """Time (median of repeats after warmup) and peak memory of one cell; out of memory is a result."""
    try:
        return _run(cell)
    except (MemoryError, RuntimeError) as exc:  # the CPU allocator raises a plain RuntimeError
        if not isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and "allocate memory" not in str(exc):
            raise
        return {"status": "oom", "error": str(exc).splitlines()[0][:200]}


def estimated_bytes(cell: Cell) -> int:
    """Largest single tensor a cell may need: one layer's attention matrix (what a math kernel allocates),
    or the loss path's logits with their softmax and gradient copies."""
    cfg = ConceptModelConfig.from_dict(dict(cell.model))
    if cell.kind == "full":
        return cell.batch * full_encoder_shape(cfg)["num_attention_heads"] * cell.seq_len ** 2 * 4
    if cell.kind == "concept":
        return cell.batch * cfg.num_heads * cfg.num_concepts * cell.seq_len * 4
    rows = cell.batch * cell.seq_len if cell.kind == "dense" else min(cell.ce_chunk_size, cell.batch * cell.masked)
    return rows * LOSS_VOCAB * 4 * 3


def _answer(cell: Cell, conn: Any) -> None:
    conn.send(measure_cell(cell))


def run_cell(cell: Cell, cap_bytes: int) -> dict[str, Any]:
    """CPU: skip cells over the memory cap, measure the rest in a fresh process. CUDA: in this process."""
    if cell.device == "cuda":
        result = measure_cell(cell)
        gc.collect()
        torch.cuda.empty_cache()
        return result
    need = estimated_bytes(cell)
    if need > cap_bytes:
        return {"status": "skipped", "error": f"estimated {need / 2**30:.1f} GiB > cap {cap_bytes / 2**30:.1f} GiB"}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_answer, args=(cell, send))
    proc.start()
    send.close()
    try:
        return receive.recv()
    except EOFError:  # the process died without an answer
        pass
    finally:
        proc.join()
    if proc.exitcode == -signal.SIGKILL:  # what the kernel's out-of-memory killer sends
        return {"status": "oom", "error": "the measuring process was killed (SIGKILL), most likely out of memory"}
    raise RuntimeError(f"measuring {cell.kind} {cell.batch}x{cell.seq_len} died with exit code {proc.exitcode}")


def fit_exponent(lengths: list[int], values: list[Optional[float]]) -> Optional[float]:
    """Least-squares slope of log(value) vs log(length) over the measured points (None below two lengths)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v is not None and v > 0]
    return statistics.linear_regression(*zip(*pts)).slope if len({x for x, _ in pts}) >= 2 else None


def _value(result: dict[str, Any], key: str) -> Optional[float]:
    return result.get(key) if result["status"] == "ok" else None


def _ratio(top: Optional[float], bottom: Optional[float]) -> Optional[float]:
    return top / bottom if top is not None and bottom else None


def scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, Optional[float]]]:
    """Exponents from time per token: at fixed tokens per step, step time ∝ N^slope; per sequence (one sequence
    of length N, batch not shrinking) time ∝ N^(slope + 1)."""
    lengths, out = [r["seq_len"] for r in rows], {}
    for name in MODELS:
        per_token = [None if _value(r[name], "time_ms") is None else r[name]["time_ms"] / (r["batch"] * r["seq_len"])
                     for r in rows]
        slope = fit_exponent(lengths, per_token)
        out[name] = {"time_exponent_fixed_tokens": slope,
                     "time_exponent_per_sequence": None if slope is None else slope + 1}
    return out


def _cell_text(result: dict[str, Any], key: str) -> str:
    return f"{result[key]:.1f}" if result["status"] == "ok" else result["status"].upper()


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(payload: dict[str, Any]) -> str:
    """results.md: the length sweep, the fitted exponents, the loss-path memory, then how it was measured."""
    d, a = payload["device"], payload["args"]
    lines = [f"# Efficiency: concept encoder vs full attention ({d['name']}, {d['dtype']})", "",
             f"Forward+backward at {payload['tokens_per_step']} tokens per step; time = median of {a['repeats']} "
             f"timed step(s) after {a['warmup']} warmup; memory = peak increase over what was in use after build "
             "and warmup.", ""]
    header = ["seq len", "batch", "concept ms", "full ms", "time full/concept", "concept MiB", "full MiB",
              "memory full/concept"]
    lines += _table(header, [[str(r["seq_len"]), str(r["batch"])] + [_cell_text(r[m], "time_ms") for m in MODELS]
                             + [_num(r["time_ratio"])] + [_cell_text(r[m], "peak_mib") for m in MODELS]
                             + [_num(r["memory_ratio"])] for r in payload["lengths"]])
    lines += ["", "Scaling exponents (least-squares slope of log time per token vs log seq len):", ""]
    lines += _table(["model", "time exponent, fixed tokens/step", "time exponent, per sequence"],
                    [[name, _num(s["time_exponent_fixed_tokens"]), _num(s["time_exponent_per_sequence"])]
                     for name, s in payload["scaling"].items()])
    loss = payload["loss_path"]
    lines += ["", f"Loss path memory (LM head at vocab {loss['vocab']}, width {loss['dim']}, "
                  f"{int(MASK_RATE * 100)}% of positions scored):", ""]
    lines += _table(["batch x seq len", "scored positions", "sparse+chunked MiB", "dense MiB", "memory dense/sparse"],
                    [[f"{r['batch']}x{r['seq_len']}", str(r["positions"]), _cell_text(r["sparse_chunked"], "peak_mib"),
                      _cell_text(r["dense"], "peak_mib"), _num(r["memory_ratio"])] for r in loss["rows"]])
    return "\n".join(lines + [""] + [f"- {note}" for note in payload["notes"]]) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    """scaling.png: step time and peak memory vs sequence length, log-log, both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="tight")
    lengths = [r["seq_len"] for r in payload["lengths"]]
    for ax, key, label in zip(axes, ("time_ms", "peak_mib"), ("time per step (ms)", "peak memory (MiB)")):
        for name in MODELS:
            pts = [(r["seq_len"], _value(r[name], key)) for r in payload["lengths"]]
            pts = [(n, v) for n, v in pts if v is not None and v > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{name} encoder")
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=label,
               title=f"{label}, {payload['tokens_per_step']} tokens/step")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xticks([], minor=True)
        ax.legend()
    fig.suptitle(f"{payload['device']['name']} ({payload['device']['dtype']})")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_items(text: str, flag: str, pairs: bool) -> list[tuple[int, ...]]:
    """`512,1024` -> [(512,), (1024,)]; with pairs, `4x1024,1x4096` -> [(4, 1024), (1, 4096)]; else one-line error."""
    try:
        items = [tuple(int(v) for v in t.lower().split("x")) for t in text.split(",") if t.strip()]
    except ValueError:
        items = []
    if not items or any(len(i) != (2 if pairs else 1) or min(i) <= 0 for i in items):
        what = f"BATCHxSEQ_LEN pairs, e.g. {DEFAULT_LOSS_SHAPES}" if pairs else f"integers, e.g. {DEFAULT_LENGTHS}"
        raise EvalError(f"{flag} {text!r} must be comma-separated positive {what}")
    return items


def model_config(args: argparse.Namespace, max_len: int) -> tuple[ConceptModelConfig, int, str]:
    """(architecture to measure, LM-head chunk size, where it came from). Weights are never loaded: speed and
    memory depend on the shape only, and a warm start would need the source model on disk."""
    chunk, source = 4096, args.model or args.config or "default ConceptModelConfig() (the demo model)"
    if args.model:
        if not (Path(args.model) / "config.json").is_file():
            raise EvalError(f"--model {args.model!r} is not an exported folder with a config.json (megaconcept.export)")
        cfg = exported_config(Path(args.model))
    elif args.config:
        from megaconcept.config.loader import load_config

        run = load_config(args.config)
        cfg, chunk = run.model, run.objective.ce_chunk_size
    else:
        cfg = ConceptModelConfig()
    return replace(cfg, vocab_size=cfg.vocab_size or LOSS_VOCAB,
                   max_position_embeddings=max(cfg.max_position_embeddings, max_len),  # only grows position tables
                   backbone=replace(cfg.backbone, init_from=None)), chunk, source


def resolve_device(name: str, dtype: str, threads: int) -> dict[str, Any]:
    """--device/--dtype -> {type, name, dtype, ...} of the machine measured."""
    if name not in ("auto", "cpu", "cuda"):
        raise EvalError(f"unknown --device {name!r}; valid: auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda but no CUDA device is visible; use --device cpu")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        auto = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return {"type": "cuda", "name": torch.cuda.get_device_name(), "dtype": auto if dtype == "auto" else dtype,
                "sdpa_flash_enabled": torch.backends.cuda.flash_sdp_enabled()}
    cpu = f"CPU {platform.processor() or platform.machine()}, torch threads: {threads or torch.get_num_threads()}"
    return {"type": "cpu", "name": cpu, "dtype": "fp32" if dtype == "auto" else dtype}


def memory_cap(args: argparse.Namespace) -> int:
    """CPU cells whose largest tensor is estimated above this are skipped (default: half the available RAM)."""
    if args.memory_cap_gib is not None:
        return int(args.memory_cap_gib * 2**30)
    with contextlib.suppress(OSError, KeyError):
        return _proc_bytes("/proc/meminfo", "MemAvailable")[0] // 2
    return 8 * 2**30


def notes(source: str, cfg: ConceptModelConfig, device: str, cap: int) -> list[str]:
    bert = full_encoder_shape(cfg)
    memory = ("CUDA: max_memory_allocated after reset_peak_memory_stats minus memory_allocated then" if device == "cuda"
              else "CPU: one fresh process per cell (forked from a server that imported torch once): peak RSS (VmHWM = "
              "ru_maxrss, reset after build and warmup) minus the RSS then; cells whose largest tensor is estimated "
              f"above {cap / 2**30:.1f} GiB are SKIPPED, a process killed by the OS is OOM")
    return [f"concept model: {source}; C={cfg.num_concepts}, concept_dim={cfg.concept_dim}, token_dim="
            f"{cfg.token_dim}, {cfg.backbone.num_layers} backbone + {cfg.num_layers} concept + {cfg.decoder_layers} "
            f"decoder layers, vocab {cfg.vocab_size}; random init (speed and memory depend on the shape only)",
            f"full encoder: transformers BertModel (SDPA, random init), hidden {bert['hidden_size']}, "
            f"{bert['num_hidden_layers']} layers (= backbone + concept + decoder layers), "
            f"{bert['num_attention_heads']} heads, intermediate {bert['intermediate_size']}, same vocabulary",
            f"loss: both models score the same {int(MASK_RATE * 100)}% masked positions with the project's tied sparse "
            "chunked LM head (megaconcept.model.lm_loss); batch = tokens_per_step // seq_len (at least 1)",
            "memory excludes weights and the batch, includes activations, gradients and workspace; warmup steps "
            "(library code, thread pools, kernels) precede the baseline. " + memory,
            "exponents: slope of log(time per token) vs log(seq len). 'fixed tokens/step': step time at a constant "
            "token budget (concept ~0 = flat, full attention ~1 = linear); 'per sequence' = slope + 1: time of one "
            "sequence vs its length (concept ~1, full attention ~2)",
            "loss path: decoder states are leaves; sparse+chunked = only the scored positions' states through "
            "chunked_cross_entropy (logits recomputed per chunk in backward); dense = (B*N, V) logits + torch "
            "cross_entropy ignoring unscored positions; both include the (V, D) weight gradient",
            f"target run: a GPU with --lengths {GPU_LENGTHS} (bf16, flash SDPA); CPU defaults are a quick check"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.efficiency", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="exported HF folder (its config.json gives the architecture)")
    source.add_argument("--config", help="run recipe YAML (its model section gives the architecture)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"sequence lengths (GPU target: {GPU_LENGTHS})")
    p.add_argument("--tokens-per-step", type=positive_int, default=4096, help="tokens per step at every length")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed steps per cell (the median is reported)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed steps per cell before timing")
    p.add_argument("--loss-shapes", default=DEFAULT_LOSS_SHAPES, help="BATCHxSEQ_LEN shapes of the loss-path section")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=nonnegative_int, default=0,
                   help="CPU threads per cell (0 = torch's default; 1 = steadier)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto = bf16 on CUDA, else fp32")
    p.add_argument("--memory-cap-gib", type=finite_positive_float,
                   help="CPU: skip cells estimated above (default: RAM free/2)")
    p.add_argument("--out", type=output_dir, help="results folder (default evals_results/efficiency-<device>)")
    return p


def run(args: argparse.Namespace, lengths: list[int], shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """Measure both sections and assemble the results payload."""
    info = resolve_device(args.device, args.dtype, args.threads)
    device, dtype = info["type"], info["dtype"]
    try:
        cfg, chunk, source = model_config(args, max(lengths + [n for _, n in shapes]))
    except ValueError as exc:  # unreadable or invalid config files (ConfigError, unknown keys): one line
        raise EvalError(str(exc)) from None
    cap = memory_cap(args)
    base = Cell("", cfg.to_dict(), 0, 0, device, dtype, args.warmup, args.repeats, chunk, args.threads)
    cells = [replace(base, kind=k, seq_len=n, batch=max(1, args.tokens_per_step // n)) for n in lengths for k in MODELS]
    cells += [replace(base, kind=k, seq_len=n, batch=b) for b, n in shapes for k in LOSSES]
    measured = []
    for i, cell in enumerate(cells, 1):  # progress on stderr, one line per cell
        measured.append(r := run_cell(cell, cap))
        shown = f"{r['time_ms']:.1f} ms, {r['peak_mib']:.1f} MiB" if r["status"] == "ok" else r["status"]
        print(f"[{i}/{len(cells)}] {cell.kind} {cell.batch}x{cell.seq_len}: {shown}", file=sys.stderr, flush=True)
    rows = []
    for n in lengths:
        row = {"seq_len": n, "batch": max(1, args.tokens_per_step // n), **{k: measured.pop(0) for k in MODELS}}
        for key, name in (("time_ms", "time_ratio"), ("peak_mib", "memory_ratio")):
            row[name] = _ratio(_value(row["full"], key), _value(row["concept"], key))
        rows.append(row)
    loss_rows = []
    for b, n in shapes:
        row = {"batch": b, "seq_len": n, "positions": b * replace(base, seq_len=n).masked,
               **{k: measured.pop(0) for k in LOSSES}}
        row["memory_ratio"] = _ratio(_value(row["dense"], "peak_mib"), _value(row["sparse_chunked"], "peak_mib"))
        loss_rows.append(row)
    versions_ = {**versions(Path(args.model or args.config or ".")), "model": source}
    return {"benchmark": "efficiency", "versions": versions_, "device": info, "args": vars(args),
            "tokens_per_step": args.tokens_per_step, "model_config": cfg.to_dict(),
            "full_encoder": full_encoder_shape(cfg), "lengths": rows, "scaling": scaling(rows),
            "loss_path": {"vocab": LOSS_VOCAB, "dim": cfg.token_dim, "mask_rate": MASK_RATE, "rows": loss_rows},
            "notes": notes(source, cfg, device, cap)}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lengths = sorted({n for (n,) in parse_items(args.lengths, "--lengths", pairs=False)})
        shapes = [(b, n) for b, n in parse_items(args.loss_shapes, "--loss-shapes", pairs=True)]
        payload = run(args, lengths, shapes)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"evals_results/efficiency-{payload['device']['type']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "results.md").write_text(markdown(payload))
    plot(payload, out / "scaling.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
