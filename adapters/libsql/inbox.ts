/**
 * The inbox storage on libSQL / SQLite through `@libsql/client` ({@link libsqlInbox}), its SQL and versioned DDL
 * ({@link libsqlInboxSchema}). The same SQL serves D1.
 *
 * @module
 */
import { isOutboxError, OutboxError, toOutboxError } from "../../src/errors.ts";
import type { InboxCapabilities, InboxStorage } from "../../src/inbox.ts";
import { busyRetrier } from "../../src/sql/retry.ts";
import {
  closeQuietly,
  isBusyError,
  isRetryableError,
  type LibsqlClient,
  type LibsqlExecutor,
  type LibsqlResultSet,
  type LibsqlStatement,
  type LibsqlTransaction,
  lockedTransaction,
  modeOf,
  runRead,
  runWrite,
} from "./client.ts";
import { NOW_MS, recordVersionSql, renderSql, type SchemaVersion } from "./schema.ts";

/**
 * Version 1 of the inbox: `"{{table}}"(consumer, message_id, processed_at)` with primary key `(consumer, message_id)`,
 * an index for purges, and `"{{table}}_keys"(consumer, key, last_seq, updated_at)` for ordering checks. Times are
 * epoch ms from the database clock.
 */
export const INBOX_SCHEMA_V1: SchemaVersion = {
  version: 1,
  statements: [
    `CREATE TABLE IF NOT EXISTS "{{table}}" (
  consumer TEXT NOT NULL,
  message_id TEXT NOT NULL,
  processed_at INTEGER NOT NULL,
  PRIMARY KEY (consumer, message_id)
)`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_processed" ON "{{table}}" (consumer, processed_at)`,
    `CREATE TABLE IF NOT EXISTS "{{table}}_keys" (
  consumer TEXT NOT NULL,
  key TEXT NOT NULL,
  last_seq INTEGER,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (consumer, key)
) WITHOUT ROWID`,
    `CREATE INDEX IF NOT EXISTS "{{table}}_keys_updated" ON "{{table}}_keys" (consumer, updated_at)`,
  ],
};

/** Every inbox schema version, oldest first. */
export const INBOX_SCHEMA_VERSIONS: readonly SchemaVersion[] = [INBOX_SCHEMA_V1];

/** The bookkeeping table of the inbox's applied versions. */
export const INBOX_MIGRATIONS_TABLE_DDL: string =
  `CREATE TABLE IF NOT EXISTS "{{table}}_migrations" (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`;

/** Records one message in a transaction; returns a row only when it is new. */
export const INBOX_RECORD_SQL: string =
  `INSERT INTO "{{table}}" (consumer, message_id, processed_at) VALUES (?1, ?2, ${NOW_MS}) ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1 AS fresh`;
/** The batch form: a plain insert, so a duplicate fails the whole batch (primary key). */
export const INBOX_STATEMENT_SQL: string = `INSERT INTO "{{table}}" (consumer, message_id, processed_at) VALUES (?1, ?2, ${NOW_MS})`;
/** Whether a message is recorded. */
export const INBOX_IS_RECORDED_SQL: string = `SELECT 1 AS present FROM "{{table}}" WHERE consumer = ?1 AND message_id = ?2`;
/** Creates a key position when missing; being a write, it also takes SQLite's write lock for the transaction. */
export const INBOX_KEY_ENSURE_SQL: string =
  `INSERT INTO "{{table}}_keys" (consumer, key, last_seq, updated_at) VALUES (?1, ?2, NULL, ${NOW_MS}) ON CONFLICT (consumer, key) DO NOTHING`;
/** Reads a key position. */
export const INBOX_KEY_READ_SQL: string = `SELECT last_seq FROM "{{table}}_keys" WHERE consumer = ?1 AND key = ?2`;
/** Advances a key position to max(last, seq). */
export const INBOX_KEY_ADVANCE_SQL: string =
  `UPDATE "{{table}}_keys" SET last_seq = max(coalesce(last_seq, ?3), ?3), updated_at = ${NOW_MS} WHERE consumer = ?1 AND key = ?2`;
/** Deletes at most ?3 of a consumer's rows older than ?2 ms, oldest first. */
export const INBOX_PURGE_SQL: string = `DELETE FROM "{{table}}" WHERE rowid IN (
  SELECT rowid FROM "{{table}}" WHERE consumer = ?1 AND processed_at < ${NOW_MS} - ?2 ORDER BY processed_at LIMIT ?3
) RETURNING 1`;
/** Deletes at most ?3 key positions of a consumer not advanced for ?2 ms. */
export const INBOX_PURGE_KEYS_SQL: string = `DELETE FROM "{{table}}_keys" WHERE consumer = ?1 AND key IN (
  SELECT key FROM "{{table}}_keys" WHERE consumer = ?1 AND updated_at < ${NOW_MS} - ?2 LIMIT ?3
)`;
/** A write matching no row, run through `executeMultiple` to take the write lock without a prepared statement. */
export const INBOX_LOCK_SQL: string = `UPDATE "{{table}}_migrations" SET version = version WHERE 0`;
/** Takes the shared (read) lock the same way. */
export const INBOX_READ_LOCK_SQL: string = `SELECT 1 FROM "{{table}}_migrations" LIMIT 0`;

