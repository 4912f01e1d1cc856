/**
 * The PostgreSQL schema of the outbox, as versioned DDL constants, and {@link postgresSchema} for users who run their
 * own migration tool.
 *
 * Every constant names its objects with two escaped-identifier placeholders, `"{{schema}}"` and `"{{table}}"`
 * (`"{{schema}}"."{{table}}_counters"`, …), replaced by names that {@link quoteIdentifier} has validated (letters,
 * digits and `_` only), so nothing else ever reaches the SQL text.
 *
 * @module
 */
import { OutboxError } from "../../src/errors.ts";
import { quoteIdentifier } from "../../src/options.ts";

/** The placeholder for the (validated, unquoted) table name. */
export const TABLE_PLACEHOLDER = "{{table}}";
/** The placeholder for the (validated, unquoted) schema name. */
export const SCHEMA_PLACEHOLDER = "{{schema}}";

/**
 * Longest accepted table name. PostgreSQL cuts identifiers at 63 bytes, and the adapter derives names from the table
 * name (`<table>_migrations` is the longest): a longer table name would silently collide after truncation.
 */
export const MAX_TABLE_NAME_LENGTH = 52;

/**
 * Converts a `timestamptz` SQL expression to epoch milliseconds (a float8 holding an integer, read as a JS number).
 *
 * @param expression an SQL expression of type timestamptz (a constant of the adapter, never user input)
 * @returns the SQL expression in epoch ms
 * @example
 * ```ts
 * epochMs("now()"); // "floor(extract(epoch FROM now()) * 1000)::float8"
 * ```
 */
export function epochMs(expression: string): string {
  return `floor(extract(epoch FROM ${expression}) * 1000)::float8`;
}

/** One schema version: statements applied together, in one transaction, by `migrate()`. */
export interface SchemaVersion {
  /** Version number, starting at 1; `migrate()` applies every version not yet recorded. */
  readonly version: number;
  /** DDL statements with the `{{schema}}` and `{{table}}` placeholders. */
  readonly statements: readonly string[];
}

/** Creates the schema (emitted only for a schema other than `public`). */
export const CREATE_SCHEMA_DDL: string = `CREATE SCHEMA IF NOT EXISTS "{{schema}}"`;

/** The bookkeeping table `migrate()` records applied versions in. */
export const MIGRATIONS_TABLE_DDL: string = `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_migrations" (
  version integer PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

/**
 * Version 1: the outbox table, its indexes and the per-minute counters.
 *
 * - `seq` (an identity) is the commit order per key: an enqueue takes a transaction-scoped advisory lock on each of
 *   its keys *before* its rows draw their `seq`, so a later transaction on the same key draws a larger `seq` only
 *   after the earlier one committed (see `ENQUEUE_SQL` in `sql.ts`).
 * - `status` is `pending` (waiting, leased or backing off), `dead`, or `delivered` (only with a retention window).
 * - Times are `timestamptz` from the database clock; `available_at` is when the row is next due (a claim sets it to
 *   the lease expiry). The adapter converts them to epoch milliseconds.
 * - `payload` and `headers` are `json` (not `jsonb`): `json` keeps the text byte for byte, so a message's `body` is
 *   exactly what was enqueued, and you can still query it (`payload->>'id'`).
 * - Indexes: `_pending` (pending rows in seq order: the claim walks it), `_due` (pending rows by due time: `hasDue`,
 *   stats), `_key` (the per-key head check), `_done` (purge by done time), `_dead` (dead-letter pages).
 */
export const SCHEMA_V1: SchemaVersion = {
  version: 1,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}" (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id uuid NOT NULL UNIQUE,
  topic text NOT NULL,
  key text,
  payload json NOT NULL,
  headers json NOT NULL DEFAULT '{}',
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead', 'delivered')),
  created_at timestamptz NOT NULL DEFAULT now(),
  available_at timestamptz NOT NULL DEFAULT now(),
  attempts integer NOT NULL DEFAULT 0,
  lease_token uuid,
  lease_until timestamptz,
  last_error text,
  done_at timestamptz
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_pending" ON "{{schema}}"."{{table}}" (seq) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_due" ON "{{schema}}"."{{table}}" (available_at, seq) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_key" ON "{{schema}}"."{{table}}" (key, seq) WHERE status = 'pending' AND key IS NOT NULL`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_done" ON "{{schema}}"."{{table}}" (status, done_at) WHERE status <> 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_dead" ON "{{schema}}"."{{table}}" (seq) WHERE status = 'dead'`,
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_counters" (
  bucket timestamptz NOT NULL,
  shard integer NOT NULL DEFAULT 0,
  delivered bigint NOT NULL DEFAULT 0,
  retried bigint NOT NULL DEFAULT 0,
  dead bigint NOT NULL DEFAULT 0,
  latency_sum_ms bigint NOT NULL DEFAULT 0,
  latency_max_ms bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, shard)
)`,
  ],
};

