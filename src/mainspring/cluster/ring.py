"""The consistent-hash ring: which member owns an actor key.

Ownership is a pure function of the member set and the key: every node that sees the same
members computes the same owner, with no coordination. Each member is placed on a 64-bit circle
at ``virtual_nodes`` points, ``blake2b(f"{member}#{i}")``; a key belongs to the member of the
first point at or after ``blake2b(key)``, wrapping around. The hash is stable across processes,
machines and Python versions (never the built-in ``hash()``, which is salted per process).

With many points per member the arcs even out: the share of a member deviates from the mean by
about ``1 / sqrt(virtual_nodes)``. Adding or removing one member moves only the keys of the arcs
it gains or loses, about ``1/N`` of them, and never between two other members.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from mainspring.errors import UsageError

__all__ = ["DEFAULT_VIRTUAL_NODES", "HashRing", "stable_hash"]

DEFAULT_VIRTUAL_NODES: Final = 1024
"""Points per member. 1024 keeps every member of a small cluster within a few percent of the
mean share (measured in the tests: the largest of 5 members holds < 1.15x the mean), at a cost
of a few milliseconds to build a ring of ten members."""

_VIRTUAL_NODES_MAX: Final = 65_536


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (BLAKE2b, 8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class HashRing:
    """An immutable consistent-hash ring over a set of member ids.

    Args:
        members: the member ids (node ids); order and duplicates do not matter.
        virtual_nodes: points per member on the circle.

    Raises:
        UsageError: a member id is not a non-empty ``str``, or ``virtual_nodes`` is out of range.
    """

    __slots__ = ("_owners", "_points", "members", "virtual_nodes")

    def __init__(
        self, members: Iterable[str], *, virtual_nodes: int = DEFAULT_VIRTUAL_NODES
    ) -> None:
        if (
            isinstance(virtual_nodes, bool)
            or not isinstance(virtual_nodes, int)
            or not 1 <= virtual_nodes <= _VIRTUAL_NODES_MAX
        ):
            raise UsageError(
                f"virtual_nodes must be an int from 1 to {_VIRTUAL_NODES_MAX}, "
                f"got {virtual_nodes!r}"
            )
        unique: set[str] = set()
        for member in members:
            if not isinstance(member, str) or not member:
                raise UsageError(f"ring members must be non-empty strings, got {member!r}")
            unique.add(member)
        self.members: Final = frozenset(unique)
        self.virtual_nodes: Final = virtual_nodes
        placed = sorted(
            (stable_hash(f"{member}#{index}"), member)
            for member in unique
            for index in range(virtual_nodes)
        )
        # Two members landing on one 64-bit point is astronomically unlikely; sorting by
        # (point, member) still resolves it the same way everywhere.
        self._points: Final = [point for point, _ in placed]
        self._owners: Final = [member for _, member in placed]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.members))

    def __repr__(self) -> str:
        return f"HashRing({sorted(self.members)!r}, virtual_nodes={self.virtual_nodes})"

    def owner(self, key: str) -> str:
        """The member that owns ``key``.

        Raises:
            UsageError: the ring has no members.
        """
        if not self._points:
            raise UsageError("the ring has no members: no node can own a key")
        index = bisect.bisect_left(self._points, stable_hash(key))
        return self._owners[index if index < len(self._owners) else 0]

    def with_member(self, member: str) -> HashRing:
        """A ring with ``member`` added."""
        return HashRing([*self.members, member], virtual_nodes=self.virtual_nodes)

    def without_member(self, member: str) -> HashRing:
        """A ring with ``member`` removed."""
        return HashRing(self.members - {member}, virtual_nodes=self.virtual_nodes)

    def shares(self) -> Mapping[str, float]:
        """The fraction of the hash circle each member owns (sums to 1)."""
        if not self._points:
            return {}
        span = 1 << 64
        shares = dict.fromkeys(self.members, 0)
        previous = self._points[-1] - span
        for point, member in zip(self._points, self._owners, strict=True):
            shares[member] += point - previous
            previous = point
        return {member: arc / span for member, arc in shares.items()}
