/**
 * The libSQL storage behind {@link libsqlStorage} (re-exported by `mod.ts`): the {@link OutboxStorage} contract over
 * the shared SQLite SQL of `sql.ts`, driven through `@libsql/client` as `client.ts` describes.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import type { NewMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import { hasMethod, num } from "../../src/sql/coerce.ts";
import type { OutboxStorage } from "../../src/storage.ts";
import {
  closeQuietly,
  isBusyError,
  isRetryableError,
  type LibsqlClient,
  type LibsqlExecutor,
  type LibsqlResultSet,
  type LibsqlRow,
  type LibsqlStatement,
  type LibsqlTransaction,
  lockedTransaction,
  modeOf,
  runRead,
  runWrite,
} from "./client.ts";
import { MIGRATIONS_TABLE_DDL, recordVersionSql, renderSql, SCHEMA_VERSIONS } from "./schema.ts";
import { sqliteStorage } from "./sqlite.ts";

/** Options of {@link libsqlStorage}. */
export interface LibsqlStorageOptions {
  /** Outbox table name (also the prefix of `<table>_counters` and `<table>_migrations`). @default "outbox" */
  table?: string | undefined;
  /**
   * Keep delivered rows this long (ms) as status "delivered" instead of deleting them; remove them with
   * `purge({ status: "delivered", … })`. 0 deletes at once. @default 0
   */
  retainDeliveredMs?: number | undefined;
  /** How long relay-side calls retry a busy database (async backoff) before throwing. 0 disables. @default 2000 */
  busyRetryMs?: number | undefined;
  /**
   * How often `subscribe()` reads the table's sequence head to notice commits it cannot see in-process (another
   * connection, another process, your own `client.batch([... statement()])`), ms; 0 turns the watch off (in-process
   * wake-ups only). One read of one `sqlite_sequence` row per interval.
   * @default 50 on local databases (`file:`, `:memory:`); 0 on servers (`libsql://`, `http(s)://`, `ws(s)://`), where
   *   each read would be a billed request
   */
  watchIntervalMs?: number | undefined;
}

/** The libSQL storage: the full {@link OutboxStorage} contract plus atomic-batch statements and safe transactions. */
export interface LibsqlStorage extends OutboxStorage<LibsqlExecutor, LibsqlStatement> {
  /** `"libsql:<table>"`: storages on the same table share it (the relay's default lock key derives from it). */
  readonly scope: string;
  /** The validated table name. */
  readonly table: string;
  /** The delivered-row retention, ms (0: delivered rows are deleted). */
  readonly retainDeliveredMs: number;
  /**
   * Returns one `{ sql, args }` inserting `messages`, for `client.batch([...], "write")`. Sends nothing. An empty
   * list gives a statement that inserts nothing.
   */
  statement(messages: readonly NewMessage[]): LibsqlStatement;
  /**
   * Opens a write transaction on the storage's client, waiting asynchronously (up to `busyRetryMs`) while another
   * connection writes. On local files it takes the write lock without the `libsql` 0.5 busy-statement bug. Over HTTP
   * (Turso, sqld) prefer `client.batch([..., statement(...)], "write")`: an interactive transaction holds the server's
   * write lock across round trips and is rolled back after 5 s on Turso (`TRANSACTION_TIMEOUT`, a retryable STORAGE
   * error on the next call).
   * @throws {OutboxError} STORAGE (retryable) when the database stays busy
   */
  begin(): Promise<LibsqlTransaction>;
  /**
   * Wakes `onWake` soon after messages commit, until `signal` aborts: at once (in-process) when a {@link begin}
   * handle that an enqueue wrote to commits, a standalone `enqueue(client, …)` returns, or a dead letter is replayed
   * through any storage on the same client and table; and, with `watchIntervalMs` > 0, within that interval for
   * commits it cannot see (other connections or processes, your own `client.batch([... statement()])` or
   * `client.transaction()`). Resolves once listening. Spurious wake-ups are harmless.
   * @throws {OutboxError} VALIDATION when `onWake` is not a function
   */
  subscribe(onWake: () => void, signal: AbortSignal): Promise<void>;
}

const optionsSchema = v.strictObject({
  table: v.optional(v.string(), "outbox"),
  retainDeliveredMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(31_536_000_000)), 0),
  busyRetryMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(600_000)), 2_000),
  watchIntervalMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(3_600_000))),
});

/** Transactions an enqueue wrote to: their commit through a `begin()` handle wakes subscribed relays. */
const ENQUEUED = new WeakSet<object>();

/**
 * Creates the libSQL storage over your `@libsql/client` client. It never opens connections itself. Call
 * `migrate()` once at start (idempotent), or install `libsqlSchema()` with your migration tool.
 *
 * @param client a `@libsql/client` `Client` (`createClient({ url })`), typed structurally
 * @param options table name, delivered-row retention, busy retry budget
 * @returns the storage
 * @throws {OutboxError} CONFIG for a bad option (e.g. a table name that is not a plain identifier) or a value that
 *   is not a libSQL client; nothing is sent to the database
 * @example
 * ```ts
 * import { createClient } from "@libsql/client";
 * import { libsqlStorage } from "edge-outbox/libsql";
 *
 * const client = createClient({ url: "file:app.db" });
 * const storage = libsqlStorage(client, { table: "outbox", retainDeliveredMs: 0 });
 * await storage.migrate();
 * const tx = await storage.begin();
 * await tx.execute({ sql: "INSERT INTO orders (id) VALUES (?)", args: ["o1"] });
 * // await outbox.enqueue(tx, orderCreated, { id: "o1" });
 * await tx.commit();
 * ```
 */
