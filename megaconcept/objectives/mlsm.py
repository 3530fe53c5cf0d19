"""Masked latent semantic modeling (MLSM, Berend 2023): predict sparse codes of a frozen teacher, not tokens.

For every decoded (masked) position the target is a distribution over the k atoms of a dictionary learned
offline (python -m data_prep.mlsm_dictionary): the teacher reads the *clean* sample (batch["clean_ids"], made in
the data workers from the unmasked ids), runs only up to layer l (early exit, no unembedding), its states at
batch["positions"] are L2-normalised and sparse-coded by non-negative FISTA (mlsm_coding.fista: `fista_iterations`,
lambda from the dictionary's metadata, step 1/L with L = lambda_max(D D^T) computed once), and the codes are
L1-normalised. The student's head is this term's own nn.Linear(d, k) on outputs.states (d x k, not d x (V + k)):

    loss = mean over valid rows of KL(target || softmax(head(states)))

Rows whose codes are all zero (nothing to predict) and padded rows (labels -100) are left out and counted.

Placement: the teacher and the dictionary are kept in a tuple, so they are no submodule: never wrapped,
partitioned, cast or checkpointed by DeepSpeed, replicated on every rank, frozen, bf16 on GPU / fp32 on CPU,
moved to the states' device at the first forward. The teacher does no collective, so ranks never wait on each
other for it (it runs wherever the term runs: every data-parallel rank, every tensor-parallel rank on the same
replicated states; a pipeline's last stage would get clean_ids like any key the terms read, and the in-process
pipeline view is exact, but config refuses parallel.pipeline>1 for now: a 2-stage CPU run stalled, issue 17). The head is
`objectives.terms.<name>.head.*`: trained, checkpointed and resumed with the run, dropped by the export.
A checkpoint records the dictionary's metadata digest (buffer `dictionary_digest`): resuming with another
dictionary is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import OBJECTIVES, BuildContext, Objective, TermConfig
from .mlsm_coding import FISTA_ITERATIONS, fista, lipschitz, unit_rows
from .mlsm_teacher import Teacher, build_teacher, cast_for, digest_metadata

DICTIONARY_NAME, METADATA_NAME = "dictionary.safetensors", "mlsm_dictionary.json"
CLEAN_IDS = "clean_ids"


@dataclass
class MLSMConfig(TermConfig):
    """objective.terms.mlsm: KL to the sparse codes of a frozen teacher's layer-l states at the masked positions."""

    dictionary: str = ""
    """The folder written by `python -m data_prep.mlsm_dictionary` (required): atoms, teacher, layer, lambda."""
    fista_iterations: int = FISTA_ITERATIONS
    """Non-negative FISTA iterations per batch's targets (the MLSM reference: 100)."""
    lambda_: Optional[float] = None
    """L1 penalty of the targets' codes; null = the dictionary's own lambda (what it was learned with)."""
    teacher: Optional[str] = None
    """Where to load the teacher from when not where the dictionary recorded it (a moved folder); its weights
    must still hash to the recorded weights_sha256."""

    def __post_init__(self) -> None:
        if not self.dictionary:
            raise ValueError("dictionary is required: the folder of `python -m data_prep.mlsm_dictionary --out DIR`")
        if self.fista_iterations < 1 or (self.lambda_ is not None and self.lambda_ <= 0):
            raise ValueError(f"fista_iterations={self.fista_iterations} must be >= 1 and lambda_={self.lambda_} > 0")


