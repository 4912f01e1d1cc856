/**
 * The consumer half: the `InboxStorage` contract and {@link createInbox}, exactly-once processing of
 * at-least-once deliveries.
 *
 * Delivery is at-least-once by design (a relay killed mid-send resends; QStash redelivers after its own crashes and
 * retries), so a consumer records every message it processed, **in the same transaction as the message's effects**:
 * the row `(consumer, message_id)` and the effects commit together or not at all, and a redelivered message finds its
 * row and is acknowledged without running the effects again.
 *
 * Rules every implementation follows:
 * - `processed_at` comes from the **database clock** (epoch ms in the API); retention is computed by the database.
 * - Recording a message id that is already recorded (committed) answers "already recorded" and leaves the caller's
 *   transaction usable (Postgres: `ON CONFLICT DO NOTHING`, never a unique violation that aborts the transaction).
 *   When another transaction recorded the same id and has not committed yet, the call waits for it (the database's
 *   unique index does this): "already recorded" when it commits, "new" when it rolls back. Two concurrent deliveries
 *   of one message therefore run the effects once.
 * - Table names are validated identifiers; values are always bound parameters.
 * - Driver failures are `OutboxError("STORAGE")` with the driver error as `cause` (`retryable` when trying again can
 *   help); a call on a table that does not exist is `OutboxError("CONFIG")` telling you to run `migrate()`.
 *
 * Retention: a row must outlive every redelivery of its message, or a late redelivery runs the effects again. The
 * default window is {@link DEFAULT_INBOX_RETENTION_MS} (7 days): QStash deduplicates publishes for only 10 minutes,
 * but its retries back off up to a day each (12 s, 2m28s, 30m8s, 6h7m, then 24 h per retry: about 30 hours over the
 * default 5 retries, days on plans with more), a message can be republished by hand from QStash's dead-letter queue,
 * and an outbox dead letter can be replayed days later. MassTransit's 30-minute default would miss all of these.
 * `purge()` deletes in bounded chunks (one call deletes at most `limit` rows), so it fits a cron call's budget.
 *
 * @module
 */
import { isOutboxError, OutboxError } from "./errors.ts";

/** Default duplicate-detection window: 7 days (see the module doc for why). */
export const DEFAULT_INBOX_RETENTION_MS = 604_800_000;
/** Longest accepted message id, in characters. */
export const MAX_MESSAGE_ID_LENGTH = 255;
/** Longest accepted ordering key, in characters (the outbox's own limit). */
export const MAX_INBOX_KEY_LENGTH = 255;

const CONSUMER_RE = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/** What an inbox storage can do (the inbox branches on these, never on a dialect name). */
export interface InboxCapabilities {
  /** `transaction()` opens an interactive transaction on the storage's client (Postgres, libSQL, memory). */
  readonly transaction: boolean;
  /** `statement()` and `runBatch()` are implemented: the record joins an atomic batch (libSQL, D1). */
  readonly batchStatement: boolean;
  /** `lockKey()` and `advanceKey()` are implemented: per-key sequence positions for ordering checks. */
  readonly keyOrder: boolean;
}

/**
 * The inbox storage contract. `Tx` is the adapter's transaction handle (what the consumer's transaction gives it),
 * `Stmt` its native statement type for atomic batches (`never` when unsupported).
 *
 * Tables: `<table>(consumer, message_id, processed_at)` with primary key `(consumer, message_id)`, and, for
 * ordering, `<table>_keys(consumer, key, last_seq, updated_at)` with primary key `(consumer, key)`.
 *
 * @example
 * ```ts
 * import type { InboxStorage } from "edge-outbox";
 * function describeInbox(s: InboxStorage<unknown, unknown>): string {
 *   return `${s.name} (batch: ${s.capabilities.batchStatement})`;
 * }
 * ```
 */
export interface InboxStorage<Tx = unknown, Stmt = never> {
  /** Adapter name for error messages, e.g. "postgres". */
  readonly name: string;
  /**
   * Identifies the data this storage reads, e.g. `"postgres:public.inbox"`.
   * @default the adapter's `name`
   */
  readonly scope?: string | undefined;
  /** What the storage can do. */
  readonly capabilities: InboxCapabilities;

  /** Creates or upgrades the inbox tables and indexes. Idempotent and versioned; safe to call on every start. */
  migrate(): Promise<void>;

