"""The public API is exactly what is listed: a change to it is a deliberate, visible change."""

from __future__ import annotations

import mainspring
import mainspring.persistence

EXPECTED_TOP_LEVEL = [
    "Actor",
    "ActorContext",
    "App",
    "ChildWorkflowFailed",
    "Clock",
    "CodecError",
    "CommandRejected",
    "ConcurrencyConflict",
    "ContinueAsNew",
    "Fenced",
    "Ids",
    "LeaseHeld",
    "MainspringError",
    "MainspringInternalError",
    "Node",
    "NodeClosed",
    "NodeConfig",
    "NonDeterminismError",
    "Overloaded",
    "Random",
    "Registry",
    "Reminder",
    "RetryPolicy",
    "Saga",
    "StepContext",
    "StepFailed",
    "StoreUnavailable",
    "StreamExists",
    "UnknownActorType",
    "UsageError",
    "WorkflowClient",
    "WorkflowConflict",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowDescription",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowNotFound",
    "event",
    "handler",
    "message",
    "registry",
    "replay",
    "state",
    "step_context",
    "workflow",
]


def test_top_level_exports_are_exactly_the_public_api() -> None:
    assert sorted(mainspring.__all__) == EXPECTED_TOP_LEVEL
    for name in mainspring.__all__:
        assert getattr(mainspring, name) is not None, name


def test_persistence_exports_every_store() -> None:
    assert sorted(mainspring.persistence.__all__) == [
        "AppendRequest",
        "MemoryStore",
        "PostgresStore",
        "SqliteStore",
        "Store",
    ]


def test_every_public_error_derives_from_mainspring_error() -> None:
    errors = [
        getattr(mainspring, name)
        for name in mainspring.__all__
        if name.endswith(
            (
                "Error",
                "Rejected",
                "Conflict",
                "Fenced",
                "Held",
                "Closed",
                "Overloaded",
                "Unavailable",
                "Type",
                "Failed",
                "NotFound",
            )
        )
    ]
    assert errors
    for error in errors:
        assert issubclass(error, mainspring.MainspringError), error
    assert issubclass(mainspring.UsageError, TypeError)
