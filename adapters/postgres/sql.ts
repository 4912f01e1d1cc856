/**
 * The SQL of the PostgreSQL adapter, as named constants with the `{{schema}}` / `{{table}}` placeholders of
 * `schema.ts`. Values are always bound parameters (`$1`, `$2`, …); lists travel as one JSON text parameter, so the
 * adapter never depends on how a driver serialises arrays. Every time comes from the database clock (`now()`).
 * Result columns are single lowercase words (`created`, `lasterror`, …), so a client configured with a column
 * transform (postgres.js `transform: postgres.camel`) reads them unchanged.
 *
 * @module
 */
import { epochMs, type PostgresNames, renderSql } from "./schema.ts";

const T = `"{{schema}}"."{{table}}"`;
const ms = epochMs;
const MS_INTERVAL = `interval '1 millisecond'`;

/**
 * The advisory-lock namespace of one outbox table (the first `int4` of `pg_advisory_xact_lock(int4, int4)`): a hash of
 * its qualified name, so two outbox tables never wait on each other's keys.
 */
export const KEY_LOCK_NAMESPACE_SQL: string = `hashtext('edge-outbox:{{schema}}.{{table}}')`;

/**
 * Inserts messages. `$1`: a JSON array of `[id, topic, key, payload, headers, delayMs]` arrays (payload and headers
 * as JSON text). Array order is insertion order, so `seq` follows it.
 *
 * **Commit order per key.** Before any row draws its `seq` (the identity's `nextval`), the statement takes
 * `pg_advisory_xact_lock(<table namespace>, hashtext(key))` for each distinct key of the call, in ascending hash order
 * (so two calls never take the same locks in opposite orders: no deadlock within one call each). The locks live until
 * the caller's transaction ends. A second transaction enqueueing the same key therefore waits *before* drawing its
 * `seq` until the first one committed or rolled back: for two rows of one key, the smaller `seq` belongs to the
 * transaction that committed first, whatever the ids say (ids are drawn before commit; Watermill #311).
 *
 * Why the lock is taken first: CTE `l` calls a volatile function, so it is materialised, and it is read only by the
 * uncorrelated sub-select in the `WHERE`, which the planner turns into an InitPlan gating the `SELECT` as a
 * "One-Time Filter": the executor evaluates it (taking every lock) before it fetches the first row, and `nextval` runs
 * only in the projection of the rows that pass. `test/postgres.test.ts` checks both the plan and the behaviour.
 *
 * Keyless messages take no lock. Two *separate* enqueue calls in one transaction whose keys appear in opposite orders
 * in another transaction can deadlock; PostgreSQL then aborts one transaction with 40P01, surfaced as a retryable
 * STORAGE error. Enqueue all messages of a transaction in one call (it sorts their keys) to avoid it.
 */
export const ENQUEUE_SQL: string = `WITH m AS (
  SELECT e.ord, e.v FROM json_array_elements($1::text::json) WITH ORDINALITY AS e(v, ord)
), l AS (
  SELECT pg_advisory_xact_lock(${KEY_LOCK_NAMESPACE_SQL}, k.h)
  FROM (SELECT DISTINCT hashtext(m.v->>2) AS h FROM m WHERE m.v->>2 IS NOT NULL ORDER BY 1) AS k
)
INSERT INTO ${T} (id, topic, key, payload, headers, status, created_at, available_at, attempts)
SELECT (m.v->>0)::uuid, m.v->>1, m.v->>2, (m.v->>3)::json, (m.v->>4)::json, 'pending', now(),
  now() + (m.v->>5)::bigint * ${MS_INTERVAL}, 0
FROM m
WHERE (SELECT count(*) FROM l) >= 0
ORDER BY m.ord`;

