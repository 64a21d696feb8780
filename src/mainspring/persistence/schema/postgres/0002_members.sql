-- mainspring PostgreSQL schema, version 2: cluster membership.
--
-- One row per node id. incarnation rises by one at every (re)join of that id, so a heartbeat of
-- an old process under the same id never passes for the new one. heartbeat_ms is the member's
-- own wall clock at its last heartbeat; readers compare it with theirs (see docs/architecture.md).

CREATE TABLE members (
    node_id      text COLLATE "C" PRIMARY KEY,
    address      text NOT NULL,
    incarnation  bigint NOT NULL CHECK (incarnation >= 1),
    state        text NOT NULL CHECK (state IN ('up', 'leaving', 'left')),
    heartbeat_ms bigint NOT NULL,
    joined_ms    bigint NOT NULL
);
