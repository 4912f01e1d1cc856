/**
 * The SQL of the libSQL adapter (SQLite dialect, shared with the planned D1 adapter), as named constants with the
 * `{{table}}` placeholder of {@link TABLE_PLACEHOLDER}. Values are always bound parameters; numbers are `CAST` to
 * INTEGER because drivers bind JavaScript numbers as REAL.
 *
 * @module
 */
import { NOW_MS, renderSql, TABLE_PLACEHOLDER } from "./schema.ts";

export { NOW_MS, TABLE_PLACEHOLDER };

const NOW = NOW_MS;

/**
 * Inserts messages. `?1`: a JSON array of `[id, topic, key, payload, headers, delayMs]` arrays. Array order is
 * insertion order, so `seq` follows it.
 */
export const ENQUEUE_SQL: string = `INSERT INTO "{{table}}" (id, topic, key, payload, headers, status, created_at, available_at, attempts)
SELECT json_extract(m.value, '$[0]'), json_extract(m.value, '$[1]'), json_extract(m.value, '$[2]'),
  json_extract(m.value, '$[3]'), json_extract(m.value, '$[4]'), 'pending', ${NOW},
  ${NOW} + CAST(json_extract(m.value, '$[5]') AS INTEGER), 0
FROM json_each(?1) AS m ORDER BY m.key`;

/**
 * {@link ENQUEUE_SQL} for the usual call, ONE message: its fields as parameters (`?1` id, `?2` topic, `?3` key or
 * null, `?4` payload JSON text, `?5` headers JSON text, `?6` delay ms), no JSON array taken apart. Measured (a batch
 * of an order INSERT and X, interleaved medians over 2,700 batches, two runs): bare INSERT 1.011 / 0.983 ms, this
 * statement 1.016 / 0.989, the JSON-array statement 1.068 / 1.046.
 */
export const ENQUEUE_ONE_SQL: string = `INSERT INTO "{{table}}" (id, topic, key, payload, headers, status, created_at, available_at, attempts)
VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ${NOW}, ${NOW} + CAST(?6 AS INTEGER), 0)`;

/** Whether row `o` is claimable now: due, and no earlier row of its key is pending and not due. */
const ELIGIBLE = `o.status = 'pending' AND o.available_at <= ${NOW}
  AND (o.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM "{{table}}" AS p
    WHERE p.status = 'pending' AND p.key = o.key AND p.seq < o.seq AND p.available_at > ${NOW}))`;

/**
 * Claims rows in `seq` order. `?1` token, `?2` lease ms, `?3` limit. RETURNING order is arbitrary: sort by seq.
 * (libSQL has no `UPDATE … ORDER BY … LIMIT`, hence the subquery.)
 *
 * Each claimed row comes back as ONE column `m`, the JSON array `[seq, id, topic, key, payload, headers, created_at,
 * attempts, last_error, lease_until, prev_seq]` (payload and headers as JSON strings, so the payload text is returned
 * exactly; `prev_seq` the key's delivery position from `<table>_positions`, null for a keyless row or a key with none):
 * `@libsql/client` builds every result row with two `Object.defineProperty` calls per column, which at eleven
 * columns cost more than the claim itself (bench/README.md). The database's now is `lease_until - ?2`.
 */
export const CLAIM_SQL: string = `UPDATE "{{table}}"
SET lease_token = ?1, lease_until = ${NOW} + CAST(?2 AS INTEGER), available_at = ${NOW} + CAST(?2 AS INTEGER),
  attempts = attempts + 1
WHERE seq IN (SELECT o.seq FROM "{{table}}" AS o WHERE ${ELIGIBLE} ORDER BY o.seq LIMIT CAST(?3 AS INTEGER))
RETURNING json_array(seq, id, topic, key, payload, headers, created_at, attempts, last_error, lease_until,
  CASE WHEN key IS NOT NULL THEN (SELECT p.seq FROM "{{table}}_positions" AS p WHERE p.key = "{{table}}".key) END) AS m`;