/**
 * Whether row `o` is claimable now: pending, due, and — for a keyed row — the **head** of its key: no row of its key
 * with a smaller `seq` is pending at all (due, delayed, leased or backing off).
 *
 * Why only heads (`capabilities.keyPrefixClaims: false`): claimers run in READ COMMITTED with `FOR UPDATE SKIP
 * LOCKED`, each reading a snapshot taken when its statement started. Claimer B's snapshot may still show head h1 of
 * key k as due after claimer A leased it. If B could take a prefix (h1, h2, …) it would skip the locked h1 (or drop it
 * on recheck) and still take h2 while A sends h1: out of order. With heads only:
 * - B sees h1 as due and tries to lock it. If A's claim is still in flight, SKIP LOCKED skips h1. If A committed, B
 *   locks the newest row version and EvalPlanQual re-checks this condition on it: `available_at` is now A's lease
 *   expiry, in the future, so h1 is excluded. If h1 was deleted (delivered), B skips it.
 * - h2 is not a head in B's snapshot (h1 is pending there), so B never takes it. h2 becomes claimable only in a
 *   snapshot where h1 is gone (delivered or dead), that is after A settled it.
 * - A snapshot that shows h2 also shows h1 as committed: `seq` order is commit order per key (see ENQUEUE_SQL), and
 *   h1's transaction left the proc array before h2's writer could take the key lock.
 * Keyless rows have no such condition.
 */
const ELIGIBLE = `o.status = 'pending' AND o.available_at <= now()
    AND (o.key IS NULL OR NOT EXISTS (
      SELECT 1 FROM ${T} AS p WHERE p.status = 'pending' AND p.key = o.key AND p.seq < o.seq))`;

/**
 * Claims up to `$3` claimable rows in `seq` order in one statement: `FOR UPDATE OF o SKIP LOCKED` below the `LIMIT`
 * (so rows another claimer holds do not count), then writes the lease (`$1` token, `$2` lease ms: `lease_until =
 * available_at = now() + $2 ms`) and counts the attempt. Returns one row per claimed message, each with the lease
 * expiry `until` (the database's now is `until - $2`: `now()` is fixed within the transaction); no row when nothing
 * was claimed (then {@link CLOCK_SQL} reads the clock). RETURNING order is arbitrary: sort by seq.
 *
 * Plan: the walk goes down `<table>_pending` in seq order (pending rows only) and stops after `$3` rows; the head
 * check is one probe of `<table>_key` per keyed row walked. Rows behind a leased or backing-off head are walked and
 * skipped, so a claim costs about the number of pending rows ahead of the last row it takes. Measured on the test
 * machine at 1,000,000 pending rows: 6 ms for 100 rows when rows spread over many keys (5,000 keys + keyless), but
 * about 3.6 s per claim (and per `hasDue`) when the backlog sits in a few deep keys (10 keys x 100,000 rows) whose
 * heads are all leased, since every row then gets walked. A per-key head table would remove that cost.
 */
export const CLAIM_SQL: string = `UPDATE ${T} AS t
SET lease_token = $1::uuid, lease_until = now() + $2::bigint * ${MS_INTERVAL},
  available_at = now() + $2::bigint * ${MS_INTERVAL}, attempts = t.attempts + 1
WHERE t.seq = ANY (ARRAY(
  SELECT o.seq FROM ${T} AS o
  WHERE ${ELIGIBLE}
  ORDER BY o.seq
  LIMIT $3
  FOR UPDATE OF o SKIP LOCKED
))
RETURNING t.seq, t.id::text AS id, t.topic, t.key, t.payload::text AS payload, t.headers::text AS headers,
  ${ms("t.created_at")} AS created, t.attempts, t.last_error AS lasterror,
  ${ms(`now() + $2::bigint * ${MS_INTERVAL}`)} AS until`;

/** The database clock and the lease expiry a claim made now would get (`$1` lease ms), for an empty claim. */
export const CLOCK_SQL: string = `SELECT ${ms("now()")} AS now, ${ms(`now() + $1::bigint * ${MS_INTERVAL}`)} AS until`;

/**
 * Whether a row is claimable now (the claim's condition). A sub-select with `ORDER BY o.seq LIMIT 1` keeps it on the
 * claim's index walk: PostgreSQL drops ORDER BY and LIMIT inside `EXISTS`, and a bare `EXISTS` over a large table
 * gets a sequential scan planned (cheap when the first rows qualify, a full scan when they are all blocked).
 */
