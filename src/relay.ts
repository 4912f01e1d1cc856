/**
 * The drain engine: claim → send → settle, within a time budget, with bounded concurrency and per-key order.
 *
 * @module
 */
import * as v from "valibot";
import { type BackoffOptions, backoffDelay } from "./backoff.ts";
import { OutboxError, toOutboxError } from "./errors.ts";
import type { Lease, Lock } from "./lock.ts";
import type { Outbox } from "./outbox.ts";
import { parseOptions } from "./options.ts";
import type { ClaimedMessage, OutboxStorage, Settlement } from "./storage.ts";
import type { TraceAttributes, TraceSpan, Tracing } from "./tracing.ts";
import type { DeliveryOutcome, SendContext, Transport } from "./transport.ts";

/**
 * How long a drain that holds all the keys it may (see `keyCap` in the drain) goes on continuing a key before it lets
 * the key go for the ones waiting in the database.
 */
const KEY_TURN_MS = 1_000;

/** Options of {@link createRelay}. */
export interface RelayOptions {
  /** The outbox whose storage is drained. */
  // deno-lint-ignore no-explicit-any
  outbox: Outbox<any, any, any>;
  /** Where messages go. */
  transport: Transport;
  /** Keeps two drains from overlapping (efficiency only; correctness rests on lease tokens). @default none */
  lock?: Lock | undefined;
  /**
   * The lock key. The default names the adapter, schema and table drained (`storage.scope`), so relays of two tables
   * sharing one lock store never skip each other; it does not name the database, so relays of two databases with the
   * same table (a database per tenant) that share one lock store (one Upstash Redis) need a key each, e.g.
   * `edge-outbox:relay:<tenant>`. @default `edge-outbox:relay:${storage.scope ?? storage.name}`
   */
  lockKey?: string | undefined;
  /** Rows claimed per claim. @default 100 */
  batchSize?: number | undefined;
  /** `send` calls in flight at once. @default 8 */
  concurrency?: number | undefined;
  /** How long a claim owns its rows, ms; must be at least twice `sendTimeoutMs`. @default 30000 */
  leaseMs?: number | undefined;
  /** Longest a single `send` call may take, ms; its signal aborts then. @default 10000 */
  sendTimeoutMs?: number | undefined;
  /**
   * Longest the relay waits for one storage call (a claim, a settle, `hasDue`), ms; also for the `lock`'s
   * `acquire` (LOCK when it takes longer: a lock that still lands expires by itself, and drains meanwhile skip with
   * `lock-busy`) and a lease's `release` (given up: it expires). A storage call that takes longer (a
   * database behind a half-open connection, a partition: drivers such as postgres.js have no query timeout of their
   * own, and TCP keepalive takes minutes) fails the drain with STORAGE, as a failed call does: nothing new is
   * claimed or sent, the drain waits for its sends in flight, hands back its unsent rows and settles what it can,
   * each of those calls bounded the same way, then rejects; `relay.run` backs off and drains again. So a drain returns
   * or rejects within about `budgetMs + sendTimeoutMs + 2 × storageTimeoutMs`, whatever the database does. The call
   * is abandoned, not undone: a claim that still commits leaves its rows leased until `leaseMs` runs out, a settle
   * that still commits is applied; either way nothing is lost (an unsettled delivery is sent again, with the same
   * id). @default 10000
   */
  storageTimeoutMs?: number | undefined;
  /** Attempts before a message is dead-lettered. @default 10 */
  maxAttempts?: number | undefined;
  /**
   * Tracing hooks (e.g. `otelTracing()` from `edge-outbox/otel`): a span per drain and a child span per send call,
   * linked to each message's producer context. @default the outbox's `tracing`, else none
   */
  tracing?: Tracing | undefined;
  /** Retry delays; a transport's `retryAfterMs` is honoured above `maxMs`, up to one day. @default { baseMs: 1000, maxMs: 300000, minMs: 250 } */
  backoff?: BackoffOptions | undefined;
}

/** Options of one {@link Relay.drain} call. */
export interface DrainOptions {
  /** Time budget, ms. The drain stops claiming and starting sends when less than `safetyMarginMs` remains; sends in flight then finish within `sendTimeoutMs`. @default 10000 */
  budgetMs?: number | undefined;
  /**
   * Stop early (like the budget running out). It also fires every in-flight send's `SendContext.signal`; the drain
   * stops waiting for those sends at once and reports them as retried. @default none
   */
  signal?: AbortSignal | undefined;
  /** Budget kept back at the end for settling, ms. @default min(1000, budgetMs / 10) */
  safetyMarginMs?: number | undefined;
  /**
   * Keeps the drain alive once the outbox is empty, until `lingerMs` after the drain started (capped at
   * `budgetMs - safetyMarginMs`): it waits for a wake-up from `storage.subscribe` (Postgres LISTEN/NOTIFY, an
   * in-process commit) or `lingerPollMs`, whichever comes first, asks `storage.hasDue()`, and drains again when
   * rows are due. One report for the whole call (the sums). The budget, the signal and a lost lock stop it as they
   * stop any drain, so a lingering drain still returns within about `budgetMs + sendTimeoutMs`. With a `lock` held
   * elsewhere, a lingering drain retries acquiring it every `lingerPollMs` until its linger ends (the holder, e.g.
   * the previous lingering drain, hands over) before it reports `skipped: "lock-busy"`. Costs about
   * `lingerMs / lingerPollMs` `hasDue` reads (an indexed read) and the wall time. `qstashNudge({ linger: true })`
   * uses it to keep the drain of a window open until the window's end. @default 0 (return as soon as nothing is due)
   * @example
   * ```ts
   * // Called right after a commit burst starts: deliver whatever commits in the next second within ~25 ms.
   * const report = await relay.drain({ budgetMs: 5_000, lingerMs: 1_000, lingerPollMs: 25 });
   * console.log(report.delivered, report.elapsedMs); // everything delivered during the linger; elapsedMs ≥ 1000
   * ```
   */
  lingerMs?: number | undefined;
  /** While lingering: the longest wait between two `hasDue` reads when no wake-up comes, ms. @default 25 */
  lingerPollMs?: number | undefined;
}

/** What one drain did. */
export interface DrainReport {
  /** Rows claimed. */
  claimed: number;
  /** Messages delivered and settled. */
  delivered: number;
  /** Messages that failed and were scheduled for retry. */
  retried: number;
  /** Messages dead-lettered. */
  dead: number;
  /** Rows claimed but not sent (budget, signal or lease ran out), handed back without using an attempt. */
  released: number;
  /** Settlements rejected because a newer claim owns the row (this relay's lease had expired). */
  leaseLost: number;
  /** Wall time of the drain, ms. */
  elapsedMs: number;
  /** True when the drain stopped for its budget, signal or lost lock while rows were due: call again. */
  more: boolean;
  /** Set when the drain did nothing because the lock was held elsewhere. */
  skipped?: "lock-busy" | undefined;
}

/** Options of {@link Relay.run}. */
export interface RunOptions {
  /** Stops the loop: in-flight sends are aborted (their signals fire), unsent claimed rows are released. */
  signal: AbortSignal;
  /**
   * Wait between drains when nothing was due, ms. When the storage has `subscribe` (Postgres LISTEN/NOTIFY, an
   * in-process wake), a commit ends the wait at once and this is only the fallback. @default 500
   */
  pollIntervalMs?: number | undefined;
  /** Budget of each drain, ms. @default 30000 */
  budgetMs?: number | undefined;
  /** Called after every drain. A throw (or rejection) is logged and ignored: it never changes the loop. @default none */
  onReport?: ((report: DrainReport) => void) | undefined;
  /**
   * Called when a drain fails (the loop backs off and continues). A throw (or rejection) is logged and ignored.
   * @default console.error
   */
  onError?: ((error: OutboxError) => void) | undefined;
}

