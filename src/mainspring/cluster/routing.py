"""Routing: deliver each message on the node that owns its actor, forwarding it there if need be.

The actor host asks ``owns(stream_id)`` before it queues a message; a message for an actor this
node does not own goes to ``forward``, which posts it to the owner's node-to-node endpoint
(``POST /cluster/v1/deliver``, authenticated with the shared cluster secret). The receiving
node hands it to its own host, which delivers it, or forwards it once more when its view says
another node owns the actor (after re-reading the membership table, so disagreeing views
converge); after ``forward_hops_max`` hops the sender gets ``ForwardingFailed``.

Replies and errors travel as JSON: replies as codec envelopes, errors by class and attributes,
so a caller gets the very exception type (``CommandRejected`` with its code, ``WorkflowNotFound``
...) it would get from a local ``ask``.
"""

from __future__ import annotations

import asyncio
import builtins
import hmac
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import aiohttp
import attrs
import orjson

from mainspring.cluster.config import ClusterConfig
from mainspring.cluster.membership import Membership
from mainspring.errors import (
    CodecError,
    LeaseHeld,
    MainspringError,
    NodeClosed,
    StoreUnavailable,
    UsageError,
)

if TYPE_CHECKING:
    from mainspring.actors.host import ActorHost

__all__ = [
    "DELIVER_PATH",
    "SECRET_HEADER",
    "ForwardTransport",
    "ForwardingFailed",
    "HttpTransport",
    "RemoteError",
    "Router",
    "RoutingStatistics",
    "decode_error",
    "encode_error",
    "resendable",
]

log: Final = logging.getLogger(__name__)

DELIVER_PATH: Final = "/cluster/v1/deliver"
"""The node-to-node endpoint that forwarded messages are posted to."""
SECRET_HEADER: Final = "X-Mainspring-Cluster-Secret"  # noqa: S105 (a header name)
"""The header carrying the shared cluster secret on node-to-node calls."""

_RETRY_PAUSE_S: Final = 0.05
_RETRY_PAUSE_MAX_S: Final = 1.0
_LEASE_POLL_S: Final = 0.1
_PLAIN_JSON: Final = (dict, list, str, int, float, bool, type(None))


class ForwardingFailed(MainspringError):
    """A message could not reach the node that owns its actor: the owner stayed unreachable
    for ``forward_timeout_s``, or the nodes' views kept disagreeing for ``forward_hops_max``
    hops. Nothing is known to have been handled; retry later (with the same message id)."""


class RemoteError(MainspringError):
    """A handler on another node raised an exception whose class this process does not have.

    Attributes:
        type_name: the module-qualified class name of the original exception.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


@attrs.define
class RoutingStatistics:
    """Counters of the node's routing since it started."""

    forwarded: int = 0
    """Messages this node sent on to another node."""
    forward_retries: int = 0
    """Attempts repeated because the owner was unreachable, stopping, or changed."""
    forward_failures: int = 0
    """Forwarded messages given up on (``ForwardingFailed``)."""
    received: int = 0
    """Messages other nodes forwarded to this one."""
    hand_offs: int = 0
    """Live actors passivated because this node no longer owns them."""
    lease_waits: int = 0
    """Pauses of activations waiting for another node's lease (a departing or crashed owner)."""
    forward_latency_s: list[float] = attrs.Factory(list)
    """Recent round trips of forwarded asks (the last 1024), for percentiles."""


def resendable(message: object) -> bool:
    """Whether handling ``message`` twice is harmless, so that a forward whose outcome was
    lost may send it again even without a message id: its class says so with a class
    attribute ``resendable = True`` (a read, or a command idempotent by its content, such as
    a workflow start)."""
    return getattr(type(message), "resendable", False) is True


def encode_error(error: BaseException) -> dict[str, Any]:
    """An exception as JSON: its class, its args and its JSON-representable attributes."""
    cls = type(error)
    fields: dict[str, Any] = {}
    for name, value in vars(error).items():
        if name.startswith("_"):
            continue
        try:
            orjson.dumps(value)
        except TypeError:
            continue
        fields[name] = value
    args: list[Any] = []
    for arg in error.args:
        try:
            orjson.dumps(arg)
        except TypeError:
            arg = str(arg)
        args.append(arg)
    return {
        "module": cls.__module__,
        "qualname": cls.__qualname__,
        "args": args,
        "fields": fields,
        "message": str(error),
    }


