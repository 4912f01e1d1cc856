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
 * Messages with the same key are never sent in parallel: the relay sends a key's messages one after another and
 * stops at the first one that is not delivered. One call (up to `maxBatchSize`) holds keyless messages, or keyed
 * ones, never both: the next message of each of several keys, or, with {@link Transport.orderedBatches}, the next
 * consecutive messages of each (a run per key, in `seq` order).
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
   * Set it when the transport keeps the order of a call's messages of one key: it delivers them one after another in
   * the order given, and once one of them is not delivered (its outcome is `retry` or `dead`) it does not attempt that
   * key's later messages of the call. The relay may then put consecutive messages of a key in one call (with a
   * `maxBatchSize` above 1), so a hot key goes a batch per call, not a message per call. For each key, the relay reads
   * the outcomes in order up to the first that is not `delivered` and hands back the key's later messages of the call
   * unattempted (`released`: due again at once, their attempt not counted, whatever outcome the transport gave them),
   * with the key's rows queued behind them. A call that throws, times out or returns the wrong number of outcomes
   * counts as `retry` for each key's first message of it (its later ones are released, and the key goes one message
   * per call for ten minutes, so a message that fails such calls is charged its own attempts) and for every keyless
   * message. Each message's `prevSeq` is the `seq` of the message
   * before it in the call when that one has the same key (delivered just before it, or this one is not attempted).
   * A transport that delivers a call's messages independently (in parallel, or through a service that may reorder
   * them) must leave it unset. @default false
   */
  readonly orderedBatches?: boolean | undefined;
  /**
   * Delivers `messages` and returns exactly one outcome per message, in the same order. Throwing (or returning
   * the wrong number of outcomes) counts as `retry` for every message of the call (with `orderedBatches`, see there).
   */
  send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]>;
}
