/**
 * Retry delays: exponential backoff with full jitter, never shorter than a server's `Retry-After`.
 *
 * @module
 */

/** Backoff settings (all in milliseconds). */
export interface BackoffOptions {
  /** Upper bound of the first retry's delay. @default 1000 */
  baseMs?: number | undefined;
  /** Largest delay the exponential part can reach. @default 300000 */
  maxMs?: number | undefined;
  /** Smallest delay, so a failing message is not retried again within the same drain. @default 250 */
  minMs?: number | undefined;
}

/**
 * The longest `Retry-After` the relay honours, ms (one day). A destination asking for more (a `Retry-After` of
 * 10^20 seconds, a date far in the future) is retried after one day: the wait stays a safe integer every storage
 * accepts, and the message is not parked for ever by one bad header.
 *
 * @example
 * ```ts
 * import { backoffDelay, MAX_RETRY_AFTER_MS } from "edge-outbox";
 * backoffDelay(1, {}, 1e23) === MAX_RETRY_AFTER_MS; // true
 * ```
 */
export const MAX_RETRY_AFTER_MS = 86_400_000;

/**
 * Computes the delay before the next attempt: a uniformly random value in `[0, min(maxMs, baseMs × 2^(attempt-1))]`
 * (full jitter), raised to at least `minMs`, and to at least `retryAfterMs` when the destination asked for it.
 * `retryAfterMs` is rounded up to a whole millisecond and clamped to {@link MAX_RETRY_AFTER_MS} (one day); a
 * negative or non-finite value is ignored. The result is always a safe integer in `[0, max(maxMs, one day)]`.
 *
 * @param attempt the attempt that just failed (1 for the first)
 * @param options base, max and min delays
 * @param retryAfterMs the destination's requested wait, if any (honoured even above `maxMs`, up to one day)
 * @param random a source of uniform numbers in [0, 1) @default Math.random
 * @returns the delay in ms (an integer)
 * @example
 * ```ts
 * import { backoffDelay } from "edge-outbox";
 * backoffDelay(3, { baseMs: 1000, maxMs: 60_000 }); // somewhere in [250, 4000]
 * backoffDelay(1, {}, 30_000);                      // at least 30000
 * ```
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  const base = options.baseMs ?? 1_000;
  const max = options.maxMs ?? 300_000;
  const min = options.minMs ?? 250;
  const exp = Math.min(Math.max(attempt, 1) - 1, 52);
  const cap = Math.min(max, base * 2 ** exp);
  let delay = Math.max(min, Math.floor(random() * cap));
  const asked = clampRetryAfter(retryAfterMs);
  if (asked !== undefined && asked > delay) delay = asked;
  return delay;
}

/**
 * A transport-given wait made safe for any storage: rounded up to a whole millisecond and clamped to
 * `(0, MAX_RETRY_AFTER_MS]` (Infinity becomes one day); undefined for absent, NaN, zero or negative values.
 */
function clampRetryAfter(retryAfterMs: number | undefined): number | undefined {
  if (typeof retryAfterMs !== "number" || Number.isNaN(retryAfterMs)) return undefined;
  if (retryAfterMs === Infinity) return MAX_RETRY_AFTER_MS;
  if (!Number.isFinite(retryAfterMs) || retryAfterMs <= 0) return undefined;
  return Math.min(MAX_RETRY_AFTER_MS, Math.ceil(retryAfterMs));
}

/**
 * Parses an HTTP `Retry-After` header (seconds or an HTTP date) into milliseconds.
 *
 * @param value the header value
 * @param now the current time, epoch ms @default Date.now()
 * @returns the wait in ms, or undefined when absent or unparseable
 * @example
 * ```ts
 * import { parseRetryAfter } from "edge-outbox";
 * parseRetryAfter("120"); // 120000
 * ```
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null || value.trim() === "") return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
