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

/** Every schema version, oldest first. */
export const SCHEMA_VERSIONS: readonly SchemaVersion[] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

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