/**
 * Version 2: key-aware claims. Upgrades a populated v1 table in place (one transaction):
 *
 * - `<table>_keys`: one row per key that has pending rows, with `available_at`, a lower bound of when the key's head
 *   may be claimable (the claim sets it to its lease expiry or its head's due time; settles to the new head's due
 *   time; an enqueue creates the row of a new key). Claims lock key rows `FOR UPDATE SKIP LOCKED` before reading
 *   that key's rows, so rows queued behind a leased or backing-off head are never read, and a key can deliver a
 *   prefix of its queue per claim. Filled from the pending rows already there.
 * - `_keys_due`: key rows by due time (the claim's first step, `hasDue`).
 * - `_free`: keyless pending rows by due time (the claim's keyless step).
 * - drops `_pending` (v1's claim walk; nothing reads it any more).
 *
 * Writers and relays must run this version's code once it is applied: an older writer does not create key rows, so
 * its keyed rows would wait until the key gets a row from a newer writer.
 */
export const SCHEMA_V2: SchemaVersion = {
  version: 2,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_keys" (
  key text PRIMARY KEY,
  available_at timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_keys_due" ON "{{schema}}"."{{table}}_keys" (available_at)`,
    `INSERT INTO "{{schema}}"."{{table}}_keys" (key, available_at)
  SELECT key, now() FROM "{{schema}}"."{{table}}" WHERE status = 'pending' AND key IS NOT NULL GROUP BY key
  ON CONFLICT (key) DO NOTHING`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_free" ON "{{schema}}"."{{table}}" (available_at, seq) WHERE status = 'pending' AND key IS NULL`,
    `DROP INDEX IF EXISTS "{{schema}}"."{{table}}_pending"`,
  ],
};

/**
 * Version 3: per-key delivery positions, `<table>_positions`: for each key, the `seq` of its last delivered message
 * and when it was delivered (`at`). Written only by a delivered settle, in the same statement (never by a retry, a
 * dead letter or a release); read by the claim, which returns it as each keyed message's `prevSeq` (what a
 * consumer's strict inbox holds on: `Outbox-Prev-Seq`). Kept apart from `<table>_keys`, whose rows go when a key has
 * nothing pending. One small row per key; every `purge` call also drops up to `limit` positions not updated for 7
 * days. Upgrades a populated table (a new, empty table: the first delivery of each key after the upgrade records it).
 */
export const SCHEMA_V3: SchemaVersion = {
  version: 3,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_positions" (
  key text PRIMARY KEY,
  seq bigint NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_positions_at" ON "{{schema}}"."{{table}}_positions" (at)`,
  ],
};

/**
 * The advisory-lock namespace of one outbox table (the first `int4` of `pg_advisory_xact_lock(int4, int4)`): a hash of
 * its qualified name, so two outbox tables never wait on each other's keys.
 */
export const KEY_LOCK_NAMESPACE_SQL: string = `hashtext('edge-outbox:{{schema}}.{{table}}')`;

/**
 * The outbox row `o` (every statement's alias for it) matched to the key `key` in a read of that key's pending rows
 * in `(key, seq)` order: `o.key >= key AND o.key <= key`, the same rows as `o.key = key` (both compare with the
 * column's collation). An equality makes the key a constant for the planner, which then orders by `seq` alone and
 * may walk the primary key from the key's first pending row, filtering every other key's rows out (it did over 10
 * keys: bench/README.md, "What changed on 2026-12-02, 03:37–04:50"); the range keeps `key` in the order, which only
 * `_key` (key, seq) gives, so the read walks that key's own entries. Used by the claim functions (schema version 7),
 * the settle's head lookup (`keyHints` in `sql.ts`) and `HAS_DUE_SQL`.
 *
 * @param key the SQL expression of the key (a column of another row set, never user text)
 * @returns the condition
 * @example
 * ```ts
 * const head = `SELECT o.seq FROM outbox AS o WHERE ${sameKeyRange("k.key")} AND o.status = 'pending' ORDER BY o.key, o.seq LIMIT 1`;
 * ```
 */
export const sameKeyRange = (key: string): string => `o.key >= ${key} AND o.key <= ${key}`;

const OUTBOX = `"{{schema}}"."{{table}}"`;
const KEYS = `"{{schema}}"."{{table}}_keys"`;
const POSITIONS = `"{{schema}}"."{{table}}_positions"`;
const LEASE = `p_lease * interval '1 millisecond'`;
/** Leases the outbox rows whose seq the CTE `cte` lists (both claim statements). */
const LEASE_ROWS = (cte: string): string => `UPDATE ${OUTBOX} AS t
    SET lease_token = p_token, lease_until = now() + ${LEASE}, available_at = now() + ${LEASE}, attempts = t.attempts + 1
    WHERE t.seq IN (SELECT ${cte}.seq FROM ${cte}) AND t.status = 'pending'`;
/**
 * {@link epochMs} in float8 and int8 arithmetic, for a column read on every claimed row: the epoch in microseconds,
 * rounded to an integer, then cut to milliseconds. Exact from 1970 until 2106 (2^32 s): `date_part` returns the stored
 * microseconds / 10^6 within half a float8 step (under 0.24 µs) and the product is within another 0.25 µs, so the
 * rounding gives back the stored microseconds (checked against `epochMs` on 1.3 million timestamps up to 2099, on
 * millisecond boundaries too). `epochMs`'s numeric arithmetic cost about 3 µs per row (a claim of 500 rows: 10%).
 */
