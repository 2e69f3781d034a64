"""The layout of a run folder, known in this one place:

<dump_folder>/<job name>/
    config.toml                 the resolved config the run was started with
    tb/                         TensorBoard event files
    wandb/                      Weights & Biases: run_id (a resumed run logs into the same run), offline runs
    profiles/step-<N>/          profiler traces (and CUDA memory snapshots) from step N, a file per rank
    checkpoints/step-<N>/       published training checkpoints (DCP, manifest.json), newest = largest N
    checkpoints/step-<N>.tmp/   a save in progress (never resumed from)
    checkpoints/step-<N>-model/ a model-only export of step N
"""

import re
from dataclasses import dataclass
from pathlib import Path

_STEP = re.compile(r"step-(\d+)")
_EXPORT = re.compile(r"step-(\d+)-model")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def of_job(cls, dump_folder: str, name: str) -> "RunFolder":
        return cls(Path(dump_folder).expanduser() / name)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunFolder | None":
        """The run folder holding `checkpoint` (a step-<N> or step-<N>-model folder of its
        checkpoints/), when it has the run's config.toml; else None."""
        checkpoint = Path(checkpoint).expanduser().resolve()
        named_like_one = _STEP.fullmatch(checkpoint.name) or _EXPORT.fullmatch(checkpoint.name)
        run = cls(checkpoint.parent.parent)
        if not named_like_one or checkpoint.parent != run.checkpoints or not run.config.is_file():
            return None
        return run

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    def profile(self, step: int) -> Path:
        return self.root / "profiles" / f"step-{step}"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"

    def staging(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}.tmp"

    def export(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}-model"

    def published_steps(self) -> list[int]:
        """Steps of the published checkpoints (every step-<N>), in increasing order. A save is renamed
        to step-<N> only once complete, so one that cannot be loaded is damaged: it is listed, for
        the resume to refuse it by name, never skipped for an older one."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            int(match.group(1)) for path in self.checkpoints.iterdir() if (match := _STEP.fullmatch(path.name))
        )

    def stale_saves(self) -> list[Path]:
        """Folders of saves that never finished (a kill during a save)."""
        return sorted(self.checkpoints.glob("step-*.tmp"))
