"""Actors: the programming model (``Actor``, ``handler``, ``ActorContext``) and the host."""

from mainspring.actors.actor import Actor as Actor
from mainspring.actors.actor import ActorContext as ActorContext
from mainspring.actors.actor import Reminder as Reminder
from mainspring.actors.actor import handler as handler
