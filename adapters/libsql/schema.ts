/**
 * The libSQL / SQLite schema of the outbox, as versioned DDL constants, and {@link libsqlSchema} for users who
 * run their own migration tool.
 *
 * Every constant names its tables as `"{{table}}"`, `"{{table}}_counters"`, …: an escaped-identifier placeholder
 * replaced by a name that {@link quoteIdentifier} has validated, so nothing else ever reaches the SQL text.
 *
 * @module
 */
import { quoteIdentifier } from "../../src/options.ts";

/** The placeholder the DDL and SQL constants use for the (validated, unquoted) table name. */
export const TABLE_PLACEHOLDER = "{{table}}";

/**
 * The database clock as epoch milliseconds, an SQL expression. SQLite keeps 'now' stable within one statement.
 * `julianday` (not `unixepoch('subsec')`) keeps older SQLite builds and D1 working.
 */
export const NOW_MS = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/** One schema version: statements applied together, in one transaction, by `migrate()`. */
export interface SchemaVersion {
  /** Version number, starting at 1; `migrate()` applies every version above the highest one recorded. */
  readonly version: number;
  /** DDL statements with the `{{table}}` placeholder. */
  readonly statements: readonly string[];
}

/** The bookkeeping table `migrate()` records applied versions in (it also serialises concurrent migrations). */
export const MIGRATIONS_TABLE_DDL: string =
  `CREATE TABLE IF NOT EXISTS "{{table}}_migrations" (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`;

/**
 * Version 1: the outbox table, its indexes and the per-minute counters.
 *
 * - `seq` is the commit order: SQLite runs one write transaction at a time, so a value assigned at insert is in
 *   commit order; `AUTOINCREMENT` never reuses a value, even after the newest rows are deleted.
 * - `status` is `pending` (waiting, leased or backing off), `dead`, or `delivered` (only with a retention window).
 * - `available_at` is when the row is next due; a claim sets it to the lease expiry.
 * - Indexes: `_pending` (seq order, for claims: dead and delivered rows are never walked), `_due` (due rows, for
 *   `hasDue` and stats), `_key` (the per-key ordering check), `_done` (purge; replaced in version 2), `_dead` (dead-letter pages).
 */
export const SCHEMA_V1: SchemaVersion = {
  version: 1,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{table}}" (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  topic TEXT NOT NULL,
  key TEXT,
  payload TEXT NOT NULL,
  headers TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead', 'delivered')),
  created_at INTEGER NOT NULL,
  available_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  lease_token TEXT,
  lease_until INTEGER,
  last_error TEXT,
  done_at INTEGER
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_pending" ON "{{table}}" (seq, available_at) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_due" ON "{{table}}" (available_at, seq) WHERE status = 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_key" ON "{{table}}" (key, seq) WHERE status = 'pending' AND key IS NOT NULL`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_done" ON "{{table}}" (status, done_at) WHERE status <> 'pending'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_dead" ON "{{table}}" (seq) WHERE status = 'dead'`,
    `CREATE TABLE IF NOT EXISTS "{{table}}_counters" (
  bucket INTEGER NOT NULL,
  shard INTEGER NOT NULL DEFAULT 0,
  delivered INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0,
  latency_sum_ms INTEGER NOT NULL DEFAULT 0,
  latency_max_ms INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, shard)
) WITHOUT ROWID`,
  ],
};

/**
 * Version 2: purge indexes SQLite can use. Version 1's `_done` index is partial on `status <> 'pending'`, which a
 * purge's `status = ?` cannot prove, so a purge chunk scanned and sorted every row of the table. Version 2 replaces it
 * with one partial index per purged status, `(done_at, seq)`, matching the purge statements' literal
 * `status = 'dead'` / `status = 'delivered'` and their `ORDER BY done_at, seq`: a chunk reads only the rows it deletes.
 * Pending rows are in neither index. Upgrades a populated table in place (two index builds, one drop).
 */
