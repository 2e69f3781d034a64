"""Progress of long work on stderr: counts and rates, redrawn in place on a terminal, or a line
every few seconds when the output goes to a log file."""

import sys
import time


class Progress:
    """`rates` names the counters shown per second too (default: the first counter, or the units
    when there is none)."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "items",
        interval_s: float | None = None,
        rates: tuple[str, ...] | None = None,
    ):
        self.what, self.total, self.unit, self.rates = what, total, unit, rates
        self.done = 0
        self.counters: dict[str, float] = {}
        self._tty = sys.stderr.isatty()
        self._interval_s = interval_s if interval_s is not None else (0.2 if self._tty else 5.0)
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1, **counters: float) -> None:
        """Count `n` more units, and add to named counters (e.g. tokens=...)."""
        self.done += n
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._print(final=False)

    def close(self) -> None:
        self._print(final=True)

    def _print(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total is not None else "")
        parts = [f"{count} {self.unit}"]
        parts += [f"{_number(value)} {name}" for name, value in self.counters.items()]
        for name in self.rates or [next(iter(self.counters), self.unit)]:
            value = self.done if name == self.unit else self.counters.get(name, 0)
            parts.append(f"{_number(value / elapsed)} {name}/s")
        line = f"{self.what}: " + ", ".join(parts) + f" [{elapsed:.1f}s]"
        if self._tty:
            print("\r" + line + ("\n" if final else ""), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _number(value: float) -> str:
    """Whole numbers with thousands separators; one decimal for small fractional ones (0.4 MB)."""
    return f"{value:,.1f}" if value != int(value) and abs(value) < 100 else f"{value:,.0f}"