/** The relay. */
export interface Relay {
  /**
   * Drains due messages within a time budget and reports what happened. With `lingerMs`, it then stays until
   * `lingerMs` after its start and drains what commits meanwhile (one report for the whole call).
   * @throws {OutboxError} STORAGE or LOCK when the database or the lock store fails (never a half-filled report)
   */
  drain(options?: DrainOptions): Promise<DrainReport>;
  /**
   * Drains in a loop until `signal` aborts (for long-running processes): after a drain with nothing left, it waits for
   * a wake-up from `storage.subscribe` or `pollIntervalMs`, whichever comes first. Resolves when stopped.
   */
  run(options: RunOptions): Promise<void>;
}

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));

const relayOptionsSchema = v.pipe(
  v.strictObject({
    outbox: v.custom<object>(
      (o) => typeof o === "object" && o !== null && typeof (o as { storage?: { claim?: unknown } }).storage?.claim === "function",
      "must be an outbox made by createOutbox",
    ),
    transport: v.custom<object>(
      (t) => typeof t === "object" && t !== null && typeof (t as { send?: unknown }).send === "function",
      "must be a Transport (an object with send(messages, context))",
    ),
    lock: v.optional(v.custom<object>(
      (l) => typeof l === "object" && l !== null && typeof (l as { acquire?: unknown }).acquire === "function",
      "must be a Lock (an object with acquire(key, leaseMs))",
    )),
    lockKey: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(200))),
    tracing: v.optional(v.custom<Tracing>(
      (t) => typeof t === "object" && t !== null && typeof (t as Tracing).startSpan === "function",
      "must be Tracing hooks (inject and startSpan), e.g. otelTracing() from edge-outbox/otel",
    )),
    batchSize: v.optional(int(1, 10_000), 100),
    concurrency: v.optional(int(1, 1_000), 8),
    leaseMs: v.optional(int(100, 3_600_000), 30_000),
    sendTimeoutMs: v.optional(int(10, 1_800_000), 10_000),
    storageTimeoutMs: v.optional(int(10, 3_600_000), 10_000),
    maxAttempts: v.optional(int(1, 1_000), 10),
    backoff: v.optional(v.strictObject({
      baseMs: v.optional(int(1, 86_400_000), 1_000),
      maxMs: v.optional(int(1, 604_800_000), 300_000),
      minMs: v.optional(int(0, 86_400_000), 250),
    }), {}),
  }),
  v.check((o) => o.leaseMs >= 2 * o.sendTimeoutMs, "leaseMs must be at least twice sendTimeoutMs"),
);

// Structural, not `v.instance(AbortSignal)`: Deno's default libs type the AbortSignal constructor so that
// `instance` infers never, and a signal from another realm (a polyfill, a worker) is not an instance either.
const abortSignal = v.custom<AbortSignal>(
  (s) =>
    typeof s === "object" && s !== null && typeof (s as AbortSignal).aborted === "boolean" &&
    typeof (s as AbortSignal).addEventListener === "function" && typeof (s as AbortSignal).removeEventListener === "function",
  "must be an AbortSignal",
);

const drainOptionsSchema = v.strictObject({
  budgetMs: v.optional(int(1, 86_400_000), 10_000),
  signal: v.optional(abortSignal),
  safetyMarginMs: v.optional(int(0, 86_400_000)),
  lingerMs: v.optional(int(0, 86_400_000), 0),
  lingerPollMs: v.optional(int(1, 60_000), 25),
});

const runOptionsSchema = v.strictObject({
  signal: abortSignal,
  pollIntervalMs: v.optional(int(1, 3_600_000), 500),
  budgetMs: v.optional(int(1, 86_400_000), 30_000),
  onReport: v.optional(v.function()),
  onError: v.optional(v.function()),
});

const now = (): number => performance.now();
/** Runs tracing code; a throwing tracer must never change a drain. */
function traceSafely(fn: () => void): void {
  try {
    fn();
  } catch {
    // ignored
  }
}
/** What a send's race resolves to when its timeout or the drain's signal fired first. */
const STOPPED: unique symbol = Symbol("stopped");

/**
 * Creates a relay that drains an outbox into a transport.
 *
 * @param options outbox, transport, lock, batchSize (100), concurrency (8), leaseMs (30000), sendTimeoutMs (10000), storageTimeoutMs (10000), maxAttempts (10), backoff
 * @returns the relay
 * @throws {OutboxError} CONFIG naming the bad option (e.g. `leaseMs must be at least twice sendTimeoutMs`)
 * @example
 * ```ts
 * import { createRelay } from "edge-outbox";
 * import { functionTransport } from "edge-outbox/memory";
 *
 * const relay = createRelay({
 *   outbox,
 *   transport: functionTransport(async (m) => { await fetch("https://example.com/hook", { method: "POST", body: m.body }) }),
 *   batchSize: 100, concurrency: 8, leaseMs: 30_000, sendTimeoutMs: 10_000, maxAttempts: 10,
 * });
 * const report = await relay.drain({ budgetMs: 10_000 });
 * console.log(report); // { claimed, delivered, retried, dead, released, leaseLost, elapsedMs, more }
 * ```
 */
