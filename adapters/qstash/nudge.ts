/**
 * {@link qstashNudge}: after a commit, asks QStash to call the relay's drain URL (deduplicated per time window).
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import { parseOptions } from "../../src/options.ts";
import type { QstashPublishClient, QstashPublishRequest } from "./client.ts";
import { isHttpUrl, publishOnce, shortHash } from "./publish.ts";

/** Options of {@link qstashNudge}. */
export interface QstashNudgeOptions {
  /** The relay's drain URL, as QStash should call it (e.g. `https://app.example/outbox/drain`). */
  url: string;
  /** The window, ms: at most one drain call per window, at its end. A multiple of 1000 (QStash's `notBefore` is in seconds). @default 1000 */
  windowMs?: number;
  /** Delivery retries of the drain call. @default QStash's default */
  retries?: number;
  /** Longest wait for QStash's answer, ms (the nudge runs on your request path). @default 3000 */
  timeoutMs?: number;
  /** The clock, epoch ms. @default Date.now */
  now?: () => number;
}

/** What {@link qstashNudge} did. */
export interface NudgeResult {
  /** The window's deduplication id, `nudge-<hash(url)>-<window number>`. */
  readonly dedupId: string;
  /** QStash's message id (the window's existing one when deduplicated). */
  readonly messageId: string;
  /** True when this window's drain call had already been requested. */
  readonly deduplicated: boolean;
  /** When QStash will call the drain URL: the window's end, epoch ms. */
  readonly deliverAt: number;
}

const nudgeOptionsSchema = v.object({
  url: v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
  windowMs: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(1_000), v.maxValue(86_400_000), v.check((n) => n % 1_000 === 0, "must be a multiple of 1000 (QStash schedules in whole seconds)")),
    1_000,
  ),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
  timeoutMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(60_000)), 3_000),
  now: v.optional(v.function()),
});

/**
 * Asks QStash to call the relay's drain URL at the end of the current time window, once per window: the
 * deduplication id is the window (`nudge-<hash(url)>-<floor(now / windowMs)>`) and the call is delayed to the
 * window's end (`notBefore`). Call it after each commit: a burst of commits makes one drain call, and the last
 * commit of a burst waits at most one window. The deduplication lives in QStash, so it holds across serverless
 * processes. A lost nudge loses no message (the rows are committed): the next nudge or the schedule
 * ({@link ensureSchedule}) drains them.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally)
 * @param options url, windowMs (1000), retries, timeoutMs (3000), now
 * @returns the window's dedup id, QStash's message id, whether it was deduplicated and when the drain call comes
 * @throws {OutboxError} CONFIG for a bad option; TRANSPORT (retryable unless QStash answered 4xx) when the publish fails or times out
 * @example
 * ```ts
 * import { qstashNudge } from "edge-outbox/qstash";
 *
 * await client.batch([insertOrder, outbox.statement(orderCreated, order)], "write");
 * await qstashNudge(qstash, { url: "https://app.example/outbox/drain", windowMs: 1_000 })
 *   .catch((e) => console.warn("nudge failed; the schedule will drain", e));
 * ```
 */
export async function qstashNudge(client: QstashPublishClient, options: QstashNudgeOptions): Promise<NudgeResult> {
  if (typeof (client as { publish?: unknown } | null)?.publish !== "function") {
    throw new OutboxError("CONFIG", "qstashNudge: client must be a QStash Client (with publish())");
  }
  const o = parseOptions("qstashNudge options", nudgeOptionsSchema, options);
  const now = (options.now ?? Date.now)();
  const window = Math.floor(now / o.windowMs);
  const deliverAt = (window + 1) * o.windowMs;
  const dedupId = `nudge-${await shortHash(o.url)}-${window}`;
  const request: QstashPublishRequest = { url: o.url, method: "POST", deduplicationId: dedupId, notBefore: deliverAt / 1_000 };
  if (o.retries !== undefined) request.retries = o.retries;
  const response = await publishOnce(client, request, o.timeoutMs, "qstashNudge");
  return { dedupId, messageId: response.messageId, deduplicated: response.deduplicated === true, deliverAt };
}
