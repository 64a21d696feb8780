"""Routing and hand-off with several in-process nodes over one store and real gateways.

Each node owns the actors its ring assigns it; any node answers for any actor by forwarding to
the owner over the node-to-node endpoint. Nodes share one SQLite file (or one PostgreSQL
schema), as they would share one database in production.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
import pytest
from aiohttp import web
from examples.orders.model import GetStock

import mainspring
from mainspring.actors.workflow_runtime import (
    ControlWorkflow,
    DescribeWorkflow,
    QueryWorkflow,
    RecoverWorkflow,
    SignalWorkflow,
    StartWorkflow,
)
from mainspring.cluster.routing import (
    DELIVER_PATH,
    SECRET_HEADER,
    ForwardingFailed,
    HttpTransport,
    RemoteError,
    decode_error,
    encode_error,
    resendable,
)
from mainspring.errors import (
    CodecError,
    CommandRejected,
    LeaseHeld,
    UnknownActorType,
    WorkflowNotFound,
)
from mainspring.persistence.sqlite import SqliteStore
from mainspring.persistence.store import stream_id_of
from tests.cluster.harness import FAST, SECRET, Member, converged, eventually, start_member
from tests.support.accounts import (
    Account,
    Deposit,
    GetBalance,
    ScheduleInterest,
    Transfer,
    Withdraw,
)

ACCOUNTS = [f"acct-{n}" for n in range(24)]


@pytest.fixture
async def sqlite_cluster(tmp_path: Path) -> AsyncIterator[tuple[list[Member], Callable[[], Any]]]:
    path = str(tmp_path / "cluster.db")

    def store() -> SqliteStore:
        return SqliteStore(path)

    members = [await start_member(f"node-{n}", store()) for n in range(3)]
    try:
        await converged(members)
        yield members, store
    finally:
        for member in members:
            if member.node.state == "running":
                await member.stop()


def owner_of(members: list[Member], account: str) -> Member:
    cluster = members[0].node.cluster
    assert cluster is not None
    owner_id = cluster.ring.owner(stream_id_of(Account.type_name, account))
    [owner] = [m for m in members if m.node.node_id == owner_id]
    return owner


async def test_any_node_answers_and_each_actor_runs_only_on_its_owner(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, _ = sqlite_cluster
    for round_ in range(3):
        for index, account in enumerate(ACCOUNTS):
            via = members[(index + round_) % len(members)].node
            balance = await via.ask(Account, account, Deposit(10), message_id=f"{account}:{round_}")
            assert balance == 10 * (round_ + 1)
    for account in ACCOUNTS:
        stream_id = stream_id_of(Account.type_name, account)
        hosts = [m.node.node_id for m in members if stream_id in m.node.host.live]
        assert hosts == [owner_of(members, account).node.node_id], (account, hosts)
    forwarded = sum(m.node.cluster.router.statistics.forwarded for m in members if m.node.cluster)
    received = sum(m.node.cluster.router.statistics.received for m in members if m.node.cluster)
    assert forwarded == received > 0
    # Every node's ring owns some of the accounts (24 keys over 3 members).
    assert {owner_of(members, a).node.node_id for a in ACCOUNTS} == {"node-0", "node-1", "node-2"}


async def test_replies_and_errors_come_back_unchanged_through_a_forward(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, _ = sqlite_cluster
    account = ACCOUNTS[0]
    owner = owner_of(members, account)
    other = next(m for m in members if m is not owner).node
    assert await other.ask(Account, account, Deposit(5)) == 5
    with pytest.raises(CommandRejected) as rejected:
        await other.ask(Account, account, Withdraw(500))
    assert rejected.value.code == "insufficient_funds"
    assert rejected.value.reason == "insufficient funds"
    with pytest.raises(CommandRejected):  # a handler's own check, raised on the owner
        await other.ask(Account, account, Deposit(-1))
    with pytest.raises(WorkflowNotFound) as missing:
        await other.workflows.describe(_workflow_owned_by(members, owner))
    assert missing.value.workflow_id == _workflow_owned_by(members, owner)
    # A duplicate forwarded ask returns the stored reply.
    first = await other.ask(Account, account, Deposit(7), message_id="once")
    again = await other.ask(Account, account, Deposit(7), message_id="once")
    assert first == again == 12
    assert await owner.node.ask(Account, account, GetBalance()) == 12


def _workflow_owned_by(members: list[Member], owner: Member) -> str:
    cluster = members[0].node.cluster
    assert cluster is not None
    for n in range(1000):
        workflow_id = f"wf-{n}"
        if cluster.ring.owner(f"mainspring.workflow/{workflow_id}") == owner.node.node_id:
            return workflow_id
    raise AssertionError("no workflow id hashes to the owner")


async def test_outbox_messages_and_timers_are_processed_by_the_owners(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, _ = sqlite_cluster
    source = ACCOUNTS[0]
    target = next(a for a in ACCOUNTS if owner_of(members, a) is not owner_of(members, source))
    entry = members[0].node
    await entry.ask(Account, source, Deposit(100))
    await entry.ask(Account, source, Transfer(target, 40), message_id="t1")
    await entry.ask(Account, target, ScheduleInterest(after_ms=100, amount_cents=1))

    async def balance(account: str) -> int:
        result: int = await entry.ask(Account, account, GetBalance())
        return result

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await balance(target) != 41:
        assert loop.time() < deadline, await balance(target)
        await asyncio.sleep(0.05)
    assert await balance(source) == 60
    fired = {m.node.node_id: m.node.scan_statistics.reminders_fired for m in members}
    assert fired[owner_of(members, target).node.node_id] == 1
    assert sum(fired.values()) == 1, fired
    delivered = {m.node.node_id: m.node.scan_statistics.outbox_delivered for m in members}
    assert delivered[owner_of(members, source).node.node_id] == 1
    assert sum(delivered.values()) == 1, delivered
    assert await entry.store.read_outbox(10) == []


async def test_a_graceful_leave_hands_actors_off_and_loses_no_acknowledged_message(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, store = sqlite_cluster
    acknowledged: dict[str, int] = dict.fromkeys(ACCOUNTS, 0)
    failures: list[BaseException] = []
    stop = asyncio.Event()
    survivors = members[:2]

    async def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            account = ACCOUNTS[(worker * 7 + n) % len(ACCOUNTS)]
            via = survivors[n % 2].node
            n += 1
            try:
                await via.ask(Account, account, Deposit(1), message_id=f"w{worker}-{n}")
            except Exception as error:  # not acknowledged: may or may not have been applied
                failures.append(error)
                continue
            acknowledged[account] += 1

    workers = [asyncio.create_task(load(w)) for w in range(4)]
    await asyncio.sleep(0.5)
    leaving = members[2]
    owned = [a for a in ACCOUNTS if owner_of(members, a) is leaving]
    assert owned
    await leaving.stop()
    await converged(survivors)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*workers)
    assert not failures, f"a graceful leave failed messages: {failures[:3]!r}"
    checker = store()
    await checker.open()
    try:
        for account in ACCOUNTS:
            stream_id = stream_id_of(Account.type_name, account)
            events = await checker.read_events(stream_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            # Every acknowledged deposit is there once (message ids are unique per deposit).
            assert len(events) == acknowledged[account], account
            history = {r.epoch: r.owner for r in await checker.read_lease_history(stream_id)}
            assert all(event.epoch in history for event in events)
            if account in owned:
                assert {history[e.epoch] for e in events} >= {"node-2"} or not events
        for account in owned:
            head = await checker.read_head(stream_id_of(Account.type_name, account))
            assert head is not None
            assert head.owner != "node-2", "the leaving node kept a lease"
    finally:
        await checker.close()
    [row] = [m for m in await survivors[0].node.store.list_members() if m.node_id == "node-2"]
    assert row.state == "left"


async def test_a_node_that_joins_takes_over_its_share(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, store = sqlite_cluster
    for account in ACCOUNTS:
        await members[0].node.ask(Account, account, Deposit(3))
    joined = await start_member("node-3", store())
    try:
        everyone = [*members, joined]
        await converged(everyone)
        moved = [a for a in ACCOUNTS if owner_of(everyone, a) is joined]
        assert moved, "the new member owns none of 24 keys"
        await eventually(
            lambda: (
                not any(
                    stream_id_of(Account.type_name, a) in m.node.host.live
                    for a in moved
                    for m in members
                )
            ),
            10,
            "the old owners did not hand the moved actors off",
        )
        for account in moved:
            assert await members[0].node.ask(Account, account, Deposit(1)) == 4
            assert stream_id_of(Account.type_name, account) in joined.node.host.live
    finally:
        await joined.stop()


async def test_the_node_to_node_endpoint_needs_the_cluster_secret(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, _ = sqlite_cluster
    url = members[0].gateway.url
    assert url is not None
    item = {
        "actor_type": Account.type_name,
        "actor_id": "a",
        "message": {"t": "test.account.get-balance", "v": 1, "d": {}},
        "message_id": None,
        "reply": True,
        "hops": 1,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(url + DELIVER_PATH, data=orjson.dumps(item)) as response:
            assert response.status == 401
        async with session.post(
            url + DELIVER_PATH, data=orjson.dumps(item), headers={SECRET_HEADER: "wrong" * 5}
        ) as response:
            assert response.status == 401
        async with session.post(
            url + DELIVER_PATH, data=orjson.dumps(item), headers={SECRET_HEADER: SECRET}
        ) as response:
            assert response.status == 200
            assert orjson.loads(await response.read()) == {"ok": True, "reply": {"d": 0}}
        async with session.get(url + "/v1/cluster") as response:
            assert response.status == 200
            view = orjson.loads(await response.read())
    assert view["ring"] == ["node-0", "node-1", "node-2"]
    assert [m["node_id"] for m in view["members"]] == ["node-0", "node-1", "node-2"]
    assert all(m["live"] and m["state"] == "up" for m in view["members"])
    assert abs(sum(m["share"] for m in view["members"]) - 1.0) < 1e-9


async def test_a_message_bounced_past_the_hop_limit_fails(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    members, _ = sqlite_cluster
    account = ACCOUNTS[0]
    not_owner = next(m for m in members if m is not owner_of(members, account)).node
    assert not_owner.cluster is not None
    hops_max = not_owner.cluster.config.forward_hops_max
    outcome = await not_owner.cluster.router.accept(
        {
            "actor_type": Account.type_name,
            "actor_id": account,
            "message": {"t": "test.account.get-balance", "v": 1, "d": {}},
            "message_id": None,
            "reply": True,
            "hops": hops_max,
        }
    )
    assert outcome["ok"] is False
    assert isinstance(decode_error(outcome["error"]), ForwardingFailed)
    outcome = await not_owner.cluster.router.accept({"actor_type": 3})
    assert outcome["ok"] is False
    with pytest.raises(UnknownActorType):
        await not_owner.ask("no-such-type", "x", GetBalance())


def test_errors_round_trip_with_their_class_and_fields() -> None:
    for error in (
        CommandRejected("no", code="insufficient_funds", details={"a": 1}),
        LeaseHeld("t/a", "node-1", 123),
        WorkflowNotFound("wf"),
        ValueError("bad value"),
        KeyError("k"),
    ):
        copy = decode_error(orjson.loads(orjson.dumps(encode_error(error))))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert vars(copy) == vars(error)
    unknown = decode_error({"module": "nowhere", "qualname": "Oops", "message": "m", "args": []})
    assert isinstance(unknown, RemoteError)
    assert unknown.type_name == "nowhere.Oops"


async def test_cluster_status_command_and_metrics(
    sqlite_cluster: tuple[list[Member], Any],
) -> None:
    from click.testing import CliRunner

    from mainspring.cli import main

    members, _ = sqlite_cluster
    for account in ACCOUNTS[:6]:
        await members[0].node.ask(Account, account, Deposit(1))
    url = members[1].gateway.url
    assert url is not None
    runner = CliRunner()
    shown = await asyncio.to_thread(runner.invoke, main, ["cluster", "status", "--url", url])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    # Incarnations are clock generations (the join's wall time in ms).
    assert re.match(
        r"node node-1 \(incarnation \d{13}, up\); ring: node-0, node-1, node-2;", lines[0]
    ), lines[0]
    assert lines[1].split() == [
        "NODE",
        "STATE",
        "LIVE",
        "HEARTBEAT",
        "SHARE",
        "ADDRESS",
        "INCARNATION",
    ]
    rows = [line.split() for line in lines[2:5]]
    assert [row[:3] for row in rows] == [[f"node-{n}", "up", "yes"] for n in range(3)]
    assert all(re.fullmatch(r"\d{13}", row[-1]) for row in rows), rows
    as_json = await asyncio.to_thread(
        runner.invoke, main, ["cluster", "status", "--url", url, "--json"]
    )
    assert orjson.loads(as_json.output)["ring"] == ["node-0", "node-1", "node-2"]
    text = members[0].node.telemetry.prometheus_text()
    assert "mainspring_cluster_members 3" in text
    forwards = [
        line for line in text.splitlines() if line.startswith("mainspring_cluster_forwards_total ")
    ]
    assert forwards
    assert float(forwards[0].split()[1]) > 0
    assert "mainspring_cluster_ring_changes_total" in text


async def _slow_step(n: int) -> int:
    await asyncio.sleep(0.5)
    return n * 2


@mainspring.workflow("test.cluster.slow")
async def slow_workflow(ctx: mainspring.WorkflowContext, n: int) -> int:
    first: int = await ctx.step(_slow_step, n)
    second: int = await ctx.step(_slow_step, first)
    return second


async def test_workflows_handed_off_mid_step_finish_on_their_new_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "cluster.db")
    # Recovery scans are far apart: the periodic scan does not rescue the handed-off workflows.
    config = attrs.evolve(FAST, workflow_recovery_interval_s=600.0)
    members = [
        await start_member(f"node-{n}", SqliteStore(path), config=config, workflows=[slow_workflow])
        for n in range(2)
    ]
    try:
        await converged(members)
        ids = [f"wf-{n}" for n in range(16)]
        for n, workflow_id in enumerate(ids):
            await members[n % 2].node.workflows.start(slow_workflow, workflow_id, n)
        await asyncio.sleep(0.2)  # every first step is running
        joined = await start_member(
            "node-2", SqliteStore(path), config=config, workflows=[slow_workflow]
        )
        members.append(joined)
        await converged(members)
        results = await asyncio.gather(
            *(members[0].node.workflows.result(w, timeout_s=30) for w in ids)
        )
        assert results == [n * 4 for n in range(16)]
        handed = sum(m.node.cluster.router.statistics.hand_offs for m in members if m.node.cluster)
        assert handed > 0, "the join handed nothing off"
    finally:
        for member in members:
            await member.stop()


@attrs.frozen
class Ping:
    """A message class deliberately left out of the codec registry."""

    n: int


class Echo(mainspring.Actor[int]):
    type_name = "test-echo"
    initial_state = 0

    @mainspring.handler
    def ping(self, ctx: mainspring.ActorContext[int], message: Ping) -> int:
        return message.n

    def evolve(self, state: int, event: object) -> int:
        return state


async def test_an_unregistered_message_class_is_refused_before_it_is_forwarded(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "cluster.db")
    members = [
        await start_member(f"node-{n}", SqliteStore(path), actors=[Account, Echo]) for n in range(2)
    ]
    try:
        await converged(members)
        ring = members[0].node.cluster.ring if members[0].node.cluster else None
        assert ring is not None
        remote = next(i for i in map(str, range(100)) if ring.owner(f"test-echo/{i}") == "node-1")
        local = next(i for i in map(str, range(100)) if ring.owner(f"test-echo/{i}") == "node-0")
        assert await members[0].node.ask(Echo, local, Ping(3)) == 3
        with pytest.raises(CodecError, match="register its class"):
            await members[0].node.ask(Echo, remote, Ping(3))
    finally:
        for member in members:
            await member.stop()


async def test_a_node_that_runs_alone_has_no_cluster_routes(tmp_path: Path) -> None:
    from mainspring import Node
    from mainspring.gateway import Gateway

    async with Node(
        "alone", store=SqliteStore(str(tmp_path / "alone.db")), actors=[Account]
    ) as node:
        assert node.cluster is None
        assert node.host.router is None
        gateway = Gateway(node)
        url = await gateway.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url + "/v1/cluster") as response:
                    assert response.status == 404
                async with session.post(
                    url + DELIVER_PATH, data=b"{}", headers={SECRET_HEADER: SECRET}
                ) as response:
                    assert response.status == 404
                    body = orjson.loads(await response.read())
                    assert body["error"]["code"] == "not_found"
        finally:
            await gateway.stop()


async def test_a_forward_whose_link_breaks_is_sent_again_only_when_resendable() -> None:
    # The owner reads the request, then its connection breaks before any answer: nobody knows
    # whether the message was handled, so only a resendable one may go again.
    received: list[dict[str, Any]] = []

    async def break_link(request: web.Request) -> web.StreamResponse:
        received.append(orjson.loads(await request.read()))
        assert request.transport is not None
        request.transport.abort()
        return web.Response()  # written to nothing: the link is gone

    app = web.Application()
    app.router.add_post(DELIVER_PATH, break_link)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    transport = HttpTransport(SECRET)
    transport.start()
    try:
        item = {
            "actor_type": Account.type_name,
            "actor_id": "a",
            "message": {"t": "test.account.deposit", "v": 1, "d": {"amount": 1}},
            "message_id": None,
            "reply": True,
            "hops": 1,
            "resendable": False,
        }
        with pytest.raises(ForwardingFailed, match="may or may not have been handled"):
            await transport.post("node-0", f"http://127.0.0.1:{port}", item)
        resent = {**item, "resendable": True}
        assert await transport.post("node-0", f"http://127.0.0.1:{port}", resent) is None
        assert [one["resendable"] for one in received] == [False, True]
    finally:
        await transport.close()
        await runner.cleanup()


def test_reads_starts_and_messages_with_ids_are_resendable() -> None:
    assert resendable(StartWorkflow("order", None))
    assert resendable(DescribeWorkflow())
    assert resendable(QueryWorkflow("status"))
    assert resendable(RecoverWorkflow())
    assert resendable(GetStock())
    # A deposit applied twice would count twice; signals and controls carry ids or must not
    # be repeated blindly.
    assert not resendable(Deposit(1))
    assert not resendable(SignalWorkflow("approve"))
    assert not resendable(ControlWorkflow("cancel"))
    assert not resendable({"plain": "json"})