export const HAS_DUE_SQL: string = `SELECT count(*) > 0 AS due FROM (
  SELECT 1 FROM ${T} AS o WHERE ${ELIGIBLE} ORDER BY o.seq LIMIT 1
) AS first_due`;

const FENCE = `t.lease_token = $1::uuid AND t.status = 'pending'`;
const LATENCY = `greatest(0, floor(extract(epoch FROM (now() - d.created_at)) * 1000))::bigint`;

/** Count and latency (sum, max) of the delivered rows `d`, the latency computed once per row. */
const DELIVERED_STATS = `SELECT count(*) AS delivered, coalesce(sum(dl.ms), 0) AS latency_sum, coalesce(max(dl.ms), 0) AS latency_max
    FROM (SELECT ${LATENCY} AS ms FROM d) AS dl`;

/** Adds the counts of `a` to this minute's counter row (sharded by backend to spread row locks). */
const COUNTERS_UPSERT = `INSERT INTO "{{schema}}"."{{table}}_counters" AS c (bucket, shard, delivered, retried, dead, latency_sum_ms, latency_max_ms)
  SELECT date_trunc('minute', now()), pg_backend_pid() % 8, a.delivered, a.retried, a.dead, a.latency_sum, a.latency_max
  FROM a WHERE a.delivered + a.retried + a.dead > 0
  ON CONFLICT (bucket, shard) DO UPDATE SET
    delivered = c.delivered + excluded.delivered,
    retried = c.retried + excluded.retried,
    dead = c.dead + excluded.dead,
    latency_sum_ms = c.latency_sum_ms + excluded.latency_sum_ms,
    latency_max_ms = greatest(c.latency_max_ms, excluded.latency_max_ms)`;

const DELETE_DELIVERED = `DELETE FROM ${T} AS t USING json_array_elements_text($2::text::json) AS j(id)
  WHERE t.id = j.id::uuid AND ${FENCE}
  RETURNING t.id, t.created_at`;

function settleSql(deliveredCte: string): string {
  return `WITH d AS (
  ${deliveredCte}
), r AS (
  UPDATE ${T} AS t
  SET available_at = now() + (j.v->>1)::bigint * ${MS_INTERVAL}, last_error = j.v->>2, lease_token = NULL, lease_until = NULL
  FROM json_array_elements($3::text::json) AS j(v)
  WHERE t.id = (j.v->>0)::uuid AND ${FENCE}
  RETURNING t.id
), k AS (
  UPDATE ${T} AS t
  SET status = 'dead', done_at = now(), last_error = j.v->>1, lease_token = NULL, lease_until = NULL
  FROM json_array_elements($4::text::json) AS j(v)
  WHERE t.id = (j.v->>0)::uuid AND ${FENCE}
  RETURNING t.id
), l AS (
  UPDATE ${T} AS t
  SET available_at = now(), attempts = greatest(0, t.attempts - 1), lease_token = NULL, lease_until = NULL
  FROM json_array_elements_text($5::text::json) AS j(id)
  WHERE t.id = j.id::uuid AND ${FENCE}
  RETURNING t.id
), a AS (
  SELECT x.delivered, (SELECT count(*) FROM r) AS retried, (SELECT count(*) FROM k) AS dead, x.latency_sum, x.latency_max
  FROM (${DELIVERED_STATS}) AS x
), n AS (${COUNTERS_UPSERT})
SELECT x.id FROM (
  SELECT j.id FROM json_array_elements_text($2::text::json) AS j(id)
  UNION ALL SELECT j.v->>0 FROM json_array_elements($3::text::json) AS j(v)
  UNION ALL SELECT j.v->>0 FROM json_array_elements($4::text::json) AS j(v)
  UNION ALL SELECT j.id FROM json_array_elements_text($5::text::json) AS j(id)
) AS x
WHERE x.id::uuid NOT IN (SELECT id FROM d UNION ALL SELECT id FROM r UNION ALL SELECT id FROM k UNION ALL SELECT id FROM l)`;
}

