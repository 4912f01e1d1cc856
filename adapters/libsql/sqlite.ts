/**
 * The SQLite storage shared by the libSQL and D1 adapters (one dialect, two drivers): every relay-side call of the
 * {@link OutboxStorage} contract built on the SQL of `sql.ts`, over a small {@link SqliteDriver} that each adapter
 * implements with its client (`@libsql/client`'s batches and locked transactions, D1's `batch`). Internal: not
 * exported by any entry point.
 *
 * @module
 */
import type { NewMessage } from "../../src/message.ts";
import { claimArgs, listDeadArgs, purgeArgs, settleToken, statsWindow } from "../../src/sql/args.ts";
import { num, text } from "../../src/sql/coerce.ts";
import { conflictError, type SqlErrors, sqlErrors } from "../../src/sql/errors.ts";
import { type BusyRetrier, busyRetrier } from "../../src/sql/retry.ts";
import { claimedMessage, deadLetter, outboxStats } from "../../src/sql/rows.ts";
import { partitionSettlements, type SettleIds, settleResult } from "../../src/sql/settle.ts";
import { type WakeChannel, wakeChannel, watchChanges } from "../../src/sql/wake.ts";
import type { OutboxError } from "../../src/errors.ts";
import type {
  Claim,
  ClaimOptions,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StorageCapabilities,
} from "../../src/storage.ts";
import { isIdConflictError, isMissingTableError, type LibsqlRow, type LibsqlStatement } from "./client.ts";
import { type LibsqlSql, libsqlSql } from "./sql.ts";

/** How the shared storage reaches the database. */
export interface SqliteDriver {
  /** Runs statements atomically, in order (one write transaction); resolves with each statement's rows. */
  write(stmts: LibsqlStatement[]): Promise<readonly (readonly LibsqlRow[])[]>;
  /** Runs one read; resolves with its rows. */
  read(stmt: LibsqlStatement): Promise<readonly LibsqlRow[]>;
}

/** What an adapter tells {@link sqliteStorage}. */
export interface SqliteStorageOptions {
  /** Adapter name ("libsql", "d1"): error prefix, scope prefix, DDL helper name. */
  readonly adapter: string;
  /** The table name (validated by `libsqlSql`). */
  readonly table: string;
  /** Delivered-row retention, ms. */
  readonly retainDeliveredMs: number;
  /** Busy retry budget, ms. */
  readonly busyRetryMs: number;
  /** Whether a driver error is "busy right now" (retried within the budget). */
  isBusy(e: unknown): boolean;
  /** Whether a driver error may go away on a later call (reported `retryable`). */
  isRetryable(e: unknown): boolean;
  /** The object in-process wake-ups are shared through (the client or binding). */
  readonly wakeOwner: object;
  /** How often `subscribe` reads the sequence head, ms; 0: in-process wake-ups only. */
  readonly watchIntervalMs: number;
}

/** The relay-side half of a SQLite storage, plus what the adapter's write side needs. */
export interface SqliteStorage {
  /** The rendered statements. */
  readonly sql: LibsqlSql;
  /** `<adapter>:<table>`. */
  readonly scope: string;
  /** Error makers. */
  readonly errors: SqlErrors;
  /** The busy-retry loop. */
  readonly relaySide: BusyRetrier;
  /** The in-process wake channel of this client and table. */
  readonly wake: WakeChannel;
  /** The enqueue statement for `messages`, as `{ sql, args }`. */
  enqueueStatement(messages: readonly NewMessage[]): LibsqlStatement;
  /**
   * Maps an enqueue failure: a colliding id → CONFLICT naming the ids that exist (looked up with `lookup`), anything
   * else → the adapter's STORAGE/CONFIG error.
   */
  enqueueError(ids: readonly string[], e: unknown, lookup: SqliteDriver["read"]): Promise<OutboxError>;
  /** The members every SQLite storage has: name, capabilities, scope, table, retention and the relay-side calls. */
  readonly common: SqliteCommon;
}

