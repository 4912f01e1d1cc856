import { OutboxError } from "../../src/errors.ts";
import type { NewMessage } from "../../src/message.ts";
import type {
  Claim,
  ClaimedMessage,
  ClaimOptions,
  DeadLetter,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StorageCapabilities,
} from "../../src/storage.ts";

/** A write transaction on a {@link MemoryStorage}: staged rows become visible at `commit()`. */
export interface MemoryTransaction {
  /** Whether commit or rollback has run. */
  readonly closed: boolean;
}

/** What `memoryStorage().begin()` returns. */
export interface MemoryTransactionHandle {
  /** Pass to `outbox.enqueue(tx, …)`. */
  readonly tx: MemoryTransaction;
  /** Makes the staged messages visible, in commit order. */
  commit(): Promise<void>;
  /** Discards the staged messages. */
  rollback(): Promise<void>;
}

/** Options of {@link memoryStorage}. */
export interface MemoryStorageOptions {
  /** The clock, epoch ms (the "database clock" of this storage). @default Date.now */
  now?: (() => number) | undefined;
  /** Keep delivered rows this long (ms) instead of deleting them. @default 0 */
  retainDeliveredMs?: number | undefined;
  /** Share the data of another memory storage (a second "connection" to the same database). @default a new store */
  shareWith?: MemoryStorage | undefined;
}

/**
 * The in-memory storage: real transactions, the full contract, nothing persisted. An `id` given at enqueue that a
 * row already has is refused with CONFLICT (at `enqueue`, or at `commit` when another transaction committed it
 * meanwhile); `subscribe` wakes its callbacks after every commit that enqueued messages and after every replay.
 */
export interface MemoryStorage extends OutboxStorage<MemoryTransaction, never> {
  /** `memory:<store id>`: shared by every storage made with `shareWith` this one. */
  readonly scope: string;
  /** Opens a transaction. */
  begin(): MemoryTransactionHandle;
  /** Number of rows of each status (for tests). */
  count(): { pending: number; dead: number; delivered: number };
}

interface Row {
  seq: number;
  id: string;
  topic: string;
  key: string | null;
  payload: string;
  headers: string;
  status: "pending" | "dead" | "delivered";
  createdAt: number;
  availableAt: number;
  attempts: number;
  leaseToken: string | null;
  leaseUntil: number | null;
  lastError: string | null;
  doneAt: number | null;
}

interface Bucket {
  delivered: number;
  retried: number;
  dead: number;
  latencySum: number;
  latencyMax: number;
}

interface Store {
  /** Identifies the store: every storage sharing it has the scope `memory:<id>`. */
  id: string;
  seq: number;
  rows: Map<string, Row>;
  buckets: Map<number, Bucket>;
  /** Per-key delivery positions: the seq of the key's last delivered message and when (the SQL `_positions` table). */
  positions: Map<string, { seq: number; at: number }>;
  /** Wake-up callbacks of `subscribe`, called after a commit that enqueued messages and after a replay. */
  listeners: Set<() => void>;
}

const closedError = (): OutboxError => new OutboxError("STORAGE", "[edge-outbox:memory] the transaction is already closed");
const conflict = (id: string): OutboxError =>
  new OutboxError("CONFLICT", `[edge-outbox:memory] a message with id ${id} is already in the outbox: nothing was written`);
const STORE = new WeakMap<MemoryStorage, Store>();
const MINUTE = 60_000;

interface Tx extends MemoryTransaction {
  closed: boolean;
  staged: NewMessage[];
  stagedIds: Set<string>;
  store: Store;
}

const OPTION_KEYS = ["now", "retainDeliveredMs", "shareWith"];

/**
 * Creates an in-memory storage with real transactions, for tests and demos. It passes the same conformance
 * suite as the database adapters.
 *
 * @param options clock, delivered-row retention, shared store
 * @returns the storage
 * @example
 * ```ts
 * import { createOutbox, defineTopic } from "edge-outbox";
 * import { memoryStorage } from "edge-outbox/memory";
 * import * as v from "valibot";
 *
 * const storage = memoryStorage();
 * const ping = defineTopic("ping", v.object({ n: v.number() }));
 * const outbox = createOutbox({ storage, topics: [ping] });
 * const { tx, commit } = storage.begin();
 * await outbox.enqueue(tx, ping, { n: 1 });
 * await commit();
 * ```
 */