/**
 * Settles one claim in ONE statement with data-modifying CTEs, each fenced on the lease token `$1`: `d` delivered
 * (`$2` JSON array of ids: deleted), `r` retry (`$3` `[[id, delayMs, error]]`), `k` dead (`$4` `[[id, error]]`), `l`
 * released (`$5` ids: due now, attempt given back). `n` adds the applied counts and the enqueue-to-delivery latency
 * to this minute's counter row (sharded by backend to spread row locks) in the same statement, hence the same
 * transaction. Returns the ids that were NOT applied (they lost their lease): none in the usual case, so a settle
 * sends back no row per message.
 */
export const SETTLE_SQL: string = settleSql(DELETE_DELIVERED);

/**
 * {@link SETTLE_SQL} for the usual case, where every settlement is "delivered" and delivered rows are deleted: the
 * same `d` and counters without the retry, dead and release steps. `$1` token, `$2` the ids as a `uuid[]` literal
 * (`{…,…}`; cheaper to parse than JSON). Returns the ids that were not applied; the anti-join that finds them runs
 * only when fewer rows were deleted than ids were given (a one-time filter), so the usual settle reads no id twice.
 */
export const SETTLE_DELIVERED_SQL: string = `WITH d AS (
  DELETE FROM ${T} AS t WHERE t.id = ANY ($2::uuid[]) AND ${FENCE}
  RETURNING t.id, t.created_at
), a AS (
  SELECT x.delivered, 0 AS retried, 0 AS dead, x.latency_sum, x.latency_max FROM (${DELIVERED_STATS}) AS x
), n AS (${COUNTERS_UPSERT})
SELECT j.id::text AS id FROM unnest($2::uuid[]) AS j(id)
WHERE (SELECT count(*) FROM d) < cardinality($2::uuid[]) AND j.id NOT IN (SELECT id FROM d)`;

/** {@link SETTLE_SQL} with a delivered-row retention window: delivered rows are marked, not deleted. */
export const SETTLE_RETAIN_SQL: string = settleSql(`UPDATE ${T} AS t
  SET status = 'delivered', done_at = now(), lease_token = NULL, lease_until = NULL
  FROM json_array_elements_text($2::text::json) AS j(id)
  WHERE t.id = j.id::uuid AND ${FENCE}
  RETURNING t.id, t.created_at`);

/** Counts and windowed counters in one statement (one snapshot). `$1` window ms. */
export const STATS_SQL: string = `SELECT ${ms("now()")} AS now,
  (SELECT count(*) FROM ${T} WHERE status = 'pending') AS pending,
  (SELECT count(*) FROM ${T} WHERE status = 'pending' AND available_at <= now()) AS due,
  (SELECT count(*) FROM ${T} WHERE status = 'pending' AND lease_token IS NOT NULL AND lease_until > now()) AS leased,
  (SELECT count(*) FROM ${T} WHERE status = 'dead') AS dead,
  (SELECT ${ms("min(created_at)")} FROM ${T} WHERE status = 'pending') AS oldest,
  w.delivered, w.retried, w.deadwindow, w.latsum, w.latmax
FROM (SELECT coalesce(sum(delivered), 0)::float8 AS delivered, coalesce(sum(retried), 0)::float8 AS retried,
        coalesce(sum(dead), 0)::float8 AS deadwindow, coalesce(sum(latency_sum_ms), 0)::float8 AS latsum,
        max(CASE WHEN delivered > 0 THEN latency_max_ms END)::float8 AS latmax
      FROM "{{schema}}"."{{table}}_counters"
      WHERE bucket >= date_trunc('minute', now() - $1::bigint * ${MS_INTERVAL})) AS w`;

/** One page of dead letters after a seq, oldest first. `$1` cursor seq, `$2` limit. */
export const LIST_DEAD_SQL: string = `SELECT seq, id::text AS id, topic, key, payload::text AS payload,
  headers::text AS headers, ${ms("created_at")} AS created, ${ms("done_at")} AS died, attempts, last_error AS lasterror
FROM ${T} WHERE status = 'dead' AND seq > $1::bigint ORDER BY seq LIMIT $2::int`;

/** Back to pending, due now, attempts reset; keeps id and seq (its place in its key's order). `$1` id. */
export const REPLAY_DEAD_SQL: string = `UPDATE ${T}
SET status = 'pending', attempts = 0, available_at = now(), lease_token = NULL, lease_until = NULL, done_at = NULL
WHERE id = $1::uuid AND status = 'dead' RETURNING id`;

