import { OutboxError } from "../../src/errors.ts";
import type { InboxCapabilities, InboxStorage } from "../../src/inbox.ts";

/** A write transaction on a {@link MemoryInbox}: records and effects become visible at `commit()`. */
export interface MemoryInboxTransaction {
  /** Whether commit or rollback has run. */
  readonly closed: boolean;
  /** Runs `effect` when the transaction commits (never when it rolls back): your "business writes" in tests. */
  onCommit(effect: () => void): void;
}

/** What `memoryInbox().begin()` returns. */
export interface MemoryInboxTransactionHandle {
  /** Pass to `inbox.handle(tx, …)`. */
  readonly tx: MemoryInboxTransaction;
  /** Applies the staged records and runs the `onCommit` effects. */
  commit(): Promise<void>;
  /** Discards them. */
  rollback(): Promise<void>;
}

/** Options of {@link memoryInbox}. */
export interface MemoryInboxOptions {
  /** The clock, epoch ms (the "database clock"). @default Date.now */
  now?: (() => number) | undefined;
  /** Share the data of another memory inbox (a second "connection"). @default a new store */
  shareWith?: MemoryInbox | undefined;
}

/** The in-memory inbox storage: real transactions with row locks, nothing persisted. */
export interface MemoryInbox extends InboxStorage<MemoryInboxTransaction, never> {
  /** Opens a transaction. */
  begin(): MemoryInboxTransactionHandle;
  /** Runs `fn` in a transaction: commits when it resolves, rolls back when it rejects. */
  transaction<T>(fn: (tx: MemoryInboxTransaction) => Promise<T>): Promise<T>;
  /** Number of recorded rows (for tests). */
  size(): number;
}

interface Store {
  rows: Map<string, number>; // "consumer\0id" → processed_at
  keys: Map<string, { lastSeq: number | null; updatedAt: number }>;
  /** Row and key locks held by open transactions: name → released when that transaction ends. */
  locks: Map<string, { owner: Tx; done: Promise<void> }>;
}

interface Tx extends MemoryInboxTransaction {
  closed: boolean;
  store: Store;
  records: Map<string, true>;
  keyWrites: Map<string, number>;
  effects: (() => void)[];
  release: (() => void)[];
}

const STORES = new WeakMap<MemoryInbox, Store>();
const rowName = (consumer: string, id: string): string => `r\0${consumer}\0${id}`;
const keyName = (consumer: string, key: string): string => `k\0${consumer}\0${key}`;

/**
 * Creates an in-memory inbox storage with real transactions, for tests and demos. It passes the same inbox
 * conformance suite as the database adapters: a record or key position held by an open transaction makes a
 * second transaction wait until the first commits or rolls back, as a database's row lock does.
 *
 * @param options clock, shared store
 * @returns the storage
 * @throws {OutboxError} CONFIG when `shareWith` is not a memory inbox
 * @example
 * ```ts
 * import { createInbox } from "edge-outbox";
 * import { memoryInbox } from "edge-outbox/memory";
 *
 * const storage = memoryInbox();
 * const inbox = createInbox({ storage, consumer: "emails" });
 * const sent: string[] = [];
 * await inbox.process("0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70", (tx) => tx.onCommit(() => sent.push("welcome")));
 * ```
 */