const epochMsOfRow = (expression: string): string => `((date_part('epoch', ${expression}) * 1000000)::int8 / 1000)::float8`;
/** The message columns a claim returns (its RETURNING list), and the same read back from the CTE `c`. */
const CLAIMED_COLUMNS = `t.seq, t.id::text AS id, t.topic, t.key, t.payload::text AS payload, t.headers::text AS headers,
      ${epochMsOfRow("t.created_at")} AS created, t.attempts, t.last_error AS lasterror`;
const CLAIMED_FROM_C = "c.seq, c.id, c.topic, c.key, c.payload, c.headers, c.created, c.attempts, c.lasterror";
/** The database clock on every returned row: now and the lease expiry, epoch ms (`v_now`: computed once per call). */
const CLAIM_CLOCK = `v_now, v_now + p_lease`;
/** A claimed keyed row's delivery position, read once per key (`pos`, schema version 10), not once per row. */
const PREVSEQ = "(SELECT pos.seq FROM pos WHERE pos.key = c.key)";
/**
 * The setting (`SET LOCAL`, for the claim's transaction only) through which a claim passes `ClaimOptions.maxKeys` to
 * the claim functions of schema version 9: they lock at most that many due keys (the keys a claim may take rows of,
 * besides the ones it continues). Unset or empty: the limit, as before version 9.
 */
export const MAX_KEYS_SETTING = "edge_outbox.claim_max_keys";

/**
 * The claim function `<table>_claim(p_token uuid, p_lease bigint, p_limit integer)` (schema v4), which the adapter's
 * claim calls (`CLAIM_SQL` in `sql.ts`, after `SET TRANSACTION ISOLATION LEVEL READ COMMITTED`). It leases up to
 * `p_limit` rows with token `p_token` for `p_lease` ms and returns them, with the database clock on every row.
 *
 * 1. Lock keys: up to `p_limit` rows of `<table>_keys` (fewer when the claim's transaction sets `ClaimOptions.maxKeys`
 *    as {@link MAX_KEYS_SETTING}, schema version 9) whose `available_at` (when the key's head may be claimable) has
 *    come, `FOR UPDATE SKIP LOCKED` (another claimer's keys are skipped, never waited for), in due order.
 * 2. With a snapshot taken **after** those key locks were granted (a VOLATILE function takes a fresh snapshot for each
 *    statement under READ COMMITTED): the locked keys are read in order (the due keys in due order, then the
 *    continued keys), each its first ceil(limit / ceil(n / 2)) pending rows in `seq` order for n locked keys (one
 *    probe of the `_key` index each), until `limit` rows are read: keys after that are left unread, locked until
 *    commit and otherwise untouched (schema version 8; before, every locked key was read, about 2 × `limit` rows, and
 *    half of them were not taken). Of each key's rows the due prefix (every row due up to it) is kept; the due
 *    keyless rows (`_free` index, in due order, `FOR UPDATE SKIP LOCKED`) are added; the union, ordered by the seq of
 *    each row's key head (a keyless row: its own seq) then by seq and cut to `limit`, is leased (fresh token,
 *    `available_at = lease_until = now() + lease`, attempts + 1). So when keys have deep queues a claim takes whole
 *    prefixes of about half the due keys and leaves the others to the next claim, which the relay can then make while
 *    this claim's rows are sent and settled: a claim of every key would have to wait for their settles (measured:
 *    claims and settles alternate, bench/README.md "7 keys"). Shallow keys (a row or two each) all fit in one claim.
 *    A key read without a pending row is kept in the read as a row of nulls, so an unread key is never taken for an
 *    empty one. Each locked key that was read gets its `available_at` set: to the lease expiry when rows of it were
 *    claimed (and its `lease_token` to this claim's token, schema version 10: what a later claim continuing the key
 *    checks), to its head's due time when that is later than now (a locked key none of whose rows was taken keeps
 *    it). A locked key read without a pending row is try-locked with the enqueue's advisory key lock. Each keyed row
 *    comes with its key's delivery position (`prevseq`, `<table>_positions`, read once per key).
 * 3. Deletes those empty key rows (rechecked with a fresh snapshot, so an enqueue that committed meanwhile is seen;
 *    one still running holds the advisory lock, so its key was not try-locked).
 *
 * The clock (`now`, `until`) is computed once per call (`now()` is the transaction's start, the same for every row), and
 * `created` in float8 and int8 arithmetic (see `epochMsOfRow`), where numeric arithmetic on every row cost about 10% of
 * a claim of 500 rows (schema version 5).
 *
 * Why a function: its statements are parsed once per connection and kept, where the same text sent as a simple query
 * was parsed, analysed and planned statement by statement on every claim; and when no key is due, a much smaller
 * statement claims the keyless rows (planning the full one took about 0.7 ms of a 3 ms claim of 100 rows). Plans
 * stay custom (`plan_cache_mode = force_custom_plan`: planned on every call with its values and the tables' current
 * size). A cached generic plan was faster still, but it is made once per connection from the statistics of that
 * moment: made on an empty outbox (a drained one, or a new deployment), it kept scanning a whole index once a backlog
 * of 300,000 rows had built up, 150–500 ms per claim until autovacuum analysed the table. The statements are the ones
 * the claim sent before version 4, in the same shapes (`IN (SELECT …)`, joins, a LIMIT the planner cannot fold),
 * whose plans hold with stale statistics: with the call's values folded in, a planner that still believed the
 * table empty read all 30,000 rows of each key and sorted them (124–240 ms per claim). The keyless rows' `FOR UPDATE
 * SKIP LOCKED … LIMIT` is a `MATERIALIZED` CTE in both statements, so it is evaluated once whatever the plan.
 * JIT is off (the planner cannot see the per-key limit and may estimate enough rows to JIT-compile, which costs far
 * more than the claim itself). Every table name is schema-qualified. Every per-key read matches its key with
 * {@link sameKeyRange} and is `ORDER BY o.key, o.seq`, so it walks `_key` (key, seq) within that key (schema version
 * 7). `SECURITY INVOKER` (the default): it runs with the caller's privileges.
 *
 * Why this is safe with concurrent claimers (`keyPrefixClaims: true`): every claim of a key holds that key's row
 * lock until it commits, so two claims of one key never overlap, and step 2's snapshot is taken after the lock was
 * granted, so it sees every claim and settle of that key that committed before (a settle writes the key row, hence
 * waits for the lock too). A key's rows are therefore read as they are, never from a stale snapshot, and the prefix
 * taken is exactly the key's due head and what follows it. Rows of a key behind a leased or backing-off head are
 * never read: the key row's `available_at` is in the future, so a claim costs O(rows claimed + keys probed), not
 * O(rows queued behind blocked heads).
 */