/** The database clock. */
export const NOW_SQL: string = `SELECT ${NOW} AS now`;

/** Whether a row is claimable now. */
export const HAS_DUE_SQL: string = `SELECT 1 AS due FROM "{{table}}" AS o WHERE ${ELIGIBLE} LIMIT 1`;

/**
 * How a settle names its rows: by `id` (the settlement's ids, through the table's id index), or by `seq` (the table's
 * rowid, found without that index: the ids a storage claimed itself, mapped to the seqs their claim returned). `seq`
 * values are never reused (`AUTOINCREMENT`), and every statement is fenced on the token either way.
 */
export type SettleBy = "id" | "seq";

/** The settle statements of {@link SettleBy} `by`, as in the `*_SQL` constants below (which are the `id` ones). */
export interface SettleStatements {
  /** See {@link SETTLE_LOST_SQL}. */
  readonly settleLost: string;
  /** See {@link COUNT_SETTLE_SQL}. */
  readonly countSettle: string;
  /** See {@link POSITIONS_SQL}. */
  readonly positions: string;
  /** See {@link DELIVERED_DELETE_SQL}. */
  readonly deliveredDelete: string;
  /** See {@link DELIVERED_MARK_SQL}. */
  readonly deliveredMark: string;
  /** See {@link RETRY_SQL}. */
  readonly retry: string;
  /** See {@link DEAD_SQL}. */
  readonly dead: string;
  /** See {@link RELEASE_SQL}. */
  readonly release: string;
}

const FENCE = `lease_token = ?1 AND status = 'pending'`;

/**
 * The settle statements naming rows by `by` (the JSON arrays hold ids, or seqs where the docs below say ids).
 *
 * @param by the column the JSON arrays name rows by
 * @returns the statements, with the `{{table}}` placeholder
 */