/**
 * Returns the complete inbox DDL for one table (libSQL and D1), for users who run their own migration tool; a later
 * `migrate()` is a no-op. Idempotent; run in order.
 *
 * @param options.table the inbox table @default "inbox"
 * @returns SQL statements without parameters
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * import { libsqlInboxSchema } from "edge-outbox/libsql";
 * await client.batch(libsqlInboxSchema({ table: "inbox" }), "write");
 * ```
 */
export function libsqlInboxSchema(options: { table?: string | undefined } = {}): string[] {
  const table = options.table ?? "inbox";
  const out = [renderSql(INBOX_MIGRATIONS_TABLE_DDL, table)];
  for (const v of INBOX_SCHEMA_VERSIONS) {
    for (const s of v.statements) out.push(renderSql(s, table));
    out.push(renderSql(recordVersionSql(v.version), table));
  }
  return out;
}

/** The rendered SQL of one inbox table (shared by the libSQL and D1 inboxes). */
export interface SqliteInboxSql {
  /** See {@link INBOX_RECORD_SQL}. */
  readonly record: string;
  /** See {@link INBOX_STATEMENT_SQL}. */
  readonly statement: string;
  /** See {@link INBOX_IS_RECORDED_SQL}. */
  readonly isRecorded: string;
  /** See {@link INBOX_KEY_ENSURE_SQL}. */
  readonly keyEnsure: string;
  /** See {@link INBOX_KEY_READ_SQL}. */
  readonly keyRead: string;
  /** See {@link INBOX_KEY_ADVANCE_SQL}. */
  readonly keyAdvance: string;
  /** See {@link INBOX_PURGE_SQL}. */
  readonly purge: string;
  /** See {@link INBOX_PURGE_KEYS_SQL}. */
  readonly purgeKeys: string;
  /** See {@link INBOX_LOCK_SQL}. */
  readonly lock: string;
  /** See {@link INBOX_READ_LOCK_SQL}. */
  readonly readLock: string;
  /** Every DDL statement (migrations table, versions, version rows), idempotent. */
  readonly ddl: readonly string[];
}

/**
 * Renders the inbox SQL for a validated table name.
 *
 * @param table the inbox table
 * @returns the statements
 * @throws {OutboxError} CONFIG when `table` is not a plain identifier
 * @example
 * ```ts
 * sqliteInboxSql("inbox").record; // internal (shared with edge-outbox/d1), not exported by edge-outbox/libsql
 * ```
 */
export function sqliteInboxSql(table: string): SqliteInboxSql {
  const r = (s: string): string => renderSql(s, table);
  return {
    record: r(INBOX_RECORD_SQL),
    statement: r(INBOX_STATEMENT_SQL),
    isRecorded: r(INBOX_IS_RECORDED_SQL),
    keyEnsure: r(INBOX_KEY_ENSURE_SQL),
    keyRead: r(INBOX_KEY_READ_SQL),
    keyAdvance: r(INBOX_KEY_ADVANCE_SQL),
    purge: r(INBOX_PURGE_SQL),
    purgeKeys: r(INBOX_PURGE_KEYS_SQL),
    lock: r(INBOX_LOCK_SQL),
    readLock: r(INBOX_READ_LOCK_SQL),
    ddl: libsqlInboxSchema({ table }),
  };
}

/**
 * Maps a SQLite driver error: a missing table is CONFIG (run migrate), the rest STORAGE (retryable when busy).
 *
 * @param adapter "libsql" or "d1"
 * @param table the inbox table
 * @param what the operation
 * @param e the caught value
 * @returns the typed error
 * @example
 * ```ts
 * try { await client.execute("select 1") } catch (e) { throw sqliteInboxError("libsql", "inbox", "record", e) }
 * ```
 */