/** See {@link SqliteStorage.common}. */
export type SqliteCommon =
  & Pick<
    Required<OutboxStorage<unknown, unknown>>,
    "name" | "capabilities" | "scope" | "claim" | "settle" | "hasDue" | "stats" | "listDead" | "replayDead" | "purge" | "subscribe"
  >
  // `Required<>` keeps the declared `| undefined` of `scope?: string | undefined` under exactOptionalPropertyTypes.
  & { readonly scope: string; readonly table: string; readonly retainDeliveredMs: number };

/**
 * What a storage remembers of one of its claims until every row of it is settled: each claimed id's seq, and whether
 * any claimed row has a key. A settle of that claim names its rows by seq (the table's rowid, no probe of the id
 * index: about a fifth of a 500-row settle), reports an id the claim did not return as lost without sending it, and,
 * for a claim without keyed rows, skips the delivery positions (only keyed rows have one). A settle of a claim it does
 * not remember (another instance's, or one forgotten after its lease) names its rows by id; both are fenced on the
 * token.
 */
interface ClaimMemo {
  readonly seqs: Map<string, number>;
  readonly keyed: boolean;
  /** Local epoch ms after which it is dropped even if rows of it were never settled (its lease is long over). */
  readonly forgetAt: number;
}

/** How long after its lease a claim's memo is kept for a late settle (which would be fenced off anyway). */
const MEMO_GRACE_MS = 60_000;

/** SQLite: one writer at a time, which also makes a claim's view current, so a key may deliver a prefix per claim. */
const CAPABILITIES: StorageCapabilities = { batchStatement: true, skipLocked: false, serialWrites: true, keyPrefixClaims: true };

/**
 * Builds the shared SQLite storage over a driver.
 *
 * @param driver how statements reach the database
 * @param options adapter name, table, retention, retry and wake settings
 * @returns the shared parts; the adapter adds `migrate`, `enqueue`, `statement` and its extras
 * @throws {OutboxError} CONFIG when the table name is not a plain identifier
 * @example
 * ```ts
 * const driver: SqliteDriver = {
 *   write: async (stmts) => (await client.batch(stmts, "write")).map((rs) => rs.rows),
 *   read: async (stmt) => (await client.execute(stmt)).rows,
 * };
 * const core = sqliteStorage(driver, { adapter: "libsql", table: "outbox", retainDeliveredMs: 0, busyRetryMs: 2_000,
 *   isBusy: () => false, isRetryable: () => false, wakeOwner: client, watchIntervalMs: 0 });
 * const claim = await core.common.claim({ limit: 10, leaseMs: 30_000 });
 * ```
 */
