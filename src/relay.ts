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
import type { DeliveryOutcome, Transport } from "./transport.ts";

/** Options of {@link createRelay}. */
export interface RelayOptions {
  /** The outbox whose storage is drained. */
  // deno-lint-ignore no-explicit-any
  outbox: Outbox<any, any, any>;
  /** Where messages go. */
  transport: Transport;
  /** Keeps two drains from overlapping (efficiency only; correctness rests on lease tokens). @default none */
  lock?: Lock;
  /** The lock key. @default "edge-outbox:relay" */
  lockKey?: string;
  /** Rows claimed per claim. @default 100 */
  batchSize?: number;
  /** `send` calls in flight at once. @default 8 */
  concurrency?: number;
  /** How long a claim owns its rows, ms; must be at least twice `sendTimeoutMs`. @default 30000 */
  leaseMs?: number;
  /** Longest a single `send` call may take, ms; its signal aborts then. @default 10000 */
  sendTimeoutMs?: number;
  /** Attempts before a message is dead-lettered. @default 10 */
  maxAttempts?: number;
  /** Retry delays; a transport's `retryAfterMs` is honoured above `maxMs`, up to one day. @default { baseMs: 1000, maxMs: 300000, minMs: 250 } */
  backoff?: BackoffOptions;
}

/** Options of one {@link Relay.drain} call. */
export interface DrainOptions {
  /** Time budget, ms. The drain stops claiming and starting sends when less than `safetyMarginMs` remains; sends in flight then finish within `sendTimeoutMs`. @default 10000 */
  budgetMs?: number;
  /** Stop early (like the budget running out). @default none */
  signal?: AbortSignal;
  /** Budget kept back at the end for settling, ms. @default min(1000, budgetMs / 10) */
  safetyMarginMs?: number;
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
  skipped?: "lock-busy";
}

/** Options of {@link Relay.run}. */
export interface RunOptions {
  /** Stops the loop; in-flight sends finish, unsent claimed rows are released. */
  signal: AbortSignal;
  /** Wait between drains when nothing was due, ms. @default 500 */
  pollIntervalMs?: number;
  /** Budget of each drain, ms. @default 30000 */
  budgetMs?: number;
  /** Called after every drain. @default none */
  onReport?: (report: DrainReport) => void;
  /** Called when a drain fails (the loop backs off and continues). @default console.error */
  onError?: (error: OutboxError) => void;
}

/** The relay. */
export interface Relay {
  /**
   * Drains due messages within a time budget and reports what happened.
   * @throws {OutboxError} STORAGE or LOCK when the database or the lock store fails (never a half-filled report)
   */
  drain(options?: DrainOptions): Promise<DrainReport>;
  /** Drains in a loop until `signal` aborts (for long-running processes). Resolves when stopped. */
  run(options: RunOptions): Promise<void>;
}

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));

const relayOptionsSchema = v.pipe(
  v.object({
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
    lockKey: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(200)), "edge-outbox:relay"),
    batchSize: v.optional(int(1, 10_000), 100),
    concurrency: v.optional(int(1, 1_000), 8),
    leaseMs: v.optional(int(100, 3_600_000), 30_000),
    sendTimeoutMs: v.optional(int(10, 1_800_000), 10_000),
    maxAttempts: v.optional(int(1, 1_000), 10),
    backoff: v.optional(v.strictObject({
      baseMs: v.optional(int(1, 86_400_000), 1_000),
      maxMs: v.optional(int(1, 604_800_000), 300_000),
      minMs: v.optional(int(0, 86_400_000), 250),
    }), {}),
  }),
  v.check((o) => o.leaseMs >= 2 * o.sendTimeoutMs, "leaseMs must be at least twice sendTimeoutMs"),
);

const drainOptionsSchema = v.object({
  budgetMs: v.optional(int(1, 86_400_000), 10_000),
  signal: v.optional(v.instance(AbortSignal)),
  safetyMarginMs: v.optional(int(0, 86_400_000)),
});