export function libsqlStorage(client: LibsqlClient, options: LibsqlStorageOptions = {}): LibsqlStorage {
  const opts = parseOptions("libsqlStorage options", optionsSchema, options ?? {});
  const table = opts.table;
  if (!hasMethod(client, "execute") || !hasMethod(client, "batch") || !hasMethod(client, "transaction")) {
    throw new OutboxError("CONFIG", "[edge-outbox:libsql] libsqlStorage needs a @libsql/client Client (execute, batch, transaction)");
  }
  const read = async (stmt: LibsqlStatement): Promise<readonly LibsqlRow[]> => (await runRead(client, stmt, sql.readLock)).rows;
  const core = sqliteStorage({
    write: async (stmts) => (await runWrite(client, stmts, sql.lock)).map((rs) => rs.rows),
    read,
  }, {
    adapter: "libsql",
    table, // validated by the statements (CONFIG) before anything is sent
    retainDeliveredMs: opts.retainDeliveredMs,
    busyRetryMs: opts.busyRetryMs,
    isBusy: isBusyError,
    isRetryable: isRetryableError,
    wakeOwner: client,
    watchIntervalMs: opts.watchIntervalMs ?? (client.protocol === "file" ? 50 : 0),
  });
  const { sql, errors, relaySide, wake } = core;
  const { invalid } = errors;
  const migrationsDdl = renderSql(MIGRATIONS_TABLE_DDL, table);

  /** A begin() handle: COMMIT wakes subscribed relays when an enqueue wrote to it. */
  function wakingTransaction(tx: LibsqlTransaction, commit: () => Promise<void>): LibsqlTransaction {
    const handle: LibsqlTransaction = {
      execute: (s) => tx.execute(s),
      batch: (s) => tx.batch(s),
      executeMultiple: (s) => tx.executeMultiple(s),
      async commit(): Promise<void> {
        await commit();
        if (ENQUEUED.has(handle)) wake.notify();
      },
      rollback: () => tx.rollback(),
      close: () => tx.close(),
    };
    return handle;
  }

  const storage: LibsqlStorage = {
    ...core.common,

    migrate(): Promise<void> {
      return relaySide("migrate", async () => {
        const locked = (await modeOf(client)) === "locked";
        const tx = locked ? await client.transaction("deferred") : await client.transaction("write");
        try {
          if (locked) await tx.executeMultiple(`${migrationsDdl};\n${sql.migrateLock}`);
          else await tx.execute({ sql: migrationsDdl, args: [] });
          const applied = new Set((await tx.execute({ sql: sql.appliedVersions, args: [] })).rows.map((r) => num(r["version"])));
          for (const version of SCHEMA_VERSIONS) {
            if (applied.has(version.version)) continue;
            const stmts = [...version.statements, recordVersionSql(version.version)].map((s) => renderSql(s, table));
            if (locked) await tx.executeMultiple(stmts.join(";\n"));
            else await tx.batch(stmts.map((s) => ({ sql: s, args: [] })));
          }
          if (locked) await tx.executeMultiple("COMMIT");
          else await tx.commit();
        } finally {
          closeQuietly(tx);
        }
      });
    },

    async enqueue(tx: LibsqlExecutor, messages: readonly NewMessage[]): Promise<void> {
      if (!Array.isArray(messages)) throw invalid("messages must be an array");
      if (messages.length === 0) return;
      if (!hasMethod(tx, "execute")) throw invalid("enqueue needs a libSQL transaction (or client) with execute()");
      const stmt = core.enqueueStatement(messages);
      const standalone = hasMethod(tx, "transaction") && hasMethod(tx, "batch");
      try {
        if (standalone) {
          // A client, not a transaction: a standalone atomic insert (no retry: the caller decides).
          await runWrite(tx as unknown as LibsqlClient, [stmt], sql.lock);
          wake.notify();
        } else {
          await tx.execute(stmt);
          ENQUEUED.add(tx);
        }
      } catch (e) {
        // On a colliding id SQLite undoes only the failed statement: nothing was written, the transaction stays usable.
        throw await core.enqueueError(
          messages.map((m) => m.id),
          e,
          standalone
            ? async (s) => (await runRead(tx as unknown as LibsqlClient, s, sql.readLock)).rows
            : async (s) => ((await tx.execute(s)) as LibsqlResultSet).rows,
        );
      }
    },

    statement: (messages) => core.enqueueStatement(messages),

    begin(): Promise<LibsqlTransaction> {
      return relaySide("begin", async () => {
        if ((await modeOf(client)) === "batch") {
          const tx = await client.transaction("write");
          return wakingTransaction(tx, () => tx.commit());
        }
        const tx = await lockedTransaction(client, sql.lock);
        // COMMIT through executeMultiple, so a busy commit cannot leave a statement behind either.
        return wakingTransaction(tx, async () => {
          try {
            await tx.executeMultiple("COMMIT");
          } finally {
            closeQuietly(tx);
          }
        });
      });
    },
  };
  return storage;
}
