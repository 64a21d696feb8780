"""mainspring: durable workflows on event-sourced, single-writer actors for asyncio.

The public API is re-exported here; everything else is private unless documented.
"""

from mainspring.actors.actor import Actor as Actor
from mainspring.actors.actor import ActorContext as ActorContext
from mainspring.actors.actor import Reminder as Reminder
from mainspring.actors.actor import handler as handler
from mainspring.actors.actor import replay as replay
from mainspring.actors.retry import RetryPolicy as RetryPolicy
from mainspring.actors.workflow import ChildWorkflowFailed as ChildWorkflowFailed
from mainspring.actors.workflow import ContinueAsNew as ContinueAsNew
from mainspring.actors.workflow import Saga as Saga
from mainspring.actors.workflow import StepContext as StepContext
from mainspring.actors.workflow import StepFailed as StepFailed
from mainspring.actors.workflow import WorkflowContext as WorkflowContext
from mainspring.actors.workflow import WorkflowDefinition as WorkflowDefinition
from mainspring.actors.workflow import step_context as step_context
from mainspring.actors.workflow import workflow as workflow
from mainspring.actors.workflow_client import WorkflowClient as WorkflowClient
from mainspring.actors.workflow_client import WorkflowHandle as WorkflowHandle
from mainspring.actors.workflow_runtime import WorkflowDescription as WorkflowDescription
from mainspring.app import App as App
from mainspring.codec import Registry as Registry
from mainspring.codec import event as event
from mainspring.codec import message as message
from mainspring.codec import registry as registry
from mainspring.codec import state as state
from mainspring.config import NodeConfig as NodeConfig
from mainspring.errors import CodecError as CodecError
from mainspring.errors import CommandRejected as CommandRejected
from mainspring.errors import ConcurrencyConflict as ConcurrencyConflict
from mainspring.errors import Fenced as Fenced
from mainspring.errors import LeaseHeld as LeaseHeld
from mainspring.errors import MainspringError as MainspringError
from mainspring.errors import MainspringInternalError as MainspringInternalError
from mainspring.errors import NodeClosed as NodeClosed
from mainspring.errors import NonDeterminismError as NonDeterminismError
from mainspring.errors import Overloaded as Overloaded
from mainspring.errors import StoreUnavailable as StoreUnavailable
from mainspring.errors import StreamExists as StreamExists
from mainspring.errors import UnknownActorType as UnknownActorType
from mainspring.errors import UsageError as UsageError
from mainspring.errors import WorkflowConflict as WorkflowConflict
from mainspring.errors import WorkflowError as WorkflowError
from mainspring.errors import WorkflowNotFound as WorkflowNotFound
from mainspring.node import Node as Node
from mainspring.seams import Clock as Clock
from mainspring.seams import Ids as Ids
from mainspring.seams import Random as Random

__version__ = "0.1.0"

__all__ = [
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
