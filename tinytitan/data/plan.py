"""The data plan of a run across resumes: a list of segments, each a mixture (streams.MixedStream).

A run's training stream starts as one segment: its sources and weights from sample 0. When a run
resumes (or a new run continues a checkpoint's stream, checkpoint.initial_load_data) with other
sources or weights, the plan gets a new segment that starts at the saved global position:

- a source in both keeps its place: its next sample is the one after those it has given so far;
- a source new to the plan starts at its own sample 0;
- a source left out gives no more samples (its count stays among the checkpoint's per-source counts);
- a weight schedule's steps are the run's optimizer steps: a resume continues the step count, a new
  run counts from 0; a changed global batch is a new segment too, since the step of a sample changes
  (the sources continue all the same; only the order of the samples to come is drawn anew).

Segment k > 0 draws its blocks from (seed, k), so sample i stays a pure function of (data, seed,
plan, i) and resuming stays O(1): the checkpoint holds every segment (start sample, start step,
samples per step, seed, each source's weight, data identity and first sample) and each source's
samples consumed so far. Every change is said in one line at resume. Refused, in one line: a source
of the same name whose train split or tokenizer changed (re-prepared data; name it anew to start it
from its sample 0). A plan that does not change continues its last segment as it was.
"""

import json

from tinytitan.data.streams import MixedStream
from tinytitan.errors import UserError


def segment_record(stream: MixedStream) -> dict:
    """What defines the stream's own segment, as JSON-ready values."""
    return {
        "start": stream.start,
        "start_step": stream.start_step,
        "samples_per_step": stream.samples_per_step,
        "seed": stream.seed,
        "sources": {
            name: {"weight": weight, "data": stream.identities.get(name, ""), "first": int(offset)}
            for name, weight, offset in zip(stream.names, stream.weights, stream.offsets)
        },
    }


def plan_record(stream: MixedStream) -> list[dict]:
    """Every segment of the plan so far, the stream's own last."""
    return [*stream.history, segment_record(stream)]


def continue_plan(
    stream: MixedStream, saved_plan: list[dict], consumed: dict[str, int], position: int, new_run: bool
) -> tuple[MixedStream, list[str]]:
    """The stream that continues `saved_plan` at `position` with `stream`'s sources and weights (as
    configured now), and a line for each change. `consumed`: each source's samples before `position`."""
    last = saved_plan[-1]
    _refuse_changed_data(stream, last)
    step = 0 if new_run else last["start_step"] + (position - last["start"]) // last["samples_per_step"]
    retired = {name: count for name, count in consumed.items() if name not in stream.names}
    if _same_mixture(stream, last, new_run):
        first = {name: source["first"] for name, source in last["sources"].items()}
        return _segment(stream, saved_plan[:-1], last, first, retired), []
    record = {
        "start": position,
        "start_step": step,
        "samples_per_step": stream.samples_per_step,
        "seed": [*saved_plan[0]["seed"], len(saved_plan)],
    }
    continued = _segment(stream, saved_plan, record, {name: consumed.get(name, 0) for name in stream.names}, retired)
    return continued, _describe(stream, last, consumed, position, step)


def _segment(
    stream: MixedStream, history: list[dict], record: dict, offsets: dict[str, int], retired: dict[str, int]
) -> MixedStream:
    segment = type(stream)(
        stream.streams,
        stream.weights,
        record["seed"],
        stream.names,
        record["samples_per_step"],
        record["start"],
        record["start_step"],
        [offsets[name] for name in stream.names],
    )
    segment.settings, segment.identities, segment.history = stream.settings, stream.identities, history
    segment.retired = retired
    return segment


def _same_mixture(stream: MixedStream, last: dict, new_run: bool) -> bool:
    """Whether the last segment goes on as it was: the same sources with the same weights, the same
    samples per step (the step of a sample places the schedules of this and any later segment), and
    for a new run, no schedule (whose steps would count anew)."""
    weights = {name: source["weight"] for name, source in last["sources"].items()}
    if weights != dict(zip(stream.names, stream.weights)) or last["samples_per_step"] != stream.samples_per_step:
        return False
    return not (new_run and any(isinstance(weight, list) for weight in stream.weights))


def _refuse_changed_data(stream: MixedStream, last: dict) -> None:
    for name in stream.names:
        saved = last["sources"].get(name, {}).get("data")
        if saved and saved != stream.identities.get(name):
            raise UserError(
                f"resume: data source {name!r}: {stream.identities.get(name)}: the checkpoint's stream read it as "
                f"{saved} (re-prepared data cannot continue where the old one stopped: resume with that data, or "
                "give the source another name to start it at its sample 0)"
            )


def _describe(stream: MixedStream, last: dict, consumed: dict[str, int], position: int, step: int) -> list[str]:
    """One line per source that changes, at the new segment's start."""
    where, lines = f"from sample {position} (step {step})", []
    before = {name: source["weight"] for name, source in last["sources"].items()}
    for name, weight in zip(stream.names, stream.weights):
        if name not in before:
            lines.append(f"resume: data source {name!r} is new: weight {json.dumps(weight)} {where}, at its sample 0")
        elif before[name] != weight:
            lines.append(
                f"resume: data source {name!r}: weight {json.dumps(before[name])} -> {json.dumps(weight)} {where}, "
                f"continuing at its sample {consumed.get(name, 0)}"
            )
    for name in before.keys() - set(stream.names):
        lines.append(f"resume: data source {name!r} is left out {where}, after {consumed.get(name, 0)} samples")
    if last["samples_per_step"] != stream.samples_per_step:
        lines.append(
            f"resume: {last['samples_per_step']} -> {stream.samples_per_step} samples per step "
            f"(training.global_batch_tokens / seq_len) {where}: each source continues at its next sample"
        )
    if not lines:  # the same weights and batch: a new run whose weight schedules count its own steps
        lines.append(f"resume: the weight schedules count this run's steps {where}, each source at its next sample")
    return lines
