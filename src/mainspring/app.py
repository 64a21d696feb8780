"""App: what a user's module hands to ``mainspring node --app MODULE``.

An application module builds one ``App`` naming the actor types and workflow definitions a node
hosts, optionally its ``NodeConfig``, and two optional hooks:

- ``lifespan(node)``: an async context manager entered *before* the node starts and left *after*
  it stops. Start here what the app's steps use (HTTP clients, connection pools, services) and
  bind them: a restarted node resumes recovered workflows as soon as it starts, so their steps
  must find their resources ready.
- ``on_start(node)``: a coroutine awaited once the node runs and before the gateway accepts
  requests, e.g. to seed reference data idempotently with ``node.ask(..., message_id=...)``.

::

    # myapp.py
    import contextlib, mainspring

    @contextlib.asynccontextmanager
    async def lifespan(node: mainspring.Node):
        client = PaymentsClient(URL)
        bind(client)
        try:
            yield
        finally:
            await client.close()

    app = mainspring.App(actors=[Inventory], workflows=[order], lifespan=lifespan)

``mainspring node --app myapp`` (or ``--app myapp:app``) loads it with ``load_app``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from mainspring.actors.actor import Actor
from mainspring.actors.workflow import WorkflowDefinition
from mainspring.config import NodeConfig
from mainspring.errors import UsageError

if TYPE_CHECKING:
    from mainspring.node import Node

__all__ = ["App", "Lifespan", "OnStart", "load_app"]

Lifespan = Callable[["Node"], AbstractAsyncContextManager[Any]]
"""``lifespan(node)`` returns an async context manager run around the node's whole life."""
OnStart = Callable[["Node"], Awaitable[None]]
"""``on_start(node)`` runs once the node is running, before the gateway accepts requests."""

DEFAULT_ATTRIBUTE: Final = "app"
_MODULE_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTRIBUTE_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _to_tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise UsageError(f"expected a list, got {type(value).__name__}: {value!r}")
    return tuple(value)


def _check_actors(instance: App, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for actor in value:
        if not (isinstance(actor, type) and issubclass(actor, Actor)):
            raise UsageError(
                f"App actors must be mainspring.Actor subclasses, got {actor!r}; pass the "
                "class itself, not an instance"
            )
    names = [actor.type_name for actor in value]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise UsageError(f"App actors name the actor type(s) {duplicated} more than once")


def _check_workflows(
    instance: App, attribute: attrs.Attribute[Any], value: tuple[Any, ...]
) -> None:
    for definition in value:
        if not isinstance(definition, WorkflowDefinition):
            raise UsageError(
                f"App workflows must be workflow definitions (functions decorated with "
                f"@mainspring.workflow), got {definition!r}"
            )


def _check_config(instance: App, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, NodeConfig):
        raise UsageError(f"App config must be a NodeConfig or None, got {type(value).__name__}")


def _check_hook(instance: App, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise UsageError(
            f"App {attribute.name} must be a callable taking the node, or None, got {value!r}"
        )


@final
@attrs.frozen
class App:
    """The actor types and workflows a ``mainspring node`` process hosts, with optional hooks.

    Args:
        actors: the ``mainspring.Actor`` subclasses the node hosts.
        workflows: the workflow definitions (``@mainspring.workflow`` functions) it runs;
            several versions of one type may be given.
        config: the node's settings (``NodeConfig()`` when None); command-line options such as
            ``--shutdown-timeout`` override single fields of it.
        lifespan: ``lifespan(node)`` returns an async context manager entered before the node
            starts and exited after it stopped (see the module docstring).
        on_start: ``await on_start(node)`` runs once the node is running, before the gateway
            listens.

    Raises:
        UsageError: an argument has the wrong type; the message names it.
    """

    actors: tuple[type[Actor[Any]], ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_check_actors
    )
    workflows: tuple[WorkflowDefinition[Any, Any], ...] = attrs.field(
        default=(), converter=_to_tuple, validator=_check_workflows
    )
    config: NodeConfig | None = attrs.field(default=None, validator=_check_config)
    lifespan: Lifespan | None = attrs.field(default=None, validator=_check_hook)
    on_start: OnStart | None = attrs.field(default=None, validator=_check_hook)

    @contextlib.asynccontextmanager
    async def running(self, node: Node) -> AsyncIterator[Node]:
        """Enter the lifespan, start ``node``, run ``on_start``; on exit stop the node, then
        leave the lifespan. ``node`` must have been built from this app's actors and
        workflows."""
        async with contextlib.AsyncExitStack() as stack:
            if self.lifespan is not None:
                manager: object = self.lifespan(node)
                if not isinstance(manager, AbstractAsyncContextManager):
                    if inspect.iscoroutine(manager):
                        manager.close()  # never awaited: close it so nothing warns later
                    raise UsageError(
                        f"App lifespan must return an async context manager (decorate it with "
                        f"@contextlib.asynccontextmanager), got {type(manager).__name__}"
                    )
                await stack.enter_async_context(manager)
            await node.start()
            stack.push_async_callback(node.stop)
            if self.on_start is not None:
                await self.on_start(node)
            yield node


def load_app(spec: str) -> App:
    """Import ``MODULE`` or ``MODULE:ATTRIBUTE`` (attribute ``app`` by default) and return the
    ``App`` it names.

    Raises:
        UsageError: the spec is malformed, the module cannot be imported, the attribute is
            missing, or it is not an ``App``; the message says which and how to fix it.
    """
    if not isinstance(spec, str):
        raise UsageError(f"the app must be given as 'MODULE[:ATTRIBUTE]', got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or DEFAULT_ATTRIBUTE
    if not _MODULE_PATTERN.match(module_name) or not _ATTRIBUTE_PATTERN.match(attribute):
        raise UsageError(
            f"the app must be given as 'MODULE[:ATTRIBUTE]' (a dotted module path, e.g. "
            f"'examples.orders.app' or 'myapp:app'), got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise UsageError(
                f"cannot import app module {module_name!r}: no module named {error.name!r} "
                "(check the name, and that its directory is on PYTHONPATH or the current "
                "directory)"
            ) from None
        raise UsageError(
            f"importing app module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    except Exception as error:
        raise UsageError(
            f"importing app module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(
            f"app module {module_name!r} has no attribute {attribute!r}; define "
            f"'{attribute} = mainspring.App(...)' there or name another with "
            f"'{module_name}:ATTRIBUTE'"
        ) from None
    if not isinstance(value, App):
        raise UsageError(
            f"{module_name}:{attribute} must be a mainspring.App, got "
            f"{type(value).__name__}; build it with mainspring.App(actors=[...], workflows=[...])"
        )
    return value
