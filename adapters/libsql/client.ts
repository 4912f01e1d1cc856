/**
 * The structural types of `@libsql/client` the adapter uses (a real `Client` and `Transaction` are assignable to
 * them; `test/libsql.test.ts` proves it), the classification of its errors, and how the adapter drives a client
 * safely (the write lock through `executeMultiple` on local files). Nothing here imports `@libsql/client`.
 *
 * @module
 */

import { isNetworkError } from "../../src/sql/errors.ts";

/** A bound value the adapter sends. */
export type LibsqlArg = string | number | null;

/** One SQL statement with positional arguments; the same shape as `@libsql/client`'s `InStatement` object form. */
export interface LibsqlStatement {
  /** SQL text. */
  sql: string;
  /** Positional arguments (`?1`, `?2`, …). */
  args: LibsqlArg[];
}

/** `@libsql/client` transaction modes. */
export type LibsqlTransactionMode = "write" | "read" | "deferred";

/** One result row, by column name. */
export interface LibsqlRow {
  /** Column values. */
  readonly [column: string]: unknown;
}

/** What `execute` and `batch` resolve to (the part of `ResultSet` the adapter reads). */
export interface LibsqlResultSet {
  /** The rows. */
  readonly rows: readonly LibsqlRow[];
}

/** Anything that can run a statement: a libSQL `Transaction` (the usual case) or a `Client`. */
export interface LibsqlExecutor {
  /** Runs one statement. */
  execute(stmt: LibsqlStatement): Promise<unknown>;
}

/** The part of `@libsql/client`'s `Transaction` the adapter uses. */
export interface LibsqlTransaction {
  /** Runs one statement in the transaction. */
  execute(stmt: LibsqlStatement): Promise<LibsqlResultSet>;
  /** Runs statements in the transaction, in order. */
  batch(stmts: LibsqlStatement[]): Promise<LibsqlResultSet[]>;
  /** Runs SQL text without arguments. */
  executeMultiple(sql: string): Promise<void>;
  /** Commits. */
  commit(): Promise<void>;
  /** Rolls back. */
  rollback(): Promise<void>;
  /** Rolls back if still open and frees the connection. */
  close(): void;
  /** Whether the transaction has ended (committed, rolled back, or rolled back by SQLite after an error). */
  readonly closed?: boolean;
}

/** The part of `@libsql/client`'s `Client` the adapter uses (a real `Client` is assignable to it). */
export interface LibsqlClient {
  /** "file" for local databases (`file:`, `:memory:`), "http"/"ws" for servers. */
  readonly protocol?: string;
  /** Runs one statement. */
  execute(stmt: LibsqlStatement): Promise<LibsqlResultSet>;
  /** Runs statements atomically in one round trip. */
  batch(stmts: LibsqlStatement[], mode?: LibsqlTransactionMode): Promise<LibsqlResultSet[]>;
  /** Opens an interactive transaction. */
  transaction(mode?: LibsqlTransactionMode): Promise<LibsqlTransaction>;
}

const BUSY_CODES = new Set(["SQLITE_BUSY", "SQLITE_LOCKED", "TRANSACTION_ACTIVE"]);
/**
 * Server-side failures a later call can get past. `TRANSACTION_TIMEOUT`: sqld / Turso rolled back an interactive
 * transaction that held the write lock too long (Turso: 5 s; sqld: 5 s once another writer waits), so the whole
 * transaction must be retried. `STREAM_EXPIRED`: the server dropped an interactive transaction's stream after 10 s
 * without a request (rolled back; retry the whole transaction).
 */
const TRANSIENT_CODES = new Set(["HRANA_WEBSOCKET_ERROR", "HRANA_CLOSED_ERROR", "SERVER_ERROR", "TRANSACTION_TIMEOUT", "STREAM_EXPIRED"]);

