"""The training loop, composed of a checkpointer, a metric logger and a resumable data stream."""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..config import RunConfig, to_yaml
from ..config.deepspeed import build_deepspeed_config, zero_stage
from ..data.loader import build_train_stream
from ..checkpoint_format import PIPELINE_LAYERS
from ..data.heldout import heldout_note
from ..data.shards import read_manifest
from ..objectives.base import BuildContext
from ..objectives.compose import build_objectives
from ..objectives.module import PretrainModule
from ..parallel import ParallelContext
from ..parallel.parallelize import ParallelizeOptions, parallelize
from ..parallel.pipeline import canonical_names, layer_names, pipeline_layers, split_micro_batch
from .analysis import PROBE_MASKING, ConceptMonitor, summary_line
from .model_init import check_trainable, freeze_all_but, load_parts
from .builders import (build_collator, build_model, decoded_positions, model_config, param_groups, split_groups,
                       to_device, vocab_multiple, vocabulary_for, warm_start_backbone)
from .checkpointer import Checkpointer, latest_checkpoint
from .guard import DivergedError, StepGuard
from .resume_choice import check_same_model
from .preemption import Preempted, PreemptionWatch
from .step_metrics import StepMetrics
from .flops import count_step_flops, mfu, peak_flops
from .metrics import MetricLogger
from .schedule import build_scheduler
from .state import TrainState, seed_everything