def decode_error(data: Mapping[str, Any]) -> BaseException:
    """The exception ``encode_error`` described: the same class (when this process has it
    loaded) with the same args and attributes, else a ``RemoteError``."""
    module_name = str(data.get("module", ""))
    qualname = str(data.get("qualname", ""))
    message = str(data.get("message", ""))
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RemoteError(f"{module_name}.{qualname}", message)
    args = data.get("args", [])
    try:
        error: BaseException = cls.__new__(cls, *args)
        error.args = tuple(args)
        fields = data.get("fields", {})
        if isinstance(fields, dict) and hasattr(error, "__dict__"):
            error.__dict__.update(fields)
    except Exception:
        return RemoteError(f"{module_name}.{qualname}", message)
    return error


class ForwardTransport(Protocol):
    """Carries a forwarded message to the node at ``address`` (HTTP between processes; the
    simulator supplies one over its simulated network)."""

    def start(self) -> None:
        """Get ready to send (called when the node starts)."""
        ...

    async def close(self) -> None:
        """Release connections (called when the node stops)."""
        ...

    async def post(self, source: str, address: str, item: dict[str, Any]) -> dict[str, Any] | None:
        """The receiver's outcome (``{"ok": ...}``), or None when the message may be sent
        again: it provably was not accepted, or its outcome is unknown and ``item["resendable"]``
        (it has a message id the receiver deduplicates, or handling it twice is harmless).

        Raises:
            ForwardingFailed: the outcome is unknown (the link broke after sending) and the
                message is not resendable.
        """
        ...


@final
class HttpTransport:
    """Posts forwarded messages to ``address + DELIVER_PATH`` with the cluster secret.

    Args:
        secret: the shared cluster secret.
        connections_per_node: the pool's bound of connections to one node.
        silence_s: give up on an owner that sends nothing for this long (a hung process);
            the outcome is then unknown.
    """

    def __init__(
        self, secret: str, *, connections_per_node: int = 64, silence_s: float = 30.0
    ) -> None:
        self._secret = secret
        self._silence_s = silence_s
        self._connections_per_node = connections_per_node
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Open the HTTP client session."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit_per_host=self._connections_per_node)
            )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def post(self, source: str, address: str, item: dict[str, Any]) -> dict[str, Any] | None:
        """See ``ForwardTransport.post``."""
        session = self._session
        if session is None:
            raise NodeClosed(f"node {source!r} is not routing (stopped)")
        try:
            async with session.post(
                address + DELIVER_PATH,
                data=orjson.dumps(item),
                headers={SECRET_HEADER: self._secret, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=2.0, sock_read=self._silence_s
                ),
            ) as response:
                body = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError:
            return None
        except aiohttp.ClientError as error:
            # The request may have been accepted before the link broke: only a message with an
            # id (the receiver deduplicates it) or one harmless twice can safely be sent again.
            if item["resendable"]:
                return None
            raise ForwardingFailed(
                f"the link to {address} broke while forwarding ({error}); the message may or "
                "may not have been handled"
            ) from error
        if status == 503:
            return None  # the gateway is stopping and accepted nothing
        if status != 200:
            raise ForwardingFailed(
                f"{address} answered the forwarded message with HTTP {status}: "
                f"{body[:200].decode('utf-8', 'replace')}"
            )
        outcome = orjson.loads(body)
        assert isinstance(outcome, dict), outcome
        return outcome