  /**
   * Records `(consumer, messageId)` inside the caller's open transaction `tx`, with `processed_at` = database now.
   * Resolves true when the row is new, false when it was already recorded (see the module doc for concurrent
   * recorders). Leaves `tx` usable either way.
   * @throws {OutboxError} STORAGE when the insert fails
   */
  record(tx: Tx, consumer: string, messageId: string): Promise<boolean>;

  /**
   * Runs `fn` in a new write transaction on the storage's client: commits when it resolves, rolls back when it
   * rejects (and rethrows). Present when `capabilities.transaction`.
   * @throws {OutboxError} STORAGE when the database fails (retryable when busy); whatever `fn` throws
   */
  transaction?<T>(fn: (tx: Tx) => Promise<T>): Promise<T>;

  /**
   * Returns one native statement inserting `(consumer, messageId)` that makes its atomic batch FAIL when the row
   * already exists (a plain insert against the primary key), so the batch's other statements are not applied.
   * Synchronous; sends nothing. Present when `capabilities.batchStatement`.
   */
  statement?(consumer: string, messageId: string): Stmt;

  /**
   * Runs `statements` as one atomic batch on the storage's client (all applied or none).
   * Present when `capabilities.batchStatement`.
   * @throws {OutboxError} STORAGE when the batch fails (a constraint, the database)
   */
  runBatch?(statements: readonly Stmt[]): Promise<void>;

  /** Whether `(consumer, messageId)` is recorded (committed), read outside any transaction. */
  isRecorded(consumer: string, messageId: string): Promise<boolean>;

  /**
   * Takes the consumer's position row of `key` for the rest of `tx` (creating it when missing; another transaction
   * on the same key waits) and returns its last processed sequence, or null when none was recorded.
   * Present when `capabilities.keyOrder`.
   */
  lockKey?(tx: Tx, consumer: string, key: string): Promise<number | null>;

  /**
   * Sets the key's last processed sequence to `max(last, seq)` inside `tx` (after {@link InboxStorage.lockKey}).
   * Present when `capabilities.keyOrder`.
   */
  advanceKey?(tx: Tx, consumer: string, key: string, seq: number): Promise<void>;

  /**
   * Deletes at most `limit` of the consumer's rows processed more than `olderThanMs` ago (database clock), oldest
   * first, and at most `limit` key positions not advanced for that long. Returns how many inbox rows were deleted;
   * call again while it returns `limit`.
   */
  purge(options: { consumer: string; olderThanMs: number; limit: number }): Promise<number>;
}

/** The transaction type of an inbox storage. */
export type InboxTxOf<S> = S extends InboxStorage<infer Tx, unknown> ? Tx : never;
/** The native statement type of an inbox storage. */
export type InboxStmtOf<S> = S extends InboxStorage<unknown, infer Stmt> ? Stmt : never;

/** The outcome of {@link Inbox.handle}. */
export type HandleResult =
  /** New: recorded, and `fn` ran in the transaction. */
  | "processed"
  /** Already recorded: `fn` did not run; acknowledge the delivery. */
  | "duplicate"
  /**
   * Only with `order.strict`: the message's predecessor has not been processed yet; nothing was recorded and `fn`
   * did not run. Answer "retry later".
   */
  | "held";

/**
 * Where a keyed message stands in its key's order, as the sender declared it (headers `Outbox-Key`, `Outbox-Seq`,
 * and `Outbox-Prev-Seq` when the sender knows the predecessor).
 */
export interface OrderPosition {
  /** The ordering key. */
  readonly key: string;
  /** The message's sequence in its outbox: larger means committed later, within one key. Not contiguous. */
  readonly seq: number;
  /** The sequence of the key's previous message, when the sender sent it; null or absent when unknown. */
  readonly prevSeq?: number | null | undefined;
  /**
   * Hold (answer "held") while `prevSeq` is known, the key has a recorded position, and that position is below
   * `prevSeq`. @default false
   */
  readonly strict?: boolean | undefined;
  /** Process even when strict ordering would hold it (the caller's hold budget is spent). @default false */
  readonly force?: boolean | undefined;
}

/** What `fn` learns about ordering when {@link HandleOptions.order} was given. */
export interface OrderInfo {
  /** The ordering key. */
  readonly key: string;
  /** The message's sequence. */
  readonly seq: number;
  /** The key's last processed sequence before this message; null when none was recorded. */
  readonly lastSeq: number | null;
  /** True when a later message of the key was already processed: this one arrives late. */
  readonly stale: boolean;
  /**
   * True when the sender declared a predecessor (`prevSeq`) that is not processed (a known position below it): a gap.
   * With `strict`, only a forced message gets here with `gap: true`.
   */
  readonly gap: boolean;
}