export function memoryInbox(options: MemoryInboxOptions = {}): MemoryInbox {
  const clock = options.now ?? Date.now;
  let store: Store;
  if (options.shareWith !== undefined) {
    const shared = STORES.get(options.shareWith);
    if (!shared) throw new OutboxError("CONFIG", "memoryInbox options: shareWith must be a memory inbox");
    store = shared;
  } else {
    store = { rows: new Map(), keys: new Map(), locks: new Map() };
  }
  const capabilities: InboxCapabilities = { transaction: true, batchStatement: false, keyOrder: true };

  function open(t: unknown): Tx {
    const tx = t as Tx;
    if (typeof tx !== "object" || tx === null || tx.store !== store) {
      throw new OutboxError("VALIDATION", "[edge-outbox:memory] not a transaction of this memory inbox (use storage.begin())");
    }
    if (tx.closed) throw new OutboxError("STORAGE", "[edge-outbox:memory] the transaction is already closed");
    return tx;
  }

  /** Takes the lock `name` for `tx`, waiting while another open transaction holds it. */
  async function lock(tx: Tx, name: string): Promise<void> {
    for (;;) {
      const held = store.locks.get(name);
      if (!held) break;
      if (held.owner === tx) return;
      await held.done;
      if (tx.closed) throw new OutboxError("STORAGE", "[edge-outbox:memory] the transaction is already closed");
    }
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    store.locks.set(name, { owner: tx, done });
    tx.release.push(() => {
      store.locks.delete(name);
      release();
    });
  }

  function finish(tx: Tx, apply: boolean): void {
    if (tx.closed) return;
    tx.closed = true;
    if (apply) {
      const now = clock();
      for (const name of tx.records.keys()) store.rows.set(name, now);
      for (const [name, seq] of tx.keyWrites) {
        const cur = store.keys.get(name);
        store.keys.set(name, { lastSeq: Math.max(cur?.lastSeq ?? seq, seq), updatedAt: now });
      }
    }
    for (const r of tx.release) r();
    if (apply) for (const effect of tx.effects) effect();
  }

  const storage: MemoryInbox = {
    name: "memory",
    capabilities,
    scope: `memory-inbox:${crypto.randomUUID()}`,
    migrate: () => Promise.resolve(),

    begin(): MemoryInboxTransactionHandle {
      const tx: Tx = {
        closed: false,
        store,
        records: new Map(),
        keyWrites: new Map(),
        effects: [],
        release: [],
        onCommit(effect: () => void): void {
          if (tx.closed) throw new OutboxError("STORAGE", "[edge-outbox:memory] the transaction is already closed");
          if (typeof effect !== "function") throw new OutboxError("VALIDATION", "onCommit needs a function");
          tx.effects.push(effect);
        },
      };
      return {
        tx,
        commit: () => {
          if (tx.closed) return Promise.reject(new OutboxError("STORAGE", "[edge-outbox:memory] the transaction is already closed"));
          finish(tx, true);
          return Promise.resolve();
        },
        rollback: () => {
          finish(tx, false);
          return Promise.resolve();
        },
      };
    },

    async transaction<T>(fn: (tx: MemoryInboxTransaction) => Promise<T>): Promise<T> {
      const h = storage.begin();
      try {
        const result = await fn(h.tx);
        await h.commit();
        return result;
      } catch (e) {
        await h.rollback();
        throw e;
      }
    },

    async record(t, consumer, messageId): Promise<boolean> {
      const tx = open(t);
      const name = rowName(consumer, messageId);
      await lock(tx, name);
      if (store.rows.has(name) || tx.records.has(name)) return false;
      tx.records.set(name, true);
      return true;
    },

    isRecorded(consumer, messageId): Promise<boolean> {
      return Promise.resolve(store.rows.has(rowName(consumer, messageId)));
    },

    async lockKey(t, consumer, key): Promise<number | null> {
      const tx = open(t);
      const name = keyName(consumer, key);
      await lock(tx, name);
      const staged = tx.keyWrites.get(name);
      const committed = store.keys.get(name)?.lastSeq ?? null;
      if (staged === undefined) return committed;
      return committed === null ? staged : Math.max(staged, committed);
    },

    advanceKey(t, consumer, key, seq): Promise<void> {
      const tx = open(t);
      const name = keyName(consumer, key);
      tx.keyWrites.set(name, Math.max(tx.keyWrites.get(name) ?? seq, seq));
      return Promise.resolve();
    },

    purge({ consumer, olderThanMs, limit }): Promise<number> {
      const cutoff = clock() - olderThanMs;
      const prefix = rowName(consumer, "");
      const old = [...store.rows].filter(([name, at]) => name.startsWith(prefix) && at < cutoff).sort((a, b) => a[1] - b[1]);
      const doomed = old.slice(0, limit);
      for (const [name] of doomed) store.rows.delete(name);
      const keyPrefix = keyName(consumer, "");
      let keys = 0;
      for (const [name, k] of store.keys) {
        if (keys >= limit) break;
        if (name.startsWith(keyPrefix) && k.updatedAt < cutoff && !store.locks.has(name)) {
          store.keys.delete(name);
          keys++;
        }
      }
      return Promise.resolve(doomed.length);
    },

    size: () => store.rows.size,
  };
  STORES.set(storage, store);
  return storage;
}
