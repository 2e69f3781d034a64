"""What the training loop reports and how it is watched, in one place: the log line (throughput,
progress and ETA, the step-time breakdown), TensorBoard and Weights & Biases, loss-spike events,
the profiler, and garbage collection at fixed steps. train.py calls it around each step."""

import contextlib
import dataclasses
import math

import torch

from tinytitan.config import JobConfig, to_toml
from tinytitan.divergence import SpikeDetector, diverged
from tinytitan.gc_control import GarbageCollection
from tinytitan.metrics import MetricsLogger, Progress, Throughput, step_values
from tinytitan.parallel import all_reduce_sum, is_main_process
from tinytitan.profiling import StepProfiler
from tinytitan.run_folder import RunFolder
from tinytitan.step_timer import StepTimer


class Monitor:
    def __init__(self, config: JobConfig, run: RunFolder, env, model, first_step: int, guarded: bool):
        self.config, self.run, self.env, self.guarded = config, run, env, guarded
        main, metrics = is_main_process(), config.metrics
        sections = dataclasses.asdict(config)
        wandb = None
        if metrics.enable_wandb and main:
            from tinytitan.wandb_run import WandbRun

            wandb = WandbRun(run.wandb, metrics.wandb_project, config.job.name, sections)
        tensorboard = run.tensorboard if metrics.enable_tensorboard and main else None
        description = (to_toml(config), sections)
        self.logger = MetricsLogger(tensorboard, not main, config.training.steps, wandb, description)
        self.throughput = Throughput.of(model, config.training.seq_len, env.device)
        self.progress = Progress(first_step, config.training.steps)
        self.timer, self.spikes = StepTimer(env.device), SpikeDetector(config.training.loss_spike_stddevs)
        self.profiler = StepProfiler(config.profiling, run.profile(config.profiling.start_step), env.rank, env.device)
        self.gc = GarbageCollection(config.training.gc_freq)
        self.first_step = first_step

    @contextlib.contextmanager
    def step(self, step: int):
        """Around one training step: its timer (the loop marks the phases) and, if asked, the profiler."""
        self.timer.start_step()
        with self.profiler.step(step):
            yield self.timer

    def after_step(
        self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, tokens_seen: int, counters=dict
    ) -> None:
        """Count the step's tokens; on a log step, the log line (the step's only host sync when unguarded)
        and the scalars `counters()` gives (the data sources' samples and tokens seen), unprinted."""
        t = self.config.training
        self.throughput.tokens += t.global_batch_tokens // self.env.world_size  # this rank's
        if step == self.first_step or step % self.config.metrics.log_freq == 0 or step == t.steps:
            values = step_values(all_reduce_sum(loss), grad_norm, lr, self.throughput, self.env.device)
            if not self.guarded and not math.isfinite(values["loss"]):
                raise diverged(
                    step, f"the loss is {values['loss']} (training.skip_nonfinite_steps skips such steps)", self.run
                )
            values.update(self.progress.report(step, tokens_seen), **self.timer.report())
            self.logger.log(step, values)
            self.logger.log_scalars(step, counters())
            spike = self.spikes.check(values["loss"])
            if spike:
                self.logger.event(step, spike)
        if self.gc.due(step):
            with self.timer.phase("gc"):
                self.gc.collect()

    def event(self, step: int, text: str) -> None:
        self.logger.event(step, text)

    def validation(self, step: int, values: dict[str, float]) -> None:
        self.logger.log(step, values)
        self.throughput.reset()  # evaluation time is not training throughput

    def close(self) -> None:
        self.profiler.stop()
        self.gc.close()
        self.logger.close()
