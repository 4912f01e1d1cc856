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
}

/** A transport that records what it was given. */
export interface RecordingTransport extends Transport {
  /** Messages reported delivered, in the order they were delivered. */
  readonly delivered: OutboxMessage[];
  /** Every message handed to `send`, in order, whatever its outcome. */
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
        attempts.push(...messages);
        if (options.delayMs) await abortableDelay(options.delayMs, signal);
        const outcomes: DeliveryOutcome[] = [];
        for (const m of messages) {
          const o = options.outcome ? await options.outcome(m) : { status: "delivered" as const };
          if (o.status === "delivered") delivered.push(m);
          outcomes.push(o);
        }
        return outcomes;
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
}

/**
 * A transport that calls an in-process handler per message. The handler resolving means delivered; throwing
 * means retry; it may also return an explicit outcome (e.g. `{ status: "dead", error }` for a permanent failure).
 *
 * @param handler called once per message with the send's abort signal
 * @param options name
 * @returns the transport
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
  return {
    name: options.name ?? "function",
    maxBatchSize: 1,
    async send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]> {
      const outcomes: DeliveryOutcome[] = [];
      for (const m of messages) {
        try {
          const r = await handler(m, context);
          outcomes.push(r ?? { status: "delivered" });
        } catch (e) {
          outcomes.push({ status: "retry", error: e instanceof Error ? e.message : String(e) });
        }
      }
      return outcomes;
    },
  };
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