export const CLAIM_FUNCTION_DDL: string = claimFunctionDdl(false);

/**
 * The claim statement's steps from the keys `lk` to the leased rows `c` (see {@link CLAIM_FUNCTION_DDL}): `pre` each
 * key's first rows (after `lk.after` with `continued`) in `lk` order until `p_limit` rows (a key without pending rows:
 * one row of nulls, so `em` can tell it from a key not read), `kp` their due prefixes, `fr` the due keyless rows,
 * `pick` the union cut to the limit, `c` leased and returned with each keyed row's delivery position.
 */
function prefixSteps(continued: boolean): string {
  const preAfter = continued ? ", lk.after" : "";
  const fromAfter = continued ? " AND o.seq > coalesce(lk.after, 0)" : "";
  return `pre AS MATERIALIZED (
    SELECT lk.key, r.seq, r.available_at${preAfter} FROM lk LEFT JOIN LATERAL (
      SELECT o.seq, o.available_at FROM ${OUTBOX} AS o
      WHERE ${sameKeyRange("lk.key")} AND o.status = 'pending'${fromAfter} ORDER BY o.key, o.seq
      LIMIT (SELECT greatest(1, ceil(p_limit::float8 / greatest(1, ceil(count(*) / 2.0)))) FROM lk)) AS r ON true
    LIMIT p_limit
  ), kp AS (
    SELECT p.seq, p.head FROM (SELECT pre.seq, min(pre.seq) OVER (PARTITION BY pre.key) AS head,
        bool_and(pre.available_at <= now()) OVER (PARTITION BY pre.key ORDER BY pre.seq) AS ok
      FROM pre WHERE pre.seq IS NOT NULL) AS p WHERE p.ok
  ), fr AS MATERIALIZED (
    SELECT o.seq FROM ${OUTBOX} AS o WHERE o.key IS NULL AND o.status = 'pending' AND o.available_at <= now()
    ORDER BY o.available_at, o.seq LIMIT p_limit FOR UPDATE SKIP LOCKED
  ), pick AS (
    SELECT x.seq FROM (SELECT kp.seq, kp.head FROM kp UNION ALL SELECT fr.seq, fr.seq FROM fr) AS x
    ORDER BY x.head, x.seq LIMIT p_limit
  ), c AS (
    ${LEASE_ROWS("pick")}
    RETURNING ${CLAIMED_COLUMNS}
  ), pos AS MATERIALIZED (
    SELECT k.key, (SELECT p.seq FROM ${POSITIONS} AS p WHERE p.key = k.key) AS seq
    FROM (SELECT DISTINCT pre.key FROM pre WHERE pre.seq IS NOT NULL) AS k
  )`;
}

/**
 * The claim function's text: `<table>_claim(p_token, p_lease, p_limit)` ({@link CLAIM_FUNCTION_DDL}, versions 4 and
 * 5), or with `continued` the overload that also continues keys the caller holds,
 * `<table>_claim(p_token, p_lease, p_limit, p_after bigint[], p_tokens uuid[])` ({@link CLAIM_CONTINUE_FUNCTION_DDL},
 * version 6). The two share every statement but the key steps.
 */
