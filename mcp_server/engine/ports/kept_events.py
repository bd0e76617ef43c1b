"""The kept events port: published events kept a while for the waits whose `lookback` takes an
event published before they began (service/event_waits.py). An event is kept under slots: the
name and its key ("k:" + key), and the name alone ("any"), for the waits that take any key."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# at most this many events are kept per name and slot (the newest)
KEPT_PER_SLOT = 100
# an event whose data is larger is not kept
MAX_KEPT_EVENT_BYTES = 64 * 1024


def key_slot(key: str) -> str:
    """The slot of the events with `key`."""
    return "k:" + key


ANY_KEY_SLOT = "any"


@dataclass(frozen=True)
class KeptEvent:
    """One published event as kept: its id, who published it (and whether as an admin), when
    (Unix ms), and its data (a serialized google.protobuf.Struct)."""

    event_id: str
    publisher: str
    admin: bool
    time_ms: int
    data: bytes

    def encode(self) -> bytes:
        head = json.dumps([self.event_id, self.publisher, self.admin, self.time_ms])  # one line: JSON escapes newlines
        return head.encode() + b"\n" + self.data

    @classmethod
    def decode(cls, raw: bytes) -> KeptEvent:
        head, _, data = raw.partition(b"\n")
        event_id, publisher, admin, time_ms = json.loads(head)
        return cls(event_id, publisher, bool(admin), int(time_ms), data)


class KeptEventStore(Protocol):
    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float) -> None:
        """Keep `event` of `name` under each slot for `keep_seconds`, at most KEPT_PER_SLOT per slot."""
        ...

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        """The events of `name` kept under `slot` published at or after `since_ms`, oldest first."""
        ...
