"""A run's waits and signals: which steps wait for what, which signals the task has, and when the
whole run waits, so that it parks (the task is written WAITING and gives up its lease and slot).

Signals are taken in in the order of the task's log. Each goes to the step it names, else to the
step that has waited longest for its name, else it is kept for the next wait of that name. A
signal goes to one step only, and a step takes one signal: the completed wait step records the
signal's SIGNAL_RECEIVED sequence, so a resumed run knows which signals were used.

The run parks when every leaf in progress (step call, wait, sleep) is a wait or sleep not due
within `park_horizon` seconds, and still is `PARK_DELAY` later (a branch between two steps is
not a leaf in progress for that instant; the delay lets it start its next one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from mcp_server.engine.payload import Payload
from mcp_server.engine.ports import SignalRecord, WaitRecord

PARK_DELAY = 0.01


@dataclass
class Signal:
    """A signal as the run knows it."""

    index: int
    name: str
    payload: Payload
    request_id: str
    target: str
    sequence: int = 0  # its SIGNAL_RECEIVED event
    assigned: str = ""  # the step it goes to ("" while kept)
    consumed: bool = False

    @classmethod
    def of(cls, record: SignalRecord) -> Signal:
        request = record.request
        payload = Payload.of_bytes(request.payload.SerializeToString(deterministic=True))
        return cls(record.index, request.signal, payload, request.request_id, request.step_path, record.sequence)


@dataclass
class Waiter:
    path: str
    signal: str  # "" for a sleep
    deadline: float | None  # Unix seconds
    since_ms: int
    key: str | None = None  # a wait for an event: the key the event must carry ("": any)
    future: asyncio.Future[Signal] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def record(self) -> WaitRecord:
        """The stored form of this wait (no signal assigned yet)."""
        return WaitRecord(self.signal, int(self.deadline * 1000) if self.deadline else 0, self.since_ms, key=self.key)


class Suspensions:
    """The waits and signals of one run (see the module's docstring)."""

    def __init__(self, park_horizon: float) -> None:
        self.park_horizon = park_horizon
        self.signals: dict[int, Signal] = {}
        self.waiters: dict[str, Waiter] = {}
        # waits an earlier life of the run left waiting, not reached again yet: path -> their record
        self.dormant: dict[str, WaitRecord] = {}
        self.live_leaves = 0
        # the nodes under way with a Node.timeout: path -> when it runs out (Unix seconds)
        self.node_deadlines: dict[str, float] = {}
        self.parking = False
        self.request_park: Callable[[], None] | None = None
        # what the next checkpoint writes
        self.taken: dict[int, tuple[int, str]] = {}
        self.waits_changed: dict[str, WaitRecord | None] = {}
        self._generation = 0
        self._timer: asyncio.TimerHandle | None = None

    # ---- signals ------------------------------------------------------------------------
    def known(self, records: Iterable[SignalRecord], consumed: set[int]) -> list[SignalRecord]:
        """Learn the task's signal log (at resume, and as it grows); return the records not taken
        in yet, to take in. `consumed`: the sequences of signals completed wait steps took."""
        fresh = []
        for record in records:
            if record.index in self.signals:
                continue
            if record.sequence == 0:
                fresh.append(record)
                continue
            signal = Signal.of(record)
            signal.assigned = record.assigned
            signal.consumed = record.sequence in consumed
            self.signals[record.index] = signal
        return fresh

    def take_in(self, record: SignalRecord, sequence: int) -> Signal:
        """A new signal, its SIGNAL_RECEIVED event being `sequence`: it goes to the step it names,
        or the step waiting longest for its name, or it is kept. A waiting step gets it at once."""
        signal = Signal.of(record)
        signal.sequence = sequence
        waiting = {path: wait for path, wait in self.waiting_records().items() if wait.signal == signal.name}
        if signal.target:
            signal.assigned = signal.target
        else:
            taken = {s.assigned for s in self.signals.values() if s.assigned and not s.consumed}
            free = [(wait.since_ms, path) for path, wait in waiting.items() if path not in taken]
            if free:
                signal.assigned = min(free)[1]
        self.signals[signal.index] = signal
        self.taken[signal.index] = (sequence, signal.assigned)
        if signal.assigned in waiting:  # its stored wait says it has a signal coming (see SignalTask)
            self.waits_changed[signal.assigned] = replace(waiting[signal.assigned], assigned=sequence)
        waiter = self.waiters.get(signal.assigned)
        if waiter is not None and waiter.signal == signal.name and not waiter.future.done():
            waiter.future.set_result(signal)
        return signal

    def waiting_records(self) -> dict[str, WaitRecord]:
        """The steps that wait for a signal now, by path: those waiting in this life and those an
        earlier life left waiting that this one has not reached again yet."""
        waiting = dict(self.dormant)
        waiting.update((w.path, w.record()) for w in self.waiters.values() if w.signal and not w.future.done())
        return waiting

    def signal_for(self, path: str, name: str) -> Signal | None:
        """A signal for the wait at `path`: one assigned to it, else the first kept one of its name."""
        mine = [s for s in self.signals.values() if s.assigned == path and s.name == name and not s.consumed]
        kept = [s for s in self.signals.values() if not s.assigned and s.name == name and not s.consumed]
        for signal in sorted(mine or kept, key=lambda s: s.index):
            signal.assigned = path
            return signal
        return None

    # ---- waits ----------------------------------------------------------------------------
    def wait(self, path: str, signal: str, deadline: float | None, since_ms: int, key: str | None = None) -> Waiter:
        """Register the wait at `path` (written with the next checkpoint) and return its waiter."""
        self.dormant.pop(path, None)
        waiter = self.waiters[path] = Waiter(path, signal, deadline, since_ms, key)
        self.waits_changed[path] = waiter.record()
        self._changed()
        return waiter

    def ended(self, path: str, signal: Signal | None) -> None:
        """The wait at `path` is over (with `signal`, or without: timed out, cancelled). Not when
        the run parks: its waits stay as they are, for `due` and for the run's next life."""
        if self.parking:
            return
        # a wait an earlier life left (its record is stored) ends here too when this life finds
        # its signal without waiting again: its record goes, or a later signal could be sent to it
        was_dormant = self.dormant.pop(path, None) is not None
        if self.waiters.pop(path, None) is not None or was_dormant:
            self.waits_changed[path] = None
        if signal is not None:
            signal.consumed = True
        self._changed()

    async def pause(self, path: str, until: float) -> None:
        """Hold the leaf at `path` until `until` (Unix seconds) as a timer of the run, kept in
        memory only: if the run parks meanwhile, it resumes at that time (`due`) and the leaf,
        run again, asks anew."""
        waiter = self.waiters[path] = Waiter(path, "", until, int(time.time() * 1000))
        self._changed()
        try:  # until then, or until nudged (see `nudge`)
            await asyncio.wait([waiter.future], timeout=max(0.0, until - time.time()))
        finally:
            if not self.parking and self.waiters.get(path) is waiter:
                del self.waiters[path]
                self._changed()

    def nudge(self, path: str) -> None:
        """End the pause of the leaf at `path` now, if it pauses (what it waits for may have
        come sooner: it asks again)."""
        waiter = self.waiters.get(path)
        if waiter is not None and not waiter.signal and not waiter.future.done():
            waiter.future.cancel()  # done: the pause ends (a pause's future carries no signal)
            self._changed()

    def leaf_started(self) -> None:
        self.live_leaves += 1
        self._changed()

    def leaf_ended(self) -> None:
        self.live_leaves -= 1
        self._changed()

    def due(self, task_deadline: float | None) -> float | None:
        """When the parked task must resume without a signal (Unix seconds), if ever."""
        deadlines = [w.deadline for w in self.waiters.values() if w.deadline is not None]
        deadlines += self.node_deadlines.values()
        if task_deadline is not None:
            deadlines.append(task_deadline)
        return min(deadlines) if deadlines else None

    def take_changes(self) -> tuple[dict[int, tuple[int, str]], dict[str, WaitRecord | None]]:
        """What the next checkpoint writes (taken: it counts as written once sent)."""
        taken, self.taken = self.taken, {}
        waits, self.waits_changed = self.waits_changed, {}
        return taken, waits

    def restore_changes(self, taken: dict[int, tuple[int, str]], waits: dict[str, WaitRecord | None]) -> None:
        """A checkpoint failed: its changes go with the next one."""
        self.taken = {**taken, **self.taken}
        self.waits_changed = {**waits, **self.waits_changed}

    # ---- parking ----------------------------------------------------------------------------
    def _all_waiting(self) -> bool:
        waiting = [w for w in self.waiters.values() if not w.future.done()]  # a done one goes on at once
        if not waiting or len(waiting) < self.live_leaves:
            return False
        horizon = time.time() + self.park_horizon
        return all(w.deadline is None or w.deadline > horizon for w in waiting) and all(
            deadline > horizon for deadline in self.node_deadlines.values()
        )

    def _changed(self) -> None:
        self._generation += 1
        if self.request_park is None or self.parking or not self._all_waiting():
            return
        generation = self._generation
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(PARK_DELAY, self._park_if_still, generation)

    def _park_if_still(self, generation: int) -> None:
        self._timer = None
        if generation == self._generation and not self.parking and self._all_waiting() and self.request_park:
            self.parking = True
            self.request_park()