/**
 * Tells whether a driver error means "the database is busy right now": `SQLITE_BUSY` or `SQLITE_LOCKED` (any
 * extended code), or `TRANSACTION_ACTIVE` (a single-connection client whose connection a transaction holds).
 *
 * @param e a caught error
 * @returns true when retrying the same call shortly may succeed
 * @example
 * ```ts
 * import { isBusyError } from "edge-outbox/libsql";
 * try { await client.execute("insert …") } catch (e) { if (isBusyError(e)) console.warn("database busy") }
 * ```
 */
export function isBusyError(e: unknown): boolean {
  if (typeof e !== "object" || e === null) return false;
  const err = e as { code?: unknown; extendedCode?: unknown; rawCode?: unknown };
  if (typeof err.code === "string" && BUSY_CODES.has(err.code)) return true;
  if (typeof err.extendedCode === "string" && /^SQLITE_(BUSY|LOCKED)/.test(err.extendedCode)) return true;
  if (typeof err.rawCode === "number" && ((err.rawCode & 0xff) === 5 || (err.rawCode & 0xff) === 6)) return true;
  return false;
}

/**
 * Tells whether retrying the same call may succeed: a busy database ({@link isBusyError}), a transient server or
 * stream failure (`HRANA_WEBSOCKET_ERROR`, `HRANA_CLOSED_ERROR`, `SERVER_ERROR`), an interactive transaction the server
 * timed out (`TRANSACTION_TIMEOUT`: retry the whole transaction), or a network failure of `fetch`
 * (`fetch failed`, workerd's `Network connection lost`, ECONNRESET, ECONNREFUSED, …) on `http(s)://` and `libsql://`.
 *
 * @param e a caught error
 * @returns true when retrying may succeed
 * @example
 * ```ts
 * isRetryableError({ code: "HRANA_WEBSOCKET_ERROR" }); // true
 * isRetryableError(new TypeError("fetch failed")); // true
 * ```
 */
export function isRetryableError(e: unknown): boolean {
  if (isBusyError(e) || isNetworkError(e)) return true;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && TRANSIENT_CODES.has(code);
}

/**
 * Tells whether a driver error is the outbox's unique `id` refusing an insert (`UNIQUE constraint failed: <table>.id`,
 * from libSQL and D1 alike).
 *
 * @param e a caught error
 * @returns true for a colliding message id
 * @example
 * ```ts
 * isIdConflictError(new Error("SQLITE_CONSTRAINT: UNIQUE constraint failed: outbox.id")); // true
 * ```
 */
