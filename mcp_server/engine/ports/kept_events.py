"""The kept events port: published events kept a while for the waits whose `lookback` takes an
event published before they began (service/event_waits.py). An event is kept under slots: the
name and its key ("k:" + key), and the name alone ("any"), for the waits that take any key."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# at most this many events are kept per name and slot (the newest)
KEPT_PER_SLOT = 100
# an event whose data is larger is not kept
MAX_KEPT_EVENT_BYTES = 64 * 1024


KEY_SLOT_PREFIX = "k:"


def key_slot(key: str) -> str:
    """The slot of the events with `key`."""
    return KEY_SLOT_PREFIX + key


ANY_KEY_SLOT = "any"
KEYS_SLOT = "~keys"  # where a store that needs it lists a name's key slots (not a slot of events)


@dataclass(frozen=True)
class KeptEvent:
    """One published event as kept: its id, who published it (and whether as an admin), when
    (Unix ms), its data (a serialized google.protobuf.Struct), its key and its labels."""

    event_id: str
    publisher: str
    admin: bool
    time_ms: int
    data: bytes
    key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        head = [self.event_id, self.publisher, self.admin, self.time_ms, self.key, dict(self.labels)]
        return json.dumps(head).encode() + b"\n" + self.data  # one line: JSON escapes newlines

    @classmethod
    def decode(cls, raw: bytes) -> KeptEvent:
        head, _, data = raw.partition(b"\n")
        event_id, publisher, admin, time_ms, *rest = json.loads(head)  # kept before keys were: no key, no labels
        key, labels = [*rest, "", {}][:2]
        return cls(event_id, publisher, bool(admin), int(time_ms), data, str(key), dict(labels))


class KeptEventStore(Protocol):
    async def keep(self, name: str, slots: Sequence[str], event: KeptEvent, keep_seconds: float, max_keys: int) -> None:
        """Keep `event` of `name` under each slot for `keep_seconds`, at most KEPT_PER_SLOT per
        slot. A slot goes with its newest event's time; of a name's key slots ("k:..."), at most
        `max_keys` are kept, those kept into least recently dropped first (best effort: a key
        kept into again as it is dropped may lose the event)."""
        ...

    async def kept(self, name: str, slot: str, since_ms: int) -> list[KeptEvent]:
        """The events of `name` kept under `slot` published at or after `since_ms`, oldest first."""
        ...