const runOptionsSchema = v.object({
  signal: v.instance(AbortSignal),
  pollIntervalMs: v.optional(int(1, 3_600_000), 500),
  budgetMs: v.optional(int(1, 86_400_000), 30_000),
  onReport: v.optional(v.function()),
  onError: v.optional(v.function()),
});

const now = (): number => performance.now();

/**
 * Creates a relay that drains an outbox into a transport.
 *
 * @param options outbox, transport, lock, batchSize (100), concurrency (8), leaseMs (30000), sendTimeoutMs (10000), maxAttempts (10), backoff
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
  const transport = options.transport;
  const lock = options.lock;
  const maxBatch = transport.maxBatchSize ?? 1;
  if (!Number.isInteger(maxBatch) || maxBatch < 1) {
    throw new OutboxError("CONFIG", `createRelay options: transport.maxBatchSize must be a positive integer (got ${maxBatch})`);
  }
  const { batchSize, concurrency, leaseMs, sendTimeoutMs, maxAttempts, backoff, lockKey } = o;
  // Kept back from the lease so a settle lands before the lease can expire.
  const leaseReserveMs = Math.min(1_000, Math.floor(leaseMs / 10));

  async function drain(drainOptions: DrainOptions = {}): Promise<DrainReport> {
    const d = parseOptions("drain options", drainOptionsSchema, drainOptions);
    const started = now();
    const margin = d.safetyMarginMs ?? Math.min(1_000, Math.floor(d.budgetMs / 10));
    const stopAt = started + d.budgetMs - margin;
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
      try {
        lease = await lock.acquire(lockKey, d.budgetMs + sendTimeoutMs + 1_000);
      } catch (e) {
        throw toOutboxError("LOCK", `[edge-outbox:relay] acquiring lock "${lockKey}" with ${lock.name} failed`, e, true);
      }
      if (!lease) {
        report.skipped = "lock-busy";
        report.elapsedMs = Math.round(now() - started);
        return report;
      }
    }
    const stopped = (): boolean => d.signal?.aborted === true || lease?.signal.aborted === true || now() >= stopAt;

    try {
      let stoppedEarly = false;
      for (;;) {
        if (stopped()) {
          stoppedEarly = true;
          break;
        }
        const claimStarted = now();
        const claim = await storage.claim({ limit: batchSize, leaseMs });
        if (claim.messages.length === 0) break;
        report.claimed += claim.messages.length;
        const leaseDeadline = claimStarted + leaseMs - leaseReserveMs;
        const settlements = await deliverBatch(claim.messages, leaseDeadline, stopped);
        const result = await storage.settle(claim.token, settlements);
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
      if (stoppedEarly) report.more = report.released > 0 || await storage.hasDue();
    } catch (e) {
      throw toOutboxError("STORAGE", `[edge-outbox:relay] ${storage.name} storage failed`, e, true);
    } finally {
      if (lease) await lease.release().catch(() => {}); // an unreleased lock expires by itself
    }
    report.elapsedMs = Math.round(now() - started);
    return report;
  }

  /** Sends one claimed batch and returns one settlement per message. */
  async function deliverBatch(
    messages: readonly ClaimedMessage[],
    leaseDeadline: number,
    stopped: () => boolean,
  ): Promise<Settlement[]> {
    const settlements = new Map<string, Settlement>();
    const units: Array<() => Promise<void>> = [];
    // A send starts only when its whole timeout fits in the lease, so no send is cut short by it.
    const canSend = (): boolean => !stopped() && now() + sendTimeoutMs <= leaseDeadline;
    const release = (ms: readonly ClaimedMessage[]): void => {
      for (const m of ms) settlements.set(m.id, { id: m.id, outcome: "released" });
    };
    const exhausted = (m: ClaimedMessage): boolean => m.attempts > maxAttempts;
    const giveUp = (m: ClaimedMessage): void => {
      settlements.set(m.id, {
        id: m.id,
        outcome: "dead",
        error: `claimed ${m.attempts} times without a recorded outcome (max ${maxAttempts}): ${m.lastError ?? "relay stopped or lease expired during delivery"}`,
      });
    };

    // Keyless messages: in chunks of the transport's batch size, in parallel.
    const keyless: ClaimedMessage[] = [];
    const groups = new Map<string, ClaimedMessage[]>();
    for (const m of messages) {
      if (exhausted(m) && m.key === null) {
        giveUp(m);
        continue;
      }
      if (m.key === null) keyless.push(m);
      else {
        const g = groups.get(m.key);
        if (g) g.push(m);
        else groups.set(m.key, [m]);
      }
    }
    for (let i = 0; i < keyless.length; i += maxBatch) {
      const chunk = keyless.slice(i, i + maxBatch);
      units.push(async () => {
        if (!canSend()) return release(chunk);
        const outcomes = await send(chunk, leaseDeadline);
        chunk.forEach((m, j) => settlements.set(m.id, toSettlement(m, outcomes[j]!)));
      });
    }
    // Keyed messages: one key's messages one after another, stopping at the first that is not settled for good.
    for (const group of groups.values()) {
      units.push(async () => {
        for (let i = 0; i < group.length; i++) {
          const m = group[i]!;
          if (exhausted(m)) {
            giveUp(m);
            continue;
          }
          if (!canSend()) return release(group.slice(i));
          const [outcome] = await send([m], leaseDeadline);
          const s = toSettlement(m, outcome!);
          settlements.set(m.id, s);
          if (s.outcome === "retry") return release(group.slice(i + 1)); // a retrying head blocks its key
        }
      });
    }
    await runPool(units, concurrency);
    return messages.map((m) => settlements.get(m.id) ?? { id: m.id, outcome: "released" });
  }

  /** One transport call, bounded by the send timeout and the lease; never throws. */
  async function send(batch: readonly ClaimedMessage[], leaseDeadline: number): Promise<DeliveryOutcome[]> {
    const timeout = Math.max(0, Math.min(sendTimeoutMs, leaseDeadline - now()));
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const aborted = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => {
        controller.abort(new OutboxError("ABORTED", `send timed out after ${Math.round(timeout)} ms`));
        resolve("timeout");
      }, timeout);
    });
    const retryAll = (error: string): DeliveryOutcome[] => batch.map(() => ({ status: "retry", error }));
    try {
      const sending = Promise.resolve().then(() => transport.send(batch, { signal: controller.signal }));
      sending.catch(() => {}); // a late rejection after a timeout must not become unhandled
      const result = await Promise.race([sending, aborted]);
      if (result === "timeout") return retryAll(`${transport.name}: send timed out after ${Math.round(timeout)} ms`);
      if (!Array.isArray(result) || result.length !== batch.length) {
        return retryAll(`${transport.name}: returned ${Array.isArray(result) ? result.length : typeof result} outcomes for ${batch.length} messages`);
      }
      return result.map((r: DeliveryOutcome) => validOutcome(r) ? r : { status: "retry", error: `${transport.name}: invalid outcome ${safeJson(r)}` });
    } catch (e) {
      return retryAll(`${transport.name}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      clearTimeout(timer);
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
    let failures = 0;
    while (!r.signal.aborted) {
      let wait = r.pollIntervalMs;
      try {
        const report = await drain({ budgetMs: r.budgetMs, signal: r.signal });
        failures = 0;
        runOptions.onReport?.(report);
        if (report.more) wait = 0;
      } catch (e) {
        failures++;
        onError(toOutboxError("STORAGE", "[edge-outbox:relay] drain failed", e, true));
        wait = Math.min(30_000, r.pollIntervalMs * 2 ** Math.min(failures, 10));
      }
      if (wait > 0) await sleep(wait, r.signal);
    }
  }

  return { drain, run };
}

/** Runs async tasks with at most `limit` in flight. */
async function runPool(tasks: ReadonlyArray<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
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