function claimFunctionDdl(continued: boolean): string {
  const args = continued ? ", p_after bigint[], p_tokens uuid[]" : "";
  // Continued keys (version 6): the keys of the `p_after` rows that are still pending and leased with one of
  // `p_tokens`, locked first (SKIP LOCKED), then left out of the due keys.
  const lockContinued = continued
    ? `
  SELECT coalesce(array_agg(s.key), '{}') INTO v_cont FROM (
    SELECT k.key FROM ${KEYS} AS k WHERE k.key IN (
      SELECT o.key FROM ${OUTBOX} AS o WHERE o.seq = ANY (p_after) AND o.status = 'pending' AND o.lease_token = ANY (p_tokens))
    FOR UPDATE SKIP LOCKED) AS s;`
    : "";
  const notContinued = continued ? " AND NOT (k.key = ANY (v_cont))" : "";
  // lk: the locked due keys (after: null, read from their head) and, with a fresh snapshot, the continued keys whose
  // key row carries one of the caller's tokens (schema version 10: the last claim that took rows of the key was the
  // caller's, and no row of the key was retried or released since), read from after the caller's last row.
  const validContinued = `SELECT a.key, a.after FROM (
      SELECT o.key, max(o.seq) AS after FROM ${OUTBOX} AS o WHERE o.seq = ANY (p_after) AND o.key = ANY (v_cont) GROUP BY o.key
    ) AS a WHERE EXISTS (SELECT 1 FROM ${KEYS} AS k WHERE k.key = a.key AND k.lease_token = ANY (p_tokens))`;
  // The claim reads keys in this order until it has `p_limit` rows (see prefixSteps): the due keys in due order, then
  // the continued ones. Never the continued first: a relay that keeps continuing deep keys would then never read a key
  // that waits to be due; a continued key left unread stays held, and is due (read in due order) once it is settled.
  const lk = continued
    ? `SELECT j.key, NULL::bigint AS after FROM unnest(v_keys) AS j(key)
    UNION ALL
    ${validContinued}`
    : `SELECT j.key FROM unnest(v_keys) AS j(key)`;
  const noKeys = continued ? "cardinality(v_keys) = 0 AND cardinality(v_cont) = 0" : "cardinality(v_keys) = 0";
  // A continued key none of whose rows was taken keeps its key row as it is (its head is the caller's leased row).
  const hCont = continued ? ",\n      bool_or(pre.after IS NOT NULL) AS cont" : "";
  const unclaimedMove = continued ? "(NOT h.cont AND h.head_at > now())" : "h.head_at > now()";
  const emWhere = continued ? " AND pre.after IS NULL" : "";
  return `CREATE OR REPLACE FUNCTION "{{schema}}"."{{table}}_claim"(p_token uuid, p_lease bigint, p_limit integer${args})
RETURNS TABLE (seq bigint, id text, topic text, key text, payload text, headers text, created float8, attempts integer,
  lasterror text, prevseq bigint, now float8, until float8)
LANGUAGE plpgsql VOLATILE
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $claim$
#variable_conflict use_column
DECLARE
  v_keys text[];${continued ? "\n  v_cont text[];" : ""}
  v_now float8 := ${epochMs("now()")};
  -- The most due keys to lock (ClaimOptions.maxKeys, schema version 9): the claim's setting, else the limit.
  v_max_keys integer := least(p_limit, coalesce(nullif(current_setting('${MAX_KEYS_SETTING}', true), '')::integer, p_limit));
BEGIN${lockContinued}
  SELECT coalesce(array_agg(s.key), '{}') INTO v_keys FROM (
    SELECT k.key FROM ${KEYS} AS k WHERE k.available_at <= now()${notContinued} ORDER BY k.available_at LIMIT v_max_keys
    FOR UPDATE SKIP LOCKED) AS s;
  IF ${noKeys} THEN
    -- No key is due: only keyless rows can be claimed, and this much smaller statement claims exactly what the one
    -- below would (its planning costs a quarter of that one's).
    -- fr is a materialized CTE, evaluated once, as in the full statement: written as UPDATE … FROM (SELECT … LIMIT
    -- FOR UPDATE SKIP LOCKED), a conformance case claimed 20 rows for a limit of 10 (20 rows committed one by one).
    RETURN QUERY WITH fr AS MATERIALIZED (
      SELECT o.seq FROM ${OUTBOX} AS o WHERE o.key IS NULL AND o.status = 'pending' AND o.available_at <= now()
      ORDER BY o.available_at, o.seq LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), c AS (
      ${LEASE_ROWS("fr")}
      RETURNING ${CLAIMED_COLUMNS}
    )
    SELECT ${CLAIMED_FROM_C}, NULL::bigint, ${CLAIM_CLOCK}
    FROM (SELECT 1) AS one LEFT JOIN c ON true;
    RETURN;
  END IF;
${continued ? `  IF cardinality(v_keys) = 0 THEN
    -- Only continued keys (and keyless rows): no key row is deleted or moved back, so this smaller statement.
    RETURN QUERY WITH lk AS (
    ${validContinued}
  ), ${prefixSteps(continued)}, kh AS (
    UPDATE ${KEYS} AS k SET available_at = now() + ${LEASE}, lease_token = p_token WHERE k.key IN (SELECT c.key FROM c)
  )
  SELECT ${CLAIMED_FROM_C}, ${PREVSEQ}, ${CLAIM_CLOCK}
  FROM (SELECT 1) AS one LEFT JOIN c ON true;
    RETURN;
  END IF;
` : ""}  RETURN QUERY WITH lk AS (
    ${lk}
  ), ${prefixSteps(continued)}, h AS (
    SELECT pre.key, (array_agg(pre.available_at ORDER BY pre.seq))[1] AS head_at,
      EXISTS (SELECT 1 FROM c WHERE c.key = pre.key) AS claimed${hCont}
    FROM pre WHERE pre.seq IS NOT NULL GROUP BY pre.key
  ), kh AS (
    UPDATE ${KEYS} AS k SET available_at = CASE WHEN h.claimed THEN now() + ${LEASE} ELSE h.head_at END,
      lease_token = CASE WHEN h.claimed THEN p_token ELSE k.lease_token END
    FROM h WHERE k.key = h.key AND (h.claimed OR ${unclaimedMove})
  ), em AS MATERIALIZED (
    SELECT pre.key FROM pre WHERE pre.seq IS NULL${emWhere}
  ), e AS (
    SELECT set_config('edge_outbox.claim_empty', coalesce((SELECT json_agg(em.key)::text FROM em
      WHERE pg_try_advisory_xact_lock(${KEY_LOCK_NAMESPACE_SQL}, hashtext(em.key))), '[]'), true) AS empty
  )
  SELECT ${CLAIMED_FROM_C}, ${PREVSEQ}, ${CLAIM_CLOCK}
  FROM e LEFT JOIN c ON true;
  IF current_setting('edge_outbox.claim_empty') <> '[]' THEN
    DELETE FROM ${KEYS} AS k USING json_array_elements_text(current_setting('edge_outbox.claim_empty')::json) AS j(key)
    WHERE k.key = j.key AND NOT EXISTS (SELECT 1 FROM ${OUTBOX} AS o WHERE o.key = j.key AND o.status = 'pending');
  END IF;
END
$claim$`;
}