export function isIdConflictError(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; typeof x === "object" && x !== null && depth < 4; depth++) {
    const message = (x as { message?: unknown }).message;
    if (typeof message === "string" && /UNIQUE constraint failed: [A-Za-z0-9_]+\.id\b/.test(message)) return true;
    x = (x as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * Tells whether a driver error says a table does not exist (SQLite's `no such table: …`, also through D1).
 *
 * @param e a caught error
 * @returns true for a missing table
 * @example
 * ```ts
 * isMissingTableError(new Error("SQLITE_ERROR: no such table: outbox")); // true
 * ```
 */
export function isMissingTableError(e: unknown): boolean {
  for (let x: unknown = e, depth = 0; typeof x === "object" && x !== null && depth < 4; depth++) {
    const message = (x as { message?: unknown }).message;
    if (typeof message === "string" && /\bno such table\b/i.test(message)) return true;
    x = (x as { cause?: unknown }).cause;
  }
  return false;
}

/** Local file databases take the write lock through executeMultiple; :memory: and servers use plain batches. */
export type LibsqlMode = "batch" | "locked";

const MODES = new WeakMap<object, Promise<LibsqlMode>>();

/**
 * How the adapter writes through `client`, probed once per client: "locked" for a local database file, "batch" for
 * `:memory:` and servers.
 *
 * @param client the client
 * @returns the mode
 * @example
 * ```ts
 * if ((await modeOf(client)) === "batch") await client.batch([{ sql: "SELECT 1", args: [] }], "write");
 * ```
 */
export function modeOf(client: LibsqlClient): Promise<LibsqlMode> {
  let p = MODES.get(client);
  if (!p) {
    p = (async (): Promise<LibsqlMode> => {
      if (client.protocol !== "file") return "batch";
      const rs = await client.execute({ sql: "PRAGMA database_list", args: [] });
      const main = rs.rows.find((r) => r["name"] === "main");
      const file = main?.["file"];
      return typeof file === "string" && file !== "" ? "locked" : "batch";
    })();
    MODES.set(client, p);
    p.catch(() => MODES.delete(client)); // a failed probe (busy) is retried next time
  }
  return p;
}

/**
 * Closes a transaction, ignoring a connection that is gone already.
 *
 * @param tx the transaction
 * @example
 * ```ts
 * const open = await client.transaction("write");
 * try { await open.batch([{ sql: "SELECT 1", args: [] }]) } finally { closeQuietly(open) }
 * ```
 */
export function closeQuietly(tx: LibsqlTransaction): void {
  try {
    tx.close();
  } catch {
    // the connection is gone already; nothing to release
  }
}

/**
 * Opens a deferred transaction and takes the write lock with a no-op write run through `executeMultiple`, which
 * finalizes its statement even when it fails with SQLITE_BUSY (in `libsql` 0.5 a prepared statement that fails with
 * `SQLITE_BUSY` is never reset and poisons its pooled connection: tursodatabase/libsql-client-ts#352).
 *
 * @param client the client
 * @param lockSql a write that matches no row (`LOCK_SQL` of sql.ts)
 * @returns the open transaction, holding the write lock
 * @throws the driver error (SQLITE_BUSY) when another connection writes
 * @example
 * ```ts
 * import { libsqlSql } from "./sql.ts";
 * const q = libsqlSql("outbox");
 * const locked = await lockedTransaction(client, q.lock);
 * ```
 */
export async function lockedTransaction(client: LibsqlClient, lockSql: string): Promise<LibsqlTransaction> {
  const tx = await client.transaction("deferred");
  try {
    await tx.executeMultiple(lockSql);
  } catch (e) {
    closeQuietly(tx);
    throw e;
  }
  return tx;
}

/**
 * Runs write statements atomically: one `batch("write")`, or on a local file a locked transaction.
 *
 * @param client the client
 * @param stmts the statements
 * @param lockSql a write that matches no row
 * @returns one result set per statement
 * @example
 * ```ts
 * import { libsqlSql } from "./sql.ts";
 * const q = libsqlSql("outbox");
 * const [rs] = await runWrite(client, [{ sql: q.replayDead, args: [id] }], q.lock);
 * ```
 */
export async function runWrite(client: LibsqlClient, stmts: LibsqlStatement[], lockSql: string): Promise<LibsqlResultSet[]> {
  if ((await modeOf(client)) === "batch") return await client.batch(stmts, "write");
  return await new Promise<LibsqlResultSet[]>((resolve, reject) => {
    let q = WRITE_QUEUES.get(client);
    if (!q) WRITE_QUEUES.set(client, q = { waiting: [], running: false });
    q.waiting.push({ stmts, lockSql, resolve, reject });
    if (!q.running) {
      // The group starts on the next turn of the event loop, so writes issued in this one join it: a relay's claim
      // ahead of need and the settle of the rows it has just sent then share one commit, where starting at once ran
      // the claim alone and the settle after it, two fsync'd commits per batch (measured, `node --expose-gc --import
      // tsx bench/profile.ts libsql 100 40000`: 7,916 msg/s before, 10,283 after; batch 500: 17,986, 20,453).
      q.running = true;
      nextTurn(() => void runQueued(client, q!));
    }
  });
}

/** Runs `f` on the next turn of the event loop: `setImmediate` where there is one (Node, Bun), else a 0 ms timer. */
const nextTurn: (f: () => void) => void = (globalThis as { setImmediate?: (f: () => void) => void }).setImmediate ??
  ((f) => void setTimeout(f, 0));

/** A write waiting for its turn on a local file (see {@link runQueued}). */
interface QueuedWrite {
  readonly stmts: LibsqlStatement[];
  readonly lockSql: string;
  resolve(results: LibsqlResultSet[]): void;
  reject(error: unknown): void;
}

/** The writes each local-file client has queued in this process. */
const WRITE_QUEUES = new WeakMap<LibsqlClient, { waiting: QueuedWrite[]; running: boolean }>();

/** Most writes committed together. */
const MAX_GROUP = 32;

/**
 * Runs the queued writes of one client in turn, and those that queued up meanwhile together: one write transaction,
 * each write inside its own savepoint (a write that fails is rolled back alone and rejects alone), one commit.
 *
 * Why: SQLite has one writer per file, and `@libsql/client` runs each transaction on its own pooled connection, so
 * two writes of one process (a relay's claim ahead of need and its settles) met as SQLITE_BUSY, and the later one slept
 * through the busy backoff (2.5 ms, doubling) although the first ended in a millisecond; and every write paid its own
 * fsync'd commit (0.7–1 ms on the reference VM). Writes of other processes, and your own transactions
 * (`storage.begin()`), still meet these as SQLITE_BUSY and are retried.
 */
async function runQueued(client: LibsqlClient, q: { waiting: QueuedWrite[]; running: boolean }): Promise<void> {
  try {
    while (q.waiting.length > 0) await runGroup(client, q.waiting.splice(0, MAX_GROUP));
  } finally {
    q.running = false;
  }
}

async function runGroup(client: LibsqlClient, group: QueuedWrite[]): Promise<void> {
  let tx: LibsqlTransaction;
  try {
    tx = await lockedTransaction(client, group[0]!.lockSql);
  } catch (e) {
    for (const w of group) w.reject(e); // busy: each caller retries on its own
    return;
  }
  const done: { w: QueuedWrite; results?: LibsqlResultSet[]; error?: unknown }[] = [];
  try {
    if (group.length === 1) {
      done.push({ w: group[0]!, results: await tx.batch(group[0]!.stmts) });
    } else {
      for (const w of group) {
        await tx.executeMultiple("SAVEPOINT edge_outbox_write");
        try {
          const results = await tx.batch(w.stmts);
          await tx.executeMultiple("RELEASE edge_outbox_write");
          done.push({ w, results });
        } catch (error) {
          if (tx.closed !== false) throw error; // the transaction itself is gone (or unknown): the whole group fails, nothing kept
          await tx.executeMultiple("ROLLBACK TO edge_outbox_write; RELEASE edge_outbox_write");
          done.push({ w, error });
        }
      }
    }
    await tx.executeMultiple("COMMIT");
  } catch (e) {
    for (const w of group) w.reject(e);
    return;
  } finally {
    closeQuietly(tx);
  }
  for (const d of done) {
    if (d.results) d.w.resolve(d.results);
    else d.w.reject(d.error);
  }
}

/**
 * Runs one read; on a local file inside a read transaction whose shared lock is taken through executeMultiple.
 *
 * @param client the client
 * @param stmt the read
 * @param readLockSql a read that returns nothing (`READ_LOCK_SQL` of sql.ts)
 * @returns its result set
 * @example
 * ```ts
 * import { libsqlSql } from "./sql.ts";
 * const q = libsqlSql("outbox");
 * const rs = await runRead(client, { sql: q.hasDue, args: [] }, q.readLock);
 * ```
 */
export async function runRead(client: LibsqlClient, stmt: LibsqlStatement, readLockSql: string): Promise<LibsqlResultSet> {
  if ((await modeOf(client)) === "batch") return await client.execute(stmt);
  const tx = await client.transaction("deferred");
  try {
    await tx.executeMultiple(readLockSql);
    return await tx.execute(stmt);
  } finally {
    closeQuietly(tx); // rolls back the read transaction
  }
}
