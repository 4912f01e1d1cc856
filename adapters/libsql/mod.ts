/**
 * `edge-outbox/libsql`: the outbox storage on libSQL / SQLite through `@libsql/client` (`file:`, `:memory:`, and
 * `libsql://` / `http(s)://` servers such as Turso).
 *
 * The client is typed structurally ({@link LibsqlClient}), so importing this module pulls in no driver: pass the
 * client you created. Messages join your write transaction (`outbox.enqueue(tx, …)`) or your atomic batch
 * (`client.batch([insertOrder, outbox.statement(…)], "write")`, one round trip: the right choice at the edge).
 *
 * Busy databases: SQLite allows one writer at a time and a second connection's write fails at once with
 * `SQLITE_BUSY`. Relay-side calls (`claim`, `settle`, `migrate`, …) retry with an asynchronous backoff for up to
 * `busyRetryMs`; nothing sets `busy_timeout`, which would block the event loop. On local files the adapter takes
 * SQLite's write lock through `executeMultiple` before preparing any statement: in `libsql` 0.5 a prepared statement
 * that fails with `SQLITE_BUSY` is never reset, and poisons its pooled connection until garbage collection
 * (tursodatabase/libsql-client-ts#352). Open your own write transactions with {@link LibsqlStorage.begin} for the
 * same protection.
 *
 * @example
 * ```ts
 * import { createClient } from "@libsql/client";
 * import { createOutbox, defineTopic } from "edge-outbox";
 * import { libsqlStorage } from "edge-outbox/libsql";
 * import * as v from "valibot";
 *
 * const client = createClient({ url: "file:app.db" });
 * const storage = libsqlStorage(client, { table: "outbox" });
 * await storage.migrate();
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 * await client.batch([
 *   { sql: "INSERT INTO orders (id) VALUES (?)", args: ["o1"] },
 *   outbox.statement(orderCreated, { id: "o1" }),
 * ], "write");
 * ```
 *
 * @module
 */
import * as v from "valibot";
import { isOutboxError, OutboxError, toOutboxError } from "../../src/errors.ts";
import type { NewMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type {
  Claim,
  ClaimedMessage,
  DeadLetter,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StorageCapabilities,
} from "../../src/storage.ts";
import { type LibsqlSql, libsqlSql } from "./sql.ts";
import { MIGRATIONS_TABLE_DDL, recordVersionSql, renderSql, SCHEMA_VERSIONS } from "./schema.ts";

export {
  LATEST_SCHEMA_VERSION,
  libsqlSchema,
  MIGRATIONS_TABLE_DDL,
  renderSql,
  SCHEMA_V1,
  SCHEMA_VERSIONS,
  type SchemaVersion,
  TABLE_PLACEHOLDER,
} from "./schema.ts";

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

/** Options of {@link libsqlStorage}. */
export interface LibsqlStorageOptions {
  /** Outbox table name (also the prefix of `<table>_counters` and `<table>_migrations`). @default "outbox" */
  table?: string;
  /**
   * Keep delivered rows this long (ms) as status "delivered" instead of deleting them; remove them with
   * `purge({ status: "delivered", … })`. 0 deletes at once. @default 0
   */
  retainDeliveredMs?: number;
  /** How long relay-side calls retry a busy database (async backoff) before throwing. 0 disables. @default 2000 */
  busyRetryMs?: number;
}

/** The libSQL storage: the full {@link OutboxStorage} contract plus atomic-batch statements and safe transactions. */
export interface LibsqlStorage extends OutboxStorage<LibsqlExecutor, LibsqlStatement> {
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
   * connection writes. On local files it takes the write lock without the `libsql` 0.5 busy-statement bug.
   * @throws {OutboxError} STORAGE (retryable) when the database stays busy
   */
  begin(): Promise<LibsqlTransaction>;
}

const optionsSchema = v.strictObject({
  table: v.optional(v.string(), "outbox"),
  retainDeliveredMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(31_536_000_000)), 0),
  busyRetryMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(600_000)), 2_000),
});

type Mode = "batch" | "locked";