function settleStatements(by: SettleBy): SettleStatements {
  return {
    settleLost: `SELECT json_group_array(j.value) AS lost FROM json_each(?2) AS j
WHERE NOT EXISTS (SELECT 1 FROM "{{table}}" AS o WHERE o.${by} = j.value AND o.lease_token = ?1 AND o.status = 'pending')`,
    countSettle: `WITH s(id, kind) AS (
  SELECT value, 'delivered' FROM json_each(?2)
  UNION ALL SELECT value, 'retried' FROM json_each(?3)
  UNION ALL SELECT value, 'dead' FROM json_each(?4)
), a AS (
  SELECT COUNT(*) AS n,
    COALESCE(SUM(s.kind = 'delivered'), 0) AS delivered,
    COALESCE(SUM(s.kind = 'retried'), 0) AS retried,
    COALESCE(SUM(s.kind = 'dead'), 0) AS dead,
    COALESCE(SUM(CASE WHEN s.kind = 'delivered' THEN MAX(0, ${NOW} - o.created_at) END), 0) AS latency_sum,
    COALESCE(MAX(CASE WHEN s.kind = 'delivered' THEN MAX(0, ${NOW} - o.created_at) END), 0) AS latency_max
  FROM s JOIN "{{table}}" AS o ON o.${by} = s.id
  WHERE o.lease_token = ?1 AND o.status = 'pending'
)
INSERT INTO "{{table}}_counters" (bucket, shard, delivered, retried, dead, latency_sum_ms, latency_max_ms)
SELECT (${NOW} / 60000) * 60000, 0, a.delivered, a.retried, a.dead, a.latency_sum, a.latency_max FROM a WHERE a.n > 0
ON CONFLICT (bucket, shard) DO UPDATE SET
  delivered = delivered + excluded.delivered,
  retried = retried + excluded.retried,
  dead = dead + excluded.dead,
  latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
  latency_max_ms = MAX(latency_max_ms, excluded.latency_max_ms)`,
    positions: `INSERT INTO "{{table}}_positions" (key, seq, at)
SELECT o.key, MAX(o.seq), ${NOW} FROM "{{table}}" AS o
WHERE o.${by} IN (SELECT value FROM json_each(?2)) AND o.lease_token = ?1 AND o.status = 'pending' AND o.key IS NOT NULL
GROUP BY o.key
ON CONFLICT (key) DO UPDATE SET seq = MAX(seq, excluded.seq), at = excluded.at`,
    deliveredDelete: `DELETE FROM "{{table}}" WHERE ${by} IN (SELECT value FROM json_each(?2)) AND ${FENCE}`,
    deliveredMark: `UPDATE "{{table}}"
SET status = 'delivered', done_at = ${NOW}, lease_token = NULL, lease_until = NULL
WHERE ${by} IN (SELECT value FROM json_each(?2)) AND ${FENCE}`,
    retry: `UPDATE "{{table}}"
SET available_at = ${NOW} + CAST(j.delay_ms AS INTEGER), last_error = j.error, lease_token = NULL, lease_until = NULL
FROM (SELECT json_extract(value, '$[0]') AS jid, json_extract(value, '$[1]') AS delay_ms,
        json_extract(value, '$[2]') AS error FROM json_each(?2)) AS j
WHERE "{{table}}".${by} = j.jid AND "{{table}}".lease_token = ?1 AND "{{table}}".status = 'pending'`,
    dead: `UPDATE "{{table}}"
SET status = 'dead', done_at = ${NOW}, last_error = j.error, lease_token = NULL, lease_until = NULL
FROM (SELECT json_extract(value, '$[0]') AS jid, json_extract(value, '$[1]') AS error FROM json_each(?2)) AS j
WHERE "{{table}}".${by} = j.jid AND "{{table}}".lease_token = ?1 AND "{{table}}".status = 'pending'`,
    release: `UPDATE "{{table}}"
SET available_at = ${NOW}, attempts = MAX(0, attempts - 1), lease_token = NULL, lease_until = NULL
WHERE ${by} IN (SELECT value FROM json_each(?2)) AND ${FENCE}`,
  };
}

const BY_ID = settleStatements("id");

/** {@link SettleStatements} naming rows by `seq` (see {@link SettleBy}). */
export const SETTLE_BY_SEQ: SettleStatements = settleStatements("seq");

/**
 * The settlements that will NOT apply, read before the outcome statements of the same write transaction: the ids of
 * `?2` (a JSON array of every settled id) whose row no longer carries the token `?1` (or is gone), as one JSON array
 * in one row. The outcome statements below apply to exactly the other ids, so they need no `RETURNING` (one result
 * row per settled message is what `@libsql/client` makes expensive).
 */
export const SETTLE_LOST_SQL: string = BY_ID.settleLost;

/**
 * Adds the settle counters to the current minute's bucket, from the rows that still carry the token (so it runs
 * before the outcome statements). `?1` token, `?2` delivered ids, `?3` retried ids, `?4` dead ids (JSON arrays).
 */
export const COUNT_SETTLE_SQL: string = BY_ID.countSettle;

/**
 * Records the delivery positions of a delivered settle (schema v3), before the rows are deleted or marked, from the
 * rows that still carry the token: per key, the largest delivered `seq` (never moving a position back). `?1` token,
 * `?2` JSON array of delivered ids.
 */
export const POSITIONS_SQL: string = BY_ID.positions;

/**
 * Drops at most `?1` delivery positions not updated for 7 days (database clock), oldest first (schema v3): longer
 * than any transport redelivers a message (QStash's default retries end after about 30 hours), so a key whose
 * position is gone has nothing of it left in flight, and its next message simply carries no `prevSeq`.
 */
export const PURGE_POSITIONS_SQL: string = `DELETE FROM "{{table}}_positions" WHERE key IN (
  SELECT key FROM "{{table}}_positions" WHERE at < ${NOW} - 604800000 ORDER BY at LIMIT CAST(?1 AS INTEGER)
)`;

