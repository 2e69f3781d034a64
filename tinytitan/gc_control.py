"""Garbage collection at fixed steps (training.gc_freq), as TorchTitan does: Python's automatic
collector would pause each rank at a different moment, and every other rank waits for the slowest
at the next collective. Collecting at the same steps on every rank makes the pauses coincide."""

import gc


class GarbageCollection:
    def __init__(self, every: int):
        self.every = every
        if every:
            gc.disable()
            gc.collect(1)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def collect(self) -> None:
        gc.collect(1)  # the young generations: what a step leaves behind, in milliseconds

    def close(self) -> None:
        restore_automatic_gc()


def restore_automatic_gc() -> None:
    gc.enable()
