import { OutboxError } from "../../src/errors.ts";
import type { OutboxMessage } from "../../src/message.ts";
import type { DeliveryOutcome, SendContext, Transport } from "../../src/transport.ts";

/** Options of {@link recordingTransport}. */
export interface RecordingTransportOptions {
  /** Messages per `send` call. @default 1 */
  maxBatchSize?: number | undefined;
  /** Time each `send` call takes, ms (honours the abort signal). @default 0 */
  delayMs?: number | undefined;
  /** Decides each message's outcome. @default always delivered */
  outcome?: ((message: OutboxMessage) => DeliveryOutcome | Promise<DeliveryOutcome>) | undefined;
  /**
   * Keep a call's messages of one key in order ({@link Transport.orderedBatches}): once one of a key's messages is
   * not delivered, the key's later messages of the call are not attempted (not recorded in `attempts`, no `outcome`
   * call). @default false
   */
  orderedBatches?: boolean | undefined;
}

/** A transport that records what it was given. */
export interface RecordingTransport extends Transport {
  /** Messages reported delivered, in the order they were delivered. */
  readonly delivered: OutboxMessage[];
  /** Every message attempted, in order, whatever its outcome (with `orderedBatches`, not those skipped). */
  readonly attempts: OutboxMessage[];
  /** Number of `send` calls. */
  readonly calls: number;
  /** Largest number of `send` calls seen in flight at once. */
  readonly maxInFlight: number;
  /** Forgets everything recorded. */
  clear(): void;
}

/**
 * A transport for tests and demos: records every message, optionally slow or failing.
 *
 * @param options batch size, per-call delay, outcome function
 * @returns the transport, with `delivered` and `attempts` arrays
 * @example
 * ```ts
 * import { recordingTransport } from "edge-outbox/memory";
 * const transport = recordingTransport({ outcome: (m) => m.attempts < 2 ? { status: "retry", error: "flaky" } : { status: "delivered" } });
 * // … relay.drain() …
 * console.log(transport.delivered.map((m) => m.id));
 * ```
 */
export function recordingTransport(options: RecordingTransportOptions = {}): RecordingTransport {
  const delivered: OutboxMessage[] = [];
  const attempts: OutboxMessage[] = [];
  let calls = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  return {
    name: "recording",
    maxBatchSize: options.maxBatchSize ?? 1,
    orderedBatches: options.orderedBatches ?? false,
    delivered,
    attempts,
    get calls(): number {
      return calls;
    },
    get maxInFlight(): number {
      return maxInFlight;
    },
    clear(): void {
      delivered.length = 0;
      attempts.length = 0;
      calls = 0;
      maxInFlight = 0;
    },
    async send(messages: readonly OutboxMessage[], { signal }: SendContext): Promise<readonly DeliveryOutcome[]> {
      calls++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        if (!options.orderedBatches) attempts.push(...messages);
        if (options.delayMs) await abortableDelay(options.delayMs, signal);
        return await inKeyOrder(messages, options.orderedBatches === true, async (m) => {
          if (options.orderedBatches) attempts.push(m);
          const o = options.outcome ? await options.outcome(m) : { status: "delivered" as const };
          if (o.status === "delivered") delivered.push(m);
          return o;
        });
      } finally {
        inFlight--;
      }
    },
  };
}

/** Options of {@link functionTransport}. */
export interface FunctionTransportOptions {
  /** Name in reports. @default "function" */
  name?: string | undefined;
  /**
   * Messages per `send` call (1–1,000), handled one after another: above 1, a call may carry several consecutive
   * messages of a hot key ({@link Transport.orderedBatches}); the handler still sees them one by one, in order, and a
   * key's later messages of the call are skipped once one of them is not delivered. Calls still run `concurrency`
   * at a time. @default 1
   */
  maxBatchSize?: number | undefined;
}

/**
 * A transport that calls an in-process handler per message. The handler resolving means delivered; throwing
 * means retry; it may also return an explicit outcome (e.g. `{ status: "dead", error }` for a permanent failure).
 * It keeps the order of each key's messages within a call (`orderedBatches`).
 *
 * @param handler called once per message with the send's abort signal
 * @param options name, maxBatchSize
 * @returns the transport
 * @throws {OutboxError} CONFIG when `maxBatchSize` is not an integer from 1 to 1,000
 * @example
 * ```ts
 * import { functionTransport } from "edge-outbox/memory";
 * const transport = functionTransport(async (m, { signal }) => {
 *   const res = await fetch("https://example.com/events", { method: "POST", body: m.body, signal });
 *   if (res.status >= 400 && res.status < 500) return { status: "dead", error: `HTTP ${res.status}` };
 *   if (!res.ok) throw new Error(`HTTP ${res.status}`);
 * });
 * ```
 */
export function functionTransport(
  handler: (message: OutboxMessage, context: SendContext) => Promise<void | DeliveryOutcome> | void | DeliveryOutcome,
  options: FunctionTransportOptions = {},
): Transport {
  const maxBatchSize = options.maxBatchSize ?? 1;
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > 1_000) {
    throw new OutboxError("CONFIG", `functionTransport options: maxBatchSize must be an integer from 1 to 1000 (got ${String(maxBatchSize)})`);
  }
  return {
    name: options.name ?? "function",
    maxBatchSize,
    orderedBatches: true,
    send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]> {
      return inKeyOrder(messages, true, async (m) => {
        try {
          return (await handler(m, context)) ?? { status: "delivered" };
        } catch (e) {
          return { status: "retry", error: e instanceof Error ? e.message : String(e) };
        }
      });
    },
  };
}

/**
 * Delivers `messages` one after another with `deliver`; with `ordered`, a key's later messages are skipped (a
 * `retry` outcome that says so, which the relay ignores) once one of its messages was not delivered.
 */
async function inKeyOrder(
  messages: readonly OutboxMessage[],
  ordered: boolean,
  deliver: (m: OutboxMessage) => Promise<DeliveryOutcome>,
): Promise<DeliveryOutcome[]> {
  const outcomes: DeliveryOutcome[] = [];
  const stopped = new Set<string>();
  for (const m of messages) {
    if (ordered && m.key !== null && stopped.has(m.key)) {
      outcomes.push({ status: "retry", error: "not attempted: an earlier message of its key in this call was not delivered" });
      continue;
    }
    const o = await deliver(m);
    if (ordered && m.key !== null && o.status !== "delivered") stopped.add(m.key);
    outcomes.push(o);
  }
  return outcomes;
}

function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
