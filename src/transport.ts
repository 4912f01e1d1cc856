/**
 * The `Transport` contract: how the relay hands messages to the outside world (QStash, a webhook, a function).
 *
 * @module
 */
import type { OutboxMessage } from "./message.ts";

/** The outcome of delivering one message. */
export type DeliveryOutcome =
  /** The destination accepted the message. */
  | { readonly status: "delivered" }
  /**
   * A transient failure: try again later. `retryAfterMs` (e.g. from a `Retry-After` header) is honoured as the
   * shortest wait before the next attempt, rounded up to a whole millisecond and clamped to one day
   * (`MAX_RETRY_AFTER_MS`); `error` is cut to 2,000 characters, NUL and lone surrogates replaced by U+FFFD. No
   * outcome can make the relay's settle fail.
   */
  | { readonly status: "retry"; readonly error: string; readonly retryAfterMs?: number | undefined }
  /** A permanent failure (e.g. HTTP 400): dead-letter it now, whatever attempts remain. */
  | { readonly status: "dead"; readonly error: string };

/** What the relay passes to every `send` call. */
export interface SendContext {
  /**
   * Aborts at the send timeout, or earlier when the lease would expire or the drain is aborted. Pass it to
   * `fetch`. The relay stops waiting when it fires: whatever the transport does afterwards, the messages are
   * reported as `retry` (their ids make resending safe for deduplicating consumers).
   */
  readonly signal: AbortSignal;
}

/**
 * The transport contract.
 *
 * Messages with the same key are never given to `send` together and never in parallel: the relay sends a key's
 * messages one after another and stops at the first one that is not delivered. One call (up to `maxBatchSize`)
 * holds keyless messages, or the next message of each of several keys, never both.
 *
 * @example
 * ```ts
 * import type { Transport } from "edge-outbox";
 * const logTransport: Transport = {
 *   name: "log",
 *   async send(messages) {
 *     for (const m of messages) console.log(m.topic, m.payload);
 *     return messages.map(() => ({ status: "delivered" }));
 *   },
 * };
 * ```
 */
export interface Transport {
  /** Name for reports and error messages. */
  readonly name: string;
  /** The most messages one `send` call takes. @default 1 */
  readonly maxBatchSize?: number | undefined;
  /**
   * Delivers `messages` and returns exactly one outcome per message, in the same order. Throwing (or returning
   * the wrong number of outcomes) counts as `retry` for every message of the call.
   */
  send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]>;
}