/** What `fn` receives besides the transaction. */
export interface HandleInfo {
  /** The message id. */
  readonly messageId: string;
  /** The consumer. */
  readonly consumer: string;
  /** Ordering information, when {@link HandleOptions.order} was given and the storage supports it. */
  readonly order: OrderInfo | null;
}

/** Options of {@link Inbox.handle}. */
export interface HandleOptions {
  /**
   * The message's place in its key's order. Needs a storage with `capabilities.keyOrder` (CONFIG otherwise).
   * @default none (no ordering checks)
   */
  order?: OrderPosition | null | undefined;
}

/** Options of {@link createInbox}. */
export interface InboxOptions<Tx, Stmt> {
  /** Where processed message ids are recorded. */
  storage: InboxStorage<Tx, Stmt>;
  /**
   * The consumer's name: one row per (consumer, message): two consumers of one message each process it once.
   * 1–128 characters of letters, digits and `. _ : / -`, starting with a letter or digit.
   */
  consumer: string;
  /**
   * How long a processed message id is remembered (duplicate-detection window), ms; `purge()` deletes older rows.
   * Keep it longer than the longest redelivery horizon of your transports. @default 604800000 (7 days)
   */
  retentionMs?: number | undefined;
}

/** Options of {@link Inbox.purge}. */
export interface InboxPurgeOptions {
  /** Most rows deleted by this call. @default 1000 */
  limit?: number | undefined;
  /** Delete rows processed longer ago than this, ms. @default the inbox's `retentionMs` */
  olderThanMs?: number | undefined;
}

/** A consumer's inbox, made by {@link createInbox}. */
export interface Inbox<Tx = unknown, Stmt = never> {
  /** The consumer name. */
  readonly consumer: string;
  /** The duplicate-detection window, ms. */
  readonly retentionMs: number;
  /** The storage. */
  readonly storage: InboxStorage<Tx, Stmt>;
  /**
   * Processes one message exactly once, inside the caller's open transaction `tx`: records `(consumer, messageId)`
   * and, when that row is new, runs `fn(tx, info)` so its effects commit together with the record. An
   * already-recorded message returns "duplicate" without running `fn`. When `fn` throws, the error is rethrown:
   * roll the transaction back (postgres.js `sql.begin` does), or the message stays recorded without its effects.
   * @throws {OutboxError} VALIDATION for a bad message id or order position; CONFIG when ordering is asked of a
   *   storage without `keyOrder`; STORAGE when the database fails; whatever `fn` throws
   */
  handle(
    tx: Tx,
    messageId: string,
    fn: (tx: Tx, info: HandleInfo) => unknown,
    options?: HandleOptions,
  ): Promise<HandleResult>;
  /**
   * Opens a transaction on the storage's client and runs {@link Inbox.handle} in it (committed when "processed",
   * rolled back otherwise).
   * @throws {OutboxError} CONFIG when the storage has no `transaction()` (D1: use {@link Inbox.handleBatch})
   */
  process(messageId: string, fn: (tx: Tx, info: HandleInfo) => unknown, options?: HandleOptions): Promise<HandleResult>;
  /**
   * The inbox statement for your own atomic batch: put it FIRST, then the effects; the batch fails as a whole
   * (nothing applied) when the message was already recorded. Prefer {@link Inbox.handleBatch}, which tells the
   * duplicate failure from others.
   * @throws {OutboxError} CONFIG when the storage has no statement form; VALIDATION for a bad id
   */
  statement(messageId: string): Stmt;
  /**
   * Runs `[inbox statement, ...effects]` as one atomic batch: "processed" when applied, "duplicate" when the message
   * was already recorded (nothing applied). `effects` may be a function, called only when the message is not
   * recorded yet (a cheap pre-check that saves building statements for a duplicate).
   * @throws {OutboxError} CONFIG when the storage has no batch form; STORAGE when the batch fails for another reason
   */
  handleBatch(messageId: string, effects: readonly Stmt[] | (() => readonly Stmt[] | Promise<readonly Stmt[]>)): Promise<HandleResult>;
  /** Whether the message is recorded (committed) for this consumer. */
  isProcessed(messageId: string): Promise<boolean>;
  /**
   * Deletes at most `limit` rows older than the window (bounded work: call it from a cron, again while it returns
   * `limit`). Returns how many were deleted.
   */
  purge(options?: InboxPurgeOptions): Promise<number>;
}

