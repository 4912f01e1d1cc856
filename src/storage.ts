/**
 * The `OutboxStorage` contract: what every storage adapter (libSQL, Postgres, memory, D1…) implements.
 * Read this file first when writing an adapter; `edge-outbox/testing` proves an implementation.
 *
 * Rules every implementation follows:
 * - Every timestamp it writes or compares (`created_at`, `available_at`, lease expiry) comes from the
 *   **database clock**, never from the process calling it. Times are epoch milliseconds.
 * - Rows have a commit-ordered sequence (`seq`): for two rows of one key, the row whose transaction committed
 *   first has the smaller `seq`. Ids (UUIDv7) are assigned before commit and cannot serve for this.
 * - A row is *pending* (waiting, leased or backing off), *dead*, or — only with a delivered-retention window —
 *   *delivered*. A pending row is *due* when its `available_at` is at or before the database's now.
 * - A claim writes a fresh lease token and sets `available_at` to the lease expiry, so an expired lease makes the
 *   row due again by itself. Every settle is conditional on the token (fencing): a stale holder changes nothing.
 * - A keyed row is claimable only when no row of its key with a smaller `seq` is pending and not claimable now
 *   (leased, backing off or delayed). Claims take each key's rows in `seq` order, so the claimed rows of a key are
 *   always a prefix of that key's queue (the relay sends them one after another); which keys a claim serves first
 *   is the adapter's choice (oldest first, in `seq` order of their heads or rows). An adapter whose concurrent claimers
 *   can read stale snapshots claims only each key's head (no earlier pending row at all) and declares
 *   `capabilities.keyPrefixClaims: false`.
 * - With `capabilities.continueClaims`, a claim may also take the next rows of a key whose earlier rows the caller
 *   holds (`ClaimOptions.continue`), only while those rows are still the caller's: every pending row of that key up
 *   to the caller's last one was claimed by the caller and none of them was retried, released or claimed by another
 *   claimer since; the caller sends them after those, or releases them. Such a storage also honours
 *   `ClaimOptions.maxKeys` (at most that many keys besides the continued ones).
 * - Counters (delivered, retried, dead, delivery latency) live in the database, written in the same statement
 *   batch as the settle, so `stats()` is right when every call runs in a new serverless process.
 * - Driver failures are thrown as `OutboxError("STORAGE")` with the driver error as `cause`, `retryable` when a
 *   retry may succeed (busy database, dropped connection). Relay-side calls (`claim`, `settle`, …) retry transient
 *   busy errors with an asynchronous backoff before giving up; they never block the event loop.
 *
 * @module
 */
import type { NewMessage, OutboxMessage } from "./message.ts";

/** A message handed out by {@link OutboxStorage.claim}. */
export interface ClaimedMessage extends OutboxMessage {
  /** Commit-ordered sequence number (see the module doc). Only meaningful for ordering within one storage. */
  readonly seq: number;
  /**
   * The key's delivery position at claim time: the `seq` of the last message of this key whose settle recorded it
   * delivered (a retry, a dead letter or a release never moves it). null for a keyless message or a key with no
   * recorded position (never delivered, or its position purged); absent when the storage does not track positions.
   * Every row of one key in one claim carries the same value: the relay advances it as it delivers them, and sends
   * it as `Outbox-Prev-Seq` so a consumer's strict inbox can hold a message whose predecessor it has not processed.
   */
  readonly prevSeq?: number | null | undefined;
}

/** The result of one {@link OutboxStorage.claim} call. */
export interface Claim {
  /** The fresh lease token written on every claimed row; settle with it. */
  readonly token: string;
  /** Lease expiry by the database clock, epoch ms. */
  readonly leaseUntil: number;
  /** The database's "now" at claim time, epoch ms (lets the relay measure clock skew). */
  readonly now: number;
  /** The claimed rows, sorted by `seq`. Empty when nothing is due. */
  readonly messages: readonly ClaimedMessage[];
}

