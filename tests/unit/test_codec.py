"""Codec: round trips of registered attrs classes, upcasting of old versions, clear errors."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainspring.codec import Registry
from mainspring.errors import CodecError, UsageError


@attrs.frozen
class Moved:
    item_id: str
    quantity: int
    tags: tuple[str, ...] = ()
    note: str | None = None


@attrs.frozen
class Nested:
    moves: list[Moved]
    totals: dict[str, int]


@attrs.frozen
class PriceV3:
    amount_cents: int
    currency: str


def fresh_registry() -> Registry:
    registry = Registry()
    registry.register(Moved, "test.moved", 1, kind="event")
    registry.register(Nested, "test.nested", 1, kind="event")
    return registry


moves = st.builds(
    Moved,
    item_id=st.text(max_size=20),
    quantity=st.integers(min_value=-(2**53), max_value=2**53),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    note=st.none() | st.text(max_size=30),
)


@given(moves)
def test_registered_values_round_trip(value: Moved) -> None:
    registry = fresh_registry()
    encoded = registry.encode(value)
    assert (encoded.type_name, encoded.type_version) == ("test.moved", 1)
    assert registry.decode(encoded.type_name, encoded.type_version, encoded.payload) == value


@given(
    st.builds(
        Nested,
        moves=st.lists(moves, max_size=4),
        totals=st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=4),
    )
)
def test_nested_values_round_trip(value: Nested) -> None:
    registry = fresh_registry()
    encoded = registry.encode(value)
    assert registry.decode("test.nested", 1, encoded.payload) == value


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_plain_replies_round_trip_through_dumps_any(value: Any) -> None:
    registry = fresh_registry()
    assert registry.loads_any(registry.dumps_any(value)) == value


@given(moves)
def test_registered_replies_keep_their_class_through_dumps_any(value: Moved) -> None:
    registry = fresh_registry()
    assert registry.loads_any(registry.dumps_any(value)) == value


def upcasting_registry() -> Registry:
    """``test.price`` went v1 {"cents"} -> v2 {"amount_cents"} -> v3 {+ "currency"}."""
    registry = Registry()
    registry.register(PriceV3, "test.price", 3)

    @registry.upcaster("test.price", from_version=1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"amount_cents": data["cents"]}

    @registry.upcaster("test.price", from_version=2)
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    return registry


@given(st.integers(min_value=0, max_value=10**12))
def test_old_versions_are_upcast_through_the_chain(cents: int) -> None:
    registry = upcasting_registry()
    assert registry.decode("test.price", 1, b'{"cents":%d}' % cents) == PriceV3(cents, "EUR")
    assert registry.decode("test.price", 2, b'{"amount_cents":%d}' % cents) == PriceV3(cents, "EUR")


def test_a_version_newer_than_the_code_is_refused() -> None:
    registry = upcasting_registry()
    with pytest.raises(CodecError, match="newer code"):
        registry.decode("test.price", 4, b"{}")


def test_a_missing_upcaster_is_named() -> None:
    registry = Registry()
    registry.register(PriceV3, "test.price", 3)
    with pytest.raises(CodecError, match=r"no upcaster from 'test.price' v1 to v2"):
        registry.decode("test.price", 1, b'{"cents":1}')


def test_a_payload_that_does_not_fit_is_a_codec_error() -> None:
    registry = fresh_registry()
    with pytest.raises(CodecError, match=r"test.moved"):
        registry.decode("test.moved", 1, b'{"item_id":"x"}')
    with pytest.raises(CodecError, match=r"test.moved"):
        registry.decode("test.moved", 1, b"not json")


def test_unknown_names_and_classes_are_codec_errors() -> None:
    registry = fresh_registry()
    with pytest.raises(CodecError, match="no class is registered under type name 'nope'"):
        registry.decode("nope", 1, b"{}")
    with pytest.raises(CodecError, match="PriceV3 is not registered"):
        registry.encode(PriceV3(1, "EUR"))


def test_values_without_a_json_form_are_codec_errors_that_say_why() -> None:
    """Goal: a value that contains itself or nests past what JSON encoding allows is refused
    with the reason, never with a bare RecursionError."""
    registry = fresh_registry()
    contains_itself: list[Any] = []
    contains_itself.append(contains_itself)
    deep: list[Any] = []
    inner = deep
    for _ in range(300):
        inner.append([])
        inner = inner[0]
    for value in (contains_itself, deep, {"a": contains_itself}):
        for encode in (registry.to_value, registry.dumps_any):
            with pytest.raises(CodecError, match="nests too deeply or contains itself"):
                encode(value)
    with pytest.raises(CodecError, match="cannot encode a set as JSON"):
        registry.dumps_any({1j})


@pytest.mark.parametrize(
    ("name", "version", "match"),
    [
        ("", 1, "type name"),
        ("has/slash", 1, "type name"),
        ("1starts-with-digit", 1, "type name"),
        ("ok.name", 0, "version"),
        ("ok.name", True, "version"),
    ],
)
def test_malformed_registrations_are_usage_errors(name: str, version: Any, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        Registry().register(Moved, name, version)


def test_a_name_belongs_to_one_class_and_a_class_has_one_name() -> None:
    registry = fresh_registry()
    with pytest.raises(UsageError, match="already registered for Moved"):
        registry.register(PriceV3, "test.moved", 1)
    with pytest.raises(UsageError, match=r"already registered as 'test.moved'"):
        registry.register(Moved, "test.other", 1)
    with pytest.raises(UsageError, match="not an attrs class"):
        registry.register(dict, "test.dict", 1)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    kind=st.sampled_from(["started", "step_completed", "signal"]),
    n=st.integers(min_value=0, max_value=10**9),
    data=_JSON,
)
def test_workflow_events_encode_as_the_generic_converter_would(
    kind: str, n: int, data: Any
) -> None:
    """Workflow events take a shortcut past cattrs (their data is JSON already); the bytes are
    the ones the generic converter writes, and they decode to the same event."""
    from cattrs.preconf.orjson import make_converter

    from mainspring.actors.workflow_runtime import WorkflowEvent
    from mainspring.codec import registry as global_registry

    event = WorkflowEvent(kind, n, "name", 1_700_000_000_000, data, 2, 1)
    encoded = global_registry.encode(event)
    assert encoded.payload == make_converter().dumps(event)
    assert global_registry.decode(encoded.type_name, encoded.type_version, encoded.payload) == event


def test_a_workflow_event_whose_data_is_not_json_fails_to_encode() -> None:
    from mainspring.actors.workflow_runtime import WorkflowEvent
    from mainspring.codec import registry as global_registry

    with pytest.raises(CodecError, match=r"mainspring\.workflow\.event"):
        global_registry.encode(WorkflowEvent("signal", data={"when": {1, 2}}))