def read_dictionary(folder: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """(atoms (k, H) float32, metadata) of a dictionary folder; one-line ValueError when it is not one."""
    from safetensors.torch import load_file

    root = Path(folder)
    if not (root / DICTIONARY_NAME).is_file() or not (root / METADATA_NAME).is_file():
        raise ValueError(f"dictionary={folder!r} holds no finished MLSM dictionary ({DICTIONARY_NAME} and "
                         f"{METADATA_NAME}); run `python -m data_prep.mlsm_dictionary ... --out {folder}`")
    metadata = json.loads((root / METADATA_NAME).read_text(encoding="utf-8"))
    atoms = load_file(str(root / DICTIONARY_NAME))["atoms"].float()
    if tuple(atoms.shape) != (metadata["atoms"], metadata["hidden_size"]):
        raise ValueError(f"{root / DICTIONARY_NAME} has shape {tuple(atoms.shape)}, its metadata says "
                         f"({metadata['atoms']}, {metadata['hidden_size']}); re-run the dictionary job")
    return atoms, metadata


def _digest_tensor(digest: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8)


class MLSMObjective(Objective):
    reads = (CLEAN_IDS, "labels", "positions")
    stats = ("zero_code_rows", "target_entropy", "active_atoms")
    nonnegative = True  # a KL divergence
    runs_in_pipeline = True  # it reads the batch and the states only (config still refuses PP: see the docstring)

    def __init__(self, cfg: MLSMConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.cfg = cfg
        atoms, self.metadata = read_dictionary(cfg.dictionary)
        identity = self.metadata["teacher"]
        teacher, loaded = build_teacher(cfg.teacher or identity["source"], self.metadata["layer"],
                                        unknown_id=self.metadata.get("unknown_id", 0))
        if loaded["weights_sha256"] != identity["weights_sha256"]:
            raise ValueError(f"objective.terms.mlsm: the teacher {cfg.teacher or identity['source']!r} is not the one "
                             f"dictionary {cfg.dictionary!r} was learned from (weights hash differs); set "
                             f"teacher= to the recorded model")
        self.lam = cfg.lambda_ if cfg.lambda_ is not None else float(self.metadata["lambda"])
        # (teacher, atoms (k, H), L, D D^T (k, k)): D is fixed, so its Gram matrix and step are computed once.
        self._frozen: tuple[Teacher, torch.Tensor, torch.Tensor, torch.Tensor] = (teacher, atoms, lipschitz(atoms),
                                                                                 atoms @ atoms.T)
        self.digest = digest_metadata(self.metadata)
        self.register_buffer("dictionary_digest", _digest_tensor(self.digest))
        weight = ctx.model.output_embedding()
        width = int(getattr(weight, "ds_shape", weight.shape)[-1])  # ZeRO-3 may have partitioned it already
        self.head = nn.Linear(width, atoms.shape[0])
        ctx.say(f"MLSM: dictionary {cfg.dictionary} ({atoms.shape[0]} atoms, digest {self.digest}), teacher "
                f"{identity['source']} to layer {self.metadata['layer']}, lambda {self.lam}, "
                f"{cfg.fista_iterations} FISTA iterations")

    def batch_maker(self, separator_id: int, seq_len: int) -> "CleanIds":
        """The data workers add the unmasked ids: the teacher must read the clean text."""
        return CleanIds()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "dictionary_digest")
        if saved is not None and not torch.equal(saved.cpu().to(torch.uint8), self.dictionary_digest.cpu()):
            raise ValueError(f"the checkpoint's MLSM term was trained with another dictionary (digest "
                             f"{bytes(saved.tolist()).hex()}, configured {self.digest}); resume with the recorded "
                             f"objective.terms.*.dictionary")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _placed(self, device: torch.device) -> tuple[Teacher, torch.Tensor, torch.Tensor, torch.Tensor]:
        teacher, atoms, big_l, gram = self._frozen
        if atoms.device != device:
            teacher = teacher.to(device=device, dtype=cast_for(device))
            self._frozen = teacher, atoms.to(device), big_l.to(device), gram.to(device)
        return self._frozen

    @torch.no_grad()
    def targets(self, clean_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """clean_ids (B, N), positions (B, M) -> (B * M, k) float32 non-negative codes of the teacher states."""
        teacher, atoms, big_l, gram = self._placed(positions.device)
        states = teacher(clean_ids.long())  # (B, N, H) float32, layer l
        picked = states.gather(1, positions.long()[..., None].expand(-1, -1, states.shape[-1]))  # (B, M, H)
        return fista(unit_rows(picked.flatten(0, 1)), atoms, self.lam, self.cfg.fista_iterations, big_l, gram)

    def forward(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        codes = self.targets(batch[CLEAN_IDS], batch["positions"])  # (B*M, k)
        mass = codes.sum(dim=-1)
        valid = (batch["labels"].flatten() >= 0) & (mass > 0)
        zero_rows = ((batch["labels"].flatten() >= 0) & (mass <= 0)).float().sum()
        logits = self.head(outputs.states.flatten(0, 1)).float()  # (B*M, k)
        rows = valid.nonzero().flatten()
        if rows.numel() == 0:  # keeps the graph (and ZeRO's hooks) identical on every rank
            zero = logits.sum() * 0.0
            return {"loss": zero, "zero_code_rows": zero_rows, "target_entropy": zero.detach(),
                    "active_atoms": zero.detach()}
        target = codes[rows] / mass[rows, None]  # L1-normalised: a distribution over the k atoms
        log_target = torch.where(target > 0, target.clamp(min=1e-30).log(), torch.zeros_like(target))
        entropy = -(target * log_target).sum(dim=-1)  # (R,)
        cross = -(target * F.log_softmax(logits[rows], dim=-1)).sum(dim=-1)
        loss = (cross - entropy).mean()  # KL(target || student) = cross-entropy - entropy, batch mean
        return {"loss": loss, "zero_code_rows": zero_rows, "target_entropy": entropy.mean(),
                "active_atoms": (codes[rows] > 0).float().sum(dim=-1).mean()}


@dataclass(frozen=True)
class CleanIds:
    """Picklable batch maker: the unmasked ids (B, N) under batch["clean_ids"]."""

    def __call__(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {CLEAN_IDS: ids.clone()}


OBJECTIVES.add("mlsm", MLSMObjective, MLSMConfig)
