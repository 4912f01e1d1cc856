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
import { claimArgs, listDeadArgs, purgeArgs, settleToken, statsWindow } from "../../src/sql/args.ts";
import { hasMethod, num, text } from "../../src/sql/coerce.ts";
import { conflictError, sqlErrors } from "../../src/sql/errors.ts";
import { busyRetrier } from "../../src/sql/retry.ts";
import { claimedMessage, deadLetter, outboxStats } from "../../src/sql/rows.ts";
import { partitionSettlements, settleResult } from "../../src/sql/settle.ts";
import { wakeChannel, watchChanges } from "../../src/sql/wake.ts";
import type {
  Claim,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StorageCapabilities,
} from "../../src/storage.ts";
import {
  closeQuietly,
  isBusyError,
  isIdConflictError,
  isMissingTableError,
  isRetryableError,
  type LibsqlClient,
  type LibsqlExecutor,
  type LibsqlStatement,
  type LibsqlTransaction,
  lockedTransaction,
  modeOf,
  runRead,
  runWrite,
} from "./client.ts";
import { MIGRATIONS_TABLE_DDL, recordVersionSql, renderSql, SCHEMA_VERSIONS } from "./schema.ts";
import { type LibsqlSql, libsqlSql } from "./sql.ts";

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
   * connection writes. On local files it takes the write lock without the `libsql` 0.5 busy-statement bug.
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
  const sql: LibsqlSql = libsqlSql(opts.table); // validates the table name (CONFIG) before anything is sent
  const errors = sqlErrors({
    adapter: "libsql",
    table: opts.table,
    isRetryable: isRetryableError,
    isMissingTable: isMissingTableError,
  });
  const { invalid } = errors;
  if (!hasMethod(client, "execute") || !hasMethod(client, "batch") || !hasMethod(client, "transaction")) {
    throw new OutboxError("CONFIG", `${errors.prefix} libsqlStorage needs a @libsql/client Client (execute, batch, transaction)`);
  }
  const table = opts.table;
  const retain = opts.retainDeliveredMs;
  const readLock = sql.readLock;
  const migrationsDdl = renderSql(MIGRATIONS_TABLE_DDL, table);
  const capabilities: StorageCapabilities = {
    batchStatement: true,
    skipLocked: false,
    serialWrites: true,
    keyPrefixClaims: true,
  };
  const relaySide = busyRetrier({ budgetMs: opts.busyRetryMs, isBusy: isBusyError, fail: errors.storage });
  const scope = `libsql:${table}`;
  const wake = wakeChannel(client, scope);
  const watchIntervalMs = opts.watchIntervalMs ?? (client.protocol === "file" ? 50 : 0);

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

  /** The CONFLICT error of an enqueue, naming the ids that exist (looked up with `lookup`; unnamed if that fails). */
  async function conflict(
    messages: readonly NewMessage[],
    lookup: (stmt: LibsqlStatement) => Promise<{ rows: readonly { readonly [c: string]: unknown }[] }>,
    cause: unknown,
  ): Promise<OutboxError> {
    let ids: string[] = [];
    try {
      const rs = await lookup({ sql: sql.existingIds, args: [JSON.stringify(messages.map((m) => m.id))] });
      ids = rs.rows.map((r) => text(r["id"]));
    } catch {
      // unnamed: the error still says what happened
    }
    return conflictError("libsql", table, ids, cause);
  }

  function statement(messages: readonly NewMessage[]): LibsqlStatement {
    if (!Array.isArray(messages)) throw invalid("messages must be an array");
    const rows = messages.map((m) => [m.id, m.topic, m.key ?? null, m.payload, m.headers ?? "{}", m.delayMs ?? 0]);
    return { sql: sql.enqueue, args: [JSON.stringify(rows)] };
  }

  const storage: LibsqlStorage = {
    name: "libsql",
    capabilities,
    scope,
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
      if (!hasMethod(tx, "execute")) throw invalid("enqueue needs a libSQL transaction (or client) with execute()");
      const stmt = statement(messages);
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
        if (!isIdConflictError(e)) throw errors.storage("enqueue", e);
        // SQLite undoes only the failed statement: nothing was written and the caller's transaction stays usable.
        throw await conflict(
          messages,
          standalone
            ? (s) => runRead(tx as unknown as LibsqlClient, s, readLock)
            : (s) => tx.execute(s) as Promise<{ rows: readonly { readonly [c: string]: unknown }[] }>,
          e,
        );
      }
    },

    statement,

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

    async subscribe(onWake: () => void, signal: AbortSignal): Promise<void> {
      if (typeof onWake !== "function") throw invalid("subscribe needs an onWake function");
      if (signal?.aborted) return;
      wake.listen(onWake, signal);
      if (watchIntervalMs > 0) {
        const head = async (): Promise<unknown> => {
          const rs = await runRead(client, { sql: sql.headSeq, args: [] }, readLock);
          return rs.rows[0]?.["head"] ?? null;
        };
        await watchChanges(head, watchIntervalMs, onWake, signal);
      }
    },

    async claim(options: { limit: number; leaseMs: number }): Promise<Claim> {
      const { limit, leaseMs } = claimArgs(options, invalid);
      return await relaySide("claim", async () => {
        const token = crypto.randomUUID();
        const [claimed, clock] = await runWrite(client, [
          { sql: sql.claim, args: [token, leaseMs, limit] },
          { sql: sql.now, args: [] },
        ], sql.lock);
        // Each row is one JSON array: [seq, id, topic, key, payload, headers, created_at, attempts, last_error, lease_until].
        const rows = claimed!.rows.map((r) => JSON.parse(text(r["m"])) as unknown[]);
        const first = rows[0];
        // Every claimed row has the same lease_until (the claim's now + leaseMs); without rows, the clock statement.
        const leaseUntil = first ? num(first[9]) : num(clock!.rows[0]!["now"]) + leaseMs;
        const messages = rows.map((m) =>
          claimedMessage({
            seq: m[0],
            id: m[1],
            topic: m[2],
            key: m[3],
            payload: m[4],
            headers: m[5],
            createdAt: m[6],
            attempts: m[7],
            lastError: m[8],
          })
        ).sort((a, b) => a.seq - b.seq);
        return { token, leaseUntil, now: leaseUntil - leaseMs, messages };
      });
    },

    async settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      settleToken(token, invalid);
      const p = partitionSettlements(settlements, invalid);
      if (p.size === 0) return { applied: 0, lost: settlements.map((s) => s.id) };
      // First the ids that will not apply (read in the same write transaction), then counters, then the outcomes.
      const stmts: LibsqlStatement[] = [{ sql: sql.settleLost, args: [token, JSON.stringify([...p.seen])] }];
      if (p.delivered.length + p.retried.length + p.dead.length > 0) {
        stmts.push({
          sql: sql.countSettle,
          args: [token, JSON.stringify(p.delivered), JSON.stringify(p.retried.map((r) => r[0])), JSON.stringify(p.dead.map((d) => d[0]))],
        });
      }
      if (p.delivered.length) stmts.push({ sql: retain > 0 ? sql.deliveredMark : sql.deliveredDelete, args: [token, JSON.stringify(p.delivered)] });
      if (p.retried.length) stmts.push({ sql: sql.retry, args: [token, JSON.stringify(p.retried)] });
      if (p.dead.length) stmts.push({ sql: sql.dead, args: [token, JSON.stringify(p.dead)] });
      if (p.released.length) stmts.push({ sql: sql.release, args: [token, JSON.stringify(p.released)] });
      return await relaySide("settle", async () => {
        const [lostRs] = await runWrite(client, stmts, sql.lock);
        const notApplied = new Set(JSON.parse(text(lostRs!.rows[0]!["lost"])) as string[]);
        return settleResult(settlements, p, notApplied);
      });
    },

    hasDue(): Promise<boolean> {
      return relaySide("hasDue", async () => {
        const rs = await runRead(client, { sql: sql.hasDue, args: [] }, readLock);
        return rs.rows.length > 0;
      });
    },

    async stats(options?: { windowMs?: number }): Promise<OutboxStats> {
      const windowMs = statsWindow(options, invalid);
      return await relaySide("stats", async () => {
        const rs = await runRead(client, { sql: sql.stats, args: [windowMs] }, readLock);
        const r = rs.rows[0]!;
        return outboxStats(windowMs, {
          now: r["now"],
          pending: r["pending"],
          due: r["due"],
          leased: r["leased"],
          dead: r["dead"],
          oldest: r["oldest"],
          oldestDue: r["oldest_due"],
          delivered: r["delivered"],
          retried: r["retried"],
          deadWindow: r["dead_window"],
          latencySum: r["latency_sum"],
          latencyMax: r["latency_max"],
        });
      });
    },

    async listDead(options: { limit: number; cursor?: string | null }): Promise<DeadLetterPage> {
      const { limit, after } = listDeadArgs(options, invalid, { cursorDigits: 15 });
      return await relaySide("listDead", async () => {
        const rs = await runRead(client, { sql: sql.listDead, args: [Number(after), limit + 1] }, readLock);
        const rows = rs.rows.slice(0, limit);
        const items = rows.map((r) =>
          deadLetter({
            id: r["id"],
            topic: r["topic"],
            key: r["key"],
            payload: r["payload"],
            headers: r["headers"],
            createdAt: r["created_at"],
            deadAt: r["done_at"],
            attempts: r["attempts"],
            lastError: r["last_error"],
          })
        );
        const last = rows[rows.length - 1];
        return { items, cursor: rs.rows.length > limit && last ? String(num(last["seq"])) : null };
      });
    },

    async replayDead(id: string): Promise<boolean> {
      if (typeof id !== "string") throw invalid("replayDead needs a message id");
      return await relaySide("replayDead", async () => {
        const [rs] = await runWrite(client, [
          { sql: sql.replayDead, args: [id] },
          { sql: sql.replaySequence, args: [] },
        ], sql.lock);
        const replayed = rs!.rows.length > 0;
        if (replayed) wake.notify();
        return replayed;
      });
    },

    async purge(options: { status: "dead" | "delivered"; olderThan: number; limit: number }): Promise<number> {
      const { status, olderThan, limit } = purgeArgs(options, invalid);
      return await relaySide("purge", async () => {
        const [rs] = await runWrite(client, [
          { sql: status === "dead" ? sql.purgeDead : sql.purgeDelivered, args: [Math.ceil(olderThan), limit] },
          { sql: sql.purgeCounters, args: [] },
        ], sql.lock);
        return rs!.rows.length;
      });
    },
  };
  return storage;
}