/** Delivered, no retention: delete. `?1` token, `?2` JSON array of ids. */
export const DELIVERED_DELETE_SQL: string = BY_ID.deliveredDelete;

/** Delivered, with retention: mark delivered. `?1` token, `?2` JSON array of ids. */
export const DELIVERED_MARK_SQL: string = BY_ID.deliveredMark;

/** Retry later. `?1` token, `?2` JSON array of `[id, delayMs, error]`. */
export const RETRY_SQL: string = BY_ID.retry;

/** Dead-letter. `?1` token, `?2` JSON array of `[id, error]`. */
export const DEAD_SQL: string = BY_ID.dead;

/** Give back unsent claims: due now, attempt returned. `?1` token, `?2` JSON array of ids. */
export const RELEASE_SQL: string = BY_ID.release;

/** Counts and windowed counters in one consistent read. `?1` window ms. */
export const STATS_SQL: string = `SELECT ${NOW} AS now,
  (SELECT COUNT(*) FROM "{{table}}" WHERE status = 'pending') AS pending,
  (SELECT COUNT(*) FROM "{{table}}" WHERE status = 'pending' AND available_at <= ${NOW}) AS due,
  (SELECT COUNT(*) FROM "{{table}}" WHERE status = 'pending' AND lease_token IS NOT NULL AND lease_until > ${NOW}) AS leased,
  (SELECT COUNT(*) FROM "{{table}}" WHERE status = 'dead') AS dead,
  (SELECT MIN(created_at) FROM "{{table}}" WHERE status = 'pending') AS oldest,
  (SELECT MIN(available_at) FROM "{{table}}" WHERE status = 'pending' AND available_at <= ${NOW}) AS oldest_due,
  w.delivered, w.retried, w.dead_window, w.latency_sum, w.latency_max
FROM (SELECT COALESCE(SUM(delivered), 0) AS delivered, COALESCE(SUM(retried), 0) AS retried,
        COALESCE(SUM(dead), 0) AS dead_window, COALESCE(SUM(latency_sum_ms), 0) AS latency_sum,
        MAX(CASE WHEN delivered > 0 THEN latency_max_ms END) AS latency_max
      FROM "{{table}}_counters" WHERE bucket >= ((${NOW} - CAST(?1 AS INTEGER)) / 60000) * 60000) AS w`;

/** One page of dead letters after a seq. `?1` cursor seq, `?2` limit. */
export const LIST_DEAD_SQL: string = `SELECT seq, id, topic, key, payload, headers, created_at, done_at, attempts, last_error
FROM "{{table}}" WHERE status = 'dead' AND seq > CAST(?1 AS INTEGER) ORDER BY seq LIMIT CAST(?2 AS INTEGER)`;

/**
 * The next `seq` at the tail of the table: above every row there is and every value AUTOINCREMENT has handed out.
 * The table name also stands in a string literal here (`sqlite_sequence.name`): it is a validated identifier.
 */
const NEXT_SEQ = `(SELECT MAX(n) FROM (SELECT MAX(seq) AS n FROM "{{table}}"
  UNION ALL SELECT seq FROM sqlite_sequence WHERE name = '{{table}}' UNION ALL SELECT 0)) + 1`;

/**
 * Back to pending at the TAIL of its key (DECISIONS.md 1): a new `seq` after every row, due now, attempts reset;
 * keeps id, headers and payload. Claimable only when no earlier row of its key is pending and not due, so it never
 * runs beside a later message of its key. `?1` id. Run with {@link REPLAY_SEQUENCE_SQL} in the same transaction.
 */
export const REPLAY_DEAD_SQL: string = `UPDATE "{{table}}"
SET seq = ${NEXT_SEQ}, status = 'pending', attempts = 0, available_at = ${NOW}, lease_token = NULL, lease_until = NULL,
  done_at = NULL
WHERE id = ?1 AND status = 'dead' RETURNING id`;