/** What the relay decided for one claimed message. */
export type Settlement =
  /** Delivered: delete the row (or mark it delivered when a retention window is configured) and count it. */
  | { readonly id: string; readonly outcome: "delivered" }
  /** Failed, try again after `delayMs` (added to the database clock). */
  | { readonly id: string; readonly outcome: "retry"; readonly delayMs: number; readonly error: string }
  /** Failed for good: move to dead letters. */
  | { readonly id: string; readonly outcome: "dead"; readonly error: string }
  /** Claimed but never sent (budget or signal ran out): clear the lease, make it due now, give back the attempt. */
  | { readonly id: string; readonly outcome: "released" };

/** The result of one {@link OutboxStorage.settle} call. */
export interface SettleResult {
  /** How many settlements matched their row and lease token and were applied. */
  readonly applied: number;
  /** Ids whose lease token no longer matched (a newer claim owns them, or they are gone): nothing was changed. */
  readonly lost: readonly string[];
}

/** A dead-lettered message. */
export interface DeadLetter {
  /** The message id. */
  readonly id: string;
  /** Topic name. */
  readonly topic: string;
  /** Ordering key or null. */
  readonly key: string | null;
  /** Decoded payload. */
  readonly payload: unknown;
  /** Headers given at enqueue. */
  readonly headers: Readonly<Record<string, string>>;
  /** Enqueue time, epoch ms (database clock). */
  readonly createdAt: number;
  /** When it was dead-lettered, epoch ms (database clock). */
  readonly deadAt: number;
  /** Attempts made. */
  readonly attempts: number;
  /** The final error. */
  readonly lastError: string | null;
}

/** One page of dead letters. */
export interface DeadLetterPage {
  /** The dead letters, oldest enqueue first. */
  readonly items: readonly DeadLetter[];
  /** Pass as `cursor` to get the next page; null on the last page. */
  readonly cursor: string | null;
}

/** Counts and rates read from the database. */
export interface OutboxStats {
  /** Rows waiting for delivery: due, delayed, leased or backing off. */
  readonly pending: number;
  /** Pending rows due now (claimable unless blocked by their key). */
  readonly due: number;
  /** Pending rows held by an unexpired lease. */
  readonly leased: number;
  /** Dead letters. */
  readonly dead: number;
  /** Age of the oldest pending row since its enqueue, ms, by the database clock; null when nothing is pending. */
  readonly oldestPendingAgeMs: number | null;
  /**
   * How long the longest-waiting due row has been due, ms (database now − its `available_at`): a delayed or
   * backing-off row counts only from when it became due, a leased row not at all. null when nothing is due.
   * Health checks use this, not {@link OutboxStats.oldestPendingAgeMs}. Optional for third-party adapters.
   */
  readonly oldestDueAgeMs?: number | null | undefined;
  /** Counters over the last `windowMs` (per-minute buckets: the window is rounded up to whole minutes). */
  readonly window: {
    /** The window asked for, ms. */
    readonly windowMs: number;
    /** Messages delivered in the window. */
    readonly delivered: number;
    /** Attempts that failed and were scheduled for retry in the window. */
    readonly retried: number;
    /** Messages dead-lettered in the window. */
    readonly dead: number;
    /** Mean enqueue-to-delivery latency of the messages delivered in the window, ms; null when none. */
    readonly avgLatencyMs: number | null;
    /** Largest enqueue-to-delivery latency in the window, ms; null when none. */
    readonly maxLatencyMs: number | null;
  };
  /** The database clock when the stats were read, epoch ms. */
  readonly now: number;
}

