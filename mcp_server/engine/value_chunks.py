"""Large values stored in chunks, so that values which share most of their bytes share storage.

A value that grows from step to step (an agent's conversation, a loop's accumulated history) is
stored again at every step that holds it; whole, that is storage (and bytes sent to the store)
quadratic in the steps. At `Limits.chunked_value_bytes` and above, a value is stored as chunks
in the task's value store, each under its own digest, and under the value's digest a manifest
that lists them: a 1 KiB first chunk (the lengths at the head of a serialized value change
whenever it grows), then chunks of CHUNK_BYTES. A value that grew at its end shares every chunk
but its first and its last with the value it grew from, and only the chunks the store does not
hold yet are sent (the ValueSink's `stored`).

A serialized google.protobuf.Value never begins with a zero byte (no field has number 0), so a
manifest, which does, is told apart from a whole value; values stored whole (small ones, and
those stored before this existed) read as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from mcp_sdk.proto import task_pb2
from mcp_server.engine.ports import TaskStore
from mcp_server.settings import MIN_CHUNKED_VALUE_BYTES

FIRST_CHUNK_BYTES = 1024
CHUNK_BYTES = 32 * 1024
MANIFEST_MARK = b"\x00mcp-chunks-1\n"
DIGEST_BYTES = 32
CHUNKED_FLOOR = MIN_CHUNKED_VALUE_BYTES  # the least Limits.chunked_value_bytes may be (but 0), and its default


def split(data: bytes) -> Iterator[tuple[str, bytes]]:
    """`data`'s chunks, in order, each with its digest (hex SHA-256)."""
    view = memoryview(data)
    start, end = 0, min(FIRST_CHUNK_BYTES, len(data))
    while start < len(data):
        chunk = bytes(view[start:end])
        yield hashlib.sha256(chunk).hexdigest(), chunk
        start, end = end, min(end + CHUNK_BYTES, len(data))


def manifest(digests: Iterable[str]) -> bytes:
    """What is stored under a chunked value's digest: the mark, then its chunks' raw digests."""
    return MANIFEST_MARK + b"".join(bytes.fromhex(d) for d in digests)


def chunk_digests(stored: bytes) -> list[str] | None:
    """The chunks a manifest lists, in order; None for a value stored whole."""
    if not stored.startswith(MANIFEST_MARK):
        return None
    body = memoryview(stored)[len(MANIFEST_MARK) :]
    return [bytes(body[i : i + DIGEST_BYTES]).hex() for i in range(0, len(body), DIGEST_BYTES)]


async def read_whole(
    store: TaskStore, task_id: str, digests: Iterable[str], seen: set[str] | None = None
) -> dict[str, bytes]:
    """A task's stored values by digest, whole (a chunked one put back together, in one more
    read for all of them); one whose chunks are not all there, or do not add up to its digest, is
    left out, as a missing value is. `seen`, if given, gets the digests of the chunks read."""
    found = await store.read_values(task_id, list(digests))
    chunked = {d: c for d, data in found.items() if (c := chunk_digests(data)) is not None}
    if not chunked:
        return found
    wanted = sorted({c for chunks in chunked.values() for c in chunks})
    chunks = await store.read_values(task_id, wanted)
    if seen is not None:
        seen.update(chunks)
    for digest, listed in chunked.items():
        if all(c in chunks for c in listed):
            whole = b"".join(chunks[c] for c in listed)
            if hashlib.sha256(whole).hexdigest() == digest:
                found[digest] = whole
                continue
        del found[digest]
    return found


async def with_chunks(store: TaskStore, task_id: str, refs: Iterable[task_pb2.ValueRef]) -> set[str]:
    """The digests `refs` name and those of the chunks of each that is stored in chunks (what a
    rerun that keeps them links to). The values of CHUNKED_FLOOR bytes or more are read to tell
    (whatever the setting is now, it may have been another when they were stored): manifests,
    with the default setting, which chunks every one of them."""
    refs = list(refs)
    named = {ref.sha256 for ref in refs if ref.sha256}
    large = sorted({ref.sha256 for ref in refs if ref.sha256 and ref.size_bytes >= CHUNKED_FLOOR})
    if large:
        for data in (await store.read_values(task_id, large)).values():
            named.update(chunk_digests(data) or ())
    return named
