"""Sparse coding for MLSM (masked latent semantic modeling): non-negative FISTA and a dictionary learner.

Both solve, for rows x (M, H) and a dictionary D (k, H) with unit-norm atoms as rows,

    min_a  1/2 ||x - a D||^2 + lambda ||a||_1   subject to a >= 0          (per row; a is (M, k))

the problem spams' trainDL(mode=2, posAlpha=True) and the MLSM reference solve, and the one sklearn's
`sparse_encode(X, D, algorithm="lasso_cd", alpha=lambda, positive=True)` solves (its Lasso divides the squared
error and the penalty alike by n_features, so the minimiser is the same: tests compare on this objective).

FISTA (Beck & Teboulle 2009) with the constant step 1/L, L = lambda_max(D D^T) (the Lipschitz constant of the
gradient (a D - x) D^T = a G - x D^T, G = D D^T): starting from a = 0,

    a_t+1 = max(0, y_t - (y_t G - x D^T) / L - lambda / L)       (the prox of lambda||.||_1 + [a >= 0])
    y_t+1 = a_t+1 + (s_t - 1) / s_t+1 (a_t+1 - a_t),   s_t+1 = (1 + sqrt(1 + 4 s_t^2)) / 2

x D^T is computed once (2 M k H FLOPs), each iteration costs one (M, k) x (k, k) product (2 M k^2 FLOPs).
Everything is plain torch in float32 on whatever device the inputs live on (GPU-capable, batched over rows).

The learner is Mairal et al. 2010 ("Online learning for matrix factorization and sparse coding", Alg. 1-2): per
minibatch, FISTA codes with the current D, then the sufficient statistics A = sum a^T a (k, k) and
B = sum a^T x (k, H) are updated (with the paper's forgetting for early batches) and D is refined by block
coordinate descent over atoms, each projected back to unit norm; an atom no code uses is re-seeded with a
sample of the batch. Its state (D, A, B, steps) is a dict of tensors, so a job can save it and continue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

FISTA_ITERATIONS = 100
"""The MLSM reference's online target iterations (objective.terms.mlsm.fista_iterations)."""


def lipschitz(dictionary: torch.Tensor) -> torch.Tensor:
    """L = lambda_max(D D^T) for D (k, H): the step of FISTA is 1/L. A () float32 tensor."""
    d = dictionary.float()
    gram = d @ d.T if d.shape[0] <= d.shape[1] else d.T @ d  # same nonzero spectrum, the smaller matrix
    return torch.linalg.eigvalsh(gram)[-1].clamp(min=1e-12)