/** Dialect differences, declared by the adapter (the core branches on these, never on a dialect name). */
export interface StorageCapabilities {
  /** `statement()` is implemented: messages can join the caller's atomic batch (libSQL / D1 `batch`). */
  readonly batchStatement: boolean;
  /** Concurrent claimers skip each other's locked rows instead of waiting (`FOR UPDATE SKIP LOCKED`). */
  readonly skipLocked: boolean;
  /** Writers are serialised by the database (SQLite): one write transaction at a time. */
  readonly serialWrites: boolean;
  /**
   * A claim may return several rows of one key (a prefix of its queue, sent one after another). When false, a claim
   * returns at most the head row of each key: the safe choice where concurrent claimers read possibly stale
   * snapshots (Postgres `SKIP LOCKED`), at the cost of one message per key per claim.
   */
  readonly keyPrefixClaims: boolean;
  /**
   * `claim` honours {@link ClaimOptions.continue}: it can take the next rows of keys the caller holds, before the
   * caller has settled the rows it holds of them, and {@link ClaimOptions.maxKeys}. Absent or false: both are
   * ignored. Optional for third-party adapters.
   */
  readonly continueClaims?: boolean | undefined;
}

/** Options of {@link OutboxStorage.claim}. */
export interface ClaimOptions {
  /** The most rows to claim. */
  readonly limit: number;
  /** How long the claimed rows are leased, ms. */
  readonly leaseMs: number;
  /**
   * Keys the caller holds and will go on delivering, in order (the relay's streaming drain). `after` lists, for each
   * such key, the `seq` of the last row of it the caller holds; `tokens`, the caller's lease tokens whose rows are not
   * settled yet. A storage with `capabilities.continueClaims` may then claim the next rows of that key (seq greater
   * than `after`, a due prefix, in seq order) although the rows up to `after` are still leased, but only when every
   * pending row of the key up to `after` is still leased to the caller: claimed with one of `tokens` (the last claim
   * that took rows of the key, at least; pass every token, as the relay does), and none of them retried, released or
   * claimed by another claimer since. It may skip any of them (one another claimer holds locked, say). The caller
   * promises to send a continued key's new rows only after every row it holds of that key up to `after` has been
   * delivered or dead-lettered, and to release them otherwise (a retry, a release, a lost lease). Storages without
   * the capability ignore it. @default none
   */
  readonly continue?: {
    /** Per key to continue, the seq of the last row of it the caller holds. */
    readonly after: readonly number[];
    /** The caller's lease tokens with rows not settled yet. */
    readonly tokens: readonly string[];
  } | undefined;
  /**
   * The most keys to take rows of besides the ones named in {@link ClaimOptions.continue} (0: none); keyless rows
   * are not counted. The relay passes it while it holds as many keys as it can keep busy, so that it does not take
   * keys whose rows would only wait in it while another relay could send them. A storage with
   * `capabilities.continueClaims` honours it; others may ignore it (the claim then takes rows of any number of
   * keys). @default no limit
   */
  readonly maxKeys?: number | undefined;
}

/**
 * The storage contract. `Tx` is the adapter's transaction handle (what the user's transaction gives them), and
 * `Stmt` the adapter's native statement type for atomic batches (`never` when unsupported).
 *
 * @example
 * ```ts
 * import type { OutboxStorage } from "edge-outbox";
 * function describeStorage(s: OutboxStorage<unknown, unknown>): string {
 *   return `${s.name} (skipLocked: ${s.capabilities.skipLocked})`;
 * }
 * ```
 */
export interface OutboxStorage<Tx = unknown, Stmt = never> {
  /** Adapter name for error messages, e.g. "libsql". */
  readonly name: string;
  /** Dialect differences. */
  readonly capabilities: StorageCapabilities;
  /**
   * Identifies the data this storage reads, e.g. `"postgres:public.outbox"` or `"libsql:outbox"`: two storages on the
   * same table share a scope, two tables do not. It does not name the database (a client does not reliably expose
   * it): two databases with the same table have the same scope. The relay's default `lockKey` derives from it.
   * @default the adapter's `name`
   */
  readonly scope?: string | undefined;

  /** Creates or upgrades the tables and indexes. Idempotent and versioned; safe to call on every start. */
  migrate(): Promise<void>;

