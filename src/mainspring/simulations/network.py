"""The simulated network between clients, nodes and stores.

Every message the world carries between two *endpoints* (``"client"``, a node name, or
``"store:<label>"``) goes through one ``Network``. It holds the cut links (partitions) and the
fault rates (``NetworkFaults``), and draws every decision from one seeded stream:

* a request may be dropped before it arrives, or its reply lost after the work was done (an
  ambiguous outcome: the caller cannot tell the two apart);
* a request may be delivered twice (a retransmission);
* each message waits a seeded delay, and some are held back longer so later ones overtake them
  (reordering);
* a partition cuts the links between one endpoint and others until ``heal`` (or its end time).

Client requests (``world.call``, ``ask``, ``tell``) and node-to-store calls (through
``FaultyStore``) use it today; node-to-node messages will use the same links and rates.
"""

from __future__ import annotations

import asyncio
from typing import Final, Literal, final

import attrs

from mainspring.simulations.loop import SimLoop
from mainspring.simulations.seeds import Stream

__all__ = ["CLIENT", "Delivery", "Network", "NetworkFaults", "store_endpoint"]

CLIENT: Final = "client"
"""The endpoint of every client request the scenario makes."""

Delivery = Literal["deliver", "drop", "duplicate"]
"""What happens to one request."""


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, got {value!r}")


def store_endpoint(label: str) -> str:
    """The endpoint name of the faulty store labelled ``label``."""
    return f"store:{label}"


@attrs.frozen
class NetworkFaults:
    """How the network misbehaves (every rate 0: a perfect network).

    Attributes:
        drop: probability that a request is lost before it reaches its target.
        reply_drop: probability that the reply is lost after the target did the work.
        duplicate: probability that a request is delivered twice (the second copy later).
        delay_ms_max: each message waits a virtual delay drawn in ``[0, delay_ms_max]``.
        reorder: probability that a message is held back a further ``[1, 10] x delay_ms_max``
            (at least 1 ms), so that messages sent after it overtake it.
    """

    drop: float = attrs.field(default=0.0, validator=_rate)
    reply_drop: float = attrs.field(default=0.0, validator=_rate)
    duplicate: float = attrs.field(default=0.0, validator=_rate)
    delay_ms_max: int = attrs.field(default=0, validator=_non_negative)
    reorder: float = attrs.field(default=0.0, validator=_rate)

    @property
    def active(self) -> bool:
        """Whether any fault or delay is on."""
        return any((self.drop, self.reply_drop, self.duplicate, self.delay_ms_max, self.reorder))

    def describe(self) -> str:
        """A one-line summary."""
        return (
            f"drop={self.drop:.3f} reply_drop={self.reply_drop:.3f} "
            f"duplicate={self.duplicate:.3f} delay_ms_max={self.delay_ms_max} "
            f"reorder={self.reorder:.3f}"
        )

    def scaled(self, factor: float) -> NetworkFaults:
        """Every rate and delay multiplied by ``factor``."""
        return NetworkFaults(
            drop=self.drop * factor,
            reply_drop=self.reply_drop * factor,
            duplicate=self.duplicate * factor,
            delay_ms_max=int(self.delay_ms_max * factor),
            reorder=self.reorder * factor,
        )


@final
class Network:
    """Links between endpoints, their partitions, and the seeded fault decisions.

    Args:
        loop: the simulation loop (for the trace and virtual time).
        stream: the seeded stream every decision is drawn from.
        faults: the rates in force while faults are enabled.
    """

    def __init__(self, loop: SimLoop, stream: Stream, faults: NetworkFaults) -> None:
        self._loop = loop
        self._stream = stream
        self.faults = faults
        self.faults_enabled = True
        self._cuts: dict[frozenset[str], int] = {}
        """Cut links (an unordered pair of endpoints) and how many partitions cut them."""
        self._healed: asyncio.Event | None = None
        self.statistics: Final[dict[str, int]] = {}

    # Partitions -------------------------------------------------------------------------------

    def cut(self, source: str, target: str) -> None:
        """Cut the link between two endpoints (both directions) until ``mend`` or ``heal``."""
        assert source != target, source
        link = frozenset((source, target))
        self._cuts[link] = self._cuts.get(link, 0) + 1
        self._loop.trace("net.cut", f"{source}|{target}")
        self._count("partitions")

    def mend(self, source: str, target: str) -> None:
        """Undo one ``cut`` of the link (a link cut twice stays cut until mended twice)."""
        link = frozenset((source, target))
        count = self._cuts.get(link, 0)
        if count == 0:
            return
        if count == 1:
            del self._cuts[link]
        else:
            self._cuts[link] = count - 1
        self._loop.trace("net.mend", f"{source}|{target}")
        self._wake()

    def connected(self, source: str, target: str) -> bool:
        """Whether a message can go from ``source`` to ``target`` now."""
        return frozenset((source, target)) not in self._cuts

    def heal(self) -> None:
        """Mend every link and turn every fault off (the liveness phase)."""
        self.faults_enabled = False
        if self._cuts:
            self._cuts.clear()
            self._loop.trace("net.heal")
        self._wake()

    async def wait_connected(self, source: str, target: str) -> None:
        """Wait until the link between the endpoints is not cut."""
        for _ in range(1_000_000):
            if self.connected(source, target):
                return
            if self._healed is None:
                self._healed = asyncio.Event()
            await self._healed.wait()
        raise AssertionError("a link was cut and mended a million times during one wait")

    def _wake(self) -> None:
        if self._healed is not None:
            self._healed.set()
            self._healed = None

    # Decisions --------------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.statistics[what] = self.statistics.get(what, 0) + 1

    def request_fate(self, source: str, target: str) -> Delivery:
        """What happens to one request: delivered, dropped, or delivered twice."""
        if not self.connected(source, target):
            self._count("dropped_by_partition")
            self._loop.trace("net.drop", f"{source}->{target} partitioned")
            return "drop"
        if not self.faults_enabled or not self.faults.active:
            return "deliver"
        draw = self._stream.random()
        if draw < self.faults.drop:
            self._count("dropped")
            self._loop.trace("net.drop", f"{source}->{target}")
            return "drop"
        if draw < self.faults.drop + self.faults.duplicate:
            self._count("duplicated")
            self._loop.trace("net.duplicate", f"{source}->{target}")
            return "duplicate"
        return "deliver"

    def reply_lost(self, source: str, target: str) -> bool:
        """Whether the reply from ``target`` back to ``source`` is lost."""
        if not self.connected(source, target):
            self._count("replies_lost_by_partition")
            self._loop.trace("net.reply_lost", f"{target}->{source} partitioned")
            return True
        if not self.faults_enabled or self.faults.reply_drop == 0:
            return False
        if self._stream.random() < self.faults.reply_drop:
            self._count("replies_lost")
            self._loop.trace("net.reply_lost", f"{target}->{source}")
            return True
        return False

    def delay_s(self) -> float:
        """The virtual delay of one message (0 when faults are off)."""
        faults = self.faults
        if not self.faults_enabled or (faults.delay_ms_max == 0 and faults.reorder == 0):
            return 0.0
        delay_ms = self._stream.randint(0, faults.delay_ms_max)
        if faults.reorder and self._stream.random() < faults.reorder:
            self._count("reordered")
            delay_ms += max(1, faults.delay_ms_max) * self._stream.randint(1, 10)
        return delay_ms / 1000
