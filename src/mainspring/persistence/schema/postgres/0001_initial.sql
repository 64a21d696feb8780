-- mainspring PostgreSQL schema, version 1.
--
-- Applied by PostgresStore.open() inside one transaction, with search_path set to the store's
-- schema, so every name below lands in that schema.
--
-- Keys use COLLATE "C": ordering is then by code point, exactly as the reference store sorts
-- Python strings, whatever the database's default collation, and comparisons are plain memcmp.
--
-- There are no foreign keys: every write goes through append_batch() or a single statement of
-- the store, which keep the references right under the stream's row lock, and a foreign-key
-- check would cost a trigger call per event.

CREATE TABLE streams (
    stream_id        text COLLATE "C" PRIMARY KEY,
    actor_type       text COLLATE "C" NOT NULL,
    actor_id         text COLLATE "C" NOT NULL,
    epoch            bigint NOT NULL CHECK (epoch >= 1),
    head             bigint NOT NULL DEFAULT 0 CHECK (head >= 0),
    owner            text COLLATE "C",
    lease_expires_ms bigint NOT NULL DEFAULT 0,
    -- The number of dedupe rows of the stream, so pruning to a window deletes only the excess
    -- instead of counting the window on every append.
    dedupe_count     bigint NOT NULL DEFAULT 0 CHECK (dedupe_count >= 0),
    -- The instance index lives in the stream row (one per actor), so an append updates one row
    -- rather than two. All three stay NULL until the stream's first append commits.
    status           text COLLATE "C",
    created_ms       bigint,
    updated_ms       bigint,
    CHECK ((status IS NULL) = (created_ms IS NULL)),
    CHECK ((status IS NULL) = (updated_ms IS NULL))
) WITH (fillfactor = 70);  -- room for HOT updates: the head changes on every append.
CREATE INDEX streams_instances ON streams (actor_type, actor_id) WHERE status IS NOT NULL;
CREATE INDEX streams_instances_by_status ON streams (actor_type, status, actor_id)
    WHERE status IS NOT NULL;

-- The instance index as the protocol sees it, for the store and for operators.
CREATE VIEW instances AS
    SELECT actor_type, actor_id, status, created_ms, updated_ms
    FROM streams
    WHERE status IS NOT NULL;

CREATE TABLE events (
    stream_id    text COLLATE "C" NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 1),
    epoch        bigint NOT NULL,
    type_name    text NOT NULL,
    type_version integer NOT NULL,
    payload      bytea NOT NULL,
    message_id   text,
    recorded_ms  bigint NOT NULL,
    PRIMARY KEY (stream_id, seq)
);

CREATE TABLE snapshots (
    stream_id    text COLLATE "C" PRIMARY KEY,
    seq          bigint NOT NULL,
    type_name    text NOT NULL,
    type_version integer NOT NULL,
    payload      bytea NOT NULL,
    recorded_ms  bigint NOT NULL
);

CREATE TABLE dedupe (
    stream_id  text COLLATE "C" NOT NULL,
    message_id text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    reply      bytea NOT NULL,
    -- Insertion order, kept when a record is replaced: it breaks ties between records of one seq
    -- the way the reference store's insertion-ordered dict does.
    position   bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (stream_id, message_id)
);
CREATE INDEX dedupe_by_age ON dedupe (stream_id, seq, position);

