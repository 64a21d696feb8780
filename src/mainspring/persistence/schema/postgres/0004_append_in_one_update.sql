-- mainspring PostgreSQL schema, version 4: append_batch locks and moves the stream heads in one
-- statement.
--
-- Version 3 locked the batch's stream rows (SELECT ... FOR UPDATE, in stream-id order), decided
-- each request on its locked row, then updated the accepted rows: every row was written twice,
-- once for its lock and once for its new head. Now one UPDATE takes each row's lock as it reaches
-- it and sets the new head where the epoch and head are the expected ones; a row that another
-- transaction changed meanwhile is checked again on its newest version (READ COMMITTED), so a
-- takeover that commits first fences the append as before. The rows are still locked in
-- stream-id order, so two batches over the same streams wait for each other instead of
-- deadlocking. The requests turned down are read back afterwards, with the epoch and head
-- their streams have then (only when there are some).
--
-- e_stream may be NULL: each event's stream is then its request's (p_stream at e_request), read
-- here instead of computed in the call. The signature is unchanged, so a node still running the
-- previous version's client keeps appending through this function.

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
LANGUAGE plpgsql
-- The stream rows must be locked in stream-id order whatever the table's size (see the UPDATE).
SET enable_seqscan = off
SET enable_hashjoin = off
AS $$
DECLARE
    v_count          integer := cardinality(p_stream);
    v_accepted       boolean[];
    v_dedupe_next    bigint[];
    v_fresh          bigint[];
    v_updated        integer[];
    v_next           bigint[];
    v_accepted_count integer;
    v_event_count    bigint;
    v_windowed       boolean;
    v_rows           bigint;
BEGIN
    ASSERT v_count > 0, 'append_batch: empty batch';
    ASSERT cardinality(e_request) = cardinality(e_payload), 'append_batch: ragged event arrays';

    IF cardinality(d_request) > 0 THEN
        SELECT array_agg(coalesce(f.fresh, 0) ORDER BY r.i)
        INTO STRICT v_fresh
        FROM generate_series(1, v_count) AS r(i)
        LEFT JOIN (
            SELECT d.request, count(*) AS fresh FROM unnest(d_request) AS d(request)
            GROUP BY d.request
        ) f ON f.request = r.i;
    ELSE
        v_fresh := array_fill(0::bigint, ARRAY[v_count]);
    END IF;

    -- The compare-and-set and the lock in one statement: each stream's row is locked as the
    -- update reaches it, and a row that another transaction changed meanwhile is checked again
    -- on its newest version. The rows are reached in stream-id order (the sorted requests drive
    -- a nested loop over the primary key: the function turns hash joins and sequential scans
    -- off), so two batches over the same streams wait for each other instead of deadlocking.
    -- The same write keeps the instance index: a NULL or empty status keeps the current one
    -- ('active' when new).
    WITH moved AS (
        UPDATE streams s
        SET head = r.new_head,
            dedupe_next = s.dedupe_next + r.fresh,
            status = coalesce(nullif(r.status, ''), s.status, 'active'),
            created_ms = coalesce(s.created_ms, r.recorded_ms),
            updated_ms = r.recorded_ms
        FROM (
            SELECT *
            FROM unnest(p_stream, p_epoch, p_expected, p_new_head, p_status, p_recorded_ms,
                        v_fresh, p_dedupe_window) WITH ORDINALITY
                AS u(stream_id, epoch, expected, new_head, status, recorded_ms, fresh,
                     dedupe_window, i)
            ORDER BY u.stream_id
        ) r
        WHERE s.stream_id = r.stream_id
          AND s.epoch = r.epoch
          AND s.head = r.expected
        RETURNING r.i::integer AS i, s.dedupe_next - r.fresh AS dedupe_next,
                  r.new_head - r.expected AS event_count, r.dedupe_window > 0 AS windowed
    )
    SELECT array_agg(m.i ORDER BY m.i), array_agg(m.dedupe_next ORDER BY m.i),
           count(*), coalesce(sum(m.event_count), 0), coalesce(bool_or(m.windowed), false)
    INTO STRICT v_updated, v_next, v_accepted_count, v_event_count, v_windowed
    FROM moved m;

    IF v_accepted_count = v_count THEN
        v_accepted := array_fill(true, ARRAY[v_count]);
        v_dedupe_next := v_next;
    ELSE
        SELECT array_agg(u.i IS NOT NULL ORDER BY g.i), array_agg(u.dedupe_next ORDER BY g.i)
        INTO STRICT v_accepted, v_dedupe_next
        FROM generate_series(1, v_count) AS g(i)
        LEFT JOIN unnest(v_updated, v_next) AS u(i, dedupe_next) ON u.i = g.i;
        -- The requests turned down, with the epoch and head their streams have now (NULL for a
        -- stream that does not exist), read after the update saw them.
        RETURN QUERY
            SELECT r.i::integer, s.epoch, s.head
            FROM unnest(p_stream) WITH ORDINALITY AS r(stream_id, i)
            LEFT JOIN streams s ON s.stream_id = r.stream_id
            WHERE NOT v_accepted[r.i];
        IF v_accepted_count = 0 THEN
            RETURN;
        END IF;
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
    END IF;

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
        SELECT coalesce(e.stream_id, p_stream[e.request]), e.seq, p_epoch[e.request],
               e.type_name, e.type_version, e.payload, e.message_id, p_recorded_ms[e.request]
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