/**
 * `<table>_keys.lease_token` (see {@link SCHEMA_V10}), which the current claim functions read and write. Every version
 * that creates them holds the current text of the functions (a new install creates them at version 4 and replaces
 * them with the same text at each later version), so version 4 adds the column too, before the function: a schema at
 * any version then has the column its function uses. `IF NOT EXISTS`: version 10 adds it where version 4 did not.
 */
const KEY_TOKEN_COLUMN_DDL = `ALTER TABLE "{{schema}}"."{{table}}_keys" ADD COLUMN IF NOT EXISTS lease_token uuid`;

/**
 * Version 4: the claim as a function, `<table>_claim` ({@link CLAIM_FUNCTION_DDL}): the same statements the claim
 * used to send as one simple query, kept parsed per connection. Rows are unchanged (the key table gets the nullable
 * column the current function uses, {@link KEY_TOKEN_COLUMN_DDL}), so it applies to a populated table at once; an
 * edge-outbox that predates it never calls it. A relay of this version on a schema without it gets a CONFIG error
 * naming `storage.migrate()`.
 */
export const SCHEMA_V4: SchemaVersion = {
  version: 4,
  statements: [KEY_TOKEN_COLUMN_DDL, CLAIM_FUNCTION_DDL],
};

/**
 * Version 5: re-creates the claim function (`CREATE OR REPLACE`, {@link CLAIM_FUNCTION_DDL}) with the clock computed
 * once per call and `created` computed without numeric arithmetic: the same arguments and result columns, the same
 * values, about 10% faster on a claim of 500 rows. A relay of version 4 runs on it unchanged, and this version's runs
 * on a version 4 schema until `migrate()` replaces the function. Both versions hold the current text of the function,
 * so a new install creates it at version 4 and replaces it with the same text at version 5.
 */
export const SCHEMA_V5: SchemaVersion = {
  version: 5,
  statements: [CLAIM_FUNCTION_DDL],
};

/**
 * The claim function's overload that also continues keys the caller holds (schema v6),
 * `<table>_claim(p_token uuid, p_lease bigint, p_limit integer, p_after bigint[], p_tokens uuid[])`: what
 * {@link CLAIM_FUNCTION_DDL} claims, and the next rows of each key named by `p_after`, the seq of the last row of that
 * key the caller holds, leased with one of `p_tokens` (the caller's claims that are not settled yet). Such a key's row
 * is not due (its head is leased), so the 3-argument claim never reads it: the next prefix of a deep key waited for
 * the settle of the previous one, and over a few deep keys every claim waited for a settle.
 *
 * 1. Before the due keys, it locks the key rows of the `p_after` rows that are still pending and leased with one of
 *    `p_tokens`, `FOR UPDATE SKIP LOCKED`, and leaves them out of the due keys.
 * 2. With the fresh snapshot of the claim statement, a continued key is read only when its key row's `lease_token`
 *    (schema version 10) is one of `p_tokens`: the last claim that took rows of the key was the caller's, and no row
 *    of it was retried or released since (that settle cleared the token); until version 10 the same was checked by
 *    reading every pending row up to the `p_after` row (see {@link SCHEMA_V10} for why the two agree). It is read from
 *    the row after that one: its due prefix, as for a due key. Its key row becomes this lease's expiry (and its token
 *    this claim's) when rows of it were taken and is left as it is otherwise, and it is never deleted here.
 *
 * Safe for the same reason as the 3-argument claim (the key row lock orders every claim and settle of a key): the rows
 * taken follow, in seq order, rows that are all leased to the caller, and the caller sends them only after it has
 * delivered or dead-lettered those (the relay releases them instead when one of those is retried or released). A
 * settle of the earlier rows leaves the key row at this later lease (its fence: the key row is not later than its own
 * lease's expiry), so no other claimer reads the key until the last continued lease ends or is settled.
 */
export const CLAIM_CONTINUE_FUNCTION_DDL: string = claimFunctionDdl(true);