export const SCHEMA_V2: SchemaVersion = {
  version: 2,
  statements: [
    `CREATE INDEX IF NOT EXISTS "{{table}}_dead_done" ON "{{table}}" (done_at, seq) WHERE status = 'dead'`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_delivered_done" ON "{{table}}" (done_at, seq) WHERE status = 'delivered'`,
    `DROP INDEX IF EXISTS "{{table}}_done"`,
  ],
};

/**
 * Version 3: per-key delivery positions, `<table>_positions`: for each key, the `seq` of its last delivered message
 * (`seq`) and when it was delivered (`at`, epoch ms). Written only by a delivered settle, in the same write
 * transaction (never by a retry, a dead letter or a release); read by the claim, which returns it as each keyed
 * message's `prevSeq` (what a consumer's strict inbox holds on: `Outbox-Prev-Seq`). One small row per key; every
 * `purge` call also drops up to `limit` positions not updated for 7 days. Upgrades a populated table (a new, empty
 * table: the first delivery of each key after the upgrade records it).
 */
export const SCHEMA_V3: SchemaVersion = {
  version: 3,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{table}}_positions" (
  key TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  at INTEGER NOT NULL
) WITHOUT ROWID`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_positions_at" ON "{{table}}_positions" (at)`,
  ],
};

/** Every schema version, oldest first. */
export const SCHEMA_VERSIONS: readonly SchemaVersion[] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/** The newest schema version. */
export const LATEST_SCHEMA_VERSION: number = SCHEMA_VERSIONS[SCHEMA_VERSIONS.length - 1]!.version;

/**
 * Replaces the table placeholder of an SQL constant with a validated table name.
 *
 * @param template SQL containing `{{table}}`
 * @param table the table name @default "outbox"
 * @returns the SQL for that table
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * import { renderSql, SCHEMA_V1 } from "./schema.ts";
 * const ddl = SCHEMA_V1.statements.map((s) => renderSql(s, "app_outbox"));
 * ```
 */
export function renderSql(template: string, table: string = "outbox"): string {
  const name = quoteIdentifier(table).slice(1, -1); // validated: letters, digits, underscore only
  return template.replaceAll(TABLE_PLACEHOLDER, name);
}

/**
 * Returns the complete DDL for one table, for users who run their own migration tool: the migrations table, every
 * schema version, and the rows recording those versions as applied (so a later `storage.migrate()` is a no-op).
 * Every statement is idempotent.
 *
 * @param options.table the outbox table name @default "outbox"
 * @returns SQL statements to run in order, in one transaction
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * import { libsqlSchema } from "edge-outbox/libsql";
 * await client.batch(libsqlSchema({ table: "outbox" }), "write");
 * ```
 */
export function libsqlSchema(options: { table?: string | undefined } = {}): string[] {
  const table = options.table ?? "outbox";
  const out = [renderSql(MIGRATIONS_TABLE_DDL, table)];
  for (const v of SCHEMA_VERSIONS) {
    for (const s of v.statements) out.push(renderSql(s, table));
    out.push(renderSql(recordVersionSql(v.version), table));
  }
  return out;
}

/**
 * Returns the statement recording a schema version as applied, with the `{{table}}` placeholder. The version is a
 * constant of this module, never user input.
 *
 * @param version a version of {@link SCHEMA_VERSIONS}
 * @returns an idempotent `INSERT OR IGNORE` into `<table>_migrations`
 * @throws {RangeError} when `version` is not a positive integer
 * @example
 * ```ts
 * const sql = renderSql(recordVersionSql(1), "outbox");
 * ```
 */
export function recordVersionSql(version: number): string {
  if (!Number.isSafeInteger(version) || version < 1) throw new RangeError(`bad schema version ${version}`);
  return `INSERT OR IGNORE INTO "{{table}}_migrations" (version, applied_at) VALUES (${version}, ${NOW_MS})`;
}
