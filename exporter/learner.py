"""Learned durations: how long each stage and each task usually takes, and who is overrunning.

Fixed "stuck" thresholds are too late for a 40-second power stage and too noisy for a 3-hour
bring-up. The learner keeps, per ``(site, operation, stage number, component type)``, a quantile
sketch of the durations of the report steps it saw complete (a step is one component type's work
in a stage), and per ``(site, operation)`` one of whole Succeeded tasks.

- **Sketches**: DDSketch (``ddsketch``, DataDog's implementation of Masson et al., VLDB 2019): a
  1 % relative-accuracy guarantee on every quantile, mergeable, a few KB each. Well kept and
  pure Python; hand-rolled streaming quantiles would be ours to prove.
- **A window, not forever**: each key keeps its current sketch and the one before; a sketch
  holds ``window`` samples, then becomes the previous one. Quantiles merge both, so they rest on
  the last ``window`` to ``2 * window`` samples: a fleet that changed is half learned after
  ``window`` new samples and fully after ``2 * window`` (default 50: within 100 tasks).
- **Cold start**: below ``min_samples`` a key has no quantile; a task whose stage has none gets
  no ratio and no expected finish (the fixed ``NicoTaskStuck`` thresholds still apply).
- **Persistent**: sketches are kept in the state file (:meth:`Store.remember`) with the
  transition that fed them, so a restart starts where the last process stopped.

The prediction (:func:`predict`) is pure: it takes ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto

from exporter.models import ReportStatus, TaskStatus
from exporter.state import Kind, Store, TaskRecord, Transition

log = logging.getLogger(__name__)

RELATIVE_ACCURACY = 0.01
DEFAULT_WINDOW = 50
DEFAULT_MIN_SAMPLES = 20
QUANTILES = (0.5, 0.9, 0.99)

StageKey = tuple[str, str, int, str]  # site_id, operation, stage number, component type
TaskKey = tuple[str, str]  # site_id, operation
K = TypeVar("K", StageKey, TaskKey)


def _to_proto(sketch: DDSketch) -> DDSketchMessage:
    return DDSketchProto.to_proto(sketch)  # type: ignore[no-untyped-call]  # the library has no hints


def _from_proto(message: DDSketchMessage) -> DDSketch:
    return DDSketchProto.from_proto(message)  # type: ignore[no-untyped-call, no-any-return]


def _sketch() -> DDSketch:
    return DDSketch(relative_accuracy=RELATIVE_ACCURACY)


@dataclass
class Window:
    """The last ``window`` to ``2 * window`` samples of one key, as two sketches."""

    window: int = DEFAULT_WINDOW
    current: DDSketch = field(default_factory=_sketch)
    previous: DDSketch | None = None
    # Quantiles asked since the last sample (a merge per ask cost 60 us a running task).
    _quantiles: dict[float, float | None] = field(default_factory=dict, compare=False, repr=False)

    def add(self, value: float) -> None:
        self._quantiles.clear()
        self.current.add(max(value, 0.0))
        if self.current.count >= self.window:
            self.previous, self.current = self.current, _sketch()

    @property
    def count(self) -> int:
        return int(self.current.count + (self.previous.count if self.previous is not None else 0))

    def quantile(self, q: float) -> float | None:
        if q not in self._quantiles:
            self._quantiles[q] = self._merged_quantile(q)
        return self._quantiles[q]

    def _merged_quantile(self, q: float) -> float | None:
        merged = _sketch()
        merged.merge(self.current)
        if self.previous is not None:
            merged.merge(self.previous)
        value = merged.get_quantile_value(q) if merged.count else None
        return float(value) if value is not None else None

    def dump(self) -> bytes:
        parts = [_to_proto(self.current).SerializeToString()]
        if self.previous is not None:
            parts.append(_to_proto(self.previous).SerializeToString())
        # Two length-prefixed protobuf messages (the library's own wire form).
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    @classmethod
    def load(cls, body: bytes, window: int) -> Window:
        sketches: list[DDSketch] = []
        at = 0
        while at < len(body):
            size = int.from_bytes(body[at : at + 4], "big")
            message = DDSketchMessage.FromString(body[at + 4 : at + 4 + size])
            restored = _sketch()
            restored.merge(_from_proto(message))  # back to our accuracy and class
            sketches.append(restored)
            at += 4 + size
        if not sketches:
            raise ValueError("no sketch in the body")
        return cls(window, sketches[0], sketches[1] if len(sketches) > 1 else None)


@dataclass(frozen=True)
class Prediction:
    """What the learner expects of one running task at ``now``."""

    stage_number: int
    component_type: str  # the current stage's slowest component type (its p99 is the yardstick)
    stage_started: float
    stage_p50: float
    stage_p99: float
    overrun_ratio: float  # the current stage's elapsed time over its learned p99
    expected_finish: float | None  # None while a later stage has too few samples


class Learner:
    """Store subscriber: learns from finished steps and tasks; see the module docstring.

    Args:
        store: where the sketches are kept across restarts (and the transitions come from).
        window: samples per sketch (the window is ``window`` to ``2 * window`` samples).
        min_samples: samples a key needs before it gives quantiles.
    """

    def __init__(self, store: Store | None = None, *, window: int = DEFAULT_WINDOW,
                 min_samples: int = DEFAULT_MIN_SAMPLES) -> None:  # fmt: skip
        self.window = window
        self.min_samples = min_samples
        self._store = store
        self.stages: dict[StageKey, Window] = {}
        self.tasks: dict[TaskKey, Window] = {}
        if store is not None:
            self._restore(store.learned())
            store.subscribe(self)

    # -- learning ----------------------------------------------------------------------------------

    def __call__(self, t: Transition) -> None:
        record = t.record
        site, op = record.site_id, record.operation.value
        if t.kind is Kind.STEP_FINISHED and t.stage is not None and t.step is not None:
            step = t.step
            if step.status is ReportStatus.COMPLETED and step.started_at and step.finished_at:
                key: StageKey = (site, op, t.stage.number, step.component_type.value)
                self._add(self.stages, key, "stage", (step.finished_at - step.started_at).total_seconds())
        elif t.kind is Kind.FINISHED and record.task.status is TaskStatus.SUCCEEDED:
            task = record.task
            if task.started is not None and task.finished is not None:
                self._add(self.tasks, (site, op), "task", (task.finished - task.started).total_seconds())

    def _add(self, table: dict[K, Window], key: K, kind: str, value: float) -> None:
        window = table.get(key)
        if window is None:
            window = table[key] = Window(self.window)
        window.add(value)
        if self._store is not None:
            self._store.remember(_persist_key(kind, key), window.dump())

    def _restore(self, learned: Mapping[str, bytes]) -> None:
        for name, body in learned.items():
            kind, _, rest = name.partition("/")
            parts = rest.split("/")
            try:
                window = Window.load(body, self.window)
                if kind == "stage" and len(parts) == 4:
                    self.stages[(parts[0], parts[1], int(parts[2]), parts[3])] = window
                elif kind == "task" and len(parts) == 2:
                    self.tasks[(parts[0], parts[1])] = window
            except (ValueError, TypeError) as exc:  # a sketch we cannot read: learned again
                log.warning(
                    "learned durations unreadable in the state file", extra={"key": name, "error": str(exc)}
                )

    # -- reading -----------------------------------------------------------------------------------

    def stage_quantile(self, key: StageKey, q: float) -> float | None:
        window = self.stages.get(key)
        if window is None or window.count < self.min_samples:
            return None
        return window.quantile(q)

    def task_quantile(self, key: TaskKey, q: float) -> float | None:
        window = self.tasks.get(key)
        if window is None or window.count < self.min_samples:
            return None
        return window.quantile(q)

    def learned_stages(self) -> Iterator[tuple[StageKey, dict[float, float]]]:
        for key in sorted(self.stages):
            values = {q: v for q in QUANTILES if (v := self.stage_quantile(key, q)) is not None}
            if values:
                yield key, values

    def learned_tasks(self) -> Iterator[tuple[TaskKey, dict[float, float]]]:
        for key in sorted(self.tasks):
            values = {q: v for q in QUANTILES if (v := self.task_quantile(key, q)) is not None}
            if values:
                yield key, values


def _persist_key(kind: str, key: tuple[str | int, ...]) -> str:
    return kind + "/" + "/".join(str(part) for part in key)


def predict(record: TaskRecord, learner: Learner, now: float) -> Prediction | None:
    """The running task's overrun and expected finish at ``now``; None on a cold start.

    The current stage is the first ``running`` one; its yardstick is the slowest of its component
    types (their steps run in parallel). Its expected end is its start plus the learned p50, or
    ``now`` once that has passed; the stages still pending follow at their learned p50 each.
    """
    task = record.task
    report = task.report
    if task.status is not TaskStatus.RUNNING or report is None:
        return None
    stages = sorted(report.stages, key=lambda s: s.number)
    current = next((s for s in stages if s.status is ReportStatus.RUNNING), None)
    if current is None or current.started_at is None:
        return None
    site, op = record.site_id, record.operation.value

    def learned(stage_number: int, kinds: list[str]) -> tuple[str, float, float] | None:
        best: tuple[str, float, float] | None = None
        for kind in kinds:
            p50 = learner.stage_quantile((site, op, stage_number, kind), 0.5)
            p99 = learner.stage_quantile((site, op, stage_number, kind), 0.99)
            if p50 is None or p99 is None:
                return None  # one component type without data: no yardstick for the stage
            if best is None or p99 > best[2]:
                best = (kind, p50, p99)
        return best

    kinds = sorted({step.component_type.value for step in current.steps})
    now_stage = learned(current.number, kinds) if kinds else None
    if now_stage is None:
        return None
    kind, p50, p99 = now_stage
    started = current.started_at.timestamp()
    elapsed = max(0.0, now - started)
    finish: float | None = max(now, started + p50)
    for stage in stages:
        if stage.number <= current.number or stage.status is not ReportStatus.PENDING or finish is None:
            continue
        later = learned(stage.number, sorted({step.component_type.value for step in stage.steps}))
        finish = None if later is None else finish + later[1]
    return Prediction(current.number, kind, started, p50, p99, elapsed / p99 if p99 > 0 else 0.0, finish)