class Trainer:
    """Builds engine, data and bookkeeping from the run config, then trains to `train.max_steps`."""

    def __init__(self, cfg: RunConfig, ds_config_path: str, ctx: ParallelContext) -> None:
        import deepspeed

        self.cfg, self.ctx = cfg, ctx
        # From the start: a signal during set-up still ends in a checkpoint after the first step.
        self.preemption = PreemptionWatch(ctx.device).install()
        self.manifest = read_manifest(cfg.data.shards)
        self.vocab = vocabulary_for(self.manifest)
        self.tokenizer_dir = str(Path(cfg.data.shards) / "tokenizer")
        self.ds_config = build_deepspeed_config(ds_config_path, cfg.train, ctx.data_parallel_size)
        self.model_cfg = model_config(cfg.model, self.manifest.vocab_size, self.manifest.seq_len,
                                      vocab_multiple(cfg.parallel), self.manifest.mask_token_id)
        seed_everything(cfg.seed)
        model = build_model(self.model_cfg)
        self.checkpointer = Checkpointer(cfg.run_dir, cfg.checkpoint.keep_last, ctx)
        self.checkpoint_files: dict[str, str] = {}
        resume = self.checkpointer.resume_kind()  # refuses an unresumable layout before any engine exists
        if resume is not None:
            check_same_model(self.checkpointer.resume_path(), _plain(cfg)["model"])
        if resume is None:  # a resume overwrites every weight anyway
            warm_start_backbone(model, ctx.is_main)
            if cfg.train.init_from:
                self._say(load_parts(model, cfg.train.init_from, cfg.train.init_modules))
        self.module = PretrainModule(model, self._objectives(model))
        check_trainable(self.module, cfg.train.trainable)
        self._say(f"{self.module.objectives.describe()}; layout: tensor {ctx.tensor_parallel_size} x pipeline "
                  f"{ctx.pipeline_parallel_size} x data {ctx.data_parallel_size}")
        if resume == "reshard":
            # ZeRO partitions of another data-parallel size load through DeepSpeed's universal checkpoint.
            self.ds_config["checkpoint"] = {"load_universal": True}
        module, named = self._engine_module()
        t = cfg.train
        self.engine, _, _, _ = deepspeed.initialize(
            model=module,
            mpu=None if self.pipelined else ctx.mpu,  # a pipeline brings its own process grid
            model_parameters=self._optimizer_groups(named),
            config=self.ds_config,
            lr_scheduler=partial(build_scheduler, warmup=t.warmup_steps, total=t.max_steps, floor=t.min_lr_ratio,
                                 backbone_freeze_steps=t.backbone_freeze_steps),
        )
        self.config_yaml = to_yaml(cfg)
        self.state = self.checkpointer.load(self.engine) or TrainState()
        self.guard = StepGuard(cfg.guard, self.state.skipped_steps)
        if ctx.is_main:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.run_dir) / "config.yaml").write_text(self.config_yaml)
        self.logger = MetricLogger(cfg.run_dir, ctx.is_main, cfg.logging, _plain(cfg), self.state.step)
        self.tokens_per_step = t.micro_batch_size * t.grad_accum_steps * self.manifest.seq_len * ctx.data_parallel_size
        seq_len = self.manifest.seq_len
        self.flops_per_sample = count_step_flops(self.model_cfg, cfg.objective.terms, seq_len,
                                                 decoded_positions(cfg.objective.masking, seq_len)).train
        device_name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None
        self.peak_flops = peak_flops(device_name, t.peak_tflops)
        self.monitor = self._concept_monitor()

    def _concept_monitor(self) -> Optional[ConceptMonitor]:
        a = self.cfg.analysis
        if a.interval == 0:
            return None
        if self.pipelined:
            self._say("concept analysis is off under pipeline parallelism (no stage holds every concept layer); "
                      "score an exported checkpoint with `python -m evals.concepts` instead")
            return None
        self._say(heldout_note(self.manifest, a.heldout))
        probe = build_collator(PROBE_MASKING, self.manifest.mask_token_id, self.vocab)
        return ConceptMonitor(a, self.manifest, self.model_cfg.num_concepts, self.ctx, self._collator(), probe)

    def _collator(self, first_step: int = 0) -> Any:
        extras = self.module.objectives.batch_makers(self.manifest.separator_id, self.manifest.seq_len)
        return build_collator(self.cfg.objective.masking, self.manifest.mask_token_id, self.vocab,
                              self.cfg.train.grad_accum_steps, first_step, extras)

    @property
    def pipelined(self) -> bool:
        return self.ctx.pipeline_parallel_size > 1

    def _objectives(self, model: torch.nn.Module) -> Any:
        o, ctx = self.cfg.objective, self.ctx
        build = BuildContext(model=model, cross_entropy=o.cross_entropy, ce_chunk_size=o.ce_chunk_size,
                             cuda=ctx.device.type == "cuda", tensor_parallel_size=ctx.tensor_parallel_size,
                             tensor_group=ctx.tensor_group, data_group=ctx.data_group, say=self._say)
        return build_objectives(o.terms, o.weighting.scheme, o.weighting.options, build)

    def _engine_module(self) -> tuple[torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]:
        """What DeepSpeed wraps: the trained module, or this rank's pipeline stage of it; with its trainable
        parameters under their names in the trained module (model.*, objectives.*)."""
        t = self.cfg.train
        options = ParallelizeOptions(t.activation_checkpointing, t.compile, zero_stage(self.ds_config))
        engine_module = parallelize(self.module, self.ctx, options)
        if not self.pipelined:
            return engine_module, self._freeze(list(engine_module.named_parameters()))
        # Activations cross stages as several tensors; DeepSpeed's TP partitioning of them assumes one.
        self.ds_config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
        # Which parameter each layer file holds: the export reads it instead of knowing the layer order.
        self.checkpoint_files[PIPELINE_LAYERS] = json.dumps(layer_names(self.module, pipeline_layers(self.module)),
                                                            indent=1)
        names = canonical_names(self.module, engine_module)
        return engine_module, self._freeze([(names[n], p) for n, p in engine_module.named_parameters()])

    def _freeze(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
        """train.trainable: the parameters outside it stop requiring gradients (after parallelize, on the
        parameters DeepSpeed will see); param_groups then leaves them out of the optimizer."""
        if self.cfg.train.trainable:
            self._say(freeze_all_but(named, self.cfg.train.trainable))
        return named

    def _optimizer_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[dict]:
        t = self.cfg.train
        groups = param_groups(named, t.weight_decay, t.lr, t.backbone_lr_mult)
        if not self.pipelined:
            return groups
        most = torch.tensor([len(groups)], device=self.ctx.device)  # NCCL reduces only device tensors
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        return split_groups(groups, int(most.item()))

    def _stream(self) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        d, position = self.cfg.data, self.state.data_position
        restart = self.state.restart_epoch
        # A restarted stream draws its batch 0 at the resumed step; a continued one carries its batch counters.
        collate = self._collator(first_step=self.state.step if restart is not None else 0)
        if restart is not None:
            self._say(f"data-parallel size changed: the data stream restarts at epoch {restart}")
            seed_everything(self.cfg.seed + self.state.step)  # the old ranks' RNG streams do not map either
        return build_train_stream(
            d.shards, self.cfg.train.micro_batch_size, self.cfg.seed, self.ctx.data_parallel_rank,
            self.ctx.data_parallel_size, d.num_workers, collate,
            state=None if restart is not None else position or None, shuffle=d.shuffle,
            verify_checksums=d.verify_checksums, start_epoch=restart or 0,
            # Held out whenever analysis is on, also where a pipeline skips it: same config, same data.
            heldout=self.cfg.analysis.heldout if self.cfg.analysis.interval > 0 else "",
        )

    def _train_step(self, stream: Iterator) -> StepMetrics:
        """One optimizer step over grad_accum_steps micro-batches; returns this rank's loss and term metrics."""
        self.module.set_step(self.state.step)
        if self.pipelined:
            return self._pipeline_step(stream)
        step = StepMetrics()
        for _ in range(self.cfg.train.grad_accum_steps):
            batch, position = next(stream)
            out = self.engine(**to_device(batch, self.ctx.device))
            self.engine.backward(out.loss)
            self.engine.step()
            step.add(out.loss, out.metrics)
            self.state.data_position = position
        self._count_step()
        return step

    def _pipeline_step(self, stream: Iterator) -> StepMetrics:
        """The engine runs the micro-batches through the stages itself (1F1B). Every stage reads the same
        stream, so data positions stay in step on all ranks; the first uses inputs, the last the objectives'
        keys (and records their metrics, which only the last stage has)."""
        micro = []
        reads = self.module.objectives.reads
        for _ in range(self.cfg.train.grad_accum_steps):
            batch, self.state.data_position = next(stream)
            micro.append(split_micro_batch(batch, reads, self.module.model.decoder.uses_tokens))
        loss = self.engine.train_batch(data_iter=iter(micro))  # mean over micro-batches and data-parallel ranks
        step = StepMetrics(holds_metrics=self.engine.is_last_stage())
        for metrics in self.module.objectives.collected:
            step.add(None, metrics)
        self.module.objectives.collected.clear()
        step.loss_sum, step.count = float(loss), 1
        self._count_step()
        return step

    def _count_step(self) -> None:
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        self.state.samples_seen += self.tokens_per_step // self.manifest.seq_len

    def _record(self, steps: list[StepMetrics], elapsed: float) -> dict[str, Any]:
        grad_norm = self.engine.get_global_grad_norm()
        tokens_per_sec = self.tokens_per_step * len(steps) / max(elapsed, 1e-9)
        samples_per_sec = tokens_per_sec / self.manifest.seq_len
        loss, terms = StepMetrics.global_means(steps, self.module.objectives.metric_names(), self.ctx.device)
        return {
            **self.state.counters(),
            "loss": loss,
            "lr": self.engine.get_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": tokens_per_sec / self.ctx.world_size,
            "mfu": mfu(self.flops_per_sample, samples_per_sec, self.ctx.world_size, self.peak_flops),
            **terms,
        }

    def fit(self) -> TrainState:
        t = self.cfg.train
        try:
            if self.state.step >= t.max_steps:
                self._say(f"run at step {self.state.step} >= train.max_steps={t.max_steps}; raise it to continue")
                return self.state
            self._say(f"training {self.state.step} -> {t.max_steps} steps; run dir {self.cfg.run_dir}")
            self._loop()
        except DivergedError as exc:
            newest = latest_checkpoint(self.checkpointer.root)
            kept = f"the last healthy checkpoint is {newest}" if newest else "no checkpoint was written yet"
            raise DivergedError(f"{exc}; the run stopped and {kept} (lower train.lr or raise train.warmup_steps, "
                                "then resume)") from None
        finally:
            self.logger.close()
            self.preemption.uninstall()
        return self.state

    def _loop(self) -> None:
        t, ck = self.cfg.train, self.cfg.checkpoint
        self.engine.train()
        stream, steps, tick = self._stream(), [], time.perf_counter()
        while self.state.step < t.max_steps:
            step = self._train_step(stream)
            if self._healthy(step):
                steps.append(step)
            if steps and (self.state.step % t.log_interval == 0 or self.state.step == t.max_steps):
                self._log(steps, time.perf_counter() - tick)
                steps, tick = [], time.perf_counter()
            paused = time.perf_counter()  # analysis and checkpoints stay out of the throughput window
            if self.monitor is not None and self.monitor.due(self.state.step, t.max_steps):
                self._analyse()
            preempted = self.preemption.requested()
            if preempted or self.state.step % ck.interval == 0 or self.state.step == t.max_steps:
                self._checkpoint(preempted)
            if preempted:
                raise Preempted(f"{self.preemption.signal or 'a signal on another rank'} at step {self.state.step}: "
                                f"checkpoint written; run the same command to resume")
            tick += time.perf_counter() - paused

    def _healthy(self, step: StepMetrics) -> bool:
        """Account for the step just taken with the guard; False (and a warning record) when it was skipped."""
        grad_norm = self.engine.get_global_grad_norm()
        record = self.guard.after_step(self.state.step, self.engine.was_step_applied(), step.loss,
                                       None if grad_norm is None else float(grad_norm))
        self.state.skipped_steps = self.guard.total
        if record is None:
            return True
        self.logger.warn(record, f"warning: step {record['step']} skipped (non-finite loss or gradient norm; "
                                 f"{record['skipped_in_a_row']} in a row, {record['skipped_steps']} in all)")
        self.guard.check_limits(self.state.step)
        return False

    def _log(self, steps: list[StepMetrics], elapsed: float) -> None:
        record = self._record(steps, elapsed)
        self.logger.log(record)
        spike = self.guard.spike(record["step"], record["loss"])
        if spike is not None:
            self.logger.warn(spike, f"warning: step {spike['step']} loss {spike['loss']:.4f} is "
                                    f"{spike['factor']:.1f}x the running median {spike['running_median']:.4f}")

    def _checkpoint(self, preempted: bool) -> None:
        """A scheduled checkpoint waits while steps are being skipped; a preempted run saves anyway (skipped
        steps left the weights as they were), marked unhealthy so pruning keeps the last healthy one."""
        if self.guard.skipping and not preempted:
            self._say(f"checkpoint at step {self.state.step} not written: the last {self.guard.in_a_row} step(s) "
                      "were skipped")
            return
        path = self.checkpointer.save(self.engine, self.state, self.config_yaml, self.tokenizer_dir,
                                      self.checkpoint_files, healthy=not self.guard.skipping)
        self._say(f"checkpoint {path}")

    def _analyse(self) -> None:
        record = self.monitor.measure(self.engine, self.state.step)
        if record is not None:
            self.logger.log(record, summary_line(record, self.model_cfg.num_concepts))

    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)


def _plain(cfg: RunConfig) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(to_yaml(cfg))