export function sqliteStorage(driver: SqliteDriver, options: SqliteStorageOptions): SqliteStorage {
  const { adapter, table, retainDeliveredMs: retain, watchIntervalMs } = options;
  const sql = libsqlSql(table);
  const errors = sqlErrors({ adapter, table, isRetryable: options.isRetryable, isMissingTable: isMissingTableError });
  const { invalid } = errors;
  const relaySide = busyRetrier({ budgetMs: options.busyRetryMs, isBusy: options.isBusy, fail: errors.storage });
  const scope = `${adapter}:${table}`;
  const wake = wakeChannel(options.wakeOwner, scope);
  const memos = new Map<string, ClaimMemo>();
  const remember = (token: string, messages: readonly { id: string; seq: number; key: string | null }[], leaseMs: number): void => {
    const now = Date.now();
    for (const [t, m] of memos) if (m.forgetAt < now) memos.delete(t);
    if (messages.length === 0) return;
    const seqs = new Map<string, number>();
    let keyed = false;
    for (const m of messages) {
      seqs.set(m.id, m.seq);
      if (m.key !== null) keyed = true;
    }
    memos.set(token, { seqs, keyed, forgetAt: now + leaseMs + MEMO_GRACE_MS });
  };

  function enqueueStatement(messages: readonly NewMessage[]): LibsqlStatement {
    if (!Array.isArray(messages)) throw invalid("messages must be an array");
    const rows = messages.map((m) => [m.id, m.topic, m.key ?? null, m.payload, m.headers ?? "{}", m.delayMs ?? 0]);
    // One message (the usual call): its fields as parameters (ENQUEUE_ONE_SQL), about 50 µs less per transaction.
    if (rows.length === 1) return { sql: sql.enqueueOne, args: rows[0]! };
    return { sql: sql.enqueue, args: [JSON.stringify(rows)] };
  }

  async function enqueueError(given: readonly string[], e: unknown, lookup: SqliteDriver["read"]): Promise<OutboxError> {
    if (!isIdConflictError(e)) return errors.storage("enqueue", e);
    let ids: string[] = [];
    try {
      const rows = await lookup({ sql: sql.existingIds, args: [JSON.stringify(given)] });
      ids = rows.map((r) => text(r["id"]));
    } catch {
      // unnamed: the error still says what happened
    }
    return conflictError(adapter, table, ids, e);
  }

  const common: SqliteCommon = {
    name: adapter,
    capabilities: CAPABILITIES,
    scope,
    table,
    retainDeliveredMs: retain,

    async claim(options: ClaimOptions): Promise<Claim> {
      const { limit, leaseMs } = claimArgs(options, invalid);
      return await relaySide("claim", async () => {
        const token = crypto.randomUUID();
        const [claimed, clock] = await driver.write([
          { sql: sql.claim, args: [token, leaseMs, limit] },
          { sql: sql.now, args: [] },
        ]);
        // Each row is one JSON array: [seq, id, topic, key, payload, headers, created_at, attempts, last_error, lease_until, prev_seq].
        // Every claimed row has the same lease_until (the claim's now + leaseMs); without rows, the clock statement.
        let leaseUntil = num(clock![0]!["now"]) + leaseMs;
        const messages = claimed!.map((r, i) => {
          const m = JSON.parse(text(r["m"])) as unknown[];
          if (i === 0) leaseUntil = num(m[9]);
          return claimedMessage({
            seq: m[0],
            id: m[1],
            topic: m[2],
            key: m[3],
            payload: m[4],
            headers: m[5],
            createdAt: m[6],
            attempts: m[7],
            lastError: m[8],
            prevSeq: m[10],
          });
        }).sort((a, b) => a.seq - b.seq);
        remember(token, messages, leaseMs);
        return { token, leaseUntil, now: leaseUntil - leaseMs, messages };
      });
    },

    async settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      settleToken(token, invalid);
      // A claim of this storage (ClaimMemo): its rows are named by seq, and an id it did not return cannot carry its
      // token (a token is never given to another claim), so it is reported lost without being sent.
      // The seqs are read once, as the settlements are partitioned: a settle of the same claim running meanwhile
      // forgets its own ids, and must not change what this one sent or reports.
      const memo = memos.get(token);
      const seqOf = new Map<string, number>();
      const ids: SettleIds = memo
        ? {
          accept: (id) => { // called once per distinct id
            const seq = memo.seqs.get(id);
            if (seq !== undefined) seqOf.set(id, seq);
            return seq !== undefined;
          },
        }
        : {};
      const p = partitionSettlements(settlements, invalid, ids);
      if (p.size === 0) return { applied: 0, lost: settlements.map((s) => s.id) };
      const q = memo ? sql.bySeq : sql;
      const name: (id: string) => string | number = memo ? (id) => seqOf.get(id)! : (id) => id;
      const sent = memo ? [...seqOf.keys()] : [...p.seen];
      const delivered = JSON.stringify(p.delivered.map(name));
      // Every sent id delivered (the usual settle): the same list, in the same order, so the same JSON.
      const allDelivered = p.delivered.length === sent.length;
      // First the ids that will not apply (read in the same write transaction), then counters, then the outcomes.
      const stmts: LibsqlStatement[] = [{ sql: q.settleLost, args: [token, allDelivered ? delivered : JSON.stringify(sent.map(name))] }];
      if (p.delivered.length + p.retried.length + p.dead.length > 0) {
        stmts.push({
          sql: q.countSettle,
          args: [
            token,
            delivered,
            JSON.stringify(p.retried.map((r) => name(r[0]))),
            JSON.stringify(p.dead.map((d) => name(d[0]))),
          ],
        });
      }
      if (p.delivered.length) {
        // Before the rows go (it reads their key and seq); not for a claim of this storage without keyed rows.
        if (!memo || memo.keyed) stmts.push({ sql: q.positions, args: [token, delivered] });
        stmts.push({ sql: retain > 0 ? q.deliveredMark : q.deliveredDelete, args: [token, delivered] });
      }
      if (p.retried.length) stmts.push({ sql: q.retry, args: [token, JSON.stringify(p.retried.map(([id, d, e]) => [name(id), d, e]))] });
      if (p.dead.length) stmts.push({ sql: q.dead, args: [token, JSON.stringify(p.dead.map(([id, e]) => [name(id), e]))] });
      if (p.released.length) stmts.push({ sql: q.release, args: [token, JSON.stringify(p.released.map(name))] });
      return await relaySide("settle", async () => {
        const [lost] = await driver.write(stmts);
        const named = JSON.parse(text(lost![0]!["lost"])) as (string | number)[];
        if (!memo) return settleResult(settlements, p, new Set(named as string[]));
        // The seq-to-id map only when some id did not apply (the usual settle: none).
        const idOf = named.length > 0 ? new Map([...seqOf].map(([id, seq]) => [seq, id])) : undefined;
        const result = settleResult(settlements, p, new Set(named.map((n) => idOf!.get(num(n))!)), { accept: (id) => seqOf.has(id) });
        for (const id of sent) memo.seqs.delete(id); // settled: a later settle of one is lost without being sent
        if (memo.seqs.size === 0) memos.delete(token);
        return result;
      });
    },

    hasDue(): Promise<boolean> {
      return relaySide("hasDue", async () => (await driver.read({ sql: sql.hasDue, args: [] })).length > 0);
    },

    async stats(options?: { windowMs?: number }): Promise<OutboxStats> {
      const windowMs = statsWindow(options, invalid);
      return await relaySide("stats", async () => {
        const r = (await driver.read({ sql: sql.stats, args: [windowMs] }))[0]!;
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
        const all = await driver.read({ sql: sql.listDead, args: [Number(after), limit + 1] });
        const rows = all.slice(0, limit);
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
        return { items, cursor: all.length > limit && last ? String(num(last["seq"])) : null };
      });
    },

    async replayDead(id: string): Promise<boolean> {
      if (typeof id !== "string") throw invalid("replayDead needs a message id");
      return await relaySide("replayDead", async () => {
        const [rows] = await driver.write([
          { sql: sql.replayDead, args: [id] },
          { sql: sql.replaySequence, args: [] },
        ]);
        const replayed = rows!.length > 0;
        if (replayed) wake.notify();
        return replayed;
      });
    },

    async purge(options: { status: "dead" | "delivered"; olderThan: number; limit: number }): Promise<number> {
      const { status, olderThan, limit } = purgeArgs(options, invalid);
      return await relaySide("purge", async () => {
        const [rows] = await driver.write([
          { sql: status === "dead" ? sql.purgeDead : sql.purgeDelivered, args: [Math.ceil(olderThan), limit] },
          { sql: sql.purgeCounters, args: [] },
          { sql: sql.purgePositions, args: [limit] },
        ]);
        return rows!.length;
      });
    },

    async subscribe(onWake: () => void, signal: AbortSignal): Promise<void> {
      if (typeof onWake !== "function") throw invalid("subscribe needs an onWake function");
      if (signal?.aborted) return;
      wake.listen(onWake, signal);
      if (watchIntervalMs > 0) {
        const head = async (): Promise<unknown> => (await driver.read({ sql: sql.headSeq, args: [] }))[0]?.["head"] ?? null;
        await watchChanges(head, watchIntervalMs, onWake, signal);
      }
    },
  };

  return { sql, scope, errors, relaySide, wake, enqueueStatement, enqueueError, common };
}