/**
 * Deletes at most `$3` rows of status `$1` done before `$2` (epoch ms), oldest first, and counter buckets older than
 * 7 days, in one statement. Returns the number of outbox rows deleted.
 */
export const PURGE_SQL: string = `WITH d AS (
  DELETE FROM ${T} WHERE seq IN (
    SELECT seq FROM ${T} WHERE status = $1::text AND done_at < to_timestamp($2::float8 / 1000)
    ORDER BY done_at, seq LIMIT $3::int
  ) RETURNING 1
), c AS (
  DELETE FROM "{{schema}}"."{{table}}_counters" WHERE bucket < now() - interval '7 days'
)
SELECT count(*)::int AS n FROM d`;

/**
 * Serialises `migrate()` calls on one schema, from any number of processes: a transaction-scoped advisory lock (a
 * single bigint key, a different lock space from the enqueue's `(int4, int4)` keys).
 */
export const MIGRATE_LOCK_SQL: string = `SELECT pg_advisory_xact_lock(hashtextextended('edge-outbox:migrate:{{schema}}', 0))`;

/** Whether the schema exists (`$1` schema name). */
export const SCHEMA_EXISTS_SQL: string = `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text) AS present`;

/** Applied schema versions. */
export const APPLIED_VERSIONS_SQL: string = `SELECT version FROM "{{schema}}"."{{table}}_migrations" ORDER BY version`;

/** Every statement of the adapter, rendered for one outbox. */
export interface PostgresSql {
  /** See {@link ENQUEUE_SQL}. */
  readonly enqueue: string;
  /** See {@link CLAIM_SQL}. */
  readonly claim: string;
  /** See {@link CLOCK_SQL}. */
  readonly clock: string;
  /** See {@link HAS_DUE_SQL}. */
  readonly hasDue: string;
  /** See {@link SETTLE_SQL}. */
  readonly settle: string;
  /** See {@link SETTLE_DELIVERED_SQL}. */
  readonly settleDelivered: string;
  /** See {@link SETTLE_RETAIN_SQL}. */
  readonly settleRetain: string;
  /** See {@link STATS_SQL}. */
  readonly stats: string;
  /** See {@link LIST_DEAD_SQL}. */
  readonly listDead: string;
  /** See {@link REPLAY_DEAD_SQL}. */
  readonly replayDead: string;
  /** See {@link PURGE_SQL}. */
  readonly purge: string;
  /** See {@link MIGRATE_LOCK_SQL}. */
  readonly migrateLock: string;
  /** See {@link SCHEMA_EXISTS_SQL}. */
  readonly schemaExists: string;
  /** See {@link APPLIED_VERSIONS_SQL}. */
  readonly appliedVersions: string;
}

/**
 * Renders every statement of the adapter for one outbox.
 *
 * @param names the validated schema and table
 * @returns the statements
 * @throws {OutboxError} CONFIG when a name is not a plain identifier or the table name is too long
 * @example
 * ```ts
 * import { postgresSql } from "./sql.ts";
 * console.log(postgresSql({ schema: "public", table: "outbox" }).claim);
 * ```
 */
export function postgresSql(names: PostgresNames): PostgresSql {
  const r = (s: string): string => renderSql(s, names);
  return {
    enqueue: r(ENQUEUE_SQL),
    claim: r(CLAIM_SQL),
    clock: r(CLOCK_SQL),
    hasDue: r(HAS_DUE_SQL),
    settle: r(SETTLE_SQL),
    settleDelivered: r(SETTLE_DELIVERED_SQL),
    settleRetain: r(SETTLE_RETAIN_SQL),
    stats: r(STATS_SQL),
    listDead: r(LIST_DEAD_SQL),
    replayDead: r(REPLAY_DEAD_SQL),
    purge: r(PURGE_SQL),
    migrateLock: r(MIGRATE_LOCK_SQL),
    schemaExists: r(SCHEMA_EXISTS_SQL),
    appliedVersions: r(APPLIED_VERSIONS_SQL),
  };
}