def fista(x: torch.Tensor, dictionary: torch.Tensor, lam: float, iterations: int = FISTA_ITERATIONS,
          step_lipschitz: Optional[torch.Tensor] = None, gram: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Non-negative lasso codes: x (M, H), dictionary (k, H) -> a (M, k) float32, a >= 0.

    `step_lipschitz` (L = lipschitz(dictionary)) and `gram` (D D^T, (k, k)) when the caller has them cached (a
    fixed dictionary: the online targets)."""
    d = dictionary.float()
    x = x.float()
    big_l = lipschitz(d) if step_lipschitz is None else step_lipschitz.float()
    gram = d @ d.T if gram is None else gram.float()  # (k, k)
    xd = x @ d.T  # (M, k): the only product with H, done once
    a = torch.zeros_like(xd)
    y, s = a, 1.0
    for _ in range(iterations):
        a_next = torch.clamp(y - (y @ gram - xd) / big_l - lam / big_l, min=0.0)
        s_next = (1.0 + (1.0 + 4.0 * s * s) ** 0.5) / 2.0
        y = a_next + ((s - 1.0) / s_next) * (a_next - a)
        a, s = a_next, s_next
    return a


def objective(x: torch.Tensor, codes: torch.Tensor, dictionary: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean over rows of 1/2 ||x - a D||^2 + lambda ||a||_1 (a () float32 tensor)."""
    residual = x.float() - codes.float() @ dictionary.float()
    return (0.5 * residual.pow(2).sum(dim=1) + lam * codes.float().abs().sum(dim=1)).mean()


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm (lambda assumes L2-normalised states and unit atoms)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


@dataclass
class LearnerConfig:
    atoms: int
    """k, the dictionary size (MLSM: ~3000)."""
    lam: float = 0.05
    """lambda of the L1 penalty (MLSM: 0.05 for L2-normalised states)."""
    iterations: int = FISTA_ITERATIONS
    """FISTA iterations per minibatch's codes."""
    sweeps: int = 1
    """Block-coordinate passes over the atoms per minibatch (Mairal's Algorithm 2 loop)."""


class DictionaryLearner:
    """Online dictionary learning with non-negative codes and unit-norm atoms (see the module docstring).

    learner.step(x (M, H)) -> the minibatch objective before the update; learner.dictionary is (k, H).
    """

    def __init__(self, cfg: LearnerConfig, init: torch.Tensor) -> None:
        """init (k, H): the starting atoms (e.g. k random data rows); normalised here."""
        if init.shape[0] != cfg.atoms:
            raise ValueError(f"the initial dictionary has {init.shape[0]} atoms, atoms={cfg.atoms}")
        self.cfg = cfg
        self.dictionary = unit_rows(init.float().clone())
        k, h = self.dictionary.shape
        self.a_stat = torch.zeros(k, k, device=init.device)
        self.b_stat = torch.zeros(k, h, device=init.device)
        self.steps = 0
        self.samples = 0

    def step(self, x: torch.Tensor) -> float:
        x = x.float().to(self.dictionary.device)
        codes = fista(x, self.dictionary, self.cfg.lam, self.cfg.iterations)
        loss = float(objective(x, codes, self.dictionary, self.cfg.lam))
        m = x.shape[0]
        # Mairal et al. 2010 sec. 3.4.3 (as sklearn's MiniBatchDictionaryLearning): forget the statistics of the
        # first batches faster, their codes came from a poor dictionary; theta counts samples, eta = batch size.
        t = self.steps
        theta = (t + 1) * m if t < m - 1 else m * m + t + 1 - m
        beta = (theta + 1 - m) / (theta + 1)
        self.a_stat.mul_(beta).add_(codes.T @ codes / m)
        self.b_stat.mul_(beta).add_(codes.T @ x / m)
        self._update_atoms(x)
        self.steps += 1
        self.samples += m
        return loss

    def _update_atoms(self, x: torch.Tensor) -> None:
        """Block coordinate descent: d_j <- unit(d_j + (B_j - A_j D) / A_jj); unused atoms re-seeded."""
        d, a, b = self.dictionary, self.a_stat, self.b_stat
        for _ in range(self.cfg.sweeps):
            for j in range(d.shape[0]):
                if a[j, j] <= 1e-6:  # the spams/sklearn threshold for an unused atom
                    d[j] = unit_rows(x[torch.randint(0, x.shape[0], (1,), device=x.device)])[0]
                    continue
                u = d[j] + (b[j] - a[j] @ d) / a[j, j]
                d[j] = u / u.norm().clamp(min=1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"dictionary": self.dictionary, "a_stat": self.a_stat, "b_stat": self.b_stat,
                "steps": torch.tensor(self.steps), "samples": torch.tensor(self.samples)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["dictionary"].shape) != tuple(self.dictionary.shape):
            raise ValueError(f"saved dictionary has shape {tuple(state['dictionary'].shape)}, this learner "
                             f"{tuple(self.dictionary.shape)}; use the same --atoms and teacher or a fresh --out")
        device = self.dictionary.device
        self.dictionary = state["dictionary"].float().to(device).clone()
        self.a_stat = state["a_stat"].float().to(device).clone()
        self.b_stat = state["b_stat"].float().to(device).clone()
        self.steps, self.samples = int(state["steps"]), int(state["samples"])

    def evaluate(self, x: torch.Tensor, batch_size: int = 4096) -> float:
        """The mean objective of `x` (N, H) under the current dictionary (FISTA codes)."""
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size].float().to(self.dictionary.device)
            codes = fista(chunk, self.dictionary, self.cfg.lam, self.cfg.iterations)
            total += float(objective(chunk, codes, self.dictionary, self.cfg.lam)) * chunk.shape[0]
        return total / max(1, x.shape[0])