/**
 * Records a replayed row's new `seq` in `sqlite_sequence` (an UPDATE of the rowid does not), so AUTOINCREMENT never
 * hands that value out again after the row is deleted.
 */
export const REPLAY_SEQUENCE_SQL: string = `UPDATE sqlite_sequence SET seq = (SELECT MAX(seq) FROM "{{table}}")
WHERE name = '{{table}}' AND seq < (SELECT MAX(seq) FROM "{{table}}")`;

/**
 * The highest `seq` ever handed out (AUTOINCREMENT's `sqlite_sequence` row, a one-row lookup): it grows whenever a
 * transaction that enqueued or replayed commits, on any connection, and never moves when rows are deleted.
 */
export const HEAD_SEQ_SQL: string = `SELECT seq AS head FROM sqlite_sequence WHERE name = '{{table}}'`;

/** The ids of `?1` (a JSON array) that a row of the table already has. */
export const EXISTING_IDS_SQL: string = `SELECT id FROM "{{table}}" WHERE id IN (SELECT value FROM json_each(?1))`;

/**
 * Deletes at most `?2` rows of status `status` done before `?1`, oldest first. The status is a literal (not a bound
 * parameter) so SQLite can use the status's partial `(done_at, seq)` index (schema version 2): a chunk reads the rows
 * it deletes, whatever the table holds.
 */
const purgeSql = (status: "dead" | "delivered"): string => `DELETE FROM "{{table}}" WHERE seq IN (
  SELECT seq FROM "{{table}}" WHERE status = '${status}' AND done_at < CAST(?1 AS INTEGER)
  ORDER BY done_at, seq LIMIT CAST(?2 AS INTEGER)
) RETURNING seq`;

/** Deletes at most `?2` dead letters that died before `?1` (epoch ms), oldest first. */
export const PURGE_DEAD_SQL: string = purgeSql("dead");

/** Deletes at most `?2` kept delivered rows delivered before `?1` (epoch ms), oldest first. */
export const PURGE_DELIVERED_SQL: string = purgeSql("delivered");

/** Drops counter buckets older than 7 days. */
export const PURGE_COUNTERS_SQL: string = `DELETE FROM "{{table}}_counters" WHERE bucket < ${NOW} - 604800000`;

/**
 * A write that matches no row: run through `executeMultiple` at the start of a deferred transaction, it takes
 * SQLite's write lock (or fails at once with SQLITE_BUSY) without leaving a prepared statement behind.
 */
export const LOCK_SQL: string = `UPDATE "{{table}}" SET attempts = attempts WHERE 0`;

/** Run through `executeMultiple` at the start of a deferred transaction: takes the shared (read) lock. */
export const READ_LOCK_SQL: string = `SELECT 1 FROM "{{table}}" LIMIT 0`;

/** Same as {@link LOCK_SQL} for `migrate()`, whose outbox table may not exist yet. */
export const MIGRATE_LOCK_SQL: string = `UPDATE "{{table}}_migrations" SET version = version WHERE 0`;

/** Applied schema versions. */
export const APPLIED_VERSIONS_SQL: string = `SELECT version FROM "{{table}}_migrations" ORDER BY version`;