export function memoryStorage(options: MemoryStorageOptions = {}): MemoryStorage {
  for (const key of Object.keys(options)) {
    if (!OPTION_KEYS.includes(key)) {
      const message = `unknown option ${key} (known: ${OPTION_KEYS.join(", ")})`;
      throw new OutboxError("CONFIG", `memoryStorage options: ${message}`, { cause: [{ path: key, message }] });
    }
  }
  const clock = options.now ?? Date.now;
  const retain = options.retainDeliveredMs ?? 0;
  if (!Number.isInteger(retain) || retain < 0) {
    throw new OutboxError("CONFIG", "memoryStorage options: retainDeliveredMs must be a non-negative integer");
  }
  let store: Store;
  if (options.shareWith) {
    const shared = STORE.get(options.shareWith);
    if (!shared) throw new OutboxError("CONFIG", "memoryStorage options: shareWith must be a memory storage");
    store = shared;
  } else {
    store = { id: crypto.randomUUID(), seq: 0, rows: new Map(), buckets: new Map(), positions: new Map(), listeners: new Set() };
  }
  const capabilities: StorageCapabilities = {
    batchStatement: false,
    skipLocked: false,
    serialWrites: false,
    keyPrefixClaims: true,
    continueClaims: true,
  };

  // Rows are only ever inserted with a growing seq, and a Map iterates in insertion order: already seq order.
  const ordered = (): IterableIterator<Row> => store.rows.values();
  const bucket = (t: number): Bucket => {
    const k = Math.floor(t / MINUTE) * MINUTE;
    let b = store.buckets.get(k);
    if (!b) store.buckets.set(k, b = { delivered: 0, retried: 0, dead: 0, latencySum: 0, latencyMax: 0 });
    return b;
  };
  /**
   * Due, unblocked rows in seq order (the claim's eligibility rule). `cont`: keys to continue (see
   * `ClaimOptions.continue`), each with the seq up to which its pending rows are leased with one of `tokens`: those
   * rows are passed over instead of blocking the key.
   */
  const eligible = (t: number, cont?: { after: ReadonlyMap<string, number>; tokens: ReadonlySet<string> }): Row[] => {
    const blocked = new Set<string>();
    const out: Row[] = [];
    for (const r of ordered()) {
      if (r.status !== "pending") continue;
      const due = r.availableAt <= t;
      if (r.key !== null) {
        if (blocked.has(r.key)) continue;
        const after = cont?.after.get(r.key);
        if (after !== undefined && r.seq <= after && r.leaseToken !== null && cont!.tokens.has(r.leaseToken)) continue;
        if (!due) {
          blocked.add(r.key);
          continue;
        }
      }
      if (due) out.push(r);
    }
    return out;
  };
  /**
   * The keys `continue` may continue, each with its largest named seq: keys of named rows that are pending and leased
   * with one of its tokens, and whose every pending row up to that seq is leased with one of them.
   */
  const continued = (c: ClaimOptions["continue"]): { after: Map<string, number>; tokens: Set<string> } | undefined => {
    if (!c || c.after.length === 0 || c.tokens.length === 0) return undefined;
    const tokens = new Set(c.tokens);
    const ours = (r: Row): boolean => r.leaseToken !== null && tokens.has(r.leaseToken);
    const after = new Map<string, number>();
    const wanted = new Set(c.after);
    for (const r of ordered()) {
      if (!wanted.has(r.seq) || r.key === null || r.status !== "pending" || !ours(r)) continue;
      after.set(r.key, Math.max(after.get(r.key) ?? 0, r.seq));
    }
    for (const r of ordered()) {
      if (r.key === null || r.status !== "pending" || ours(r)) continue;
      const upTo = after.get(r.key);
      if (upTo !== undefined && r.seq <= upTo) after.delete(r.key);
    }
    return after.size > 0 ? { after, tokens } : undefined;
  };
  const toMessage = (r: Row): ClaimedMessage => ({
    id: r.id,
    topic: r.topic,
    key: r.key,
    payload: JSON.parse(r.payload),
    body: r.payload,
    headers: JSON.parse(r.headers),
    createdAt: r.createdAt,
    attempts: r.attempts,
    lastError: r.lastError,
    seq: r.seq,
    prevSeq: r.key === null ? null : store.positions.get(r.key)?.seq ?? null,
  });
  const insert = (m: NewMessage, t: number): void => {
    store.rows.set(m.id, {
      seq: ++store.seq,
      id: m.id,
      topic: m.topic,
      key: m.key,
      payload: m.payload,
      headers: m.headers,
      status: "pending",
      createdAt: t,
      availableAt: t + m.delayMs,
      attempts: 0,
      leaseToken: null,
      leaseUntil: null,
      lastError: null,
      doneAt: null,
    });
  };

  /** Calls every subscriber after the current call returns (a throwing callback cannot break the caller). */
  const wake = (): void => {
    for (const fn of [...store.listeners]) {
      queueMicrotask(() => {
        try {
          fn();
        } catch { /* a subscriber's failure is its own */ }
      });
    }
  };

  const storage: MemoryStorage = {
    name: "memory",
    scope: `memory:${store.id}`,
    capabilities,
    migrate(): Promise<void> {
      return Promise.resolve();
    },
    begin(): MemoryTransactionHandle {
      const tx: Tx = { closed: false, staged: [], stagedIds: new Set(), store };
      return {
        tx,
        commit(): Promise<void> {
          if (tx.closed) return Promise.reject(closedError());
          tx.closed = true;
          // Another transaction may have committed one of the staged ids since it was enqueued: refuse the commit.
          const taken = tx.staged.find((m) => store.rows.has(m.id));
          if (taken) return Promise.reject(conflict(taken.id));
          const t = clock();
          for (const m of tx.staged) insert(m, t); // seq assigned at commit: commit order, as the contract requires
          if (tx.staged.length > 0) wake();
          return Promise.resolve();
        },
        rollback(): Promise<void> {
          if (tx.closed) return Promise.reject(closedError());
          tx.closed = true;
          tx.staged.length = 0;
          tx.stagedIds.clear();
          return Promise.resolve();
        },
      };
    },
    enqueue(tx: MemoryTransaction, messages: readonly NewMessage[]): Promise<void> {
      const t = tx as Tx;
      if (!t || !Array.isArray(t.staged) || t.store !== store) {
        return Promise.reject(new OutboxError("STORAGE", "[edge-outbox:memory] enqueue needs a transaction from this storage's begin()"));
      }
      if (t.closed) return Promise.reject(new OutboxError("STORAGE", "[edge-outbox:memory] enqueue on a closed transaction"));
      // Nothing of this call is staged when one id is taken (by a row in the store, this transaction or this call);
      // the transaction stays usable.
      const mine = new Set<string>();
      for (const m of messages) {
        if (store.rows.has(m.id) || t.stagedIds.has(m.id) || mine.has(m.id)) return Promise.reject(conflict(m.id));
        mine.add(m.id);
      }
      for (const m of messages) {
        t.staged.push(m);
        t.stagedIds.add(m.id);
      }
      return Promise.resolve();
    },
    claim({ limit, leaseMs, continue: cont, maxKeys }): Promise<Claim> {
      const t = clock();
      const token = crypto.randomUUID();
      const leaseUntil = t + leaseMs;
      const going = continued(cont);
      let rows = eligible(t, going);
      if (maxKeys !== undefined) {
        // At most maxKeys keys besides the continued ones: rows of further keys are left for the next claim.
        const taken = new Set<string>();
        rows = rows.filter((r) => {
          if (r.key === null || going?.after.has(r.key) || taken.has(r.key)) return true;
          if (taken.size >= maxKeys) return false;
          taken.add(r.key);
          return true;
        });
      }
      rows = rows.slice(0, limit);
      for (const r of rows) {
        r.leaseToken = token;
        r.leaseUntil = leaseUntil;
        r.availableAt = leaseUntil;
        r.attempts++;
      }
      return Promise.resolve({ token, leaseUntil, now: t, messages: rows.map(toMessage) });
    },
    settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      const t = clock();
      const lost: string[] = [];
      let applied = 0;
      const b = bucket(t);
      for (const s of settlements) {
        const r = store.rows.get(s.id);
        if (!r || r.status !== "pending" || r.leaseToken !== token) {
          lost.push(s.id);
          continue;
        }
        applied++;
        r.leaseToken = null;
        r.leaseUntil = null;
        switch (s.outcome) {
          case "delivered": {
            const latency = t - r.createdAt;
            b.delivered++;
            b.latencySum += latency;
            b.latencyMax = Math.max(b.latencyMax, latency);
            if (r.key !== null) {
              const p = store.positions.get(r.key);
              store.positions.set(r.key, { seq: Math.max(p?.seq ?? 0, r.seq), at: t });
            }
            if (retain > 0) {
              r.status = "delivered";
              r.doneAt = t;
            } else store.rows.delete(r.id);
            break;
          }
          case "retry":
            r.availableAt = t + s.delayMs;
            r.lastError = s.error;
            b.retried++;
            break;
          case "dead":
            r.status = "dead";
            r.doneAt = t;
            r.lastError = s.error;
            b.dead++;
            break;
          case "released":
            r.availableAt = t;
            r.attempts = Math.max(0, r.attempts - 1);
            break;
        }
      }
      return Promise.resolve({ applied, lost });
    },
    hasDue(): Promise<boolean> {
      return Promise.resolve(eligible(clock()).length > 0);
    },
    stats(opts?: { windowMs?: number | undefined }): Promise<OutboxStats> {
      const windowMs = opts?.windowMs ?? 300_000;
      const t = clock();
      let pending = 0, due = 0, leased = 0, dead = 0;
      let oldest: number | null = null;
      let oldestDue: number | null = null;
      for (const r of store.rows.values()) {
        if (r.status === "dead") dead++;
        if (r.status !== "pending") continue;
        pending++;
        if (r.availableAt <= t) {
          due++;
          if (oldestDue === null || r.availableAt < oldestDue) oldestDue = r.availableAt;
        }
        if (r.leaseToken !== null && r.leaseUntil !== null && r.leaseUntil > t) leased++;
        if (oldest === null || r.createdAt < oldest) oldest = r.createdAt;
      }
      const from = Math.floor((t - windowMs) / MINUTE) * MINUTE;
      let delivered = 0, retried = 0, deadW = 0, sum = 0, max: number | null = null;
      for (const [k, b] of store.buckets) {
        if (k < from) continue;
        delivered += b.delivered;
        retried += b.retried;
        deadW += b.dead;
        sum += b.latencySum;
        if (b.delivered > 0) max = Math.max(max ?? 0, b.latencyMax);
      }
      return Promise.resolve({
        pending,
        due,
        leased,
        dead,
        oldestPendingAgeMs: oldest === null ? null : Math.max(0, t - oldest),
        oldestDueAgeMs: oldestDue === null ? null : Math.max(0, t - oldestDue),
        window: {
          windowMs,
          delivered,
          retried,
          dead: deadW,
          avgLatencyMs: delivered > 0 ? sum / delivered : null,
          maxLatencyMs: max,
        },
        now: t,
      });
    },
    listDead({ limit, cursor }): Promise<DeadLetterPage> {
      let after = 0;
      if (cursor != null) {
        if (!/^\d+$/.test(cursor)) return Promise.reject(new OutboxError("VALIDATION", `invalid dead-letter cursor ${JSON.stringify(cursor)}`));
        after = Number(cursor);
      }
      const rows = [...ordered()].filter((r) => r.status === "dead" && r.seq > after);
      const page = rows.slice(0, limit);
      const items: DeadLetter[] = page.map((r) => ({
        id: r.id,
        topic: r.topic,
        key: r.key,
        payload: JSON.parse(r.payload),
        headers: JSON.parse(r.headers),
        createdAt: r.createdAt,
        deadAt: r.doneAt ?? r.createdAt,
        attempts: r.attempts,
        lastError: r.lastError,
      }));
      const next = rows.length > limit ? String(page[page.length - 1]!.seq) : null;
      return Promise.resolve({ items, cursor: next });
    },
    replayDead(id: string): Promise<boolean> {
      const r = store.rows.get(id);
      if (!r || r.status !== "dead") return Promise.resolve(false);
      // Re-enters at the tail of its key: a new seq (and a new place in the Map's insertion order).
      store.rows.delete(id);
      r.seq = ++store.seq;
      r.status = "pending";
      r.attempts = 0;
      r.availableAt = clock();
      r.leaseToken = null;
      r.leaseUntil = null;
      r.doneAt = null;
      store.rows.set(id, r);
      wake();
      return Promise.resolve(true);
    },
    purge({ status, olderThan, limit }): Promise<number> {
      let n = 0;
      for (const r of ordered()) {
        if (n >= limit) break;
        if (r.status === status && r.doneAt !== null && r.doneAt < olderThan) {
          store.rows.delete(r.id);
          n++;
        }
      }
      const horizon = clock() - 7 * 86_400_000;
      for (const k of store.buckets.keys()) if (k < horizon) store.buckets.delete(k);
      let dropped = 0; // positions not updated for 7 days, at most `limit` (like the SQL storages)
      for (const [k, p] of store.positions) {
        if (dropped >= limit) break;
        if (p.at < horizon) {
          store.positions.delete(k);
          dropped++;
        }
      }
      return Promise.resolve(n);
    },
    subscribe(onWake: () => void, signal: AbortSignal): Promise<void> {
      if (signal.aborted) return Promise.resolve();
      const fn = (): void => {
        if (!signal.aborted) onWake();
      };
      store.listeners.add(fn);
      signal.addEventListener("abort", () => store.listeners.delete(fn), { once: true });
      return Promise.resolve();
    },
    count(): { pending: number; dead: number; delivered: number } {
      const c = { pending: 0, dead: 0, delivered: 0 };
      for (const r of store.rows.values()) c[r.status]++;
      return c;
    },
  };
  STORE.set(storage, store);
  return storage;
}
