/**
 * The inbox storage on PostgreSQL through postgres.js ({@link postgresInbox}), its SQL and its versioned DDL
 * ({@link postgresInboxSchema}).
 *
 * @module
 */
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import type { InboxCapabilities, InboxStorage } from "../../src/inbox.ts";
import {
  hasMethod,
  isBusyError,
  num,
  type PostgresClient,
  type PostgresExecutor,
  type PostgresParameter,
  type PostgresRow,
  PREFIX,
  storageError,
} from "./client.ts";
import { CREATE_SCHEMA_DDL, postgresNames, recordVersionSql, renderSql, type SchemaVersion } from "./schema.ts";

/**
 * Version 1 of the inbox: `"{{table}}"(consumer, message_id, processed_at)` with primary key `(consumer, message_id)`
 * (the unique index that makes a second delivery wait for, then see, the first), an index for purges, and
 * `"{{table}}_keys"(consumer, key, last_seq, updated_at)`: per-key sequence positions for ordering checks.
 * Times are `timestamptz` from the database clock.
 */
export const INBOX_SCHEMA_V1: SchemaVersion = {
  version: 1,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}" (
  consumer text NOT NULL,
  message_id text NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, message_id)
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_processed" ON "{{schema}}"."{{table}}" (consumer, processed_at)`,
    `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_keys" (
  consumer text NOT NULL,
  key text NOT NULL,
  last_seq bigint,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, key)
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_keys_updated" ON "{{schema}}"."{{table}}_keys" (consumer, updated_at)`,
  ],
};

/** Every inbox schema version, oldest first. */
export const INBOX_SCHEMA_VERSIONS: readonly SchemaVersion[] = [INBOX_SCHEMA_V1];

