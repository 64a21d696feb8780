"""Running several nodes as one cluster: who owns which actor.

``HashRing`` maps actor keys to member nodes; see ``docs/architecture.md``.
"""

from __future__ import annotations

from mainspring.cluster.ring import DEFAULT_VIRTUAL_NODES, HashRing, stable_hash

__all__ = ["DEFAULT_VIRTUAL_NODES", "HashRing", "stable_hash"]