@final
class Router:
    """Decides where each message is handled and carries it there.

    Args:
        host: this node's actor host.
        membership: this node's membership view.
        config: the cluster settings.
    """

    def __init__(self, host: ActorHost, membership: Membership, config: ClusterConfig) -> None:
        self.host: Final = host
        self.membership: Final = membership
        self.config: Final = config
        self.node_id: Final = host.node_id
        self.statistics: Final = RoutingStatistics()
        self.transport: Final[ForwardTransport] = (
            config.transport
            if config.transport is not None
            else HttpTransport(config.secret, silence_s=config.forward_timeout_s)
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._secret: Final = config.secret.encode("utf-8")

    # Ownership --------------------------------------------------------------------------------

    def owns(self, stream_id: str) -> bool:
        """Whether this node's view makes it the owner of ``stream_id``."""
        ring = self.membership.ring
        return bool(ring.members) and ring.owner(stream_id) == self.node_id

    def owner(self, stream_id: str) -> str | None:
        """The owner of ``stream_id`` in this node's view (None: nobody is live)."""
        ring = self.membership.ring
        return ring.owner(stream_id) if ring.members else None

    async def await_lease(self, stream_id: str, held: LeaseHeld) -> bool:
        """Called when activating ``stream_id`` found its lease held by ``held.owner``: wait a
        little (the holder is handing it off, or crashed and its lease runs out) and tell
        whether to try again: True while this node still owns the actor and is running."""
        if self.host.closing or not self.owns(stream_id):
            return False
        self.statistics.lease_waits += 1
        remaining_s = (held.expires_at_ms - self.host.clock.wall_ms()) / 1000
        # Poll often (a hand-off releases the lease early), never past the expiry.
        await asyncio.sleep(min(max(remaining_s, 0.0) + 0.005, _LEASE_POLL_S))
        return not self.host.closing and self.owns(stream_id)

    # Sending ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Get the transport the forwards go through ready."""
        self.transport.start()

    async def close(self, timeout_s: float) -> None:
        """Let forwards in flight finish (up to ``timeout_s``), then close the transport."""
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.transport.close()

    def forward(
        self,
        actor_type: str,
        actor_id: str,
        message: object,
        message_id: str | None,
        *,
        want_reply: bool,
        hops: int,
    ) -> asyncio.Future[Any] | None:
        """Send the message to its owner; returns a future of the reply when ``want_reply``.

        Raises:
            CodecError: the message cannot be encoded as JSON.
        """
        envelope = self.host.codec.to_value(message)  # fails fast, before anything is sent
        if "t" not in envelope and not isinstance(message, _PLAIN_JSON):
            raise CodecError(
                f"a {type(message).__qualname__} message cannot travel to the node that owns "
                f"{actor_type}/{actor_id}: register its class with @mainspring.message so the "
                "other node can decode it"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] | None = loop.create_future() if want_reply else None
        item = {
            "actor_type": actor_type,
            "actor_id": actor_id,
            "message": envelope,
            "message_id": message_id,
            "reply": want_reply,
            "hops": hops + 1,
            "resendable": message_id is not None or resendable(message),
        }
        task = loop.create_task(
            self._send(f"{actor_type}/{actor_id}", item, future),
            name=f"mainspring-forward:{actor_type}/{actor_id}",
        )
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return future

    async def _send(
        self, stream_id: str, item: dict[str, Any], future: asyncio.Future[Any] | None
    ) -> None:
        try:
            reply = await self._send_until_delivered(stream_id, item)
        except asyncio.CancelledError:
            if future is not None and not future.done():
                future.set_exception(
                    NodeClosed(f"node {self.node_id!r} stopped while forwarding to {stream_id!r}")
                )
            raise
        except BaseException as error:
            if future is None:
                log.warning("TellForwardFailed", extra={"stream_id": stream_id}, exc_info=error)
            elif not future.done():
                future.set_exception(error)
            return
        if future is not None and not future.done():
            future.set_result(reply)

    async def _send_until_delivered(self, stream_id: str, item: dict[str, Any]) -> Any:
        """Post ``item`` to the owner, again after each failure that proves nothing was
        accepted (connection refused, the owner stopping), until the forward timeout."""
        clock = self.host.clock
        deadline_s = clock.monotonic_s() + self.config.forward_timeout_s
        pause_s = _RETRY_PAUSE_S
        if item["hops"] > self.config.forward_hops_max:
            self.statistics.forward_failures += 1
            raise ForwardingFailed(
                f"{stream_id!r} was forwarded {item['hops'] - 1} times without reaching a node "
                f"that owns it: the nodes' views of the membership disagree. Retry later."
            )
        if item["hops"] > 1:
            # The node before us thought we own it: our view may be the stale one.
            await self._refresh(deadline_s)
        last_problem = "no member is live in this node's view of the cluster"
        while True:
            owner = self.owner(stream_id)
            if owner == self.node_id:
                return await self._deliver_here(item)
            address = None if owner is None else self.membership.addresses.get(owner)
            if address is not None:
                outcome = await self._post(address, item)
                if outcome is not None:
                    return self._unpack(outcome)
                last_problem = f"its owner {owner!r} at {address} did not accept it"
            if clock.monotonic_s() + pause_s > deadline_s:
                self.statistics.forward_failures += 1
                raise ForwardingFailed(
                    f"cannot deliver to {stream_id!r}: {last_problem} within "
                    f"{self.config.forward_timeout_s:g} s. Retry later."
                )
            self.statistics.forward_retries += 1
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, _RETRY_PAUSE_MAX_S)
            await self._refresh(deadline_s)

    async def _refresh(self, deadline_s: float) -> None:
        """Re-read the membership table, waiting for it no later than ``deadline_s`` (a store
        that hangs must not hold a forward past its timeout); the view stays as it is when
        the read fails or is late."""
        remaining_s = deadline_s - self.host.clock.monotonic_s()
        try:
            await asyncio.wait_for(self.membership.refresh_fresh(), max(remaining_s, 0.0))
        except (StoreUnavailable, TimeoutError) as error:
            log.debug("MembershipRefreshFailed", extra={"error": str(error) or "timed out"})

    async def _deliver_here(self, item: dict[str, Any]) -> Any:
        future = self.host.deliver(
            item["actor_type"],
            item["actor_id"],
            self.host.codec.from_value(item["message"]),
            item["message_id"],
            want_reply=bool(item["reply"]),
            hops=int(item["hops"]),
        )
        return None if future is None else await future

    async def _post(self, address: str, item: dict[str, Any]) -> dict[str, Any] | None:
        """The owner's answer, or None when it proves the message was not accepted (so it may
        be sent again): refused connection, a gateway or node that is stopping."""
        clock = self.host.clock
        started_s = clock.monotonic_s()
        self.statistics.forwarded += 1
        outcome = await self.transport.post(self.node_id, address, item)
        if outcome is None:
            return None
        if not outcome.get("ok") and outcome.get("retry"):
            return None  # the receiving node was stopping before it accepted the message
        latencies = self.statistics.forward_latency_s
        latencies.append(clock.monotonic_s() - started_s)
        if len(latencies) > 1024:
            del latencies[:512]
        return outcome

    def _unpack(self, outcome: dict[str, Any]) -> Any:
        if outcome.get("ok"):
            reply = outcome.get("reply")
            return None if reply is None else self.host.codec.from_value(reply)
        raise decode_error(outcome.get("error", {}))

    # Receiving --------------------------------------------------------------------------------

    def authentic(self, secret: str | None) -> bool:
        """Whether ``secret`` (a request's header) is the cluster secret."""
        given = (secret or "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._secret)

    async def accept(self, item: object) -> dict[str, Any]:
        """Deliver a message another node forwarded here; the JSON outcome to send back."""
        self.statistics.received += 1
        if self.host.router is not self or self.membership.state == "new":
            # Not started yet (a peer still routes to this address's previous incarnation):
            # nothing is accepted, the sender tries again with a fresher view.
            error = NodeClosed(f"node {self.node_id!r} has not joined the cluster yet")
            return {"ok": False, "retry": True, "error": encode_error(error)}
        try:
            if not isinstance(item, dict):
                raise UsageError("a forwarded message must be a JSON object")
            actor_type = item.get("actor_type")
            actor_id = item.get("actor_id")
            message_id = item.get("message_id")
            hops = item.get("hops")
            if not isinstance(actor_type, str) or not isinstance(actor_id, str):
                raise UsageError("a forwarded message needs string actor_type and actor_id")
            if message_id is not None and not isinstance(message_id, str):
                raise UsageError("message_id of a forwarded message must be a string or null")
            if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
                raise UsageError("hops of a forwarded message must be an int >= 1")
            message = self.host.codec.from_value(item.get("message"))
            want_reply = bool(item.get("reply"))
            future = self.host.deliver(
                actor_type, actor_id, message, message_id, want_reply=want_reply, hops=hops
            )
            reply = None if future is None else await future
        except NodeClosed as error:
            return {"ok": False, "retry": True, "error": encode_error(error)}
        except Exception as error:
            return {"ok": False, "error": encode_error(error)}
        return {"ok": True, "reply": None if reply is None else self.host.codec.to_value(reply)}
