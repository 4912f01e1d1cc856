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
  /**
   * The window, ms: the first commit of a quiet window drains at once, later ones at the window's end, so there are
   * at most one drain call per window plus one. A multiple of 1000 (QStash's `notBefore` is in seconds). @default 1000
   */
  windowMs?: number | undefined;
  /**
   * Keep each drain call open until the end of the window it serves, so a commit made while it is open is delivered
   * within the relay's `lingerPollMs` (25 ms by default) instead of at the window's end. The call goes to
   * `url?linger=<ms>` (QStash signs the URL with its query): the leading edge of window `w` asks for the time left
   * until the window's end, the trailing edge (delivered at the window's end, the next window's leading edge) for
   * `windowMs`. The relay app must allow it: `createRelayApp({ maxLingerMs })` at least `windowMs` (else it
   * answers 400 and QStash retries the call), and a `budgetMs` above that. The publishes and the number of drain
   * calls do not change (one per window plus one); each call holds a function open for up to `windowMs` and reads
   * `hasDue` every `lingerPollMs` meanwhile (a Postgres relay also wakes on LISTEN/NOTIFY at once), so it pays
   * where commits are continuous. Measured (bench/nudge-latency.ts, commits ~25 ms apart, window 1 s): p50 41 ms
   * with the linger, 506 ms without. @default false
   * @example
   * ```ts
   * import { qstashNudge } from "edge-outbox/qstash";
   *
   * // The relay app: createRelayApp({ relay, auth, budgetMs: 8_000, maxLingerMs: 1_000, … })
   * await qstashNudge(qstash, { url: "https://app.example/outbox/drain", windowMs: 1_000, linger: true });
   * ```
   */
  linger?: boolean | undefined;
  /** Delivery retries of the drain call. @default QStash's default */
  retries?: number | undefined;
  /** Longest wait for QStash's answers, ms, both publishes together (the nudge runs on your request path). @default 3000 */
  timeoutMs?: number | undefined;
  /** The clock, epoch ms. @default Date.now */
  now?: (() => number) | undefined;
}

/** What {@link qstashNudge} did. */
export interface NudgeResult {
  /**
   * The deduplication id of the drain call that covers this commit, `nudge-<hash(url)>-<n>`: the drain at the
   * start of window `n` (the leading edge of window `n`, or the trailing edge of window `n - 1`).
   */
  readonly dedupId: string;
  /** QStash's message id of that drain call (the existing one when deduplicated). */
  readonly messageId: string;
  /** `leading`: a drain right away (this window had none yet); `trailing`: the drain at this window's end. */
  readonly edge: "leading" | "trailing";
  /** True when that drain call had already been requested (by another commit), so this call added none. */
  readonly deduplicated: boolean;
  /** When QStash will call the drain URL, epoch ms: now (leading) or the window's end (trailing). */
  readonly deliverAt: number;
}

const nudgeOptionsSchema = v.strictObject({
  url: v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
  windowMs: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(1_000), v.maxValue(86_400_000), v.check((n) => n % 1_000 === 0, "must be a multiple of 1000 (QStash schedules in whole seconds)")),
    1_000,
  ),
  linger: v.optional(v.boolean(), false),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
  timeoutMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(60_000)), 3_000),
  now: v.optional(v.function()),
});

/**
 * Asks QStash to call the relay's drain URL after your commit, throttled per time window with a leading and a
 * trailing edge, the deduplication kept by QStash (so it holds across serverless processes):
 *
 * 1. Leading edge: publish a drain call right away with deduplication id `nudge-<hash(url)>-<w>`, `w` the
 *    current window (`floor(now / windowMs)`). The first commit of a quiet window gets its drain at once.
 * 2. When QStash answers that this id was already used (a drain for window `w` was requested, and may already
 *    have run, before this commit), publish the trailing edge: id `nudge-<hash(url)>-<w + 1>` with
 *    `notBefore` = the window's end (unix seconds). It doubles as the next window's leading edge, so commits in
 *    the next window deduplicate against it and schedule the one after.
 *
 * So a commit waits at most one window, an isolated commit a single QStash hop, and a burst spanning k windows
 * makes at most k + 1 drain calls. A commit costs one publish (leading edge) or two (trailing edge). A lost nudge
 * loses no message (the rows are committed): the next nudge or the schedule ({@link ensureSchedule}) drains them.
 *
 * The window cannot be shorter than a second: QStash delays only in whole seconds (its docs, "Delay": `Upstash-Delay`
 * is `<number><unit>`, e.g. `10s`, `1m`; `Upstash-Not-Before` is "a unix timestamp in seconds"). So under continuous
 * commits most of them wait for the trailing edge, about half a window. With `linger: true` each drain call stays
 * open until its window's end (`POST /drain?linger=<ms>`, `relay.drain({ lingerMs })`) and drains commits as they
 * come; the trailing edge still covers whatever commits after a call ended.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally)
 * @param options url, windowMs (1000), linger (false), retries, timeoutMs (3000), now
 * @returns the covering drain call's dedup id and QStash message id, the edge, whether it was deduplicated and when it comes
 * @throws {OutboxError} CONFIG for a bad option; TRANSPORT (retryable unless QStash answered 4xx) when a publish fails or times out
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
  const started = Date.now();
  const window = Math.floor(now / o.windowMs);
  const prefix = `nudge-${await shortHash(o.url)}-`;
  const windowEnd = (window + 1) * o.windowMs;
  /** The drain call starting window `n` (its deduplication id), lingering `lingerMs` when `linger` is on. */
  const drainCall = (n: number, lingerMs: number, notBefore?: number): QstashPublishRequest => {
    const request: QstashPublishRequest = { url: o.linger ? withLinger(o.url, lingerMs) : o.url, method: "POST", deduplicationId: `${prefix}${n}` };
    if (notBefore !== undefined) request.notBefore = notBefore / 1_000;
    if (o.retries !== undefined) request.retries = o.retries;
    return request;
  };
  const leading = drainCall(window, Math.max(0, Math.floor(windowEnd - now)));
  const lead = await publishOnce(client, leading, o.timeoutMs, "qstashNudge");
  if (!lead.deduplicated) {
    return { dedupId: leading.deduplicationId!, messageId: lead.messageId, edge: "leading", deduplicated: false, deliverAt: now };
  }
  const trailing = drainCall(window + 1, o.windowMs, windowEnd);
  const remainingMs = Math.max(1, o.timeoutMs - (Date.now() - started));
  const trail = await publishOnce(client, trailing, remainingMs, "qstashNudge");
  return { dedupId: trailing.deduplicationId!, messageId: trail.messageId, edge: "trailing", deduplicated: trail.deduplicated === true, deliverAt: windowEnd };
}

/** The drain URL with `linger=<ms>` in its query (the deduplication ids hash the URL without it). */
function withLinger(url: string, lingerMs: number): string {
  const u = new URL(url);
  u.searchParams.set("linger", String(lingerMs));
  return u.toString();
}