/**
 * Version 6: {@link CLAIM_CONTINUE_FUNCTION_DDL}, an overload of the claim function; the 3-argument function is
 * unchanged. Tables and rows are unchanged, so it applies to a populated table at once. A relay of this version on a
 * version 5 schema claims with the 3-argument function (it does not continue keys) until `migrate()` adds it.
 */
export const SCHEMA_V6: SchemaVersion = {
  version: 6,
  statements: [CLAIM_CONTINUE_FUNCTION_DDL],
};

/**
 * Version 7: re-creates both claim functions (`CREATE OR REPLACE`, {@link CLAIM_FUNCTION_DDL} and
 * {@link CLAIM_CONTINUE_FUNCTION_DDL}) with their per-key reads written so that only the `_key` index `(key, seq)` can
 * serve them ({@link sameKeyRange}): the same arguments, result columns and rows. Before, a key was matched with
 * `o.key = lk.key`, and with few keys in the statistics the prefix reads walked the primary key; and the check that a continued key's rows up to `after` are all the caller's was a bitmap scan, which visits the heap
 * row of every index entry of the key, those of rows delivered since the last vacuum included. Measured on a
 * claim that continues 5 keys and takes 100 rows of 10 keys (bench/README.md, "What changed on 2026-12-02"): the
 * per-key reads went from 1,763 to 284 buffers, the whole statement from 3,586 to 2,131. A relay of version 6 runs on
 * it unchanged, and this version's runs on a version 6 schema until `migrate()` replaces the functions.
 */
export const SCHEMA_V7: SchemaVersion = {
  version: 7,
  statements: [CLAIM_FUNCTION_DDL, CLAIM_CONTINUE_FUNCTION_DDL],
};

/**
 * Version 8: re-creates both claim functions (`CREATE OR REPLACE`, {@link CLAIM_FUNCTION_DDL} and
 * {@link CLAIM_CONTINUE_FUNCTION_DDL}) so that a claim reads its locked keys (due keys in due order, then continued
 * keys) only until it has `limit` rows, instead of reading every locked key: the same arguments and result columns.
 * Over many due deep keys a claim of 100 locked 100 keys and read 2 rows of each, then took 2-row prefixes of 50;
 * now it reads those 50. The claim of 100 at 1,000,000 pending over 5,000 keys took 4.28–4.51 ms against 4.92–4.99
 * before, and 3.01–3.37 against 3.19–3.36 ms at 1,000 (bench/README.md, "What changed on 2026-12-02, 11:50–13:00").
 * Which keys' prefixes a claim takes may differ (keys in due order, not the oldest heads of every locked key); each is still
 * the key's due head and what follows it. A relay of version 7 runs on it unchanged, and this version's runs on a
 * version 7 schema until `migrate()` replaces the functions.
 */
export const SCHEMA_V8: SchemaVersion = {
  version: 8,
  statements: [CLAIM_FUNCTION_DDL, CLAIM_CONTINUE_FUNCTION_DDL],
};

/**
 * Version 9: re-creates both claim functions (`CREATE OR REPLACE`, {@link CLAIM_FUNCTION_DDL} and
 * {@link CLAIM_CONTINUE_FUNCTION_DDL}) so that a claim locks at most `ClaimOptions.maxKeys` due keys, read from the
 * transaction's {@link MAX_KEYS_SETTING} (unset: the limit, as before): the same arguments and result columns. A
 * relay that holds as many keys as it can keep busy no longer takes more, whose rows would wait in it while another
 * relay sat idle (two relays over 30 keys with 20 ms sends: bench/README.md, "What changed on 2026-12-03"). A relay
 * of version 8 runs on it unchanged (it sets nothing), and this version's on a version 8 schema until `migrate()`
 * replaces the functions (the setting is then ignored).
 */
export const SCHEMA_V9: SchemaVersion = {
  version: 9,
  statements: [CLAIM_FUNCTION_DDL, CLAIM_CONTINUE_FUNCTION_DDL],
};

/**
 * Version 10: a cheaper check of continued keys, and each key's delivery position read once per claim.
 *
 * - `<table>_keys.lease_token`: the token of the last claim that took rows of the key (set by the claim functions), or
 *   null once a settle retried or released one of its rows (`SETTLE_SQL` in `sql.ts`, in the same statement).
 * - Both claim functions re-created (`CREATE OR REPLACE`, {@link CLAIM_FUNCTION_DDL} and
 *   {@link CLAIM_CONTINUE_FUNCTION_DDL}): a continued key is valid when its key row carries one of the caller's
 *   tokens, one probe of the key row where version 9 read every pending row of the key up to the caller's last one
 *   (the rows the caller holds: 20 and more per key over a few deep keys); and `prevseq` comes from one read of
 *   `<table>_positions` per key, not per row. Same arguments and result columns.
 *
 * Why the token says what the row walk said (every pending row of the key up to the caller's last one is leased to
 * the caller): a claim takes a key's rows from its head, or after rows all leased to the caller (the check itself),
 * under the key row's lock, so when it sets its token every pending row of the key up to its last one is the
 * caller's. Those rows then stop being the caller's only by a settle of the caller (delivered or dead: no longer
 * pending; retried or released: the settle clears the token) or by another claim taking them after their lease ended,
 * which takes the key from its head and sets its own token. So the check fails where the walk failed, and a key row
 * whose token is null (the column added to a populated table, a new key) is simply not continued: its next claim reads
 * it from its head.
 *
 * Adds a nullable column (no rewrite of a populated table) and replaces the functions. Relays must run this version's
 * code once it is applied: an older relay's settle does not clear the token when it retries or releases a row (its
 * own drain still never continues such a key: it hands back the key's later rows and forgets the key).
 */
