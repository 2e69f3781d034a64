"""Values that follow a schedule over optimizer steps: a constant, or piecewise linear through
[[step, value], ...] points (a data source's weight). Pure functions of the step, so anything that
follows one is the same after a resume, on any number of ranks."""

import math

SCHEDULE_EXPECTED = "[[step, value], ...] with integer steps >= 0 in increasing order and finite values >= 0"


def parse_schedule(value) -> list[list] | None:
    """A [[step, value], ...] schedule as stored (integer steps, float values), else None."""
    if not isinstance(value, list) or not value:
        return None
    points = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and type(point[0]) is int):
            return None
        step, weight = point
        if type(weight) not in (int, float) or not math.isfinite(weight) or weight < 0 or step < 0:
            return None
        if points and step <= points[-1][0]:
            return None
        points.append([step, float(weight)])
    return points


def schedule_value(schedule: float | list, step: float) -> float:
    """A constant, or a piecewise-linear schedule's value at `step` (flat before and after its points)."""
    if not isinstance(schedule, list):
        return schedule
    steps, values = [point[0] for point in schedule], [point[1] for point in schedule]
    if step <= steps[0]:
        return values[0]
    for (s0, v0), (s1, v1) in zip(schedule, schedule[1:]):
        if step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return values[-1]
