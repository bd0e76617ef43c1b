"""When a schedule fires: a ScheduleSpec checked and compiled into fire times (UTC).

Cron expressions are matched by croniter on the time zone's wall clock (naive times); turning
a wall time into an instant is ours, with the DST rules stated in schedule.proto: a wall time in
a gap (it does not exist that night) fires at the first instant after the gap; a wall time that
happens twice fires once, at its first occurrence.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from google.protobuf import timestamp_pb2

from mcp_sdk.proto import schedule_pb2
from mcp_server.errors import ViolationCollector

MIN_EVERY_SECONDS = 1.0
MAX_EVERY_SECONDS = 366 * 24 * 3600.0
MAX_CRON = 16
MAX_EVERY = 16
MAX_JITTER_SECONDS = 24 * 3600.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# the latest time fire times may be computed from (a schedule's start_time and run_at, a
# backfill's range): the arithmetic around them (a year's interval, a day's jitter, the spans
# around DST changes) must stay inside what a datetime can hold
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
FIRST_MS, LAST_MS = -62_135_596_800_000, 253_402_300_799_999  # a Timestamp's range: years 1 to 9999
CHANGE_SPAN = timedelta(hours=3)  # more than any DST change moves the clock


@dataclass(frozen=True)
class CompiledSpec:
    """A ScheduleSpec ready to give fire times (aware datetimes in UTC, whole milliseconds)."""

    crons: tuple[str, ...]
    every: tuple[float, ...]
    run_at: datetime | None
    zone: ZoneInfo
    jitter: float
    start: datetime | None
    end: datetime | None

    def fires_after(self, after: datetime) -> Iterator[datetime]:
        """Fire times strictly after `after`, in order, within start and end (duplicates merged)."""
        if self.start is not None and after < self.start:
            after = self.start - timedelta(microseconds=1)
        streams = [self._cron_fires(c, after) for c in self.crons]
        streams += [self._every_fires(e, after) for e in self.every]
        if self.run_at is not None and self.run_at > after:
            streams.append(iter([self.run_at]))
        last = None
        for fire in heapq.merge(*streams):
            if self.end is not None and fire >= self.end:
                return
            if fire != last:
                yield fire
                last = fire

    def fires_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Fire times in [start, end), at most `limit`."""
        found: list[datetime] = []
        for fire in self.fires_after(start - timedelta(microseconds=1)):
            if fire >= end or len(found) >= limit:
                break
            found.append(fire)
        return found

    def jitter_of(self, schedule_id: str, fire: datetime) -> float:
        """The delay of this fire's task: the same for the same schedule and fire time."""
        if not self.jitter:
            return 0.0
        digest = hashlib.sha256(f"{schedule_id}\0{fire.isoformat()}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 * self.jitter

    def starts_at(self, schedule_id: str, fire: datetime) -> datetime:
        """When the task of this fire time is started: the fire time plus its jitter."""
        return fire + timedelta(seconds=self.jitter_of(schedule_id, fire)) if self.jitter else fire

    def first_due_ms(self, schedule_id: str, after: datetime) -> int | None:
        """When the first fire time after `after` is due (ms, its jitter included); None if none is."""
        for fire in self.fires_after(after):
            return to_ms(self.starts_at(schedule_id, fire))
        return None

    def _cron_fires(self, expression: str, after: datetime) -> Iterator[datetime]:
        # near a change of offset (DST) a wall time after `after` may be an instant before it, and
        # one before it an instant after: start before the change, and drop what is not after
        start = after.astimezone(self.zone).replace(tzinfo=None)
        if (after - CHANGE_SPAN).astimezone(self.zone).utcoffset() != (after + CHANGE_SPAN).astimezone(
            self.zone
        ).utcoffset():
            start -= CHANGE_SPAN
        matcher = croniter(expression, start, second_at_beginning=True)
        while True:
            try:
                candidate = matcher.get_next(datetime)
            except CroniterBadDateError:  # no date matches any more (nor, checked when stored, ever did)
                return
            instant = instant_of(candidate, self.zone)
            if instant > after:
                yield instant

    @staticmethod
    def _every_fires(seconds: float, after: datetime) -> Iterator[datetime]:
        step = timedelta(seconds=seconds)
        count = (after - EPOCH) // step + 1
        while True:
            yield EPOCH + count * step
            count += 1


def instant_of(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC) a naive wall time of `zone` fires at: its first occurrence when it
    happens twice, the end of the gap when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # in a gap: fold=1 reads it with the offset after the change, which lands before the change;
    # the first instant after the gap is the change itself, found by bisection to the second
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = instant
    if low > high:
        low, high = high, low
    offset = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def compile_spec(spec: schedule_pb2.ScheduleSpec, violations: ViolationCollector, path: str) -> CompiledSpec | None:
    """The spec compiled, or None with each problem added as a violation under `path`."""
    before = len(violations.violations)
    zone_name = spec.time_zone or "UTC"
    zone: ZoneInfo | None = None
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        violations.add(f"{path}.time_zone", f"unknown time zone {zone_name!r} (an IANA name such as Europe/London)")
    if len(spec.cron) > MAX_CRON:
        violations.add(f"{path}.cron", f"at most {MAX_CRON} expressions")
    for i, expression in enumerate(spec.cron):
        if not _cron_valid(expression):
            violations.add(
                f"{path}.cron[{i}]",
                f"{expression!r} is not a cron expression (5 fields, or 6 with seconds first, or @hourly and the like)",
            )
        elif not _cron_matches(expression):
            violations.add(f"{path}.cron[{i}]", f"{expression!r} matches no date (a 30th of February, say)")
    if len(spec.every) > MAX_EVERY:
        violations.add(f"{path}.every", f"at most {MAX_EVERY} intervals")
    every = []
    for i, interval in enumerate(spec.every):
        seconds = interval.seconds + interval.nanos / 1e9
        if not MIN_EVERY_SECONDS <= seconds <= MAX_EVERY_SECONDS:
            violations.add(f"{path}.every[{i}]", f"must be between {MIN_EVERY_SECONDS:.0f} s and 366 days")
        every.append(seconds)
    jitter = spec.jitter.seconds + spec.jitter.nanos / 1e9
    if not 0 <= jitter <= MAX_JITTER_SECONDS:
        violations.add(f"{path}.jitter", f"must be between 0 and {MAX_JITTER_SECONDS:.0f} s")
    # fire times are computed from start_time and run_at (an end_time is only compared with them)
    start, end, run_at = (
        moment_of(getattr(spec, name), violations, f"{path}.{name}", latest=latest) if spec.HasField(name) else None
        for name, latest in (("start_time", LATEST), ("end_time", None), ("run_at", LATEST))
    )
    if start is not None and end is not None and end <= start:
        violations.add(f"{path}.end_time", "must be after start_time")
    if not spec.cron and not spec.every and run_at is None:
        violations.add(path, "fires never: give at least one of cron, every, run_at")
    if len(violations.violations) > before or zone is None:
        return None
    return CompiledSpec(tuple(spec.cron), tuple(every), run_at, zone, jitter, start, end)


def _cron_valid(expression: str) -> bool:
    fields = expression.split()
    if not expression.startswith("@") and len(fields) not in (5, 6):
        return False
    try:
        return bool(croniter.is_valid(expression, second_at_beginning=True))
    except Exception:  # the library raises a variety of errors on what it cannot read
        return False


def _cron_matches(expression: str) -> bool:
    """Whether some date matches (croniter gives up looking after a few years)."""
    try:
        croniter(expression, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def moment_of(
    stamp: timestamp_pb2.Timestamp,
    violations: ViolationCollector,
    path: str,
    earliest: datetime | None = None,
    latest: datetime | None = LATEST,
) -> datetime | None:
    """A time a client names (to the millisecond), or None with a violation if it is before
    `earliest` or not before `latest` (None: as far as a Timestamp goes, years 1 to 9999)."""
    ms = stamp.seconds * 1000 + stamp.nanos // 1_000_000
    low = to_ms(earliest) if earliest is not None else FIRST_MS
    high = to_ms(latest) if latest is not None else LAST_MS + 1
    if not low <= ms < high:
        after = f"from {rfc3339(earliest)} and " if earliest is not None else ""
        violations.add(path, f"must be {after}before {rfc3339(latest or from_ms(LAST_MS + 1000))}")
        return None
    return from_ms(ms)


def to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds: the `mcp/fire-time` label."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
