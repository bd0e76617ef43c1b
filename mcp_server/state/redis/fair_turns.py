"""How a claim shares its tasks among the groups whose turns head the queue's partitions (see
fair_lua for the queue's layout): one task per group in turn, the group granted least recently
first."""

from __future__ import annotations

# how many turns of each partition a claim looks at: a group that waits behind others' turns in
# one partition is seen, and goes first, when it was granted less recently than they were
HEAD_TURNS = 4
# a group's last grant is forgotten this long after it (a group not seen for so long goes first anyway)
FORGET_TURNS_MS = 3_600_000


def group_of(member: bytes) -> str:
    """The group a turn in the queue belongs to ('' for a task queued before groups)."""
    text = member.decode()
    if text[34:36] != "g:":
        return ""
    return text[36:].rsplit("|", 1)[0]


def share_out(turns: list[tuple[int, bytes]], last: dict[str, float], count: int) -> dict[tuple[int, bytes], int]:
    """How many tasks to take from each turn: one per group in turn, the group granted least
    recently first (then the one whose turn waited longest), each group's share over its turns
    (on several partitions) oldest first task first."""
    by_group: dict[str, list[tuple[bytes, tuple[int, bytes]]]] = {}
    for turn in turns:
        group = group_of(turn[1])
        by_group.setdefault(group, []).append((turn[1][17:33] if group else turn[1][:16], turn))
    order = sorted(by_group, key=lambda g: (last.get(g, 0.0), min(t[1][:16] for _, t in by_group[g])))
    own_turns = {g: [t for _, t in sorted(by_group[g])] for g in order}
    shares: dict[tuple[int, bytes], int] = {}
    given = 0
    rounds = 0
    while given < count:
        for group in order:
            own = own_turns[group]
            turn = own[rounds % len(own)]
            shares[turn] = shares.get(turn, 0) + 1
            given += 1
            if given == count:
                break
        rounds += 1
    return shares
