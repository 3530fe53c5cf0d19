"""Process groups and parallelism applied from outside the model (the only place that starts them)."""
from .distributed import ParallelContext, barrier, init_distributed, prepare_cpu_deepspeed, shutdown

__all__ = ["ParallelContext", "barrier", "init_distributed", "prepare_cpu_deepspeed", "shutdown"]
