"""``EffectLedger``: a simulated external service that remembers every effect by key.

Workflow steps call external services; the guarantee a workflow engine gives is that a step's
effect happens *at most once per idempotency key* when the service deduplicates by that key
(and at least once, eventually). ``world.effects.apply(value)`` is such a service: called from a
step, it records the effect under the step's idempotency key (``step_context()``), applies it
the first time and returns the stored result on every later call with the key. The ledger checks
as it goes, and stops the run at the offending call:

* a key's effect is applied at most once (``dedupe=False`` models a service that does not
  deduplicate, to show the checker firing);
* one step of one workflow applies its effect under one key only (a key that changes between
  attempts would make every retry a new effect);
* a key is never used with two different inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import attrs

from mainspring.actors.workflow import _CURRENT_STEP
from mainspring.simulations.loop import SimLoop, SimulationError, current_node

__all__ = ["Effect", "EffectLedger"]


@attrs.frozen
class Effect:
    """One effect the service applied.

    Attributes:
        key: the idempotency key it was applied under.
        value: its input (and result).
        workflow_id: the workflow of the step that applied it ("" outside a step).
        step: the step number (0 outside a step).
        attempt: the step attempt.
        node: the node incarnation that called.
        virtual_ns: when.
    """

    key: str
    value: Any
    workflow_id: str
    step: int
    attempt: int
    node: str
    virtual_ns: int


@final
class EffectLedger:
    """The simulated outside world's ledger of effects, checked as it is written.

    Args:
        loop: the simulation loop (time and trace).
        violation: called with the violation before it is raised (the world stops the run).
    """

    def __init__(self, loop: SimLoop, violation: Callable[[SimulationError], None]) -> None:
        self._loop = loop
        self._violation = violation
        self.effects: Final[list[Effect]] = []
        """Every effect applied, in order."""
        self.results: Final[dict[str, Any]] = {}
        """The result kept for each key."""
        self.calls: Final[dict[str, int]] = {}
        """How many times each key was called (applied or deduplicated)."""
        self._key_of_step: dict[tuple[str, int], str] = {}

    def apply(self, value: Any, *, key: str | None = None, dedupe: bool = True) -> Any:
        """Apply an effect with input ``value`` under ``key`` (default: the running step's
        idempotency key) and return its result (``value``; a deduplicated call returns the
        result kept for the key).

        Raises:
            InvariantViolation: the call breaks one of the ledger's invariants.
            ValueError: no key was given outside a workflow step.
        """
        from mainspring.simulations.checkers import InvariantViolation

        step = _CURRENT_STEP.get()
        if key is None:
            if step is None:
                raise ValueError("EffectLedger.apply needs key= outside a workflow step")
            key = step.idempotency_key
        self.calls[key] = self.calls.get(key, 0) + 1
        if dedupe and key in self.results:
            kept = self.results[key]
            if kept != value:
                self._fail(
                    InvariantViolation(
                        f"[effect at most once] key {key!r} was used with input {kept!r} and "
                        f"then with {value!r}"
                    )
                )
            self._loop.trace("effect.deduplicated", key)
            return kept
        tag = current_node()
        effect = Effect(
            key=key,
            value=value,
            workflow_id="" if step is None else step.workflow_id,
            step=0 if step is None else step.step,
            attempt=0 if step is None else step.attempt,
            node="world" if tag is None else str(tag),
            virtual_ns=self._loop.now_ns,
        )
        applied = [earlier for earlier in self.effects if earlier.key == key]
        if applied:
            self._fail(
                InvariantViolation(
                    f"[effect at most once] key {key!r} applied {len(applied) + 1} times: "
                    f"attempt {applied[0].attempt} on {applied[0].node} at "
                    f"{applied[0].virtual_ns}ns and attempt {effect.attempt} on {effect.node} "
                    f"at {effect.virtual_ns}ns"
                )
            )
        if step is not None:
            known = self._key_of_step.setdefault((step.workflow_id, step.step), key)
            if known != key:
                self._fail(
                    InvariantViolation(
                        f"[effect at most once] step {step.step} of workflow "
                        f"{step.workflow_id!r} applied its effect under key {known!r} and then "
                        f"under {key!r} (attempt {step.attempt}): the key must not change "
                        "between attempts"
                    )
                )
        self.effects.append(effect)
        self.results.setdefault(key, value)
        self._loop.trace("effect.applied", key)
        return value

    def _fail(self, error: SimulationError) -> None:
        self._violation(error)
        raise error
