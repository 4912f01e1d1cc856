/**
 * The SQL of the PostgreSQL adapter, as named constants with the `{{schema}}` / `{{table}}` placeholders of
 * `schema.ts`. Values are always bound parameters (`$1`, `$2`, …); lists travel as one JSON text parameter, so the
 * adapter never depends on how a driver serialises arrays. Every time comes from the database clock (`now()`).
 * Result columns are single lowercase words (`created`, `lasterror`, …), so a client configured with a column
 * transform (postgres.js `transform: postgres.camel`) reads them unchanged.
 *
 * @module
 */
import { epochMs, KEY_LOCK_NAMESPACE_SQL, MAX_KEYS_SETTING, type PostgresNames, renderSql, sameKeyRange } from "./schema.ts";

const T = `"{{schema}}"."{{table}}"`;
const ms = epochMs;
const MS_INTERVAL = `interval '1 millisecond'`;

/** The key table (`<table>_keys`, schema v2): one row per key that has pending rows. */
const K = `"{{schema}}"."{{table}}_keys"`;
/** The delivery positions (`<table>_positions`, schema v3): per key, the seq of its last delivered message. */
const P = `"{{schema}}"."{{table}}_positions"`;

/** The NOTIFY channel placeholder, replaced by {@link notifyChannel}'s name (a validated, quoted literal). */
export const CHANNEL_PLACEHOLDER = "{{channel}}";
const NOTIFY = `pg_notify('${CHANNEL_PLACEHOLDER}', '')`;

/** The INSERT of every enqueue statement, up to its values. */
const ENQUEUE_INTO = `INSERT INTO ${T} (id, topic, key, payload, headers, status, created_at, available_at, attempts)`;

/** The enqueue's INSERT and the values of one message `m.v` (`[id, topic, key, payload, headers, delayMs]`), `key` its key. */
const enqueueInsert = (key: string): string =>
  `${ENQUEUE_INTO}
  SELECT (m.v->>0)::uuid, m.v->>1, ${key}, (m.v->>3)::json, (m.v->>4)::json, 'pending', now(),
    now() + (m.v->>5)::bigint * ${MS_INTERVAL}, 0`;