export function sqliteInboxError(adapter: string, table: string, what: string, e: unknown): OutboxError {
  if (isOutboxError(e)) return e;
  const message = e instanceof Error ? e.message : String(e);
  // Only the inbox's own tables: a missing table named by one of the caller's batch statements stays STORAGE.
  if (new RegExp(`no such table: (main\\.)?${table}(_keys|_migrations)?\\b`, "i").test(message)) {
    return new OutboxError(
      "CONFIG",
      `[edge-outbox:${adapter}] table ${table} does not exist: call storage.migrate() or install the DDL from libsqlInboxSchema()`,
      { cause: e },
    );
  }
  return toOutboxError("STORAGE", `[edge-outbox:${adapter}] inbox ${what} failed`, e, isRetryableError(e));
}

/** Options of {@link libsqlInbox}. */
export interface LibsqlInboxOptions {
  /** Inbox table name (also the prefix of `<table>_keys` and `<table>_migrations`). @default "inbox" */
  table?: string | undefined;
  /** How long `transaction()`, `runBatch()` and reads wait (async backoff) while the database is busy. @default 5000 */
  busyRetryMs?: number | undefined;
}

/** The libSQL inbox storage: the full contract, with interactive transactions and the atomic-batch form. */
export interface LibsqlInbox extends InboxStorage<LibsqlExecutor, LibsqlStatement> {
  /** The validated table name. */
  readonly table: string;
  /**
   * Runs `fn` in a write transaction on the storage's client (waiting asynchronously while another connection
   * writes); commits when it resolves, rolls back when it rejects. Calls on one client are queued in process.
   */
  transaction<T>(fn: (tx: LibsqlTransaction) => Promise<T>): Promise<T>;
  /** The inbox insert for your own `client.batch([...], "write")`: put it first; a duplicate fails the batch. */
  statement(consumer: string, messageId: string): LibsqlStatement;
  /** Runs statements as one atomic write batch. */
  runBatch(statements: readonly LibsqlStatement[]): Promise<void>;
}

const QUEUES = new WeakMap<object, Promise<unknown>>();

/** Runs `op` after every earlier queued op of `client` settled (one write transaction per client at a time). */
function queued<T>(client: object, op: () => Promise<T>): Promise<T> {
  const previous = QUEUES.get(client) ?? Promise.resolve();
  const run = previous.then(op, op);
  QUEUES.set(client, run.catch(() => {}));
  return run;
}

/**
 * Creates the inbox storage on libSQL over your `@libsql/client` client (it never opens connections itself).
 *
 * Use it in your write transaction (`inbox.handle(tx, id, fn)`), let it open one (`inbox.process(id, fn)`,
 * `storage.transaction(fn)`), or join your atomic batch (`inbox.handleBatch(id, [effects…])`). Writes take SQLite's
 * write lock with an asynchronous wait while another connection writes (never `busy_timeout`, which blocks the
 * event loop).
 *
 * @param client a `@libsql/client` `Client`, typed structurally
 * @param options table (default "inbox"), busyRetryMs (default 5000)
 * @returns the inbox storage; `capabilities` is `{ transaction: true, batchStatement: true, keyOrder: true }`
 * @throws {OutboxError} CONFIG for a bad option or a value that is not a libSQL client; nothing is sent
 * @example
 * ```ts
 * import { createClient } from "@libsql/client";
 * import { createInbox } from "edge-outbox";
 * import { libsqlInbox } from "edge-outbox/libsql";
 *
 * const client = createClient({ url: "file:app.db" });
 * const storage = libsqlInbox(client);
 * await storage.migrate();
 * const inbox = createInbox({ storage, consumer: "billing" });
 * await inbox.handleBatch("0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70", [
 *   { sql: "UPDATE accounts SET balance = balance - 5 WHERE id = ?", args: [1] },
 * ]);
 * ```
 */