export function createRelay(options: RelayOptions): Relay {
  const o = parseOptions("createRelay options", relayOptionsSchema, options);
  const storage: OutboxStorage<unknown, unknown> = options.outbox.storage;
  const serialWrites = storage.capabilities.serialWrites;
  const continueClaims = storage.capabilities.continueClaims === true;
  const transport = options.transport;
  const lock = options.lock;
  const maxBatch = transport.maxBatchSize ?? 1;
  if (!Number.isInteger(maxBatch) || maxBatch < 1) {
    throw new OutboxError("CONFIG", `createRelay options: transport.maxBatchSize must be a positive integer (got ${maxBatch})`);
  }
  const orderedBatches = transport.orderedBatches ?? false;
  if (typeof orderedBatches !== "boolean") {
    throw new OutboxError("CONFIG", `createRelay options: transport.orderedBatches must be a boolean (got ${safeJson(orderedBatches)})`);
  }
  // A call may carry a run of consecutive rows per key (see Transport.orderedBatches).
  const keyRuns = orderedBatches && maxBatch > 1;
  /** Keys whose run was in a call that failed as a whole: sent a row per call for a while (see sendUnit). */
  const soloKeys = new ExpiringSet(SOLO_KEY_MS, 10_000);
  const { batchSize, concurrency, leaseMs, sendTimeoutMs, storageTimeoutMs, maxAttempts, backoff } = o;
  /**
   * A storage call (or, with `code` LOCK, a lock call), rejected with that code when it has not answered within
   * storageTimeoutMs (see the option).
   */
  const bounded = <T>(what: string, call: () => Promise<T>, code: "STORAGE" | "LOCK" = "STORAGE"): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const subject = code === "LOCK" ? lock!.name : storage.name;
        reject(new OutboxError(code, `${subject} ${what} did not answer within storageTimeoutMs (${storageTimeoutMs} ms)`, { retryable: true }));
      }, storageTimeoutMs);
      // Called at once, as before the bound (a write issued in this turn still joins a libSQL commit of this turn);
      // a synchronous throw rejects like a failed call.
      let pending: Promise<T>;
      try {
        pending = call();
      } catch (e) {
        pending = Promise.reject(e);
      }
      pending.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  const hasDue = (): Promise<boolean> => bounded("hasDue()", () => storage.hasDue());
  const lockKey = o.lockKey ?? `edge-outbox:relay:${storage.scope ?? storage.name}`;
  const tracing: Tracing | undefined = options.tracing ?? options.outbox.tracing;
  // Kept back from the lease so a settle lands before the lease can expire.
  const leaseReserveMs = Math.min(1_000, Math.floor(leaseMs / 10));

  async function drain(drainOptions: DrainOptions = {}): Promise<DrainReport> {
    const d = parseOptions("drain options", drainOptionsSchema, drainOptions);
    const started = now();
    const margin = d.safetyMarginMs ?? Math.min(1_000, Math.floor(d.budgetMs / 10));
    const stopAt = started + d.budgetMs - margin;
    const lingerUntil = Math.min(started + d.lingerMs, stopAt);
    const report: DrainReport = {
      claimed: 0,
      delivered: 0,
      retried: 0,
      dead: 0,
      released: 0,
      leaseLost: 0,
      elapsedMs: 0,
      more: false,
    };

    let lease: Lease | null = null;
    if (lock) {
      for (;;) {
        try {
          lease = await bounded("acquire()", () => lock.acquire(lockKey, d.budgetMs + sendTimeoutMs + 1_000), "LOCK");
        } catch (e) {
          throw toOutboxError("LOCK", `[edge-outbox:relay] acquiring lock "${lockKey}" with ${lock.name} failed`, e, true);
        }
        // A lingering drain waits for the lock within its linger: the holder (typically the previous lingering
        // drain, whose end overlaps this one's start) ends soon, and this drain then serves the rest of its linger.
        const left = lingerUntil - now();
        if (lease || left <= 0 || d.signal?.aborted) break;
        await sleep(Math.min(d.lingerPollMs, left), [d.signal]);
      }
      if (!lease) {
        report.skipped = "lock-busy";
        report.elapsedMs = Math.round(now() - started);
        traceSafely(() => startSpan("edge-outbox.drain", { "outbox.storage": storage.name, "outbox.skipped": "lock-busy" })?.end());
        return report;
      }
    }
    const stopped = (): boolean => d.signal?.aborted === true || lease?.signal.aborted === true || now() >= stopAt;

    const span = startSpan("edge-outbox.drain", {
      "outbox.storage": storage.name,
      "outbox.scope": storage.scope ?? storage.name,
      "outbox.transport": transport.name,
      "outbox.budget_ms": d.budgetMs,
    });
    try {
      let { stoppedEarly } = await pipeline(report, stopped, d.signal, span);
      if (!stoppedEarly && now() < lingerUntil) {
        stoppedEarly = await linger(lingerUntil, d.lingerPollMs, stopped, [d.signal, lease?.signal], report, () => pipeline(report, stopped, d.signal, span));
      }
      if (stoppedEarly) report.more = report.released > 0 || await hasDue();
    } catch (e) {
      const error = toOutboxError("STORAGE", `[edge-outbox:relay] ${storage.name} storage failed`, e, true);
      traceSafely(() => span?.recordError(error));
      throw error;
    } finally {
      const held = lease;
      if (held) await bounded("release()", () => held.release(), "LOCK").catch(() => {}); // an unreleased lock expires by itself
      report.elapsedMs = Math.round(now() - started);
      traceSafely(() => {
        span?.setAttributes({
          "outbox.claimed": report.claimed,
          "outbox.delivered": report.delivered,
          "outbox.retried": report.retried,
          "outbox.dead": report.dead,
          "outbox.released": report.released,
          "outbox.lease_lost": report.leaseLost,
          "outbox.more": report.more,
          "outbox.elapsed_ms": report.elapsedMs,
        });
        span?.end();
      });
    }
    return report;
  }

  /**
   * The linger of a drain ({@link DrainOptions.lingerMs}): until `until`, checks `hasDue` and runs `again` (one more
   * pipeline into the same report) when rows are due, else waits for a wake-up (`storage.subscribe`, subscribed for
   * the linger only), `pollMs`, or a stop signal. The last check is at `until`, so a row committed before then is
   * drained by this call. Resolves true when it stopped early (budget, signal, lost lock), false when the linger ran
   * out with nothing due. A failing `hasDue` rejects (the drain rejects with STORAGE, like any storage failure).
   */
  async function linger(
    until: number,
    pollMs: number,
    stopped: () => boolean,
    signals: readonly (AbortSignal | undefined)[],
    report: DrainReport,
    again: () => Promise<{ stoppedEarly: boolean }>,
  ): Promise<boolean> {
    const listening = new AbortController();
    let woken = false;
    let interrupt: (() => void) | undefined;
    if (storage.subscribe) {
      const onWake = (): void => {
        woken = true;
        interrupt?.();
      };
      // Not awaited, and a failure ignored: polling covers until (or unless) the subscription listens.
      Promise.resolve().then(() => storage.subscribe!(onWake, listening.signal)).catch(() => {});
    }
    try {
      for (;;) {
        if (stopped()) return true;
        woken = false;
        if (await hasDue()) {
          const claimed = report.claimed;
          if ((await again()).stoppedEarly) return true;
          // A due row that no claim can take (a race with another drain) must not make this loop spin.
          if (report.claimed > claimed) continue;
        }
        const left = until - now();
        if (left <= 0) return false;
        if (!woken) await sleep(Math.min(pollMs, left), signals, (i) => (interrupt = i));
        interrupt = undefined;
      }
    } finally {
      listening.abort();
    }
  }

  /**
   * The streaming drain: claim → send → settle as a pipeline (see DESIGN.md, "The drain engine").
   *
   * - Up to `concurrency` sends are in flight. A slot that frees takes the next startable unit, lowest `seq` first:
   *   up to `maxBatchSize` keyless messages, or the head of a key whose previous message has a final outcome (with
   *   `orderedBatches`, the head and the key's queued rows after it: a run).
   * - Claims are costly (a write transaction: an fsync on SQLite, a round trip on a remote database), so a claim runs
   *   only when it can pay. Ahead of need, while sends go on, when fewer than `lowWater` claimed rows could start
   *   soon (queued keyless rows, plus one per key: a key's rows go one by one): after a full claim whose rows were
   *   mostly not repeats of held keys (a keyless or many-keyed backlog; where claims and settles can overlap, also one
   *   that brought two or more keys not held before) or while such claims find rows (the last one
   *   ahead of need was not empty), or once half of the keys held at the last claim are free again (all their rows
   *   settled: their next rows became claimable).
   *   When everything is idle: if the last claim was full, or a settle has landed since it started. Otherwise the
   *   drain ends (nothing more is claimable).
   *   Beside a claim in flight, where claims and settles can run at once (not `serialWrites`), a second and a third
   *   claim when claims are the bottleneck: a send slot is free and no claimed row can start, after a full claim
   *   whose rows were mostly not repeats of held keys (up to three claims at once) or that brought two or more new
   *   keys (up to two), and while the last such claim found rows.
   * - Keys held (with rows unsent or in flight) stay within `keyCap`, twice what can be sent at once: a claim asks for
   *   no more new keys than the room left (`ClaimOptions.maxKeys`, counting the room claims in flight may fill), and
   *   at the cap a key held for `KEY_TURN_MS` is no longer continued, so it is let go once its held rows are sent.
   * - Outcomes are buffered per claim token and settled in groups: at once when no send is in flight, when a group
   *   reaches `groupSize`, or `settleDelayMs` after its first outcome (2 ms, 8 ms with `serialWrites`, or as long as the
   *   last settle took). One settle round at a time, so a slow database makes the groups bigger, not the queue of
   *   settles longer.
   * - A send starts only when its whole timeout fits in its claim's lease; otherwise its rows (for a key: the key's
   *   remaining rows) are released. A retrying key head releases the key's remaining rows.
   * - On stop (budget, signal, lost lock) or a storage failure nothing new is claimed or started; queued rows are
   *   released, in-flight sends finish (bounded by their timeout), and every outcome is settled before returning.
   *   A storage failure is rethrown after that.
   * Resolves when every claimed row has been settled (or a settle failed).
   */
  /** Starts a span when tracing is on; a throwing tracer never affects a drain. */
  function startSpan(name: string, attributes: TraceAttributes, parent?: TraceSpan, links?: ClaimedMessage[]): TraceSpan | undefined {
    if (!tracing) return undefined;
    try {
      return tracing.startSpan(name, { attributes, parent, links: links?.map((m) => m.headers) });
    } catch {
      return undefined;
    }
  }

  function pipeline(
    report: DrainReport,
    stopped: () => boolean,
    signal: AbortSignal | undefined,
    drainSpan?: TraceSpan | undefined,
  ): Promise<{ stoppedEarly: boolean }> {
    interface ClaimState {
      readonly token: string;
      /** A send of this claim's rows must end by then (performance.now() time). */
      readonly deadline: number;
    }
    interface Held {
      readonly m: ClaimedMessage;
      readonly claim: ClaimState;
    }
    const lowWater = Math.max(concurrency * maxBatch, Math.ceil(batchSize / 2));
    const groupSize = Math.max(batchSize, concurrency * maxBatch);
    // How long an outcome may wait for others to join its settle: at least 2 ms (8 ms where the database has one
    // writer, serialWrites: there every settle is a commit of its own, queued with the claims, and settling every
    // 2 ms split a claim's outcomes over 3–4 commits: measured over 1,000 keys on a libSQL file, 8,233/9,562 msg/s
    // at 2 ms, 15,004/14,329 at 8 ms, keyless and 10 keys unchanged; `node --import tsx bench/profile-keys.ts 1000
    // 20000 100 libsql`), and as long as the last settle took (a database that takes 30 ms per write transaction,
    // e.g. SQLite's fsync on a busy disk, then settles about every 30 ms, not after every send), never more than half
    // the lease reserve.
    const maxSettleDelayMs = Math.max(2, Math.min(50, leaseReserveMs / 2));
    const minSettleDelayMs = Math.min(maxSettleDelayMs, serialWrites ? 8 : 2);
    let settleDelayMs = minSettleDelayMs;

    const keyless = new Fifo<Held>();
    /** Queued rows per key; an entry exists while the key has queued rows or a send in flight. */
    const keyQueues = new Map<string, Fifo<Held>>();
    /** Keys with queued rows and no send in flight, in the order they became startable. */
    const readyKeys = new Fifo<string>();
    const activeKeys = new Set<string>();
    /**
     * Per key, the seq of its last message delivered in this drain: a claim's `prevSeq` is the key's position when it
     * was claimed, so the rows after a delivered one (in that claim, or in a claim made before its settle) get it here.
     */
    const deliveredSeq = new Map<string, number>();
    let queued = 0;
    let inFlight = 0;

    /** Claims in flight. */
    let claiming = 0;
    // Claims at once: one where every write queues for the one writer (serialWrites: a second claim would only wait);
    // elsewhere up to three, the second and third only while claims are the bottleneck (see claimPays).
    const maxClaiming = serialWrites ? 1 : 3;
    /** Settle rounds completed so far. */
    let settleEpoch = 0;
    /** The last claim: whether it was full, whether its rows were mostly new keys, the epoch it started in. */
    let last = { full: true, spread: true, wide: true, epoch: -1 };
    /** Claimed, not yet settled rows per key; a key whose count drops to 0 is free (its next row is claimable). */
    const heldPerKey = new Map<string, number>();
    let keysAtClaim = 0;
    let freedSinceClaim = 0;
    /** Whether the last claim ahead of need found rows (a hot key at the queue's head may hide rows behind it). */
    let aheadFinds = true;
    /** Whether the last claim made beside others found rows (a full claim made alone resets it). */
    let besideFinds = true;

    // Continued keys (storages with `continueClaims`): a claim also asks for the next rows of keys this drain holds
    // and is going through, before their rows are settled (see ClaimOptions.continue), so a deep key never waits for
    // the settle of its previous rows. Safe because the rows it gets follow, in seq order, rows all leased to this
    // drain, sit behind them in the key's queue, and are released with them when one is retried or released (the
    // key's chain breaks: chainEpoch).
    /** Per key, the largest seq claimed in this drain. */
    const lastSeq = new Map<string, number>();
    /** Per key, how many rows of it the last claim that brought any brought (a deep key brings more than one). */
    const lastCount = new Map<string, number>();
    /** Per key, how often its queued rows were released (a retry, a release, the stop): a continuation asked before then is void. */
    const chainEpoch = new Map<string, number>();
    /** Keys named by a claim in flight. */
    const continuing = new Set<string>();
    /**
     * Keys whose last claim brought at least 4 rows (the only ones continued), pruned as they leave keyQueues. A claim
     * over many due keys brings a row or two of each (Postgres: 2 per key for 50 keys and more), and continuing those
     * only made claims dearer where other keys were due anyway (`bench/profile-keys.ts 1000 20000 100 pg`: 5,880
     * msg/s continuing 8 keys a claim, 6,698 without); over few deep keys it brings whole prefixes.
     */
    const deep = new Set<string>();
    /** Keys a continuation found nothing more of (until a claim brings rows of them again). */
    const dry = new Set<string>();
    /** Lease tokens with rows not settled yet, and how many. */
    const liveTokens = new Map<string, number>();
    // Keys held at once (storages with `continueClaims`, which honour ClaimOptions.maxKeys): at most twice as many as
    // can be sent at once (`concurrency` sends of up to `maxBatch` keys each), so a key in flight has one waiting to
    // follow it. More only wait here, where another relay could be sending them: two relays over 30 deep keys with
    // 20 ms sends, the first held 17 keys and the second 13, which it finished 1 s before the first, then sat idle.
    const keyCap = 2 * concurrency * maxBatch;
    /** Per held key, when this drain took it (its first row held since its rows were last all settled). */
    const heldSince = new Map<string, number>();
    /** New keys the claims in flight may bring (their maxKeys), so claims side by side do not pass keyCap together. */
    let keysReserved = 0;

    let buffer = new Map<string, { settlements: Settlement[]; keys: (string | null)[] }>();
    let buffered = 0;
    let bufferedSince = 0;
    let settling = false;
    let settleTimer: ReturnType<typeof setTimeout> | undefined;

    let failure: { error: unknown } | undefined;
    let stopSeen = false;
    let done = false;
    let resolveDone!: (value: { stoppedEarly: boolean }) => void;
    let rejectDone!: (error: unknown) => void;
    const finished = new Promise<{ stoppedEarly: boolean }>((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });

    const watch = new SendWatch(signal);
    const fits = (h: Held): boolean => now() + sendTimeoutMs <= h.claim.deadline;
    const exhausted = (m: ClaimedMessage): boolean => m.attempts > maxAttempts;
    const giveUp = (h: Held): void =>
      settleLater(h, {
        id: h.m.id,
        outcome: "dead",
        error: `claimed ${h.m.attempts} times without a recorded outcome (max ${maxAttempts}): ${h.m.lastError ?? "relay stopped or lease expired during delivery"}`,
      });
    const release = (h: Held): void => settleLater(h, { id: h.m.id, outcome: "released" });

    function settleLater(h: Held, s: Settlement): void {
      let group = buffer.get(h.claim.token);
      if (!group) buffer.set(h.claim.token, group = { settlements: [], keys: [] });
      group.settlements.push(s);
      group.keys.push(h.m.key);
      if (buffered++ === 0) bufferedSince = now();
    }

    /** Counts one more claimed, unsettled row of `key`; its first starts the key's turn (heldSince). */
    function countHeld(key: string): void {
      const n = heldPerKey.get(key) ?? 0;
      if (n === 0) heldSince.set(key, now());
      heldPerKey.set(key, n + 1);
    }

    function hold(m: ClaimedMessage, claim: ClaimState): void {
      const h: Held = { m, claim };
      queued++;
      if (m.key === null) return keyless.push(h);
      countHeld(m.key);
      let q = keyQueues.get(m.key);
      if (!q) {
        keyQueues.set(m.key, q = new Fifo());
        readyKeys.push(m.key);
      }
      q.push(h);
    }

    /** Releases the queued rows of `key` and forgets the key. */
    function releaseKey(key: string): void {
      const q = keyQueues.get(key);
      keyQueues.delete(key);
      chainEpoch.set(key, (chainEpoch.get(key) ?? 0) + 1);
      lastSeq.delete(key); // its rows are handed back: a claim that brings rows of it again sets it
      for (let h = q?.shift(); h; h = q!.shift()) {
        queued--;
        release(h);
      }
    }

    function releaseAll(): void {
      for (let h = keyless.shift(); h; h = keyless.shift()) {
        queued--;
        release(h);
      }
      for (let key = readyKeys.shift(); key !== undefined; key = readyKeys.shift()) releaseKey(key);
      // Keys with a send in flight keep their entry (their queue is now empty); the send's end forgets them.
      for (const [key, q] of keyQueues) {
        chainEpoch.set(key, (chainEpoch.get(key) ?? 0) + 1);
        for (let h = q.shift(); h; h = q.shift()) {
          queued--;
          release(h);
        }
        if (!activeKeys.has(key)) keyQueues.delete(key);
      }
    }

    /**
     * The next unit to send (lowest seq first), releasing or dead-lettering what cannot be sent; null when none. A
     * keyed unit holds the head of each of up to `maxBatch` ready keys (never two rows of one key): with a transport
     * that takes batches, few deep keys then go as one call per round of heads, not one call per message. With
     * `orderedBatches` (keyRuns), each head is followed by the key's queued rows that can go with it (in seq order, up
     * to the first that cannot be sent now: it waits for the run's outcomes), and a unit takes its share of the ready
     * keys (spread over the free send slots, so keys are sent side by side, not all in one call).
     */
    function nextUnit(): Held[] | null {
      for (;;) {
        const k = readyKeys.peek();
        const kh = k === undefined ? undefined : keyQueues.get(k)!.peek();
        const lh = keyless.peek();
        if (!kh && !lh) return null;
        const items: Held[] = [];
        if (lh && (!kh || lh.m.seq < kh.m.seq)) {
          while (items.length < maxBatch) {
            const h = keyless.peek();
            if (!h) break;
            keyless.shift();
            queued--;
            if (exhausted(h.m)) giveUp(h);
            else if (!fits(h)) release(h);
            else items.push(h);
          }
          if (items.length > 0) return items;
          continue;
        }
        const keyShare = keyRuns ? Math.ceil(readyKeys.length / Math.max(1, concurrency - inFlight)) : maxBatch;
        let keysTaken = 0;
        while (items.length < maxBatch && keysTaken < keyShare) {
          const key = readyKeys.peek();
          if (key === undefined) break;
          const q = keyQueues.get(key)!;
          const h = q.peek()!;
          if (exhausted(h.m)) {
            q.shift();
            queued--;
            giveUp(h);
            if (q.length === 0) {
              readyKeys.shift();
              keyQueues.delete(key);
            }
            continue;
          }
          readyKeys.shift();
          if (!fits(h)) {
            releaseKey(key); // the key's later rows cannot go before this one
            continue;
          }
          q.shift();
          queued--;
          activeKeys.add(key);
          items.push(h);
          keysTaken++;
          if (!keyRuns || soloKeys.has(key)) continue;
          // The run: an exhausted row or one whose timeout no longer fits stays queued, and is handled once it is the
          // head (after this call's outcomes).
          for (let n = q.peek(); n && items.length < maxBatch && !exhausted(n.m) && fits(n); n = q.peek()) {
            q.shift();
            queued--;
            items.push(n);
          }
        }
        if (items.length > 0) return items;
      }
    }

    /** A keyed message with its `prevSeq` advanced past what this drain delivered of its key since the claim. */
    function withPosition(m: ClaimedMessage): ClaimedMessage {
      const known = m.key === null ? undefined : deliveredSeq.get(m.key);
      return known !== undefined && known < m.seq && (m.prevSeq ?? -1) < known ? { ...m, prevSeq: known } : m;
    }

    /**
     * The messages of a unit as sent: a keyed one's `prevSeq` is the seq of the row before it in the unit when that
     * has the same key (a run), else its position as this drain knows it ({@link withPosition}).
     */
    function toSend(items: readonly Held[]): ClaimedMessage[] {
      if (!keyRuns) return items.map((h) => withPosition(h.m));
      const before = new Map<string, number>();
      return items.map(({ m }) => {
        if (m.key === null) return m;
        const prev = before.get(m.key);
        before.set(m.key, m.seq);
        return prev === undefined ? withPosition(m) : { ...m, prevSeq: prev };
      });
    }

    async function sendUnit(items: Held[]): Promise<void> {
      try {
        let deadline = items[0]!.claim.deadline;
        for (const h of items) deadline = Math.min(deadline, h.claim.deadline);
        const outcomes = await send(toSend(items), deadline, watch, drainSpan);
        // With runs (keyRuns): per key, the index of its last row in the unit, and the keys whose run stopped (a row
        // not delivered before the last): their later rows in the unit were not attempted (Transport.orderedBatches)
        // and are released. A call that failed as a whole (thrown, timed out, wrong outcomes) is a retry of each
        // key's first row only, so no row is retried (or dead-lettered) before the rows ahead of it have a final
        // outcome; the key then goes a row per call for a while (soloKeys), so a row that fails such calls is
        // charged its own attempts, not the row ahead of it.
        const lastOf = keyRuns ? new Map<string, number>() : undefined;
        if (lastOf) items.forEach((h, i) => h.m.key !== null && lastOf.set(h.m.key, i));
        const stoppedKeys = lastOf ? new Set<string>() : undefined;
        const wholeCall = lastOf !== undefined && failedCalls.has(outcomes);
        items.forEach((h, i) => {
          const key = h.m.key;
          const s: Settlement = key !== null && stoppedKeys?.has(key) ? { id: h.m.id, outcome: "released" } : toSettlement(h.m, outcomes[i]!);
          if (key !== null && s.outcome === "delivered") deliveredSeq.set(key, Math.max(deliveredSeq.get(key) ?? -1, h.m.seq));
          settleLater(h, s);
          if (key === null) return;
          if (lastOf && lastOf.get(key)! > i) {
            if (s.outcome !== "delivered") stoppedKeys!.add(key);
            if (wholeCall) soloKeys.add(key);
            return;
          }
          activeKeys.delete(key);
          const q = keyQueues.get(key);
          // A retrying head blocks its key; a run that stopped handed rows back, which the queued ones follow.
          if (s.outcome === "retry" || stoppedKeys?.has(key)) releaseKey(key);
          else if (q && q.length > 0) readyKeys.push(key);
          else keyQueues.delete(key);
        });
      } catch (e) {
        failure ??= { error: e };
      } finally {
        inFlight--;
        pump();
      }
    }

    /** `ahead`: a claim ahead of need after a full claim (the probe of whether such claims find rows). */
    async function claimMore(ahead = false, beside = false): Promise<void> {
      claiming++;
      let reserved = 0;
      const epoch = settleEpoch;
      const claimStarted = now();
      const asked = continuation();
      try {
        // Room for new keys (see keyCap); a storage without continueClaims ignores it.
        const room = Math.max(0, keyCap - keyQueues.size - keysReserved);
        reserved = Math.min(room, batchSize);
        keysReserved += reserved;
        const keys = room < batchSize ? { maxKeys: room } : {};
        const claim = await bounded("claim()", () =>
          storage.claim(
            asked.size === 0
              ? { limit: batchSize, leaseMs, ...keys }
              : { limit: batchSize, leaseMs, ...keys, continue: { after: [...asked.keys()].map((k) => lastSeq.get(k)!), tokens: [...liveTokens.keys()] } },
          ));
        report.claimed += claim.messages.length;
        let repeats = 0;
        let newKeys = 0;
        const state: ClaimState = { token: claim.token, deadline: claimStarted + leaseMs - leaseReserveMs };
        const counts = new Map<string, number>();
        if (claim.messages.length > 0) liveTokens.set(claim.token, claim.messages.length);
        for (const m of claim.messages) {
          if (m.key === null) {
            hold(m, state);
            continue;
          }
          const askedAt = asked.get(m.key);
          // A continuation goes behind the rows held of its key, unless their chain broke since it was asked.
          if (askedAt !== undefined && askedAt !== (chainEpoch.get(m.key) ?? 0)) {
            countHeld(m.key);
            release({ m, claim: state });
            continue;
          }
          counts.set(m.key, (counts.get(m.key) ?? 0) + 1);
          lastSeq.set(m.key, Math.max(lastSeq.get(m.key) ?? 0, m.seq));
          // Continued rows are repeats of held keys too: a claim of them says nothing of other keys being due.
          if (heldPerKey.has(m.key)) repeats++;
          else newKeys++; // hold() marks the key held: its later rows count as repeats
          hold(m, state);
        }
        for (const [key, n] of counts) {
          lastCount.set(key, n);
          dry.delete(key);
          if (n >= 4 && continueClaims) deep.add(key);
          else deep.delete(key);
        }
        // A continued key the claim brought nothing of is dry, unless the claim was full: a storage reads the keys
        // it continues until it has `limit` rows and leaves the rest unread (Postgres reads due keys first), and
        // marking those dry left each one idle until its held rows were settled and a claim took it as due again
        // (over 10 keys with 20 ms sends: up to 1.2 s, the drain 0.80-0.85x its ideal).
        if (claim.messages.length < batchSize) for (const key of asked.keys()) if (!counts.has(key)) dry.add(key);
        // Spread: mostly rows that are not repeats of held keys (a keyless or many-keyed backlog). Where claims and
        // settles can run at once (not serialWrites), also a claim of two or more keys not held before: Postgres
        // gives whole prefixes of about half the due keys when queues are deep, so such a claim leaves other keys
        // claimable for a claim ahead of need. (On SQLite every claim and settle queue for the one writer: claims
        // ahead over deep keys only delay the settles.)
        const wide = repeats * 2 <= claim.messages.length;
        const spread = wide || (!serialWrites && newKeys >= 2);
        last = { full: claim.messages.length >= batchSize, spread, wide, epoch };
        if (ahead) aheadFinds = claim.messages.length > 0;
        else if (last.full && (newKeys + repeats) * 2 < claim.messages.length) aheadFinds = true; // mostly keyless
        if (beside) besideFinds = claim.messages.length > 0;
        else if (claim.messages.length >= batchSize) besideFinds = true;
        keysAtClaim = heldPerKey.size;
        freedSinceClaim = 0;
      } catch (e) {
        failure ??= { error: e };
      } finally {
        keysReserved -= reserved;
        for (const key of asked.keys()) continuing.delete(key);
        claiming--;
        pump();
      }
    }

    /**
     * The keys a claim made now should continue, each with its chain epoch: held keys with rows queued or in flight
     * that are deep (see `deep`), not named by a claim in flight, and down to half of what their last claim brought.
     * Marks them as named.
     */
    function continuation(): Map<string, number> {
      const asked = new Map<string, number>();
      for (const key of deep) if (continuable(key)) asked.set(key, chainEpoch.get(key) ?? 0);
      for (const key of asked.keys()) continuing.add(key);
      return asked;
    }

    /** Whether a claim made now should continue `key` (see {@link continuation}); prunes keys no longer queued. */
    function continuable(key: string): boolean {
      const q = keyQueues.get(key);
      if (!q) {
        deep.delete(key);
        return false;
      }
      if (continuing.has(key) || dry.has(key) || !lastSeq.has(key) || q.length * 2 > lastCount.get(key)!) return false;
      // Holding all the keys it may (keyCap), a drain takes no new ones: a key it has held for KEY_TURN_MS is then
      // not continued but let go once its held rows are sent, so keys waiting in the database get their turn (the
      // oldest head first: a claim locks due keys in due order) here or at another relay.
      return keyQueues.size < keyCap || now() - heldSince.get(key)! < KEY_TURN_MS;
    }

    /** Whether {@link continuation} would name a key (asked on every pump: nothing made). */
    function hasCandidate(): boolean {
      for (const key of deep) if (continuable(key)) return true;
      return false;
    }

    /** Whether a claim pays now (see the policy above): "ahead" for a claim ahead of need after a full claim. */
    function claimPays(idle: boolean): boolean | "ahead" | "beside" {
      if (idle) return last.full || settleEpoch > last.epoch;
      // Keys running low that a claim can continue: claim now, beside claims in flight (they name other keys).
      if (claiming < maxClaiming && hasCandidate()) return true;
      if (claiming > 0) {
        // Another claim beside those in flight: only when claims are the bottleneck (a send slot is free and no
        // claimed row can start: pump() has just filled every slot it could), after a full claim, and while the last
        // claim made beside others found rows. Claims take disjoint rows (SKIP LOCKED; a key one claim has locked or
        // leased is skipped by the others), so on a deep keyless backlog three claims run side by side where one at a
        // time left the database's other core idle (measured, `node --expose-gc --import tsx bench/profile.ts pg 100
        // 40000`: 9,921 / 9,783 msg/s one at a time, 12,808 / 14,077 with two, 16,767 with three). Over a few deep
        // keys a claim takes whole prefixes of about half the due keys, so a second claim takes the other half and a
        // third finds nothing: two at most unless the last claim's rows were mostly not repeats of held keys
        // (`bench/profile-keys.ts 10 20000 100 pg`: 5,880 msg/s one at a time, 7,226 / 6,986 with two).
        const most = last.wide ? maxClaiming : Math.min(2, maxClaiming);
        return claiming < most && inFlight < concurrency && last.full && last.spread && besideFinds ? "beside" : false;
      }
      // Rows that can start soon: queued keyless rows and one per key with queued rows (a key's rows go one by one).
      if (keyless.length + keyQueues.size >= lowWater) return false;
      if (keysAtClaim > 0 && freedSinceClaim * 2 >= keysAtClaim) return true;
      // Every slot busy and more keys held than slots (some already wait for one): new keys would only wait here,
      // where another relay could be sending them (a held key is held for every relay: this drain continues it).
      // Over 30 keys with 20 ms sends, two relays of concurrency 8 ran 433 msg/s, one of them holding every key,
      // against 766 (ideal 800).
      if (inFlight >= concurrency && keyQueues.size > concurrency) return false;
      // With one writer (serialWrites) an empty claim walks every pending row past the blocked heads and holds the
      // writer while it does: after a claim ahead found nothing (every due key held, e.g. 100 keys of one row each
      // per claim), none until a full claim of mostly keyless rows (`bench/profile-keys.ts 100 20000 100 libsql`:
      // 201 of 401 claims empty, 3,178 msg/s); keys freed by a settle are claimed with it instead.
      return last.full && (serialWrites ? aheadFinds : last.spread || aheadFinds) ? "ahead" : false;
    }

    /** Whether settling the buffered outcomes leaves a key with no row held here (its next rows become claimable). */
    function settleFreesKeys(): boolean {
      const settling = new Map<string, number>();
      for (const { keys } of buffer.values()) {
        for (const key of keys) if (key !== null) settling.set(key, (settling.get(key) ?? 0) + 1);
      }
      for (const [key, n] of settling) if (heldPerKey.get(key) === n) return true;
      return false;
    }

    /** `claimed`: a claim was made with this round for the keys it frees (they do not count as freed since it). */
    async function settleRound(claimed = false): Promise<void> {
      settling = true;
      clearTimeout(settleTimer);
      settleTimer = undefined;
      const groups = buffer;
      buffer = new Map();
      buffered = 0;
      const roundStarted = now();
      // Groups that share a key settle one after another (each settle of a key reads its rows to set the key's next
      // due time; two at once could each miss the other's change); the others at once.
      const keyTail = new Map<string, Promise<unknown>>();
      const results = await Promise.allSettled(
        [...groups].map(async ([token, { settlements, keys }]) => {
          const before = new Set<Promise<unknown>>();
          for (const key of keys) if (key !== null && keyTail.has(key)) before.add(keyTail.get(key)!);
          const run = (async () => {
            if (before.size > 0) await Promise.allSettled(before);
            return await settleGroup(token, settlements);
          })();
          for (const key of keys) if (key !== null) keyTail.set(key, run);
          try {
            return await run;
          } finally {
            const left = (liveTokens.get(token) ?? 0) - settlements.length;
            if (left > 0) liveTokens.set(token, left);
            else liveTokens.delete(token);
            // Settled or not, these rows are no longer held here (a failed settle leaves them to lease expiry).
            for (const key of keys) {
              if (key === null) continue;
              const left = heldPerKey.get(key)! - 1;
              if (left > 0) heldPerKey.set(key, left);
              else {
                heldPerKey.delete(key);
                heldSince.delete(key);
                if (!claimed) freedSinceClaim++;
              }
            }
          }
        }),
      );
      for (const r of results) if (r.status === "rejected") failure ??= { error: r.reason };
      settleDelayMs = Math.min(maxSettleDelayMs, Math.max(minSettleDelayMs, now() - roundStarted));
      settling = false;
      settleEpoch++;
      pump();
    }

    async function settleGroup(token: string, settlements: readonly Settlement[]): Promise<void> {
      const result = await bounded("settle()", () => storage.settle(token, settlements));
      const lost = new Set(result.lost);
      report.leaseLost += lost.size;
      for (const s of settlements) {
        if (lost.has(s.id)) continue;
        if (s.outcome === "delivered") report.delivered++;
        else if (s.outcome === "retry") report.retried++;
        else if (s.outcome === "dead") report.dead++;
        else report.released++;
      }
    }

    function pump(): void {
      if (done) return;
      const stop = failure !== undefined || stopped();
      if (stop) {
        stopSeen ||= failure === undefined;
        releaseAll();
      } else {
        while (inFlight < concurrency) {
          const unit = nextUnit();
          if (!unit) break;
          inFlight++;
          void sendUnit(unit);
        }
        const pays = claimPays(false);
        if (pays) void claimMore(pays !== true, pays === "beside");
      }
      if (!settling && buffered > 0) {
        const age = now() - bufferedSince;
        if (stop || inFlight === 0 || buffered >= groupSize || age >= settleDelayMs) {
          // Where every write queues for the one writer (serialWrites), a claim that would wait for the keys this
          // settle frees is made now, in the same turn: it joins the settle's commit (the libSQL write queue groups
          // writes issued in one turn) and, run after it, already sees those keys free. One fsync'd commit per
          // settle and claim instead of two (`node --import tsx bench/profile-keys.ts 10 20000 100 libsql`).
          const claimWithSettle = serialWrites && !stop && claiming === 0 && settleFreesKeys() &&
            keyless.length + keyQueues.size < lowWater;
          void settleRound(claimWithSettle);
          // Not counted as seeing this round (epoch): where writes do not share a commit (libSQL over HTTP, D1) it
          // may run before the settle, and the drain then claims once more before it ends.
          if (claimWithSettle) void claimMore();
        }
        else settleTimer ??= setTimeout(() => {
          settleTimer = undefined;
          pump();
        }, settleDelayMs - age);
      }
      if (inFlight === 0 && claiming === 0 && !settling && buffered === 0 && queued === 0) {
        if (!stop && claimPays(true)) void claimMore();
        else {
          done = true;
          clearTimeout(settleTimer);
          watch.close();
          if (failure) rejectDone(failure.error);
          else resolveDone({ stoppedEarly: stopSeen });
        }
      }
    }

    pump();
    return finished;
  }

  /**
   * One transport call, bounded by the send timeout and the lease; never throws. Its signal also fires when the
   * drain's `signal` aborts, and the relay stops waiting then: the messages are reported as `retry`.
   */
  async function send(
    batch: readonly ClaimedMessage[],
    leaseDeadline: number,
    watch: SendWatch,
    drainSpan?: TraceSpan,
  ): Promise<DeliveryOutcome[]> {
    if (!tracing) return sendOnce(batch, leaseDeadline, watch);
    const first = batch[0]!;
    const span = startSpan("edge-outbox.send", {
      "messaging.system": transport.name,
      "messaging.operation.type": "send",
      "messaging.batch.message_count": batch.length,
      "messaging.message.id": batch.length === 1 ? first.id : undefined,
      "outbox.topic": batch.every((m) => m.topic === first.topic) ? first.topic : undefined,
      "outbox.key": batch.length === 1 ? first.key ?? undefined : undefined,
      "outbox.attempt": batch.length === 1 ? first.attempts : undefined,
    }, drainSpan, [...batch]);
    const outcomes = await sendOnce(batch, leaseDeadline, watch);
    traceSafely(() => {
      const count = { delivered: 0, retry: 0, dead: 0 };
      for (const r of outcomes) count[r.status]++;
      span?.setAttributes({ "outbox.outcome.delivered": count.delivered, "outbox.outcome.retry": count.retry, "outbox.outcome.dead": count.dead });
      const failed = outcomes.find((r) => r.status !== "delivered");
      if (failed && "error" in failed) span?.recordError(failed.error);
      span?.end();
    });
    return outcomes;
  }

  async function sendOnce(batch: readonly ClaimedMessage[], leaseDeadline: number, watch: SendWatch): Promise<DeliveryOutcome[]> {
    const timeout = Math.max(0, Math.min(sendTimeoutMs, leaseDeadline - now()));
    // The signal's controller is made when the transport first reads `context.signal` (many never do: a function
    // transport, a queue client without cancellation), already aborted if the send was stopped by then.
    let controller: AbortController | undefined;
    let stopReason: string | undefined;
    let resolveStop!: (stop: typeof STOPPED) => void;
    const stopped = new Promise<typeof STOPPED>((resolve) => (resolveStop = resolve));
    const context: SendContext = {
      get signal(): AbortSignal {
        if (!controller) {
          controller = new AbortController();
          if (stopReason !== undefined) controller.abort(new OutboxError("ABORTED", stopReason));
        }
        return controller.signal;
      },
    };
    const watched = watch.add(now() + timeout, (reason) => {
      stopReason = reason === "timeout" ? `send timed out after ${Math.round(timeout)} ms` : "drain aborted during the send";
      controller?.abort(new OutboxError("ABORTED", stopReason));
      resolveStop(STOPPED);
    });
    try {
      const sending = Promise.resolve().then(() => transport.send(batch, context));
      sending.catch(() => {}); // a late rejection after a timeout must not become unhandled
      const result = await Promise.race([sending, stopped]);
      if (result === STOPPED) return retryAll(batch, `${transport.name}: ${stopReason}`);
      if (!Array.isArray(result) || result.length !== batch.length) {
        return retryAll(batch, `${transport.name}: returned ${Array.isArray(result) ? result.length : typeof result} outcomes for ${batch.length} messages`);
      }
      return result.map((r: DeliveryOutcome) => validOutcome(r) ? r : { status: "retry", error: `${transport.name}: invalid outcome ${safeJson(r)}` });
    } catch (e) {
      return retryAll(batch, `${transport.name}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      watch.done(watched);
    }
  }

  function toSettlement(m: ClaimedMessage, outcome: DeliveryOutcome): Settlement {
    if (outcome.status === "delivered") return { id: m.id, outcome: "delivered" };
    const error = truncate(outcome.error);
    if (outcome.status === "dead") return { id: m.id, outcome: "dead", error };
    if (m.attempts >= maxAttempts) return { id: m.id, outcome: "dead", error: `gave up after ${m.attempts} attempts: ${error}` };
    return { id: m.id, outcome: "retry", error, delayMs: backoffDelay(m.attempts, backoff, outcome.retryAfterMs) };
  }

  async function run(runOptions: RunOptions): Promise<void> {
    const r = parseOptions("run options", runOptionsSchema, runOptions);
    const onError = runOptions.onError ?? ((e: OutboxError) => console.error("[edge-outbox] drain failed:", e));
    // Wake-ups (storage.subscribe): a commit ends the wait between drains at once. One that arrives during a drain
    // makes the next drain start without waiting, since the drain may have claimed before that commit.
    const wake = { pending: false, now: undefined as (() => void) | undefined };
    if (storage.subscribe) {
      const onWake = (): void => {
        wake.pending = true;
        wake.now?.();
      };
      // Not awaited: the first drain does not wait for the subscription; until it listens, polling covers.
      Promise.resolve()
        .then(() => storage.subscribe!(onWake, r.signal))
        .catch((e: unknown) =>
          callback(
            "onError",
            onError,
            toOutboxError("STORAGE", `[edge-outbox:relay] ${storage.name} subscribe failed: polling every ${r.pollIntervalMs} ms only`, e, true),
          )
        );
    }
    let failures = 0;
    while (!r.signal.aborted) {
      let wait = r.pollIntervalMs;
      let report: DrainReport | undefined;
      wake.pending = false;
      try {
        report = await drain({ budgetMs: r.budgetMs, signal: r.signal });
      } catch (e) {
        failures++;
        callback("onError", onError, toOutboxError("STORAGE", "[edge-outbox:relay] drain failed", e, true));
        wait = Math.min(30_000, r.pollIntervalMs * 2 ** Math.min(failures, 10));
      }
      if (report) {
        failures = 0;
        if (runOptions.onReport) callback("onReport", runOptions.onReport, report);
        if (report.more || wake.pending) wait = 0;
      }
      if (wait > 0) {
        // After a failure the backoff holds even against wake-ups: the storage is what failed.
        await sleep(wait, [r.signal], (interrupt) => (wake.now = report ? interrupt : undefined));
        wake.now = undefined;
      }
    }
  }

  return { drain, run };
}

/**
 * Calls a user callback of run() so that it cannot change the loop: a throw (or a rejected promise, for an async
 * callback) is logged with console.error and otherwise ignored.
 */
function callback<T>(name: string, fn: (arg: T) => unknown, arg: T): void {
  const log = (e: unknown): void => console.error(`[edge-outbox] relay.run ${name} callback threw (ignored):`, e);
  try {
    const result = fn(arg);
    if (typeof (result as PromiseLike<unknown> | undefined)?.then === "function") {
      Promise.resolve(result).catch(log);
    }
  } catch (e) {
    log(e);
  }
}

/** The outcome arrays of sends that failed as a whole (made by {@link retryAll}). */
const failedCalls = new WeakSet<readonly DeliveryOutcome[]>();

/** Outcomes for every message of a send that did not return its own. */
function retryAll(batch: readonly unknown[], error: string): DeliveryOutcome[] {
  const outcomes: DeliveryOutcome[] = batch.map(() => ({ status: "retry", error }));
  failedCalls.add(outcomes);
  return outcomes;
}

interface WatchedSend {
  readonly deadline: number;
  /** Dropped once the send returned: it holds the send's scope (its messages). */
  stop: ((reason: "timeout" | "aborted") => void) | undefined;
  done: boolean;
}

/**
 * The sends of one drain in flight: their deadlines behind one timer (sends start in time order with the same
 * timeout, so the earliest deadline is the oldest send's) and the drain's signal behind one listener. A timer, an
 * abort listener and an AbortController for every send were a fifth of the relay's CPU where keys go one message
 * per send (`PROFILE=… bench/profile-keys.ts 10 20000 100 pg`).
 */
class SendWatch {
  /** Watched sends in deadline order, each deadline at or after `latest` when it was added. */
  private readonly queue = new Fifo<WatchedSend>();
  /** Sends whose deadline came before `latest` (a shorter timeout near the lease's end), each with a timer. */
  private readonly solo = new Map<WatchedSend, ReturnType<typeof setTimeout>>();
  private latest = -Infinity;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => {
    for (let w = this.queue.shift(); w; w = this.queue.shift()) this.stop(w, "aborted");
    for (const w of [...this.solo.keys()]) this.stop(w, "aborted");
  };

  constructor(signal: AbortSignal | undefined) {
    this.signal = signal;
    signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  /** Watches a send: `stop` is called once, at `deadline` (performance.now() time) or when the drain aborts. */
  add(deadline: number, stop: WatchedSend["stop"]): WatchedSend {
    const w: WatchedSend = { deadline, stop, done: false };
    if (this.signal?.aborted) this.stop(w, "aborted");
    else if (deadline < this.latest) this.solo.set(w, setTimeout(() => this.stop(w, "timeout"), Math.max(0, deadline - now())));
    else {
      this.latest = deadline;
      this.queue.push(w);
      if (this.timer === undefined) this.arm();
    }
    return w;
  }

  /** The send returned: it is never stopped now. */
  done(w: WatchedSend): void {
    w.done = true;
    w.stop = undefined;
    const timer = this.solo.get(w);
    if (timer !== undefined) {
      clearTimeout(timer);
      this.solo.delete(w);
    }
    // Sends end about in the order they started: forget the ended ones at the head now, not at their deadline
    // (keeping 10 s of a fast drain's sends raised its peak RSS by a quarter).
    for (let h = this.queue.peek(); h?.done; h = this.queue.peek()) this.queue.shift();
  }

  /** Stops watching (the drain is over): no timer or listener left behind. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const timer of this.solo.values()) clearTimeout(timer);
    this.solo.clear();
    this.signal?.removeEventListener("abort", this.onAbort);
  }

  private stop(w: WatchedSend, reason: "timeout" | "aborted"): void {
    if (w.done) return;
    const stop = w.stop;
    this.done(w);
    stop?.(reason);
  }

  /** Times the head (never an ended send: `done` forgets those at the head). */
  private arm(): void {
    const head = this.queue.peek();
    if (head === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const t = now();
      for (let w = this.queue.peek(); w && w.deadline <= t; w = this.queue.peek()) {
        this.queue.shift();
        this.stop(w, "timeout");
      }
      this.arm();
    }, Math.max(0, head.deadline - now()));
  }
}

/** How long a key whose run failed as a whole call goes a row per call (see sendUnit). */
const SOLO_KEY_MS = 10 * 60_000;

/** A set whose members leave `ttlMs` after they were last added, holding at most `max` (the oldest leave first). */
class ExpiringSet {
  private readonly added = new Map<string, number>();
  private readonly ttlMs: number;
  private readonly max: number;
  constructor(ttlMs: number, max: number) {
    this.ttlMs = ttlMs;
    this.max = max;
  }
  add(item: string): void {
    this.added.delete(item);
    this.added.set(item, now());
    if (this.added.size > this.max) this.added.delete(this.added.keys().next().value!);
  }
  has(item: string): boolean {
    if (this.added.size === 0) return false;
    const at = this.added.get(item);
    if (at === undefined) return false;
    if (now() - at < this.ttlMs) return true;
    this.added.delete(item);
    return false;
  }
}

/** A first-in, first-out queue with O(1) push and shift. */
class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(item: T): void {
    this.items.push(item);
  }
  peek(): T | undefined {
    return this.items[this.head];
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1_024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

/** Waits `ms`, or until one of `signals` aborts, or until the function handed to `interruptible` is called. */
function sleep(ms: number, signals: readonly (AbortSignal | undefined)[], interruptible?: (interrupt: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    const live = signals.filter((s): s is AbortSignal => s !== undefined);
    if (live.some((s) => s.aborted)) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      for (const s of live) s.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    for (const s of live) s.addEventListener("abort", done, { once: true });
    interruptible?.(done);
  });
}

function validOutcome(r: unknown): r is DeliveryOutcome {
  if (typeof r !== "object" || r === null) return false;
  const o = r as { status?: unknown; error?: unknown; retryAfterMs?: unknown };
  if (o.status === "delivered") return true;
  if (o.status === "dead") return typeof o.error === "string";
  if (o.status === "retry") {
    // Any number is accepted: backoffDelay rounds it and clamps it to one day, so no wait can fail a settle.
    return typeof o.error === "string" && (o.retryAfterMs === undefined || typeof o.retryAfterMs === "number");
  }
  return false;
}

/**
 * Makes a transport-given error text safe for every storage: at most `max` UTF-16 units (never splitting a surrogate
 * pair), NUL and lone surrogates replaced by U+FFFD (PostgreSQL text and jsonb refuse both).
 */
function truncate(s: string, max = 2_000): string {
  let cut = s;
  if (s.length > max) {
    const end = /[\uD800-\uDBFF]/.test(s[max - 1]!) ? max - 1 : max;
    cut = `${s.slice(0, end)}…`;
  }
  return cut.replace(/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

function safeJson(x: unknown): string {
  try {
    return truncate(JSON.stringify(x) ?? String(x), 200);
  } catch {
    return String(x);
  }
}