/** Every statement of the adapter, rendered for one table. */
export interface LibsqlSql {
  /** See {@link ENQUEUE_SQL}. */
  readonly enqueue: string;
  /** See {@link ENQUEUE_ONE_SQL}. */
  readonly enqueueOne: string;
  /** See {@link CLAIM_SQL}. */
  readonly claim: string;
  /** See {@link NOW_SQL}. */
  readonly now: string;
  /** See {@link HAS_DUE_SQL}. */
  readonly hasDue: string;
  /** See {@link SETTLE_LOST_SQL}. */
  readonly settleLost: string;
  /** See {@link COUNT_SETTLE_SQL}. */
  readonly countSettle: string;
  /** See {@link POSITIONS_SQL}. */
  readonly positions: string;
  /** See {@link PURGE_POSITIONS_SQL}. */
  readonly purgePositions: string;
  /** See {@link DELIVERED_DELETE_SQL}. */
  readonly deliveredDelete: string;
  /** See {@link DELIVERED_MARK_SQL}. */
  readonly deliveredMark: string;
  /** See {@link RETRY_SQL}. */
  readonly retry: string;
  /** See {@link DEAD_SQL}. */
  readonly dead: string;
  /** See {@link RELEASE_SQL}. */
  readonly release: string;
  /** See {@link STATS_SQL}. */
  readonly stats: string;
  /** See {@link LIST_DEAD_SQL}. */
  readonly listDead: string;
  /** See {@link REPLAY_DEAD_SQL}. */
  readonly replayDead: string;
  /** See {@link REPLAY_SEQUENCE_SQL}. */
  readonly replaySequence: string;
  /** See {@link HEAD_SEQ_SQL}. */
  readonly headSeq: string;
  /** See {@link EXISTING_IDS_SQL}. */
  readonly existingIds: string;
  /** See {@link PURGE_DEAD_SQL}. */
  readonly purgeDead: string;
  /** See {@link PURGE_DELIVERED_SQL}. */
  readonly purgeDelivered: string;
  /** See {@link PURGE_COUNTERS_SQL}. */
  readonly purgeCounters: string;
  /** See {@link LOCK_SQL}. */
  readonly lock: string;
  /** See {@link READ_LOCK_SQL}. */
  readonly readLock: string;
  /** See {@link MIGRATE_LOCK_SQL}. */
  readonly migrateLock: string;
  /** See {@link APPLIED_VERSIONS_SQL}. */
  readonly appliedVersions: string;
  /** The settle statements naming rows by seq ({@link SETTLE_BY_SEQ}). */
  readonly bySeq: SettleStatements;
}

/**
 * Renders every statement of the adapter for one table.
 *
 * @param table the outbox table name (validated)
 * @returns the statements
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * import { libsqlSql } from "./sql.ts";
 * console.log(libsqlSql("outbox").claim);
 * ```
 */
export function libsqlSql(table: string): LibsqlSql {
  const r = (s: string): string => renderSql(s, table);
  return {
    enqueue: r(ENQUEUE_SQL),
    enqueueOne: r(ENQUEUE_ONE_SQL),
    claim: r(CLAIM_SQL),
    now: r(NOW_SQL),
    hasDue: r(HAS_DUE_SQL),
    settleLost: r(SETTLE_LOST_SQL),
    countSettle: r(COUNT_SETTLE_SQL),
    positions: r(POSITIONS_SQL),
    purgePositions: r(PURGE_POSITIONS_SQL),
    deliveredDelete: r(DELIVERED_DELETE_SQL),
    deliveredMark: r(DELIVERED_MARK_SQL),
    retry: r(RETRY_SQL),
    dead: r(DEAD_SQL),
    release: r(RELEASE_SQL),
    stats: r(STATS_SQL),
    listDead: r(LIST_DEAD_SQL),
    replayDead: r(REPLAY_DEAD_SQL),
    replaySequence: r(REPLAY_SEQUENCE_SQL),
    headSeq: r(HEAD_SEQ_SQL),
    existingIds: r(EXISTING_IDS_SQL),
    purgeDead: r(PURGE_DEAD_SQL),
    purgeDelivered: r(PURGE_DELIVERED_SQL),
    purgeCounters: r(PURGE_COUNTERS_SQL),
    lock: r(LOCK_SQL),
    readLock: r(READ_LOCK_SQL),
    migrateLock: r(MIGRATE_LOCK_SQL),
    appliedVersions: r(APPLIED_VERSIONS_SQL),
    bySeq: Object.fromEntries(Object.entries(SETTLE_BY_SEQ).map(([k, v]) => [k, r(v)])) as unknown as SettleStatements,
  };
}