CREATE TABLE outbox (
    message_id       text COLLATE "C" PRIMARY KEY,
    source_stream_id text COLLATE "C" NOT NULL,
    target_type      text COLLATE "C" NOT NULL,
    target_id        text COLLATE "C" NOT NULL,
    type_name        text NOT NULL,
    type_version     integer NOT NULL,
    payload          bytea NOT NULL,
    created_ms       bigint NOT NULL,
    position         bigint GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE timers (
    stream_id text COLLATE "C" NOT NULL,
    name      text COLLATE "C" NOT NULL,
    due_ms    bigint NOT NULL,
    payload   bytea,
    PRIMARY KEY (stream_id, name)
);
CREATE INDEX timers_by_due ON timers (due_ms, stream_id, name);

CREATE TABLE lease_history (
    stream_id   text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL,
    owner       text COLLATE "C" NOT NULL,
    acquired_ms bigint NOT NULL,
    PRIMARY KEY (stream_id, epoch)
);

-- append_batch: commit many actors' requests in one statement, so one round trip and one commit.
--
-- Requests arrive as parallel arrays sorted by stream id (p_*, indexed 1..n). The rows that ride
-- with them arrive as parallel arrays too (e_* events, d_* dedupe records, o_* outbox rows, t_*
-- timers set, c_* timers cancelled, s_* snapshots), each row naming its request by that index.
--
-- A request is accepted when its stream exists at its epoch with its expected head. The check is
-- made under the stream's row lock, so it cannot go stale before the writes, and only accepted
-- requests write anything. The function returns one row per rejected request: its index and the
-- stream's current epoch and head (NULL when the stream does not exist).
--
-- Each statement sees the writes of the ones before it (plpgsql takes a new snapshot per
-- statement), which keeps "cancel, then set" for timers and "insert, then prune" for dedupe
-- records plain statements.
CREATE FUNCTION append_batch(
    p_stream        text[],
    p_epoch         bigint[],
    p_expected      bigint[],
    p_new_head      bigint[],
    p_recorded_ms   bigint[],
    p_dedupe_window bigint[],
    p_status        text[],
    e_request       integer[],
    e_stream        text[],
    e_seq           bigint[],
    e_type_name     text[],
    e_type_version  integer[],
    e_payload       bytea[],
    e_message_id    text[],
    d_request       integer[],
    d_stream        text[],
    d_message_id    text[],
    d_seq           bigint[],
    d_reply         bytea[],
    o_request       integer[],
    o_message_id    text[],
    o_source        text[],
    o_target_type   text[],
    o_target_id     text[],
    o_type_name     text[],
    o_type_version  integer[],
    o_payload       bytea[],
    o_created_ms    bigint[],
    t_request       integer[],
    t_stream        text[],
    t_name          text[],
    t_due_ms        bigint[],
    t_payload       bytea[],
    c_request       integer[],
    c_stream        text[],
    c_name          text[],
    s_request       integer[],
    s_stream        text[],
    s_seq           bigint[],
    s_type_name     text[],
    s_type_version  integer[],
    s_payload       bytea[],
    s_recorded_ms   bigint[]
) RETURNS TABLE (request_index integer, current_epoch bigint, current_head bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_count          integer := cardinality(p_stream);
    v_accepted       boolean[];
    v_location       tid[];
    v_epoch          bigint[];
    v_head           bigint[];
    v_dedupe_count   bigint[];
    v_fresh          bigint[] := array_fill(0::bigint, ARRAY[cardinality(p_stream)]);
    v_accepted_count integer;
    v_event_count    bigint;
    v_windowed       boolean;
    v_order          bigint[];
    v_inserted       bigint;
    v_excess         bigint;
    v_rows           bigint;
BEGIN
    ASSERT v_count > 0, 'append_batch: empty batch';
    ASSERT cardinality(e_request) = cardinality(e_payload), 'append_batch: ragged event arrays';

    -- Lock every named stream in stream-id order (so two batches over the same streams wait
    -- for each other instead of deadlocking) and decide each request on its locked row. The
    -- aggregates read the requests in index order (one sort for all of them, checked below).
    WITH locked AS MATERIALIZED (
        SELECT s.ctid AS location, s.stream_id, s.epoch, s.head, s.dedupe_count
        FROM streams s
        WHERE s.stream_id = ANY (p_stream)
        ORDER BY s.stream_id
        FOR UPDATE
    )
    SELECT array_agg(d.i),
           array_agg(d.accepted),
           array_agg(d.location),
           array_agg(d.epoch),
           array_agg(d.head),
           array_agg(d.dedupe_count),
           count(*) FILTER (WHERE d.accepted),
           coalesce(sum(d.event_count) FILTER (WHERE d.accepted), 0),
           coalesce(bool_or(d.accepted AND d.dedupe_window > 0), false)
    INTO STRICT v_order, v_accepted, v_location, v_epoch, v_head, v_dedupe_count,
         v_accepted_count, v_event_count, v_windowed
    FROM (
        SELECT r.i, r.new_head - r.expected AS event_count, r.dedupe_window, l.location,
               l.epoch, l.head, coalesce(l.dedupe_count, 0) AS dedupe_count,
               coalesce(l.epoch = r.epoch AND l.head = r.expected, false) AS accepted
        FROM unnest(p_stream, p_epoch, p_expected, p_new_head, p_dedupe_window) WITH ORDINALITY
            AS r(stream_id, epoch, expected, new_head, dedupe_window, i)
        LEFT JOIN locked l ON l.stream_id = r.stream_id
        ORDER BY r.i
    ) d;
    ASSERT v_order = ARRAY(SELECT generate_series(1::bigint, v_count)),
        'append_batch: the decisions came out of request order';

    RETURN QUERY
        SELECT r.i, v_epoch[r.i], v_head[r.i]
        FROM generate_series(1, v_count) AS r(i)
        WHERE NOT v_accepted[r.i];
    IF v_accepted_count = 0 THEN
        RETURN;
    END IF;

    IF cardinality(d_request) > 0 THEN
        -- New message ids get a row (and a place in the stream's insertion order); counting
        -- them per stream keeps dedupe_count exact. The stream locks keep every other writer
        -- away from these rows, so a plain insert of the ids not found cannot conflict (and
        -- costs less than ON CONFLICT's speculative insertion).
        WITH inserted AS (
            INSERT INTO dedupe (stream_id, message_id, seq, reply)
            SELECT d.stream_id, d.message_id, d.seq, d.reply
            FROM unnest(d_request, d_stream, d_message_id, d_seq, d_reply) WITH ORDINALITY
                AS d(request, stream_id, message_id, seq, reply, n)
            WHERE v_accepted[d.request]
              AND NOT EXISTS (
                  SELECT FROM dedupe x
                  WHERE x.stream_id = d.stream_id AND x.message_id = d.message_id)
            ORDER BY d.n
            RETURNING stream_id
        ), fresh AS (
            SELECT stream_id, count(*) AS fresh FROM inserted GROUP BY stream_id
        )
        SELECT array_agg(coalesce(f.fresh, 0) ORDER BY r.i), coalesce(sum(f.fresh), 0)
        INTO STRICT v_fresh, v_inserted
        FROM unnest(p_stream) WITH ORDINALITY AS r(stream_id, i)
        LEFT JOIN fresh f ON f.stream_id = r.stream_id;

        -- Message ids recorded before (rare: a message is recorded once) get the new record and
        -- keep their place.
        IF v_inserted < (SELECT count(*) FROM unnest(d_request) AS d(request)
                         WHERE v_accepted[d.request]) THEN
            UPDATE dedupe x
            SET seq = d.seq, reply = d.reply
            FROM unnest(d_request, d_stream, d_message_id, d_seq, d_reply)
                AS d(request, stream_id, message_id, seq, reply)
            WHERE v_accepted[d.request]
              AND x.stream_id = d.stream_id
              AND x.message_id = d.message_id
              AND (x.seq, x.reply) IS DISTINCT FROM (d.seq, d.reply);
        END IF;
    END IF;

    -- The compare-and-set, on the row versions locked above (found by location, which the lock
    -- keeps valid). Every accepted stream was checked under its lock, so each one must match;
    -- the conditions stay so that the write states what it relies on. The same write keeps the
    -- instance index: a NULL or empty status keeps the current one ('active' when new).
    UPDATE streams s
    SET head = r.new_head,
        dedupe_count = CASE
            WHEN r.dedupe_window > 0 THEN least(s.dedupe_count + v_fresh[r.i], r.dedupe_window)
            ELSE s.dedupe_count + v_fresh[r.i]
        END,
        status = coalesce(nullif(r.status, ''), s.status, 'active'),
        created_ms = coalesce(s.created_ms, r.recorded_ms),
        updated_ms = r.recorded_ms
    FROM unnest(v_location, p_epoch, p_expected, p_new_head, p_dedupe_window, p_status,
                p_recorded_ms) WITH ORDINALITY
        AS r(location, epoch, expected, new_head, dedupe_window, status, recorded_ms, i)
    WHERE v_accepted[r.i]
      AND s.ctid = r.location
      AND s.epoch = r.epoch
      AND s.head = r.expected;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    ASSERT v_rows = v_accepted_count, 'append_batch: a locked stream failed its compare-and-set';

    IF v_windowed THEN
        -- Keep the newest dedupe_window records: delete the oldest excess, found through the
        -- (stream_id, seq, position) index without counting the window.
        SELECT coalesce(sum(r.dedupe_count + r.fresh - r.dedupe_window), 0)
        INTO STRICT v_excess
        FROM unnest(v_accepted, v_dedupe_count, v_fresh, p_dedupe_window)
            AS r(accepted, dedupe_count, fresh, dedupe_window)
        WHERE r.accepted AND r.dedupe_window > 0 AND r.dedupe_count + r.fresh > r.dedupe_window;
        IF v_excess > 0 THEN
            -- Only this function deletes dedupe rows, under the stream's lock, so the rows found
            -- stay where they were found.
            DELETE FROM dedupe d
            USING (
                SELECT oldest.location
                FROM unnest(p_stream, v_accepted, v_dedupe_count, v_fresh, p_dedupe_window)
                    AS r(stream_id, accepted, dedupe_count, fresh, dedupe_window)
                CROSS JOIN LATERAL (
                    SELECT o.ctid AS location
                    FROM dedupe o
                    WHERE o.stream_id = r.stream_id
                    ORDER BY o.seq, o.position
                    LIMIT r.dedupe_count + r.fresh - r.dedupe_window
                ) oldest
                WHERE r.accepted AND r.dedupe_window > 0
                  AND r.dedupe_count + r.fresh > r.dedupe_window
            ) doomed
            WHERE d.ctid = doomed.location;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            ASSERT v_rows = v_excess, 'append_batch: dedupe_count disagrees with the rows';
        END IF;
    END IF;

    IF cardinality(e_request) > 0 THEN
        INSERT INTO events (
            stream_id, seq, epoch, type_name, type_version, payload, message_id, recorded_ms)
        SELECT e.stream_id, e.seq, p_epoch[e.request], e.type_name, e.type_version, e.payload,
               e.message_id, p_recorded_ms[e.request]
        FROM unnest(e_request, e_stream, e_seq, e_type_name, e_type_version, e_payload,
                    e_message_id)
            AS e(request, stream_id, seq, type_name, type_version, payload, message_id)
        WHERE v_accepted[e.request];
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        ASSERT v_rows = v_event_count, 'append_batch: the events do not fill the new heads';
    END IF;

    IF cardinality(o_request) > 0 THEN
        -- A message written again keeps its first row, and with it its place in the queue.
        INSERT INTO outbox (
            message_id, source_stream_id, target_type, target_id, type_name, type_version,
            payload, created_ms)
        SELECT o.message_id, o.source, o.target_type, o.target_id, o.type_name,
               o.type_version, o.payload, o.created_ms
        FROM unnest(o_request, o_message_id, o_source, o_target_type, o_target_id, o_type_name,
                    o_type_version, o_payload, o_created_ms) WITH ORDINALITY
            AS o(request, message_id, source, target_type, target_id, type_name, type_version,
                 payload, created_ms, n)
        WHERE v_accepted[o.request]
        ORDER BY o.n
        ON CONFLICT (message_id) DO NOTHING;
    END IF;

    IF cardinality(c_request) > 0 THEN
        DELETE FROM timers t
        USING unnest(c_request, c_stream, c_name) AS c(request, stream_id, name)
        WHERE v_accepted[c.request] AND t.stream_id = c.stream_id AND t.name = c.name;
    END IF;

    IF cardinality(t_request) > 0 THEN
        INSERT INTO timers (stream_id, name, due_ms, payload)
        SELECT t.stream_id, t.name, t.due_ms, t.payload
        FROM unnest(t_request, t_stream, t_name, t_due_ms, t_payload)
            AS t(request, stream_id, name, due_ms, payload)
        WHERE v_accepted[t.request]
        ON CONFLICT (stream_id, name) DO UPDATE SET due_ms = excluded.due_ms,
                                                    payload = excluded.payload;
    END IF;

    IF cardinality(s_request) > 0 THEN
        INSERT INTO snapshots (stream_id, seq, type_name, type_version, payload, recorded_ms)
        SELECT s.stream_id, s.seq, s.type_name, s.type_version, s.payload, s.recorded_ms
        FROM unnest(s_request, s_stream, s_seq, s_type_name, s_type_version, s_payload,
                    s_recorded_ms)
            AS s(request, stream_id, seq, type_name, type_version, payload, recorded_ms)
        WHERE v_accepted[s.request]
        ON CONFLICT (stream_id) DO UPDATE
            SET seq = excluded.seq, type_name = excluded.type_name,
                type_version = excluded.type_version, payload = excluded.payload,
                recorded_ms = excluded.recorded_ms
            WHERE snapshots.seq <= excluded.seq;
    END IF;
END;
$$;