/**
 * Validates a message id: a non-empty string of at most 255 characters without control characters.
 *
 * @param id the candidate
 * @throws {OutboxError} VALIDATION naming the problem
 * @example
 * ```ts
 * import { assertMessageId } from "edge-outbox";
 * assertMessageId("0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70");
 * ```
 */
export function assertMessageId(id: unknown): asserts id is string {
  if (typeof id !== "string" || id.length === 0 || id.length > MAX_MESSAGE_ID_LENGTH || /[\0-\x1f\x7f]/.test(id)) {
    throw new OutboxError(
      "VALIDATION",
      `message id ${JSON.stringify(typeof id === "string" ? id.slice(0, 80) : String(id))} is invalid: use 1-${MAX_MESSAGE_ID_LENGTH} characters without control characters`,
    );
  }
}

function assertOrder(order: OrderPosition): void {
  if (typeof order !== "object" || order === null) throw new OutboxError("VALIDATION", "order must be an object { key, seq }");
  const { key, seq, prevSeq } = order;
  if (typeof key !== "string" || key.length === 0 || key.length > MAX_INBOX_KEY_LENGTH) {
    throw new OutboxError("VALIDATION", `order.key must be a non-empty string of at most ${MAX_INBOX_KEY_LENGTH} characters`);
  }
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) {
    throw new OutboxError("VALIDATION", `order.seq must be a non-negative safe integer, got ${String(seq)}`);
  }
  if (prevSeq !== undefined && prevSeq !== null && (typeof prevSeq !== "number" || !Number.isSafeInteger(prevSeq) || prevSeq < 0 || prevSeq >= seq)) {
    throw new OutboxError("VALIDATION", `order.prevSeq must be a non-negative integer below seq, got ${String(prevSeq)}`);
  }
}

/**
 * Creates a consumer's inbox over an {@link InboxStorage}.
 *
 * @param options storage, consumer, retentionMs (default 604800000: 7 days)
 * @returns the inbox
 * @throws {OutboxError} CONFIG for a bad consumer name, retention, or a value that is not an inbox storage
 * @example
 * ```ts
 * import { createInbox } from "edge-outbox";
 * import { memoryInbox } from "edge-outbox/memory";
 *
 * const storage = memoryInbox();
 * const inbox = createInbox({ storage, consumer: "billing" });
 * const { tx, commit } = storage.begin();
 * const result = await inbox.handle(tx, "0193b7e2-4c1a-7d3e-9f10-2b3c4d5e6f70", (tx) => {
 *   tx.onCommit(() => console.log("charged once"));
 * });
 * await commit(); // result: "processed"; the same id again gives "duplicate"
 * ```
 */
