"""Weights & Biases (metrics.enable_wandb): the scalars of the log line, under the job's name, with the
resolved config as the run's config. The run id is kept in the run folder (wandb/run_id), so a
resumed run goes on logging into the same W&B run. WANDB_MODE (offline, disabled) is wandb's own
to honour; offline runs are written under <run folder>/wandb/.
"""

from pathlib import Path

from tinytitan.errors import UserError
from tinytitan.files import atomic_write_text


class WandbRun:
    def __init__(self, folder: Path, project: str, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "metrics.enable_wandb = true: the wandb package is not installed (pip install wandb, or "
                "pip install -e '.[wandb]')"
            ) from None
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None  # None: wandb makes one
        self._run = wandb.init(
            project=project, name=name, id=run_id, resume="allow", dir=str(folder.parent), config=config
        )
        atomic_write_text(id_file, self._run.id + "\n")

    @property
    def id(self) -> str:
        return self._run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()