const BUSY_CODES = new Set(["SQLITE_BUSY", "SQLITE_LOCKED", "TRANSACTION_ACTIVE"]);
const TRANSIENT_CODES = new Set(["HRANA_WEBSOCKET_ERROR", "HRANA_CLOSED_ERROR", "SERVER_ERROR"]);
const MODES = new WeakMap<object, Promise<Mode>>();
const PREFIX = "[edge-outbox:libsql]";

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

function isRetryable(e: unknown): boolean {
  if (isBusyError(e)) return true;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && TRANSIENT_CODES.has(code);
}

function fail(what: string, e: unknown): OutboxError {
  if (isOutboxError(e)) return e;
  return toOutboxError("STORAGE", `${PREFIX} ${what} failed`, e, isRetryable(e));
}

function invalid(message: string): OutboxError {
  return new OutboxError("VALIDATION", `${PREFIX} ${message}`);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function num(x: unknown): number {
  if (typeof x === "number") return x;
  if (typeof x === "bigint" || typeof x === "string") return Number(x);
  if (x === null || x === undefined) return 0;
  throw new TypeError(`expected a number, got ${typeof x}`);
}
function numOrNull(x: unknown): number | null {
  return x === null || x === undefined ? null : num(x);
}
function text(x: unknown): string {
  if (typeof x === "string") return x;
  if (x instanceof ArrayBuffer) return new TextDecoder().decode(x);
  return String(x);
}
function textOrNull(x: unknown): string | null {
  return x === null || x === undefined ? null : text(x);
}
function isPositiveInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 1;
}
function isNonNegativeInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/** Local file databases take the write lock through executeMultiple; :memory: and servers use plain batches. */
function modeOf(client: LibsqlClient): Promise<Mode> {
  let p = MODES.get(client);
  if (!p) {
    p = (async (): Promise<Mode> => {
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

function closeQuietly(tx: LibsqlTransaction): void {
  try {
    tx.close();
  } catch {
    // the connection is gone already; nothing to release
  }
}

/**
 * Opens a deferred transaction and takes the write lock with a no-op write run through `executeMultiple`, which
 * finalizes its statement even when it fails with SQLITE_BUSY.
 */
async function lockedTransaction(client: LibsqlClient, lockSql: string): Promise<LibsqlTransaction> {
  const tx = await client.transaction("deferred");
  try {
    await tx.executeMultiple(lockSql);
  } catch (e) {
    closeQuietly(tx);
    throw e;
  }
  return tx;
}

/** Runs write statements atomically: one `batch("write")`, or on a local file a locked transaction. */
async function runWrite(
  client: LibsqlClient,
  stmts: LibsqlStatement[],
  lockSql: string,
): Promise<LibsqlResultSet[]> {
  if ((await modeOf(client)) === "batch") return await client.batch(stmts, "write");
  const tx = await lockedTransaction(client, lockSql);
  try {
    const results = await tx.batch(stmts);
    await tx.executeMultiple("COMMIT");
    return results;
  } finally {
    closeQuietly(tx);
  }
}

/** Runs one read; on a local file inside a read transaction whose shared lock is taken through executeMultiple. */
async function runRead(client: LibsqlClient, stmt: LibsqlStatement, readLockSql: string): Promise<LibsqlResultSet> {
  if ((await modeOf(client)) === "batch") return await client.execute(stmt);
  const tx = await client.transaction("deferred");
  try {
    await tx.executeMultiple(readLockSql);
    return await tx.execute(stmt);
  } finally {
    closeQuietly(tx); // rolls back the read transaction
  }
}

function hasFunction(x: unknown, name: string): boolean {
  return typeof x === "object" && x !== null && typeof (x as Record<string, unknown>)[name] === "function";
}

/**
 * Creates the libSQL storage over your `@libsql/client` client. It never opens connections itself. Call
 * `migrate()` once at start (idempotent), or install {@link libsqlSchema} with your migration tool.
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
  const sql: LibsqlSql = libsqlSql(opts.table); // validates the table name (CONFIG) before anything is sent
  if (!hasFunction(client, "execute") || !hasFunction(client, "batch") || !hasFunction(client, "transaction")) {
    throw new OutboxError("CONFIG", `${PREFIX} libsqlStorage needs a @libsql/client Client (execute, batch, transaction)`);
  }
  const table = opts.table;
  const retain = opts.retainDeliveredMs;
  const busyRetryMs = opts.busyRetryMs;
  const readLock = sql.readLock;
  const migrationsDdl = renderSql(MIGRATIONS_TABLE_DDL, table);
  const capabilities: StorageCapabilities = {
    batchStatement: true,
    skipLocked: false,
    serialWrites: true,
    keyPrefixClaims: true,
  };

  /** Retries busy errors with an asynchronous, jittered, doubling backoff, then throws a typed error. */
  async function relaySide<T>(what: string, op: () => Promise<T>): Promise<T> {
    const start = Date.now();
    let delay = 5;
    for (;;) {
      try {
        return await op();
      } catch (e) {
        if (!isBusyError(e) || isOutboxError(e)) throw fail(what, e);
        const wait = Math.round(delay * (0.5 + Math.random() * 0.5));
        if (Date.now() - start + wait > busyRetryMs) throw fail(what, e);
        await sleep(wait);
        delay = Math.min(delay * 2, 250);
      }
    }
  }

  function statement(messages: readonly NewMessage[]): LibsqlStatement {
    if (!Array.isArray(messages)) throw invalid("messages must be an array");
    const rows = messages.map((m) => [m.id, m.topic, m.key ?? null, m.payload, m.headers ?? "{}", m.delayMs ?? 0]);
    return { sql: sql.enqueue, args: [JSON.stringify(rows)] };
  }

  /** One claimed row: the JSON array of {@link CLAIM_SQL} (`[seq, id, topic, key, payload, headers, created_at, attempts, last_error, lease_until]`). */
  function toClaimed(m: readonly unknown[]): ClaimedMessage {
    const body = text(m[4]);
    const headers = text(m[5]);
    return {
      id: text(m[1]),
      topic: text(m[2]),
      key: textOrNull(m[3]),
      payload: JSON.parse(body),
      body,
      headers: headers === "{}" ? {} : JSON.parse(headers),
      createdAt: num(m[6]),
      attempts: num(m[7]),
      lastError: textOrNull(m[8]),
      seq: num(m[0]),
    };
  }

  const storage: LibsqlStorage = {
    name: "libsql",
    capabilities,
    table,
    retainDeliveredMs: retain,

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
      if (!hasFunction(tx, "execute")) throw invalid("enqueue needs a libSQL transaction (or client) with execute()");
      const stmt = statement(messages);
      try {
        if (hasFunction(tx, "transaction") && hasFunction(tx, "batch")) {
          // A client, not a transaction: a standalone atomic insert (no retry: the caller decides).
          await runWrite(tx as unknown as LibsqlClient, [stmt], sql.lock);
        } else {
          await tx.execute(stmt);
        }
      } catch (e) {
        throw fail("enqueue", e);
      }
    },

    statement,

    begin(): Promise<LibsqlTransaction> {
      return relaySide("begin", async () => {
        if ((await modeOf(client)) === "batch") return await client.transaction("write");
        const tx = await lockedTransaction(client, sql.lock);
        // COMMIT through executeMultiple, so a busy commit cannot leave a statement behind either.
        const wrapped: LibsqlTransaction = {
          execute: (s) => tx.execute(s),
          batch: (s) => tx.batch(s),
          executeMultiple: (s) => tx.executeMultiple(s),
          async commit(): Promise<void> {
            try {
              await tx.executeMultiple("COMMIT");
            } finally {
              closeQuietly(tx);
            }
          },
          rollback: () => tx.rollback(),
          close: () => tx.close(),
        };
        return wrapped;
      });
    },

    claim(options: { limit: number; leaseMs: number }): Promise<Claim> {
      const { limit, leaseMs } = options ?? ({} as { limit: number; leaseMs: number });
      if (!isPositiveInt(limit)) return Promise.reject(invalid(`claim limit must be a positive integer, got ${limit}`));
      if (!isPositiveInt(leaseMs)) return Promise.reject(invalid(`claim leaseMs must be a positive integer, got ${leaseMs}`));
      return relaySide("claim", async () => {
        const token = crypto.randomUUID();
        const [claimed, clock] = await runWrite(client, [
          { sql: sql.claim, args: [token, leaseMs, limit] },
          { sql: sql.now, args: [] },
        ], sql.lock);
        const rows = claimed!.rows.map((r) => JSON.parse(text(r["m"])) as unknown[]);
        const first = rows[0];
        // Every claimed row has the same lease_until (the claim's now + leaseMs); without rows, the clock statement.
        const leaseUntil = first ? num(first[9]) : num(clock!.rows[0]!["now"]) + leaseMs;
        const messages = rows.map(toClaimed).sort((a, b) => a.seq - b.seq);
        return { token, leaseUntil, now: leaseUntil - leaseMs, messages };
      });
    },

    settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      if (typeof token !== "string" || token === "") return Promise.reject(invalid("settle needs the claim's token"));
      if (!Array.isArray(settlements)) return Promise.reject(invalid("settlements must be an array"));
      const seen = new Set<string>();
      const delivered: string[] = [];
      const retried: [string, number, string][] = [];
      const dead: [string, string][] = [];
      const released: string[] = [];
      for (const s of settlements) {
        if (typeof s?.id !== "string") return Promise.reject(invalid("every settlement needs a string id"));
        if (seen.has(s.id)) continue; // a repeated id is reported lost: only its first settlement can apply
        seen.add(s.id);
        switch (s.outcome) {
          case "delivered":
            delivered.push(s.id);
            break;
          case "retry":
            if (!isNonNegativeInt(s.delayMs)) {
              return Promise.reject(invalid(`retry delayMs must be a non-negative integer, got ${s.delayMs}`));
            }
            retried.push([s.id, s.delayMs, String(s.error ?? "")]);
            break;
          case "dead":
            dead.push([s.id, String(s.error ?? "")]);
            break;
          case "released":
            released.push(s.id);
            break;
          default:
            return Promise.reject(invalid(`unknown settlement outcome ${JSON.stringify((s as { outcome?: unknown }).outcome)}`));
        }
      }
      if (seen.size === 0) return Promise.resolve({ applied: 0, lost: [] });
      // First the ids that will not apply (read in the same write transaction), then counters, then the outcomes.
      const stmts: LibsqlStatement[] = [{ sql: sql.settleLost, args: [token, JSON.stringify([...seen])] }];
      if (delivered.length + retried.length + dead.length > 0) {
        stmts.push({
          sql: sql.countSettle,
          args: [token, JSON.stringify(delivered), JSON.stringify(retried.map((r) => r[0])), JSON.stringify(dead.map((d) => d[0]))],
        });
      }
      if (delivered.length) stmts.push({ sql: retain > 0 ? sql.deliveredMark : sql.deliveredDelete, args: [token, JSON.stringify(delivered)] });
      if (retried.length) stmts.push({ sql: sql.retry, args: [token, JSON.stringify(retried)] });
      if (dead.length) stmts.push({ sql: sql.dead, args: [token, JSON.stringify(dead)] });
      if (released.length) stmts.push({ sql: sql.release, args: [token, JSON.stringify(released)] });
      return relaySide("settle", async () => {
        const [lostRs] = await runWrite(client, stmts, sql.lock);
        const notApplied = new Set(JSON.parse(text(lostRs!.rows[0]!["lost"])) as string[]);
        if (notApplied.size === 0 && seen.size === settlements.length) return { applied: seen.size, lost: [] };
        // Each id applies at most once (its first settlement), and only when its row still carried the token.
        const lost: string[] = [];
        const counted = new Set<string>();
        for (const s of settlements) {
          if (!notApplied.has(s.id) && !counted.has(s.id)) counted.add(s.id);
          else lost.push(s.id);
        }
        return { applied: counted.size, lost };
      });
    },

    hasDue(): Promise<boolean> {
      return relaySide("hasDue", async () => {
        const rs = await runRead(client, { sql: sql.hasDue, args: [] }, readLock);
        return rs.rows.length > 0;
      });
    },

    stats(options?: { windowMs?: number }): Promise<OutboxStats> {
      const windowMs = options?.windowMs ?? 300_000;
      if (!isNonNegativeInt(windowMs)) return Promise.reject(invalid(`stats windowMs must be a non-negative integer, got ${windowMs}`));
      return relaySide("stats", async () => {
        const rs = await runRead(client, { sql: sql.stats, args: [windowMs] }, readLock);
        const r = rs.rows[0]!;
        const now = num(r["now"]);
        const oldest = numOrNull(r["oldest"]);
        const deliveredW = num(r["delivered"]);
        return {
          pending: num(r["pending"]),
          due: num(r["due"]),
          leased: num(r["leased"]),
          dead: num(r["dead"]),
          oldestPendingAgeMs: oldest === null ? null : Math.max(0, now - oldest),
          window: {
            windowMs,
            delivered: deliveredW,
            retried: num(r["retried"]),
            dead: num(r["dead_window"]),
            avgLatencyMs: deliveredW > 0 ? num(r["latency_sum"]) / deliveredW : null,
            maxLatencyMs: deliveredW > 0 ? numOrNull(r["latency_max"]) : null,
          },
          now,
        };
      });
    },

    listDead(options: { limit: number; cursor?: string | null }): Promise<DeadLetterPage> {
      const limit = options?.limit;
      const cursor = options?.cursor ?? null;
      if (!isPositiveInt(limit)) return Promise.reject(invalid(`listDead limit must be a positive integer, got ${limit}`));
      let after = 0;
      if (cursor !== null) {
        if (typeof cursor !== "string" || !/^\d{1,15}$/.test(cursor)) {
          return Promise.reject(invalid(`invalid dead-letter cursor ${JSON.stringify(cursor)}`));
        }
        after = Number(cursor);
      }
      return relaySide("listDead", async () => {
        const rs = await runRead(client, { sql: sql.listDead, args: [after, limit + 1] }, readLock);
        const rows = rs.rows.slice(0, limit);
        const items: DeadLetter[] = rows.map((r) => ({
          id: text(r["id"]),
          topic: text(r["topic"]),
          key: textOrNull(r["key"]),
          payload: JSON.parse(text(r["payload"])),
          headers: JSON.parse(text(r["headers"])),
          createdAt: num(r["created_at"]),
          deadAt: numOrNull(r["done_at"]) ?? num(r["created_at"]),
          attempts: num(r["attempts"]),
          lastError: textOrNull(r["last_error"]),
        }));
        const last = rows[rows.length - 1];
        return { items, cursor: rs.rows.length > limit && last ? String(num(last["seq"])) : null };
      });
    },

    replayDead(id: string): Promise<boolean> {
      if (typeof id !== "string") return Promise.reject(invalid("replayDead needs a message id"));
      return relaySide("replayDead", async () => {
        const [rs] = await runWrite(client, [{ sql: sql.replayDead, args: [id] }], sql.lock);
        return rs!.rows.length > 0;
      });
    },

    purge(options: { status: "dead" | "delivered"; olderThan: number; limit: number }): Promise<number> {
      const { status, olderThan, limit } = options ?? ({} as { status: "dead"; olderThan: number; limit: number });
      if (status !== "dead" && status !== "delivered") {
        return Promise.reject(invalid(`purge status must be "dead" or "delivered", got ${JSON.stringify(status)}`));
      }
      if (typeof olderThan !== "number" || !Number.isFinite(olderThan)) {
        return Promise.reject(invalid(`purge olderThan must be an epoch-ms number, got ${olderThan}`));
      }
      if (!isPositiveInt(limit)) return Promise.reject(invalid(`purge limit must be a positive integer, got ${limit}`));
      return relaySide("purge", async () => {
        const [rs] = await runWrite(client, [
          { sql: sql.purge, args: [status, Math.ceil(olderThan), limit] },
          { sql: sql.purgeCounters, args: [] },
        ], sql.lock);
        return rs!.rows.length;
      });
    },
  };
  return storage;
}
export { INBOX_SCHEMA_V1, INBOX_SCHEMA_VERSIONS, type LibsqlInbox, libsqlInbox, type LibsqlInboxOptions, libsqlInboxSchema } from "./inbox.ts";
