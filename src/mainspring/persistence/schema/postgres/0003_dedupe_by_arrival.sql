-- mainspring PostgreSQL schema, version 3: each stream's dedupe records in one index range.
--
-- A record was a row with two indexes, (stream_id, message_id) and (stream_id, seq, position);
-- now its key is (stream_id, ordinal), the count of the stream's records before it, so a record
-- costs one index entry and the window is one range delete. streams.dedupe_next is the next
-- ordinal (it was dedupe_count, the number of rows); the window keeps the ordinals from
-- dedupe_next - dedupe_window on. Ordinal order is arrival order: by seq, then order of writing,
-- because a request's records have seqs from the head it saw on and every stored record's seq is
-- at most that head. A message id the window holds is never recorded again (its caller answers
-- that duplicate from the window), so ids need no index.

ALTER TABLE streams RENAME COLUMN dedupe_count TO dedupe_next;

CREATE TABLE dedupe_by_arrival (
    stream_id  text COLLATE "C" NOT NULL,
    ordinal    bigint NOT NULL CHECK (ordinal >= 0),
    message_id text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    reply      bytea NOT NULL,
    PRIMARY KEY (stream_id, ordinal)
);

INSERT INTO dedupe_by_arrival (stream_id, ordinal, message_id, seq, reply)
SELECT stream_id, row_number() OVER (PARTITION BY stream_id ORDER BY seq, position) - 1,
       message_id, seq, reply
FROM dedupe;

UPDATE streams s
SET dedupe_next = (SELECT count(*) FROM dedupe d WHERE d.stream_id = s.stream_id)
WHERE s.dedupe_next <> (SELECT count(*) FROM dedupe d WHERE d.stream_id = s.stream_id);

DROP TABLE dedupe;
ALTER TABLE dedupe_by_arrival RENAME TO dedupe;
ALTER INDEX dedupe_by_arrival_pkey RENAME TO dedupe_pkey;

-- The append_batch function of version 1, writing and pruning the dedupe records as above.
CREATE OR REPLACE FUNCTION append_batch(
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
    v_dedupe_next    bigint[];
    v_fresh          bigint[] := array_fill(0::bigint, ARRAY[cardinality(p_stream)]);
    v_accepted_count integer;
    v_event_count    bigint;
    v_windowed       boolean;
    v_order          bigint[];
    v_rows           bigint;
BEGIN
    ASSERT v_count > 0, 'append_batch: empty batch';
    ASSERT cardinality(e_request) = cardinality(e_payload), 'append_batch: ragged event arrays';

    -- Lock every named stream in stream-id order (so two batches over the same streams wait
    -- for each other instead of deadlocking) and decide each request on its locked row. The
    -- aggregates read the requests in index order (one sort for all of them, checked below).
    WITH locked AS MATERIALIZED (
        SELECT s.ctid AS location, s.stream_id, s.epoch, s.head, s.dedupe_next
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
           array_agg(d.dedupe_next),
           count(*) FILTER (WHERE d.accepted),
           coalesce(sum(d.event_count) FILTER (WHERE d.accepted), 0),
           coalesce(bool_or(d.accepted AND d.dedupe_window > 0), false)
    INTO STRICT v_order, v_accepted, v_location, v_epoch, v_head, v_dedupe_next,
         v_accepted_count, v_event_count, v_windowed
    FROM (
        SELECT r.i, r.new_head - r.expected AS event_count, r.dedupe_window, l.location,
               l.epoch, l.head, coalesce(l.dedupe_next, 0) AS dedupe_next,
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
        -- Each record takes its stream's next ordinal, in arrival order: by seq, equal seqs in
        -- request order. A request's records have seqs from the head it saw on and every stored
        -- record's seq is at most that head, so ordinal order is (seq, order of writing). The
        -- stream locks keep every other writer away from these ordinals.
        INSERT INTO dedupe (stream_id, ordinal, message_id, seq, reply)
        SELECT d.stream_id,
               v_dedupe_next[d.request]
                   + row_number() OVER (PARTITION BY d.request ORDER BY d.seq, d.n) - 1,
               d.message_id, d.seq, d.reply
        FROM unnest(d_request, d_stream, d_message_id, d_seq, d_reply) WITH ORDINALITY
            AS d(request, stream_id, message_id, seq, reply, n)
        WHERE v_accepted[d.request];

        SELECT array_agg(coalesce(f.fresh, 0) ORDER BY r.i)
        INTO STRICT v_fresh
        FROM generate_series(1, v_count) AS r(i)
        LEFT JOIN (
            SELECT d.request, count(*) AS fresh FROM unnest(d_request) AS d(request)
            GROUP BY d.request
        ) f ON f.request = r.i;
    END IF;

    -- The compare-and-set, on the row versions locked above (found by location, which the lock
    -- keeps valid). Every accepted stream was checked under its lock, so each one must match;
    -- the conditions stay so that the write states what it relies on. The same write keeps the
    -- instance index: a NULL or empty status keeps the current one ('active' when new).
    UPDATE streams s
    SET head = r.new_head,
        dedupe_next = s.dedupe_next + v_fresh[r.i],
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
        -- Keep the newest dedupe_window records: the ordinals from dedupe_next - dedupe_window
        -- on. One index range per stream, usually empty or one row.
        DELETE FROM dedupe d
        USING unnest(p_stream, v_accepted, v_dedupe_next, v_fresh, p_dedupe_window)
            AS r(stream_id, accepted, dedupe_next, fresh, dedupe_window)
        WHERE r.accepted AND r.dedupe_window > 0
          AND r.dedupe_next + r.fresh > r.dedupe_window
          AND d.stream_id = r.stream_id
          AND d.ordinal < r.dedupe_next + r.fresh - r.dedupe_window;
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