export function createInbox<Tx, Stmt = never>(options: InboxOptions<Tx, Stmt>): Inbox<Tx, Stmt> {
  const o = options ?? ({} as InboxOptions<Tx, Stmt>);
  const storage = o.storage;
  if (
    typeof storage !== "object" || storage === null || typeof storage.record !== "function" ||
    typeof storage.isRecorded !== "function" || typeof storage.purge !== "function" || typeof storage.capabilities !== "object"
  ) {
    throw new OutboxError("CONFIG", "createInbox options: storage must be an InboxStorage (postgresInbox, libsqlInbox, d1Inbox, memoryInbox)");
  }
  const consumer = o.consumer;
  if (typeof consumer !== "string" || !CONSUMER_RE.test(consumer)) {
    throw new OutboxError(
      "CONFIG",
      `createInbox options: consumer ${JSON.stringify(String(consumer))} is invalid: use 1-128 characters of letters, digits and . _ : / -`,
    );
  }
  const retentionMs = o.retentionMs ?? DEFAULT_INBOX_RETENTION_MS;
  if (typeof retentionMs !== "number" || !Number.isSafeInteger(retentionMs) || retentionMs < 60_000) {
    throw new OutboxError("CONFIG", "createInbox options: retentionMs must be an integer of at least 60000 (1 minute)");
  }
  const caps = storage.capabilities;

  async function handle(tx: Tx, messageId: string, fn: (tx: Tx, info: HandleInfo) => unknown, opts?: HandleOptions): Promise<HandleResult> {
    assertMessageId(messageId);
    if (typeof fn !== "function") throw new OutboxError("VALIDATION", "inbox.handle needs a function fn(tx, info)");
    const order = opts?.order ?? null;
    let orderInfo: OrderInfo | null = null;
    if (order !== null) {
      assertOrder(order);
      if (!caps.keyOrder || !storage.lockKey || !storage.advanceKey) {
        throw new OutboxError("CONFIG", `inbox.handle: the ${storage.name} inbox storage has no key positions (capabilities.keyOrder)`);
      }
      const lastSeq = await storage.lockKey(tx, consumer, order.key);
      const prev = order.prevSeq ?? null;
      const gap = prev !== null && lastSeq !== null && lastSeq < prev;
      // A duplicate of a processed message has seq <= lastSeq, so it is never held: it falls through to "duplicate".
      const alreadyPast = lastSeq !== null && order.seq <= lastSeq;
      if (gap && order.strict === true && order.force !== true && !alreadyPast) return "held";
      orderInfo = { key: order.key, seq: order.seq, lastSeq, stale: lastSeq !== null && order.seq < lastSeq, gap };
    }
    const fresh = await storage.record(tx, consumer, messageId);
    if (!fresh) return "duplicate";
    if (order !== null) await storage.advanceKey!(tx, consumer, order.key, order.seq);
    await fn(tx, { messageId, consumer, order: orderInfo });
    return "processed";
  }

  const inbox: Inbox<Tx, Stmt> = {
    consumer,
    retentionMs,
    storage,
    handle,

    async process(messageId, fn, opts): Promise<HandleResult> {
      if (!caps.transaction || typeof storage.transaction !== "function") {
        throw new OutboxError("CONFIG", `inbox.process: the ${storage.name} inbox storage has no interactive transactions: use handleBatch`);
      }
      assertMessageId(messageId);
      const ROLLBACK = Symbol("rollback");
      let result: HandleResult = "processed";
      try {
        await storage.transaction(async (tx) => {
          result = await handle(tx, messageId, fn, opts);
          if (result !== "processed") throw ROLLBACK; // nothing to keep: roll back the key-position lock
        });
      } catch (e) {
        if (e !== ROLLBACK) throw e;
      }
      return result;
    },

    statement(messageId: string): Stmt {
      if (!caps.batchStatement || typeof storage.statement !== "function") {
        throw new OutboxError("CONFIG", `inbox.statement: the ${storage.name} inbox storage has no statement form: use handle(tx, …)`);
      }
      assertMessageId(messageId);
      return storage.statement(consumer, messageId);
    },

    async handleBatch(messageId, effects): Promise<HandleResult> {
      if (!caps.batchStatement || typeof storage.statement !== "function" || typeof storage.runBatch !== "function") {
        throw new OutboxError("CONFIG", `inbox.handleBatch: the ${storage.name} inbox storage has no batch form: use handle(tx, …)`);
      }
      assertMessageId(messageId);
      if (await storage.isRecorded(consumer, messageId)) return "duplicate";
      const list = typeof effects === "function" ? await effects() : effects;
      if (!Array.isArray(list)) throw new OutboxError("VALIDATION", "inbox.handleBatch: effects must be an array of statements");
      try {
        await storage.runBatch([storage.statement(consumer, messageId), ...list]);
        return "processed";
      } catch (e) {
        // The batch is atomic: when it failed and the row exists now, the row was there (or a concurrent delivery
        // committed it): either way the effects were applied exactly once, by that delivery.
        if (await storage.isRecorded(consumer, messageId).catch(() => false)) return "duplicate";
        throw isOutboxError(e) ? e : new OutboxError("STORAGE", `[edge-outbox:${storage.name}] inbox batch failed`, { cause: e });
      }
    },

    isProcessed(messageId: string): Promise<boolean> {
      try {
        assertMessageId(messageId);
      } catch (e) {
        return Promise.reject(e);
      }
      return storage.isRecorded(consumer, messageId);
    },

    purge(p?: InboxPurgeOptions): Promise<number> {
      const limit = p?.limit ?? 1_000;
      const olderThanMs = p?.olderThanMs ?? retentionMs;
      if (!Number.isSafeInteger(limit) || limit < 1 || limit > 100_000) {
        return Promise.reject(new OutboxError("VALIDATION", "inbox.purge: limit must be an integer between 1 and 100000"));
      }
      if (!Number.isSafeInteger(olderThanMs) || olderThanMs < 0) {
        return Promise.reject(new OutboxError("VALIDATION", "inbox.purge: olderThanMs must be a non-negative integer"));
      }
      return storage.purge({ consumer, olderThanMs, limit });
    },
  };
  return inbox;
}