/** The end of both enqueue statements: the `pg_notify` when a row was inserted, then the inserted count and ids. */
const ENQUEUE_RESULT = `), n AS (
  SELECT ${NOTIFY} FROM (SELECT 1 FROM i LIMIT 1) AS one
)
SELECT x.inserted, CASE WHEN x.inserted < json_array_length($1::text::json) THEN (SELECT coalesce(json_agg(i.id)::text, '[]') FROM i) END AS ids
FROM (SELECT count(*) AS inserted FROM i) AS x, (SELECT count(*) FROM n) AS notified`;

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
 * **Ids** (DECISIONS 2): `ON CONFLICT (id) DO NOTHING`, so an id some row already has never raises (which would abort
 * the caller's transaction); the result row says how many were inserted and, when fewer than given, which ids
 * (`ids`), and the adapter deletes those again and throws CONFLICT.
 *
 * **Keys** (schema v2): each key of the call gets its `<table>_keys` row if it has none (`ON CONFLICT DO NOTHING`, so
 * an existing key row is neither locked nor changed: a new row joins its key's tail, behind the current head), with
 * `available_at` = the earliest due time of its new rows.
 *
 * **Wake-up**: `pg_notify` on the outbox's channel; PostgreSQL delivers it when the caller's transaction commits
 * (never for a rollback).
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
), i AS (
  ${enqueueInsert("m.v->>2")}
  FROM m
  WHERE (SELECT count(*) FROM l) >= 0
  ORDER BY m.ord
  ON CONFLICT (id) DO NOTHING
  RETURNING id, key, available_at
), k AS (
  INSERT INTO ${K} (key, available_at)
  SELECT i.key, min(i.available_at) FROM i WHERE i.key IS NOT NULL GROUP BY i.key
  ON CONFLICT (key) DO NOTHING
${ENQUEUE_RESULT}`;

/**
 * {@link ENQUEUE_SQL} for a call whose messages are all keyless (the usual single event of a transaction without a
 * key): the same insert, id check, result and `pg_notify`, without the key locks and the key table, which keyless
 * rows never use (measured, bench/profile-enqueue.ts: 40–70 µs less per transaction, 1.03–1.05× of a bare INSERT
 * instead of 1.07–1.12×).
 */
export const ENQUEUE_KEYLESS_SQL: string = `WITH i AS (
  ${enqueueInsert("NULL")}
  FROM json_array_elements($1::text::json) WITH ORDINALITY AS m(v, ord)
  ORDER BY m.ord
  ON CONFLICT (id) DO NOTHING
  RETURNING id
${ENQUEUE_RESULT}`;

/**
 * {@link ENQUEUE_KEYLESS_SQL} for the usual call: ONE keyless message, its fields as typed parameters (`$1` id, `$2`
 * topic, `$3` payload JSON text, `$4` headers JSON text, `$5` delay ms) instead of one JSON array, so the payload is
 * parsed once, not taken apart and parsed again. The same row and `ON CONFLICT (id) DO NOTHING`, and the `pg_notify`
 * in its `RETURNING`: one result row when the row was inserted (notified once), none when the id was taken (nothing
 * was inserted, nothing notified: CONFLICT). A plain INSERT, no CTEs. Measured, `node --import tsx
 * bench/profile-enqueue.ts` (interleaved medians, ms per transaction of INSERT order + X, two runs): bare INSERT
 * 0.721 / 0.787, this statement 0.740 / 0.817, the same written with CTEs (a counted `WITH i AS (INSERT …)`, the
 * notify selected from it) 0.766 / 0.843.
 */
export const ENQUEUE_ONE_SQL: string = `${ENQUEUE_INTO}
VALUES ($1::uuid, $2::text, NULL, $3::text::json, $4::text::json, 'pending', now(), now() + $5::bigint * ${MS_INTERVAL}, 0)
ON CONFLICT (id) DO NOTHING
RETURNING ${NOTIFY} AS notified`;

/** Deletes the rows of a refused enqueue again (`$1` JSON array of ids), in the caller's transaction. */
export const ENQUEUE_UNDO_SQL: string = `DELETE FROM ${T} WHERE id IN (SELECT j.id::uuid FROM json_array_elements_text($1::text::json) AS j(id))`;

/** The first statements of every claim's transaction (see {@link CLAIM_SQL}). */
const CLAIM_SETTINGS = `SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_bitmapscan = off;
SET LOCAL ${MAX_KEYS_SETTING} = '{{maxKeys}}';`;

/**
 * Claims up to `{{limit}}` rows in one round trip: a simple query of five statements, which PostgreSQL runs as one
 * implicit transaction:
 * 1. `SET TRANSACTION ISOLATION LEVEL READ COMMITTED` (whatever the database's default);
 * 2. `SET LOCAL enable_hashjoin = off`, for this transaction only: every join of the claim has at most `limit` rows on
 *    one side and an index on the other, yet the planner hashed all of `<table>_keys` (dead row versions included) to
 *    update the key rows of one claim. The claim of 100 rows at 1,000,000 pending over 5,000 keys (the scaling
 *    section of `npm run bench`, 100 claims each) took 1.57 to 1.62 times as long as at 1,000 pending, and 1.44 to
 *    1.49 times with index lookups;
 * 3. `SET LOCAL enable_bitmapscan = off`, for this transaction only: a bitmap scan visits the heap row of every index
 *    entry in its range, the entries of rows deleted since the last vacuum included, and never marks them dead, so
 *    when the planner chose one for a key's rows (it did for a continued key's check) the claims of a drain over few
 *    keys read more and more dead rows; a plain index scan marks them, and later scans step over them in the index.
 *    Every read of the claim takes at most `limit` rows of one key or of the keyless rows;
 * 4. `SET LOCAL edge_outbox.claim_max_keys = '{{maxKeys}}'` (`MAX_KEYS_SETTING` in `schema.ts`): the most due keys
 *    the claim may lock (`ClaimOptions.maxKeys`; the limit when not given), which the claim functions of schema
 *    version 9 read, and earlier ones ignore;
 * 5. a call of the claim function `<table>_claim(token, lease, limit)` that schema version 4 creates (see
 *    `CLAIM_FUNCTION_DDL` in `schema.ts` for what it does and why it is safe with concurrent claimers).
 *
 * The function's statements keep their parsed form per connection, so a claim no longer parses and plans five
 * statements on every call (measured: 0.3 to 0.7 ms of a 3.5 ms claim of 100 rows). Token, lease and limit are
 * inlined as validated literals (a UUID the adapter generated, integers). Result: one row per claimed message
 * plus the database clock (`now`, `until`) on every row; when nothing was claimed, one row whose message columns are
 * null.
 */
export const CLAIM_SQL: string = `${CLAIM_SETTINGS}
SELECT * FROM "{{schema}}"."{{table}}_claim"('{{token}}'::uuid, {{lease}}, {{limit}})`;

/**
 * {@link CLAIM_SQL} that also continues keys the caller holds: the 5-argument claim function of schema version 6
 * (`CLAIM_CONTINUE_FUNCTION_DDL` in `schema.ts`), with `{{after}}` (the seq of the last held row of each key to
 * continue) and `{{tokens}}` (the caller's unsettled lease tokens) inlined as validated array literals: integers and
 * UUIDs only, never a key (keys are user data, and the function reads each key from its row).
 */
export const CLAIM_CONTINUE_SQL: string = `${CLAIM_SETTINGS}
SELECT * FROM "{{schema}}"."{{table}}_claim"('{{token}}'::uuid, {{lease}}, {{limit}}, '{{after}}'::bigint[], '{{tokens}}'::uuid[])`;

/**
 * Whether a row is claimable now: a keyless row due, or a key whose `available_at` has come and whose head (first
 * pending row by seq) is due. Both on indexes (`<table>_keys_due`, `_free`, `_key`): the `ORDER BY … LIMIT 1`
 * sub-selects keep them on the index walks (a bare `EXISTS` over a large table gets a sequential scan planned), and
 * the head read matches its key with `sameKeyRange` (schema.ts), so it walks `_key` within that key: over 10 keys
 * (20,000 rows, 3,000 delivered, some heads leased) an equality walked the primary key, 3,026 buffers and 1.06 ms
 * against 7 buffers and 0.06 ms. `relay.run()` and a lingering nudge drain call it between drains.
 */
export const HAS_DUE_SQL: string = `SELECT (SELECT count(*) FROM (
    SELECT 1 FROM ${T} AS o WHERE o.key IS NULL AND o.status = 'pending' AND o.available_at <= now()
    ORDER BY o.available_at LIMIT 1) AS free) > 0
  OR (SELECT count(*) FROM (
    SELECT 1 FROM ${K} AS k WHERE k.available_at <= now() AND (
      SELECT o.available_at <= now() FROM ${T} AS o WHERE ${sameKeyRange("k.key")} AND o.status = 'pending'
      ORDER BY o.key, o.seq LIMIT 1)
    ORDER BY k.available_at LIMIT 1) AS keyed) > 0 AS due`;

const FENCE = `t.lease_token = $1::uuid AND t.status = 'pending'`;
/** Enqueue-to-delivery ms of a delivered row `d` (float8: a statistic; numeric arithmetic cost about 1.5 µs a row). */
const LATENCY = `greatest(0, floor(date_part('epoch', now() - d.created_at) * 1000))::bigint`;

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
  RETURNING t.id, t.key, t.created_at, t.seq`;

/**
 * Records the delivery positions of the delivered rows `d` (schema v3): per key, the largest delivered seq (never
 * moving a position back), in the settle's own statement.
 */
const POSITIONS_UPSERT = `INSERT INTO ${P} AS p (key, seq, at)
  SELECT d.key, max(d.seq), now() FROM d WHERE d.key IS NOT NULL GROUP BY d.key
  ON CONFLICT (key) DO UPDATE SET seq = greatest(p.seq, excluded.seq), at = excluded.at`;

/**
 * Keeps `<table>_keys` right after a settle (schema v2): for each key with a settled row, its new head is the first
 * pending row by seq that this settle did not remove (`removed`: CTEs of deleted / dead / delivered rows), with the
 * due time this settle gave it (`moved`: CTEs returning `id, available_at`, i.e. retried and released rows); the key's
 * `available_at` becomes that due time, or now for a key left empty (the next claim deletes its row). Fenced: only a
 * key row not later than this claim's lease expiry is changed, so a settle whose lease expired and whose key another
 * claim took since cannot move that claim's key. `lu` reads that expiry from the first settled row that still carries
 * the token (a claim gives all its rows the same `lease_until`), one index probe where reading every settled row cost
 * about 1 ms per 100. O(rows settled). The head lookup matches its key with `sameKeyRange` (schema.ts), so it walks
 * `_key` within that key (over 10 keys an equality walked the primary key: 814 buffers for 5 keys, 286 now).
 *
 * A key row whose `available_at` would not change is left alone, so it is not locked. The usual settle of a deep key
 * is one: its new head is another row of the same claim, due when that claim's lease ends, which is the key row's
 * value already. Rewriting it anyway held the key row locked until the settle committed, and a claim continuing the
 * key at that moment skipped it (`FOR UPDATE SKIP LOCKED`): the relay then took the key for drained and it waited,
 * with its rows leased, until its held rows were settled and a later claim took it as due. Over 10 keys with 20 ms
 * sends, keys stood still for up to 1.2 s and the drain ran 0.80–0.85x its ideal (`bench/README.md`, "What changed on
 * 2026-12-02, 18:22").
 */
function keyHints(ids: string, removed: readonly string[], moved: readonly string[], keyTokens = true): string {
  const all = [...removed, ...moved];
  const movedAt = moved.map((m) => `(SELECT ${m}.available_at FROM ${m} WHERE ${m}.id = o.id)`).join(", ");
  return `lu AS (
  SELECT o.lease_until AS until FROM ${T} AS o WHERE o.id IN (${ids}) AND o.lease_token = $1::uuid LIMIT 1
), sk AS (
  SELECT DISTINCT x.key FROM (${all.map((c) => `SELECT ${c}.key FROM ${c}`).join(" UNION ALL ")}) AS x WHERE x.key IS NOT NULL
), nh AS (
  SELECT sk.key, (
    SELECT ${moved.length > 0 ? `coalesce(${movedAt}, o.available_at)` : "o.available_at"} FROM ${T} AS o
    WHERE ${sameKeyRange("sk.key")} AND o.status = 'pending' AND o.id NOT IN (${removed.map((c) => `SELECT ${c}.id FROM ${c}`).join(" UNION ALL ")})
    ORDER BY o.key, o.seq LIMIT 1) AS at${moved.length > 0 && keyTokens ? `,
    sk.key IN (${moved.map((c) => `SELECT ${c}.key FROM ${c}`).join(" UNION ALL ")}) AS broken` : ""}
  FROM sk
), kh AS (${moved.length > 0 && keyTokens ? MOVED_KEY_UPDATE : `
  UPDATE ${K} AS kk SET available_at = coalesce(nh.at, now())
  FROM nh WHERE kk.key = nh.key AND ${KEY_ROW_MOVES}`}
)`;
}

/** The key row of `nh` takes its new head's due time (see {@link keyHints}: fenced on the settle's lease expiry). */
const KEY_ROW_MOVES = "kk.available_at <= (SELECT lu.until FROM lu) AND kk.available_at IS DISTINCT FROM nh.at";

/**
 * {@link keyHints}' key update when the settle retries or releases rows (`nh.broken`: a key with such a row): it also
 * clears the key row's `lease_token` (schema v10), whatever its `available_at`, so no claim continues the key past a
 * row that is no longer leased to its caller (`CLAIM_CONTINUE_FUNCTION_DDL` in `schema.ts` checks that token). Only
 * this settle's own rows are retried or released (fenced on its token), so the key row's token was its caller's.
 */
const MOVED_KEY_UPDATE = `
  UPDATE ${K} AS kk SET available_at = CASE WHEN ${KEY_ROW_MOVES} THEN coalesce(nh.at, now()) ELSE kk.available_at END,
    lease_token = CASE WHEN nh.broken THEN NULL ELSE kk.lease_token END
  FROM nh WHERE kk.key = nh.key AND ((${KEY_ROW_MOVES}) OR (nh.broken AND kk.lease_token IS NOT NULL))`;

const JSON_IDS = `SELECT j.id::uuid FROM json_array_elements_text($2::text::json) AS j(id)
    UNION ALL SELECT (j.v->>0)::uuid FROM json_array_elements($3::text::json) AS j(v)
    UNION ALL SELECT (j.v->>0)::uuid FROM json_array_elements($4::text::json) AS j(v)
    UNION ALL SELECT j.id::uuid FROM json_array_elements_text($5::text::json) AS j(id)`;

/** `keyTokens` false: without clearing `<table>_keys.lease_token` (a schema before version 10 has no such column). */
function settleSql(deliveredCte: string, keyTokens = true): string {
  return `WITH d AS (
  ${deliveredCte}
), r AS (
  UPDATE ${T} AS t
  SET available_at = now() + (j.v->>1)::bigint * ${MS_INTERVAL}, last_error = j.v->>2, lease_token = NULL, lease_until = NULL
  FROM json_array_elements($3::text::json) AS j(v)
  WHERE t.id = (j.v->>0)::uuid AND ${FENCE}
  RETURNING t.id, t.key, t.available_at
), k AS (
  UPDATE ${T} AS t
  SET status = 'dead', done_at = now(), last_error = j.v->>1, lease_token = NULL, lease_until = NULL
  FROM json_array_elements($4::text::json) AS j(v)
  WHERE t.id = (j.v->>0)::uuid AND ${FENCE}
  RETURNING t.id, t.key
), l AS (
  UPDATE ${T} AS t
  SET available_at = now(), attempts = greatest(0, t.attempts - 1), lease_token = NULL, lease_until = NULL
  FROM json_array_elements_text($5::text::json) AS j(id)
  WHERE t.id = j.id::uuid AND ${FENCE}
  RETURNING t.id, t.key, t.available_at
), ${keyHints(JSON_IDS, ["d", "k"], ["r", "l"], keyTokens)}, a AS (
  SELECT x.delivered, (SELECT count(*) FROM r) AS retried, (SELECT count(*) FROM k) AS dead, x.latency_sum, x.latency_max
  FROM (${DELIVERED_STATS}) AS x
), n AS (${COUNTERS_UPSERT}), ps AS (${POSITIONS_UPSERT})
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
  RETURNING t.id, t.key, t.created_at, t.seq
), ${keyHints("SELECT unnest($2::uuid[])", ["d"], [])}, a AS (
  SELECT x.delivered, 0 AS retried, 0 AS dead, x.latency_sum, x.latency_max FROM (${DELIVERED_STATS}) AS x
), n AS (${COUNTERS_UPSERT}), ps AS (${POSITIONS_UPSERT})
SELECT j.id::text AS id FROM unnest($2::uuid[]) AS j(id)
WHERE (SELECT count(*) FROM d) < cardinality($2::uuid[]) AND j.id NOT IN (SELECT id FROM d)`;

/** The delivered step of {@link SETTLE_RETAIN_SQL}: rows marked delivered, not deleted. */
const RETAIN_DELIVERED = `UPDATE ${T} AS t
  SET status = 'delivered', done_at = now(), lease_token = NULL, lease_until = NULL
  FROM json_array_elements_text($2::text::json) AS j(id)
  WHERE t.id = j.id::uuid AND ${FENCE}
  RETURNING t.id, t.key, t.created_at, t.seq`;

/** {@link SETTLE_SQL} with a delivered-row retention window: delivered rows are marked, not deleted. */
export const SETTLE_RETAIN_SQL: string = settleSql(RETAIN_DELIVERED);

/**
 * {@link SETTLE_SQL} for a schema before version 10, which has no `<table>_keys.lease_token` (its claim functions
 * check a continued key by reading the key's rows, so nothing needs clearing): the same statement without clearing
 * the key token. The storage runs it when {@link SETTLE_SQL} fails for the missing column (a relay of this version
 * on a schema `migrate()` has not upgraded yet); not remembered, so a settle clears tokens again once the schema has
 * them.
 */
export const SETTLE_BEFORE_V10_SQL: string = settleSql(DELETE_DELIVERED, false);

/** {@link SETTLE_RETAIN_SQL} for a schema before version 10 (see {@link SETTLE_BEFORE_V10_SQL}). */
export const SETTLE_RETAIN_BEFORE_V10_SQL: string = settleSql(RETAIN_DELIVERED, false);

/** Counts and windowed counters in one statement (one snapshot). `$1` window ms. */
export const STATS_SQL: string = `SELECT ${ms("now()")} AS now,
  (SELECT count(*) FROM ${T} WHERE status = 'pending') AS pending,
  (SELECT count(*) FROM ${T} WHERE status = 'pending' AND available_at <= now()) AS due,
  (SELECT count(*) FROM ${T} WHERE status = 'pending' AND lease_token IS NOT NULL AND lease_until > now()) AS leased,
  (SELECT count(*) FROM ${T} WHERE status = 'dead') AS dead,
  (SELECT ${ms("min(created_at)")} FROM ${T} WHERE status = 'pending') AS oldest,
  (SELECT ${ms("min(available_at)")} FROM ${T} WHERE status = 'pending' AND available_at <= now()) AS oldestdue,
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

/**
 * Replays a dead letter (`$1` id) at the **tail** of its key (DECISIONS 1): pending, due now, attempts 0, same id,
 * headers and payload, and a new `seq` drawn under the key's advisory lock exactly like an enqueue (so it is
 * claimable only once every earlier row of its key is settled, and never beside a later one), its key row ensured,
 * and a `pg_notify`. Returns the id when a dead row was replayed.
 */
export const REPLAY_DEAD_SQL: string = `WITH r AS (
  SELECT t.key FROM ${T} AS t WHERE t.id = $1::uuid AND t.status = 'dead'
), l AS (
  SELECT pg_advisory_xact_lock(${KEY_LOCK_NAMESPACE_SQL}, hashtext(r.key)) FROM r WHERE r.key IS NOT NULL
), u AS (
  UPDATE ${T} AS t
  SET seq = DEFAULT, status = 'pending', attempts = 0, available_at = now(), lease_token = NULL, lease_until = NULL,
    done_at = NULL
  WHERE t.id = $1::uuid AND t.status = 'dead' AND (SELECT count(*) FROM l) >= 0
  RETURNING t.id, t.key
), k AS (
  INSERT INTO ${K} (key, available_at) SELECT u.key, now() FROM u WHERE u.key IS NOT NULL
  ON CONFLICT (key) DO NOTHING
), n AS (
  SELECT ${NOTIFY} FROM u
)
SELECT u.id::text AS id FROM u, (SELECT count(*) FROM n) AS notified`;

/**
 * Deletes at most `$3` rows of status `$1` done before `$2` (epoch ms), oldest first, and counter buckets older than
 * 7 days, and at most `$3` delivery positions not updated for 7 days (schema v3), in one statement. Returns the number
 * of outbox rows deleted.
 */
export const PURGE_SQL: string = `WITH d AS (
  DELETE FROM ${T} WHERE seq IN (
    SELECT seq FROM ${T} WHERE status = $1::text AND done_at < to_timestamp($2::float8 / 1000)
    ORDER BY done_at, seq LIMIT $3::int
  ) RETURNING 1
), c AS (
  DELETE FROM "{{schema}}"."{{table}}_counters" WHERE bucket < now() - interval '7 days'
), ps AS (
  DELETE FROM ${P} WHERE key IN (SELECT key FROM ${P} WHERE at < now() - interval '7 days' ORDER BY at LIMIT $3::int)
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
  /** See {@link ENQUEUE_KEYLESS_SQL}. */
  readonly enqueueKeyless: string;
  /** See {@link ENQUEUE_ONE_SQL}. */
  readonly enqueueOne: string;
  /** See {@link CLAIM_SQL}: still has the `{{token}}`, `{{lease}}` and `{{limit}}` placeholders (see {@link claimSql}). */
  readonly claim: string;
  /** See {@link CLAIM_CONTINUE_SQL}: also has the `{{after}}` and `{{tokens}}` placeholders (see {@link claimSql}). */
  readonly claimContinue: string;
  /** See {@link ENQUEUE_UNDO_SQL}. */
  readonly enqueueUndo: string;
  /** The NOTIFY channel of this outbox (see {@link notifyChannel}). */
  readonly channel: string;
  /** See {@link HAS_DUE_SQL}. */
  readonly hasDue: string;
  /** See {@link SETTLE_SQL}. */
  readonly settle: string;
  /** See {@link SETTLE_DELIVERED_SQL}. */
  readonly settleDelivered: string;
  /** See {@link SETTLE_RETAIN_SQL}. */
  readonly settleRetain: string;
  /** See {@link SETTLE_BEFORE_V10_SQL}. */
  readonly settleBeforeV10: string;
  /** See {@link SETTLE_RETAIN_BEFORE_V10_SQL}. */
  readonly settleRetainBeforeV10: string;
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
 * @param names the validated schema and table, and `notify`: when false the enqueue and replay statements call no
 *   `pg_notify` (`NULL` in its place, so their results keep their columns; default true)
 * @returns the statements
 * @throws {OutboxError} CONFIG when a name is not a plain identifier or the table name is too long
 * @example
 * ```ts
 * import { postgresSql } from "./sql.ts";
 * console.log(postgresSql({ schema: "public", table: "outbox" }).claim);
 * ```
 */
export function postgresSql(names: PostgresNames & { readonly notify?: boolean | undefined }): PostgresSql {
  const channel = notifyChannel(names);
  const notify = names.notify ?? true;
  const r = (s: string): string => renderSql(notify ? s : s.replaceAll(NOTIFY, "NULL"), names).replaceAll(CHANNEL_PLACEHOLDER, channel);
  return {
    enqueue: r(ENQUEUE_SQL),
    enqueueKeyless: r(ENQUEUE_KEYLESS_SQL),
    enqueueOne: r(ENQUEUE_ONE_SQL),
    enqueueUndo: r(ENQUEUE_UNDO_SQL),
    channel,
    claim: r(CLAIM_SQL),
    claimContinue: r(CLAIM_CONTINUE_SQL),
    hasDue: r(HAS_DUE_SQL),
    settle: r(SETTLE_SQL),
    settleDelivered: r(SETTLE_DELIVERED_SQL),
    settleRetain: r(SETTLE_RETAIN_SQL),
    settleBeforeV10: r(SETTLE_BEFORE_V10_SQL),
    settleRetainBeforeV10: r(SETTLE_RETAIN_BEFORE_V10_SQL),
    stats: r(STATS_SQL),
    listDead: r(LIST_DEAD_SQL),
    replayDead: r(REPLAY_DEAD_SQL),
    purge: r(PURGE_SQL),
    migrateLock: r(MIGRATE_LOCK_SQL),
    schemaExists: r(SCHEMA_EXISTS_SQL),
    appliedVersions: r(APPLIED_VERSIONS_SQL),
  };
}

/**
 * The claim statement with its per-call values: a token the adapter generated (a UUID, checked again here), the
 * lease and the limit (positive safe integers), and for {@link CLAIM_CONTINUE_SQL} the keys to continue (`after`:
 * positive safe integers) and the caller's lease tokens (UUIDs).
 *
 * @param claim the rendered {@link CLAIM_SQL} or {@link CLAIM_CONTINUE_SQL}
 * @param token the fresh lease token
 * @param leaseMs the lease, ms
 * @param limit the most rows to claim
 * @param cont for {@link CLAIM_CONTINUE_SQL}: the seqs and tokens of the keys to continue
 * @param maxKeys the most due keys the claim may lock (`ClaimOptions.maxKeys`, a non-negative safe integer) @default limit
 * @returns the SQL text to run as one simple query
 * @throws {RangeError} for a value that is not what the adapter generates or the relay passes (never user input)
 * @example
 * ```ts
 * const text = claimSql(postgresSql({ schema: "public", table: "outbox" }).claim, crypto.randomUUID(), 30_000, 100);
 * ```
 */
export function claimSql(
  claim: string,
  token: string,
  leaseMs: number,
  limit: number,
  cont?: { readonly after: readonly number[]; readonly tokens: readonly string[] },
  maxKeys: number = limit,
): string {
  if (!UUID.test(token)) throw new RangeError("bad claim token");
  if (!Number.isSafeInteger(maxKeys) || maxKeys < 0) throw new RangeError("bad claim maxKeys");
  if (!Number.isSafeInteger(leaseMs) || leaseMs < 1 || !Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError("bad claim lease or limit");
  }
  let text = claim.replaceAll("{{token}}", token).replaceAll("{{lease}}", `${leaseMs}::bigint`).replaceAll("{{limit}}", String(limit)).replaceAll("{{maxKeys}}", String(maxKeys));
  if (cont !== undefined) {
    if (!cont.after.every((s) => Number.isSafeInteger(s) && s > 0)) throw new RangeError("bad claim continuation seq");
    if (!cont.tokens.every((t) => UUID.test(t))) throw new RangeError("bad claim continuation token");
    text = text.replaceAll("{{after}}", `{${cont.after.join(",")}}`).replaceAll("{{tokens}}", `{${cont.tokens.join(",")}}`);
  }
  return text;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The LISTEN/NOTIFY channel of one outbox: `edge_outbox:<schema>.<table>`, or, when that is longer than PostgreSQL's
 * 63-byte identifier limit, `edge_outbox:` and a 64-bit FNV-1a hash of it in hex. Names are validated identifiers,
 * so the channel is a safe SQL literal.
 *
 * @param names the validated schema and table
 * @returns the channel name
 * @example
 * ```ts
 * notifyChannel({ schema: "public", table: "outbox" }); // "edge_outbox:public.outbox"
 * ```
 */
export function notifyChannel(names: PostgresNames): string {
  const full = `edge_outbox:${names.schema}.${names.table}`;
  if (full.length <= 63) return full;
  let h = 0xcbf29ce484222325n;
  for (const c of new TextEncoder().encode(full)) h = BigInt.asUintN(64, (h ^ BigInt(c)) * 0x100000001b3n);
  return `edge_outbox:${h.toString(16).padStart(16, "0")}`;
}
