"""Progress of a sweep on the console: what each running trial is doing, labelled with its point.

Two halves, joined by the workers' stdout:

* **In a worker** (``python -m lightgen.sweep``, spawned by the launcher with ``LIGHTGEN_PROGRESS_EVENTS=1``),
  the pipeline reports :func:`start_trial` / :func:`phase` / :func:`update` / :func:`end_trial`; each becomes
  one line ``EVENT_PREFIX + json`` on stdout. Outside a sweep worker these calls do nothing (``lightgen
  train`` keeps its own bar).
* **In the launcher**, :class:`SweepProgress` reads every worker's output (stdout and stderr, one pipe per
  worker): events drive one labelled bar per running trial (``scale=1K · seed 0  training ━━━ 30/60``)
  when stdout is a terminal (``rich``), or plain periodic lines when it is piped
  (``[scale=1K · seed 0] training 30/60 (50%) loss 0.52``, at each phase change and every
  ``LIGHTGEN_PROGRESS_INTERVAL`` seconds, default 10). Any other line a worker writes is printed with
  the label of the trial it runs (``[scale=1K · seed 0] warning: …``).

Phases: ``dataset`` (building or reading the distillation set), ``training``, ``sampling`` (the sample
grid and GenEval's images), ``GenEval`` (scoring).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

ENV_EVENTS = "LIGHTGEN_PROGRESS_EVENTS"
ENV_INTERVAL = "LIGHTGEN_PROGRESS_INTERVAL"
EVENT_PREFIX = "\x1elightgen-progress "
PHASES = ("dataset", "training", "sampling", "GenEval")

# --------------------------------------------------------------------------------------------------
# worker side: events on stdout
# --------------------------------------------------------------------------------------------------
_state: dict[str, Any] = {"trial": None, "phase": None, "last": 0.0}
_MIN_GAP = 0.5  # seconds between two update events of one phase (the launcher samples them anyway)


def enabled() -> bool:
    return os.environ.get(ENV_EVENTS) == "1"


def _emit(event: dict[str, Any]) -> None:
    if not enabled():
        return
    try:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event, default=str) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # a closed pipe (the launcher went away): progress is a convenience
        pass


def start_trial(label: str) -> None:
    _state.update(trial=label, phase=None, last=0.0)
    _emit({"ev": "start", "trial": label})


def phase(name: str, total: int | None = None, done: int = 0) -> None:
    """The trial enters phase ``name`` (of :data:`PHASES`), with ``total`` units of work if known."""
    _state.update(phase=name, last=time.monotonic())
    _emit({"ev": "phase", "trial": _state["trial"], "phase": name, "total": total, "done": done})


def update(done: int, total: int | None = None, info: str = "", force: bool = False) -> None:
    """Work done in the current phase; rate-limited unless ``force`` or the phase is complete."""
    now = time.monotonic()
    if not force and now - _state["last"] < _MIN_GAP and (total is None or done < total):
        return
    _state["last"] = now
    _emit({"ev": "update", "trial": _state["trial"], "phase": _state["phase"], "done": done, "total": total,
           "info": info})


def end_trial(status: str, value: float | None = None) -> None:
    _emit({"ev": "end", "trial": _state["trial"], "status": status, "value": value})
    _state.update(trial=None, phase=None)


def counting_sampler(sampler: Callable, total: int, then: str | None = None) -> Callable:
    """``sampler`` reporting ``sampling`` progress (images made of ``total``); once all are made, the
    phase ``then`` (e.g. ``GenEval``: scoring follows sampling) begins."""
    if not enabled():
        return sampler
    made = [0]
    phase("sampling", total)

    def wrapped(prompts: Any, seeds: Any, *args: Any, **kwargs: Any) -> Any:
        out = sampler(prompts, seeds, *args, **kwargs)
        made[0] += len(prompts)
        update(min(made[0], total), total)
        if made[0] >= total and then:
            phase(then)
        return out

    return wrapped


# --------------------------------------------------------------------------------------------------
# launcher side: a view of all workers' output
# --------------------------------------------------------------------------------------------------
def parse_event(line: str) -> dict[str, Any] | None:
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        ev = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


class SweepProgress:
    """What the launcher shows while workers run. ``feed(worker, line)`` with each line a worker writes;
    ``interactive`` (default: stdout is a terminal) chooses rich bars over plain lines."""

    def __init__(self, console: Any = None, interactive: bool | None = None, interval: float | None = None,
                 out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.interactive = self.out.isatty() if interactive is None else interactive
        self.interval = float(os.environ.get(ENV_INTERVAL, "10")) if interval is None else interval
        self.console = console
        self.muted = False
        self.trials: dict[str, dict[str, Any]] = {}  # label -> {phase, done, total, info, t, worker}
        self.by_worker: dict[Any, str] = {}  # worker -> label of the trial it runs
        self.finished: list[tuple[str, str, float | None]] = []
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.interactive and self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = self.console or Console(file=self.out)
            self._bar = Progress(TextColumn("{task.fields[label]:<22}"), TextColumn("{task.fields[phase]:<8}"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=self.console, transient=False)
            self._bar.start()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def mute(self) -> None:
        """Stop showing worker output (after Ctrl-C: their shutdown is not the user's concern)."""
        self.muted = True
        self.stop()

    @property
    def running(self) -> list[str]:
        return list(self.trials)

    # -- input ------------------------------------------------------------------------------------
    def feed(self, worker: Any, line: str) -> None:
        line = line.rstrip("\r\n")
        with self._lock:
            ev = parse_event(line)
            if ev is not None:
                self._event(worker, ev)
            elif line.strip() and not self.muted:
                label = self.by_worker.get(worker) or f"worker {worker}"
                self._print(f"[{label}] {line}")

    def worker_gone(self, worker: Any) -> None:
        """A worker exited: its trial (if any) is no longer running."""
        with self._lock:
            label = self.by_worker.pop(worker, None)
            if label is not None and label in self.trials:
                self._drop(label)

    def _event(self, worker: Any, ev: dict[str, Any]) -> None:
        label = str(ev.get("trial") or self.by_worker.get(worker) or f"worker {worker}")
        kind = ev.get("ev")
        if kind == "start":
            self.by_worker[worker] = label
            self.trials[label] = {"phase": "starting", "done": 0, "total": None, "info": "", "t": 0.0,
                                  "worker": worker, "t0": time.monotonic()}
            self._show(label, changed=True)
        elif kind in ("phase", "update"):
            st = self.trials.setdefault(label, {"phase": "", "done": 0, "total": None, "info": "", "t": 0.0,
                                                "worker": worker, "t0": time.monotonic()})
            changed = kind == "phase" or (ev.get("phase") and ev.get("phase") != st["phase"])
            st.update(phase=ev.get("phase") or st["phase"], done=int(ev.get("done") or 0), total=ev.get("total"),
                      info=ev.get("info") or ("" if changed else st["info"]))
            self._show(label, changed=bool(changed))
        elif kind == "end":
            st = self.trials.get(label)
            secs = time.monotonic() - st["t0"] if st else None
            value = ev.get("value")
            self.finished.append((label, str(ev.get("status")), value))
            self._drop(label)
            if not self.muted:
                score = f", objective {value:.3f}" if isinstance(value, (int, float)) else ""
                took = f" in {secs:.0f} s" if secs is not None else ""
                self._print(f"[{label}] {str(ev.get('status')).lower()}{took}{score}")

    # -- output -----------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def _drop(self, label: str) -> None:
        self.trials.pop(label, None)
        task = self._tasks.pop(label, None)
        if task is not None and self._bar is not None:
            self._bar.remove_task(task)

    def _show(self, label: str, changed: bool) -> None:
        if self.muted:
            return
        st = self.trials[label]
        if self._bar is not None:
            fields = {"label": label, "phase": st["phase"], "info": st["info"]}
            if label not in self._tasks:
                self._tasks[label] = self._bar.add_task(label, total=st["total"], completed=st["done"], **fields)
            else:
                self._bar.update(self._tasks[label], total=st["total"], completed=st["done"], **fields)
            return
        now = time.monotonic()
        complete = bool(st["total"]) and st["done"] >= st["total"] and st.get("shown") != (st["phase"], st["done"])
        if changed or complete or now - st["t"] >= self.interval:
            st["shown"] = (st["phase"], st["done"])
            st["t"] = now
            self._print(f"[{label}] {plain_line(st)}")


def plain_line(st: dict[str, Any]) -> str:
    """``training 30/60 (50%) loss 0.52`` — one trial's progress as a plain line."""
    text = st["phase"]
    total = st.get("total")
    if total:
        text += f" {st['done']}/{total} ({100 * st['done'] / total:.0f}%)"
    elif st.get("done"):
        text += f" {st['done']}"
    if st.get("info"):
        text += f" {st['info']}"
    return text


def read_lines(stream: TextIO, worker: Any, sink: Callable[[Any, str], None]) -> threading.Thread:
    """A daemon thread passing each line of ``stream`` to ``sink(worker, line)`` until end of file."""

    def pump() -> None:
        try:
            for line in iter(stream.readline, ""):
                sink(worker, line)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=pump, name=f"progress-{worker}", daemon=True)
    t.start()
    return t