export function libsqlInbox(client: LibsqlClient, options: LibsqlInboxOptions = {}): LibsqlInbox {
  if (typeof options !== "object" || options === null) throw new OutboxError("CONFIG", "libsqlInbox options must be an object");
  for (const k of Object.keys(options)) {
    if (k !== "table" && k !== "busyRetryMs") throw new OutboxError("CONFIG", `libsqlInbox options: unknown option ${JSON.stringify(k)}`);
  }
  const table = options.table ?? "inbox";
  const sql = sqliteInboxSql(table); // validates the name (CONFIG)
  const busyRetryMs = options.busyRetryMs ?? 5_000;
  if (!Number.isSafeInteger(busyRetryMs) || busyRetryMs < 0 || busyRetryMs > 600_000) {
    throw new OutboxError("CONFIG", "libsqlInbox options: busyRetryMs must be an integer between 0 and 600000");
  }
  const c = client as unknown as Record<string, unknown>;
  if (typeof c?.["execute"] !== "function" || typeof c["batch"] !== "function" || typeof c["transaction"] !== "function") {
    throw new OutboxError("CONFIG", "[edge-outbox:libsql] libsqlInbox needs a @libsql/client Client (execute, batch, transaction)");
  }
  const capabilities: InboxCapabilities = { transaction: true, batchStatement: true, keyOrder: true };
  const fail = (what: string, e: unknown): OutboxError => sqliteInboxError("libsql", table, what, e);
  const busyRetry = busyRetrier({ budgetMs: busyRetryMs, isBusy: isBusyError, fail });

  /** Opens a write transaction holding SQLite's write lock (on local files without the libsql 0.5 busy bug). */
  async function openWrite(): Promise<{ tx: LibsqlTransaction; locked: boolean }> {
    if ((await modeOf(client)) === "batch") return { tx: await client.transaction("write"), locked: false };
    return { tx: await lockedTransaction(client, sql.lock), locked: true };
  }

  const storage: LibsqlInbox = {
    name: "libsql",
    scope: `libsql:${table}`,
    table,
    capabilities,

    migrate(): Promise<void> {
      // Every statement is idempotent (IF NOT EXISTS, INSERT OR IGNORE): one atomic write. The migrations table goes
      // first, alone, because the write lock is taken on it.
      return queued(client, () =>
        busyRetry("migrate", async () => {
          if ((await modeOf(client)) === "batch") {
            await client.batch(sql.ddl.map((s) => ({ sql: s, args: [] })), "write");
            return;
          }
          const tx = await client.transaction("deferred");
          try {
            await tx.executeMultiple(`${sql.ddl[0]};\n${sql.lock}`);
            await tx.executeMultiple(sql.ddl.slice(1).join(";\n"));
            await tx.executeMultiple("COMMIT");
          } finally {
            closeQuietly(tx);
          }
        })
      );
    },

    transaction<T>(fn: (tx: LibsqlTransaction) => Promise<T>): Promise<T> {
      return queued(client, async () => {
        const { tx, locked } = await busyRetry("transaction", openWrite);
        try {
          const result = await fn(tx);
          // On a local file, COMMIT through executeMultiple too, so a busy commit cannot leave a statement behind.
          await (locked ? tx.executeMultiple("COMMIT") : tx.commit()).catch((e: unknown) => {
            throw fail("commit", e);
          });
          return result;
        } catch (e) {
          await tx.rollback().catch(() => {});
          throw e;
        } finally {
          closeQuietly(tx);
        }
      });
    },

    async record(tx, consumer, messageId): Promise<boolean> {
      // The client itself would autocommit the record apart from the effects: refuse it (it has transaction()).
      if (typeof (tx as { transaction?: unknown } | null)?.transaction === "function" || typeof tx?.execute !== "function") {
        throw new OutboxError("VALIDATION", "[edge-outbox:libsql] inbox.handle needs a transaction (client.transaction(\"write\") or storage.transaction), not the client");
      }
      try {
        const rs = await tx.execute({ sql: sql.record, args: [consumer, messageId] }) as LibsqlResultSet;
        return rs.rows.length === 1;
      } catch (e) {
        throw fail("record", e);
      }
    },

    statement(consumer: string, messageId: string): LibsqlStatement {
      return { sql: sql.statement, args: [consumer, messageId] };
    },

    runBatch(statements: readonly LibsqlStatement[]): Promise<void> {
      return queued(client, () => busyRetry("batch", async () => void (await runWrite(client, [...statements], sql.lock))));
    },

    isRecorded(consumer, messageId): Promise<boolean> {
      return busyRetry("isRecorded", async () =>
        (await runRead(client, { sql: sql.isRecorded, args: [consumer, messageId] }, sql.readLock)).rows.length > 0
      );
    },

    async lockKey(tx, consumer, key): Promise<number | null> {
      try {
        await tx.execute({ sql: sql.keyEnsure, args: [consumer, key] });
        const rs = await tx.execute({ sql: sql.keyRead, args: [consumer, key] }) as LibsqlResultSet;
        const v = rs.rows[0]?.["last_seq"];
        return v === null || v === undefined ? null : Number(v);
      } catch (e) {
        throw fail("lockKey", e);
      }
    },

    async advanceKey(tx, consumer, key, seq): Promise<void> {
      try {
        await tx.execute({ sql: sql.keyAdvance, args: [consumer, key, seq] });
      } catch (e) {
        throw fail("advanceKey", e);
      }
    },

    async purge({ consumer, olderThanMs, limit }): Promise<number> {
      const [deleted] = await queued(client, () =>
        busyRetry("purge", () =>
          runWrite(client, [
            { sql: sql.purge, args: [consumer, olderThanMs, limit] },
            { sql: sql.purgeKeys, args: [consumer, olderThanMs, limit] },
          ], sql.lock)
        )
      );
      return deleted!.rows.length;
    },
  };
  return storage;
}