/** The bookkeeping table of the inbox's applied versions. */
export const INBOX_MIGRATIONS_TABLE_DDL: string = `CREATE TABLE IF NOT EXISTS "{{schema}}"."{{table}}_migrations" (
  version integer PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

/** Records one message; returns a row only when it is new (a concurrent uncommitted insert of it makes this wait). */
export const INBOX_RECORD_SQL: string =
  `INSERT INTO "{{schema}}"."{{table}}" (consumer, message_id) VALUES ($1::text, $2::text) ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1 AS fresh`;
/** Whether a message is recorded. */
export const INBOX_IS_RECORDED_SQL: string =
  `SELECT 1 AS present FROM "{{schema}}"."{{table}}" WHERE consumer = $1::text AND message_id = $2::text`;
/** Creates a key position row when missing (waits for a concurrent creator). */
export const INBOX_KEY_ENSURE_SQL: string =
  `INSERT INTO "{{schema}}"."{{table}}_keys" (consumer, key) VALUES ($1::text, $2::text) ON CONFLICT (consumer, key) DO NOTHING`;
/** Locks a key position row for the transaction and reads it. */
export const INBOX_KEY_LOCK_SQL: string =
  `SELECT last_seq FROM "{{schema}}"."{{table}}_keys" WHERE consumer = $1::text AND key = $2::text FOR UPDATE`;
/** Advances a key position to max(last, seq). */
export const INBOX_KEY_ADVANCE_SQL: string =
  `UPDATE "{{schema}}"."{{table}}_keys" SET last_seq = GREATEST(COALESCE(last_seq, $3::bigint), $3::bigint), updated_at = now() WHERE consumer = $1::text AND key = $2::text`;
/** Deletes at most $3 of a consumer's rows older than $2 ms (oldest first), and as many stale key positions. */
export const INBOX_PURGE_SQL: string = `WITH doomed AS (
  DELETE FROM "{{schema}}"."{{table}}" WHERE consumer = $1::text AND message_id IN (
    SELECT message_id FROM "{{schema}}"."{{table}}"
    WHERE consumer = $1::text AND processed_at < now() - $2::float8 * interval '1 millisecond'
    ORDER BY processed_at LIMIT $3::int
  ) RETURNING 1
), stale_keys AS (
  DELETE FROM "{{schema}}"."{{table}}_keys" WHERE consumer = $1::text AND key IN (
    SELECT key FROM "{{schema}}"."{{table}}_keys"
    WHERE consumer = $1::text AND updated_at < now() - $2::float8 * interval '1 millisecond'
    LIMIT $3::int FOR UPDATE SKIP LOCKED
  ) RETURNING 1
)
SELECT (SELECT count(*) FROM doomed)::int AS deleted, (SELECT count(*) FROM stale_keys)::int AS keys`;
/** Serialises concurrent migrations of one inbox. */
export const INBOX_MIGRATE_LOCK_SQL: string =
  `SELECT pg_advisory_xact_lock(hashtextextended('edge-outbox:inbox-migrate:{{schema}}.{{table}}', 0))`;

/** Options of {@link postgresInbox}. */
export interface PostgresInboxOptions {
  /** Inbox table name (also the prefix of `<table>_keys` and `<table>_migrations`). @default "inbox" */
  table?: string | undefined;
  /** Schema of the inbox's tables; `migrate()` creates it when missing. @default "public" */
  schema?: string | undefined;
}

/** The Postgres inbox storage. */
export interface PostgresInbox extends InboxStorage<PostgresExecutor, never> {
  /** The validated table name. */
  readonly table: string;
  /** The validated schema name. */
  readonly schema: string;
  /** Runs `fn` in `sql.begin(…)`: commits when it resolves, rolls back when it rejects. */
  transaction<T>(fn: (tx: PostgresExecutor) => Promise<T>): Promise<T>;
}

/**
 * Returns the complete inbox DDL, for users who run their own migration tool: the schema (unless `public`), the
 * migrations table, every version and the rows recording them (a later `migrate()` is a no-op). Idempotent; run in
 * order, in one transaction.
 *
 * @param options.table the inbox table @default "inbox"
 * @param options.schema the schema @default "public"
 * @returns SQL statements without parameters
 * @throws {OutboxError} CONFIG when a name is not a plain identifier or the table name is too long
 * @example
 * ```ts
 * import { postgresInboxSchema } from "edge-outbox/postgres";
 * await sql.begin(async (tx) => {
 *   for (const statement of postgresInboxSchema({ table: "inbox" })) await tx.unsafe(statement);
 * });
 * ```
 */
export function postgresInboxSchema(options: { table?: string | undefined; schema?: string | undefined } = {}): string[] {
  const names = postgresNames({ table: options.table ?? "inbox", schema: options.schema });
  const out: string[] = [];
  if (names.schema !== "public") out.push(renderSql(CREATE_SCHEMA_DDL, names));
  out.push(renderSql(INBOX_MIGRATIONS_TABLE_DDL, names));
  for (const v of INBOX_SCHEMA_VERSIONS) {
    for (const s of v.statements) out.push(renderSql(s, names));
    out.push(renderSql(recordVersionSql(v.version), names));
  }
  return out;
}

const OPTION_KEYS = new Set(["table", "schema"]);

/**
 * Creates the inbox storage on PostgreSQL over your postgres.js client (it never opens connections itself). Call
 * `migrate()` once at start, or install {@link postgresInboxSchema} with your migration tool.
 *
 * `record` is one `INSERT … ON CONFLICT DO NOTHING`: a duplicate never aborts your transaction, and a second
 * delivery of a message whose first delivery is still uncommitted waits on the primary key, then sees it.
 *
 * @param sql a postgres.js client (`postgres(url)`), typed structurally
 * @param options table (default "inbox"), schema (default "public")
 * @returns the inbox storage; `capabilities` is `{ transaction: true, batchStatement: false, keyOrder: true }`
 * @throws {OutboxError} CONFIG for a bad option or a value that is not a postgres.js client; nothing is sent
 * @example
 * ```ts
 * import postgres from "postgres";
 * import { createInbox } from "edge-outbox";
 * import { postgresInbox } from "edge-outbox/postgres";
 *
 * const sql = postgres(process.env.DATABASE_URL!);
 * const storage = postgresInbox(sql, { table: "inbox" });
 * await storage.migrate();
 * const inbox = createInbox({ storage, consumer: "billing" });
 * await sql.begin((tx) => inbox.handle(tx, "0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70", async (tx) => {
 *   await tx.unsafe("update accounts set balance = balance - 5 where id = 1");
 * }));
 * ```
 */
export function postgresInbox(sql: PostgresClient, options: PostgresInboxOptions = {}): PostgresInbox {
  if (typeof options !== "object" || options === null) throw new OutboxError("CONFIG", "postgresInbox options must be an object");
  for (const k of Object.keys(options)) {
    if (!OPTION_KEYS.has(k)) throw new OutboxError("CONFIG", `postgresInbox options: unknown option ${JSON.stringify(k)}`);
  }
  const names = postgresNames({ table: options.table ?? "inbox", schema: options.schema ?? "public" });
  if (!hasMethod(sql, "unsafe") || !hasMethod(sql, "begin")) {
    throw new OutboxError("CONFIG", `${PREFIX} postgresInbox needs a postgres.js client (unsafe, begin)`);
  }
  const r = (s: string): string => renderSql(s, names);
  const q = {
    record: r(INBOX_RECORD_SQL),
    isRecorded: r(INBOX_IS_RECORDED_SQL),
    keyEnsure: r(INBOX_KEY_ENSURE_SQL),
    keyLock: r(INBOX_KEY_LOCK_SQL),
    keyAdvance: r(INBOX_KEY_ADVANCE_SQL),
    purge: r(INBOX_PURGE_SQL),
    migrateLock: r(INBOX_MIGRATE_LOCK_SQL),
    migrations: r(INBOX_MIGRATIONS_TABLE_DDL),
    applied: r(`SELECT version FROM "{{schema}}"."{{table}}_migrations" ORDER BY version`),
  };
  const capabilities: InboxCapabilities = { transaction: true, batchStatement: false, keyOrder: true };
  const label = `${names.schema}.${names.table}`;

  const query = async (executor: PostgresExecutor, statement: string, params: PostgresParameter[] = []): Promise<readonly PostgresRow[]> =>
    await executor.unsafe(statement, params, { prepare: params.length > 0 });

  /** Maps a driver error: a missing table is CONFIG (run migrate), everything else STORAGE. */
  function fail(what: string, e: unknown): OutboxError {
    if (isOutboxError(e)) return e;
    if ((e as { code?: unknown } | null)?.code === "42P01") {
      return new OutboxError(
        "CONFIG",
        `${PREFIX} table ${label} does not exist: call storage.migrate() or install the DDL from postgresInboxSchema()`,
        { cause: e },
      );
    }
    return storageError(`inbox ${what}`, e);
  }

  const executor = (tx: unknown, what: string): PostgresExecutor => {
    // The pool itself would autocommit the record apart from the effects: refuse it (it is the one handle with begin()).
    if (!hasMethod(tx, "unsafe") || hasMethod(tx, "begin")) {
      throw new OutboxError("VALIDATION", `${PREFIX} inbox ${what} needs a postgres.js transaction (sql.begin(tx => …)) or reserved connection`);
    }
    return tx as PostgresExecutor;
  };

  const storage: PostgresInbox = {
    name: "postgres",
    scope: `postgres:${label}`,
    table: names.table,
    schema: names.schema,
    capabilities,

    async migrate(): Promise<void> {
      for (let attempt = 0;; attempt++) {
        try {
          await sql.begin(async (tx) => {
            await query(tx, "SET LOCAL client_min_messages = warning");
            await query(tx, q.migrateLock);
            if (names.schema !== "public") await query(tx, renderSql(CREATE_SCHEMA_DDL, names));
            await query(tx, q.migrations);
            const applied = new Set((await query(tx, q.applied)).map((row) => num(row["version"])));
            for (const version of INBOX_SCHEMA_VERSIONS) {
              if (applied.has(version.version)) continue;
              for (const s of version.statements) await query(tx, r(s));
              await query(tx, r(recordVersionSql(version.version)));
            }
          });
          return;
        } catch (e) {
          // Two first-time migrations racing on CREATE SCHEMA can conflict before the lock is taken: try again.
          if (attempt < 3 && (isBusyError(e) || (e as { code?: unknown } | null)?.code === "23505")) continue;
          throw fail("migrate", e);
        }
      }
    },

    async transaction<T>(fn: (tx: PostgresExecutor) => Promise<T>): Promise<T> {
      try {
        return (await sql.begin((tx) => fn(tx))) as T;
      } catch (e) {
        // The caller's own errors pass through unchanged; driver errors (they carry a string code) become typed.
        if (isOutboxError(e) || typeof (e as { code?: unknown } | null)?.code !== "string") throw e;
        throw fail("transaction", e);
      }
    },

    async record(tx, consumer, messageId): Promise<boolean> {
      const ex = executor(tx, "record");
      try {
        return (await query(ex, q.record, [consumer, messageId])).length === 1;
      } catch (e) {
        throw fail("record", e);
      }
    },

    async isRecorded(consumer, messageId): Promise<boolean> {
      try {
        return (await query(sql, q.isRecorded, [consumer, messageId])).length > 0;
      } catch (e) {
        throw fail("isRecorded", e);
      }
    },

    async lockKey(tx, consumer, key): Promise<number | null> {
      const ex = executor(tx, "lockKey");
      try {
        await query(ex, q.keyEnsure, [consumer, key]);
        const [row] = await query(ex, q.keyLock, [consumer, key]);
        const v = row?.["last_seq"];
        return v === null || v === undefined ? null : num(v);
      } catch (e) {
        throw fail("lockKey", e);
      }
    },

    async advanceKey(tx, consumer, key, seq): Promise<void> {
      const ex = executor(tx, "advanceKey");
      try {
        await query(ex, q.keyAdvance, [consumer, key, seq]);
      } catch (e) {
        throw fail("advanceKey", e);
      }
    },

    async purge({ consumer, olderThanMs, limit }): Promise<number> {
      try {
        const [row] = await query(sql, q.purge, [consumer, olderThanMs, limit]);
        return num(row?.["deleted"]);
      } catch (e) {
        throw fail("purge", e);
      }
    },
  };
  return storage;
}