  /**
   * Inserts messages inside the caller's open transaction `tx`; they become visible when it commits and vanish
   * if it rolls back. Assigns the commit-ordered `seq`, `created_at` and `available_at = now + delayMs`.
   *
   * Ids are unique among the rows in the table: when one of `messages` has an id that a row already has (pending,
   * dead, or kept delivered), nothing of this call is written and the caller's transaction stays usable (on
   * Postgres: `ON CONFLICT (id) DO NOTHING` and a count check, never a unique violation that aborts the
   * transaction). An id whose row was delivered and deleted is accepted again: consumers dedupe with the inbox.
   * @throws {OutboxError} CONFLICT for a taken id (nothing written, `tx` usable); STORAGE when the insert fails (the
   *   caller's transaction should be rolled back)
   */
  enqueue(tx: Tx, messages: readonly NewMessage[]): Promise<void>;

  /**
   * Returns one native statement that inserts `messages`, for the caller's atomic batch. Synchronous; sends nothing.
   * Present only when `capabilities.batchStatement` is true. A taken id (see {@link OutboxStorage.enqueue}) fails the
   * whole batch atomically: the database rejects it and none of the batch's statements take effect.
   */
  statement?(messages: readonly NewMessage[]): Stmt;

  /**
   * Claims up to `limit` due, unblocked rows in `seq` order: writes a fresh lease token, sets the lease expiry to
   * database now + `leaseMs`, and increments `attempts` (an attempt counts at claim, so a message that crashes
   * relays still reaches its attempt limit). One atomic statement or transaction.
   */
  claim(options: ClaimOptions): Promise<Claim>;

  /**
   * Applies settlements for rows claimed with `token`, each only if the row still carries that token.
   * Records counters (delivered, latency, retried, dead) in the database in the same atomic batch.
   * One statement per outcome kind, not one round trip per message.
   */
  settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult>;

  /**
   * Optional wake-up source: calls `onWake` soon after a transaction that enqueued messages commits (in this process
   * or, where the database can tell, in any process: Postgres LISTEN/NOTIFY), until `signal` aborts. Resolves once it
   * is listening. A long-running relay waits for a wake-up or its poll interval, whichever comes first; a spurious
   * wake-up is harmless. Absent: the relay only polls. The memory storage wakes at commit, in process; Postgres
   * listens on a channel derived from schema and table, notified by the enqueue and replay statements.
   */
  subscribe?(onWake: () => void, signal: AbortSignal): Promise<void>;

  /** Whether at least one row is claimable now (due and not blocked by its key). */
  hasDue(): Promise<boolean>;

  /** Counts and windowed counters. @param options.windowMs counter window @default 300000 */
  stats(options?: { windowMs?: number | undefined }): Promise<OutboxStats>;

  /** Pages through dead letters, oldest first. `cursor` comes from the previous page. */
  listDead(options: { limit: number; cursor?: string | null | undefined }): Promise<DeadLetterPage>;

  /**
   * Moves a dead letter back to pending and re-enters it at the **tail of its key**: a new commit-ordered `seq`
   * (taken the way an enqueue takes it, e.g. under the same per-key lock), `attempts` 0, due now (database clock),
   * with the same id, topic, key, headers and payload. Like any keyed row it is claimable only when no earlier-`seq`
   * row of its key is pending and not claimable, so it is never in flight beside a later message of its key: while
   * that message is leased (by any claimer) or backing off, the replayed row waits, and it is delivered after it.
   * Wakes `subscribe` listeners like an enqueue. Returns false when no dead letter has that id.
   */
  replayDead(id: string): Promise<boolean>;

  /**
   * Deletes at most `limit` rows of `status` ("dead": by dead-letter time; "delivered": by delivery time) older than
   * `olderThan` (epoch ms). Returns how many were deleted; call again while it returns `limit`.
   */
  purge(options: { status: "dead" | "delivered"; olderThan: number; limit: number }): Promise<number>;
}

/** The transaction type of a storage. */
export type TxOf<S> = S extends OutboxStorage<infer Tx, unknown> ? Tx : never;
/** The native statement type of a storage. */
export type StmtOf<S> = S extends OutboxStorage<unknown, infer Stmt> ? Stmt : never;