export const SCHEMA_V10: SchemaVersion = {
  version: 10,
  statements: [
    KEY_TOKEN_COLUMN_DDL,
    CLAIM_FUNCTION_DDL,
    CLAIM_CONTINUE_FUNCTION_DDL,
  ],
};

/** Every schema version, oldest first. */
export const SCHEMA_VERSIONS: readonly SchemaVersion[] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8, SCHEMA_V9, SCHEMA_V10];

/** The newest schema version. */
export const LATEST_SCHEMA_VERSION: number = SCHEMA_VERSIONS[SCHEMA_VERSIONS.length - 1]!.version;

/** Validated, unquoted object names of one outbox. */
export interface PostgresNames {
  /** The schema name. */
  readonly schema: string;
  /** The table name. */
  readonly table: string;
}

/**
 * Validates a table and schema name: plain identifiers (letters, digits, `_`; not starting with a digit), the schema
 * at most 63 characters, the table at most {@link MAX_TABLE_NAME_LENGTH}.
 *
 * @param options.table the outbox table name @default "outbox"
 * @param options.schema the schema name @default "public"
 * @returns the validated names
 * @throws {OutboxError} CONFIG naming the bad field (nothing is sent anywhere)
 * @example
 * ```ts
 * postgresNames({ table: "outbox", schema: "app" }); // { schema: "app", table: "outbox" }
 * ```
 */
export function postgresNames(options: { table?: unknown; schema?: unknown } = {}): PostgresNames {
  const table = options.table ?? "outbox";
  const schema = options.schema ?? "public";
  quoteIdentifier(schema, "schema");
  quoteIdentifier(table, "table");
  if ((table as string).length > MAX_TABLE_NAME_LENGTH) {
    throw new OutboxError(
      "CONFIG",
      `table ${JSON.stringify(table)} is too long: at most ${MAX_TABLE_NAME_LENGTH} characters (PostgreSQL cuts names derived from it, like "<table>_migrations", at 63)`,
    );
  }
  return { schema: schema as string, table: table as string };
}

/**
 * Replaces the placeholders of an SQL constant with validated names.
 *
 * @param template SQL containing `{{schema}}` and `{{table}}`
 * @param names the schema and table @default { schema: "public", table: "outbox" }
 * @returns the SQL for that table
 * @throws {OutboxError} CONFIG when a name is not a plain identifier or the table name is too long
 * @example
 * ```ts
 * const ddl = SCHEMA_V1.statements.map((s) => renderSql(s, { schema: "app", table: "outbox" }));
 * ```
 */
export function renderSql(template: string, names: { table?: string; schema?: string } = {}): string {
  const n = postgresNames(names);
  return template.replaceAll(SCHEMA_PLACEHOLDER, n.schema).replaceAll(TABLE_PLACEHOLDER, n.table);
}

/**
 * Returns the statement recording a schema version as applied, with the placeholders. The version is a constant of
 * this module, never user input.
 *
 * @param version a version of {@link SCHEMA_VERSIONS}
 * @returns an idempotent insert into `<table>_migrations`
 * @throws {RangeError} when `version` is not a positive integer
 * @example
 * ```ts
 * const sql = renderSql(recordVersionSql(1), { table: "outbox" });
 * ```
 */
export function recordVersionSql(version: number): string {
  if (!Number.isSafeInteger(version) || version < 1) throw new RangeError(`bad schema version ${version}`);
  return `INSERT INTO "{{schema}}"."{{table}}_migrations" (version) VALUES (${version}) ON CONFLICT (version) DO NOTHING`;
}

/**
 * Returns the complete DDL for one outbox, for users who run their own migration tool: the schema (unless `public`),
 * the migrations table, every schema version, and the rows recording those versions as applied (so a later
 * `storage.migrate()` is a no-op). Every statement is idempotent; run them in order, in one transaction.
 *
 * @param options.table the outbox table name @default "outbox"
 * @param options.schema the schema @default "public"
 * @returns SQL statements without parameters
 * @throws {OutboxError} CONFIG when a name is not a plain identifier or the table name is too long
 * @example
 * ```ts
 * import postgres from "postgres";
 * import { postgresSchema } from "edge-outbox/postgres";
 *
 * const sql = postgres(process.env.DATABASE_URL!);
 * await sql.begin(async (tx) => {
 *   for (const statement of postgresSchema({ table: "outbox", schema: "app" })) await tx.unsafe(statement);
 * });
 * ```
 */
export function postgresSchema(options: { table?: string | undefined; schema?: string | undefined } = {}): string[] {
  const names = postgresNames(options);
  const out: string[] = [];
  if (names.schema !== "public") out.push(renderSql(CREATE_SCHEMA_DDL, names));
  out.push(renderSql(MIGRATIONS_TABLE_DDL, names));
  for (const v of SCHEMA_VERSIONS) {
    for (const s of v.statements) out.push(renderSql(s, names));
    out.push(renderSql(recordVersionSql(v.version), names));
  }
  return out;
}
