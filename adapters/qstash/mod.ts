/**
 * `edge-outbox/qstash`: Upstash QStash as the relay's transport, plus the helpers that make QStash drive the relay.
 *
 * - {@link qstashTransport}: publishes messages to QStash, many per `batch` call, with the message id as the
 *   QStash deduplication id, keyed messages through FIFO QStash queues (one per key hash). **"Delivered" means accepted by
 *   QStash**: QStash then delivers to the destination with its own retries and its own dead-letter queue.
 * - {@link qstashNudge}: after your commit, asks QStash to call `POST /drain` once per time window (deduplicated in
 *   QStash, not in process memory), so a burst of commits makes one drain call.
 * - {@link ensureSchedule}: one idempotent cron schedule calling `POST /drain` (a safety net behind the nudges).
 * - {@link qstashFollowUp}: the `followUp` function of `createRelayApp`, so a large backlog drains across many short
 *   calls.
 *
 * The QStash client is typed structurally ({@link QstashClient}): pass `new Client({ token })` from
 * `@upstash/qstash`; this module imports nothing from it. The client retries network errors for about 12 seconds
 * by default, longer than a drain should wait: create it with `retry: false` (or e.g.
 * `retry: { retries: 2, backoff: () => 200 }`). The transport never waits past the send's signal either way.
 *
 * @example
 * ```ts
 * import { Client } from "@upstash/qstash";
 * import { createRelay } from "edge-outbox";
 * import { ensureSchedule, qstashNudge, qstashTransport } from "edge-outbox/qstash";
 *
 * const qstash = new Client({ token: env.QSTASH_TOKEN, retry: false });
 * const relay = createRelay({ outbox, transport: qstashTransport(qstash, { destination: "https://consumer.example/events" }) });
 * await ensureSchedule(qstash, { url: "https://app.example/outbox/drain", cron: "* * * * *" }); // on deploy
 * // after each commit:
 * await qstashNudge(qstash, { url: "https://app.example/outbox/drain", windowMs: 1_000 });
 * ```
 *
 * @module
 */
import * as v from "valibot";
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import type { OutboxMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type { DeliveryOutcome, SendContext, Transport } from "../../src/transport.ts";

/** HTTP methods QStash can call a destination with. */
export type QstashMethod = "GET" | "POST" | "PUT" | "DELETE" | "PATCH";

/** The fields of a QStash publish this library sends (a subset of `@upstash/qstash`'s `PublishRequest`). */
export interface QstashMessageFields {
  /** Request body. */
  body?: string;
  /** Headers: `Upstash-*` are QStash directives, others are forwarded to the destination. */
  headers?: Record<string, string>;
  /** QStash deduplication id: a second publish with the same id is accepted but not enqueued. */
  deduplicationId?: string;
  /** Delay before delivery, seconds. */
  delay?: number;
  /** Earliest delivery time, unix seconds. */
  notBefore?: number;
  /** Delivery retries by QStash. */
  retries?: number;
  /** Method QStash calls the destination with. */
  method?: QstashMethod;
}

/** One message to publish: to a URL or to a URL group. */
export type QstashPublishRequest =
  | (QstashMessageFields & { url: string; urlGroup?: never })
  | (QstashMessageFields & { urlGroup: string; url?: never });

/** One message of a batch: a publish, optionally to a QStash queue (FIFO). */
export type QstashBatchRequest = QstashPublishRequest & {
  /** The queue to enqueue it to; absent: published without a queue. */
  queueName?: string;
};

/** What QStash answers for one published message. */
export interface QstashPublishResponse {
  /** QStash's message id (the existing one when deduplicated). */
  readonly messageId: string;
  /** The destination URL. */
  readonly url?: string;
  /** True when a message with the same deduplication id was already accepted. */
  readonly deduplicated?: boolean;
}

/**
 * One entry of a batch answer: the message's response, an array of per-endpoint responses for a URL group, or (the
 * SDK's type does not say so, QStash's docs do) `{ error }` for a message QStash refused while sending the others.
 */
export type QstashBatchEntry = QstashPublishResponse | readonly QstashPublishResponse[] | { readonly error: string };

/** A QStash schedule, as `schedules.get` / `schedules.list` return it (the fields this library reads). */
export interface QstashSchedule {
  /** Schedule id. */
  readonly scheduleId: string;
  /** Cron expression. */
  readonly cron: string;
  /** Destination URL or URL group. */
  readonly destination: string;
  /** HTTP method. */
  readonly method?: string;
  /** Delivery retries. */
  readonly retries?: number;
}

/** A schedule to create or update (a subset of `@upstash/qstash`'s `CreateScheduleRequest`). */
export interface QstashCreateScheduleRequest {
  /** Destination URL. */
  destination: string;
  /** Cron expression. */
  cron: string;
  /** Schedule id: creating with an existing id updates that schedule. */
  scheduleId?: string;
  /** HTTP method. */
  method?: QstashMethod;
  /** Delivery retries. */
  retries?: number;
  /** Request body. */
  body?: string;
  /** Headers forwarded to the destination. */
  headers?: Record<string, string>;
}

/** The schedules API of a QStash client. */
export interface QstashSchedules {
  /** Creates a schedule, or updates the one with the same `scheduleId`. */
  create(request: QstashCreateScheduleRequest): Promise<{ scheduleId: string }>;
  /** Reads one schedule; rejects (HTTP 404) when there is none. */
  get(scheduleId: string): Promise<QstashSchedule>;
  /** Lists all schedules. */
  list(): Promise<readonly QstashSchedule[]>;
  /** Deletes a schedule. */
  delete(scheduleId: string): Promise<unknown>;
}

/** The part of `@upstash/qstash`'s `Client` that publishes many messages in one request. */
export interface QstashBatchClient {
  /** Publishes several messages in one request. */
  batch(request: QstashBatchRequest[]): Promise<ReadonlyArray<QstashBatchEntry>>;
}

/** The part of `@upstash/qstash`'s `Client` {@link qstashNudge} and {@link qstashFollowUp} use. */
export interface QstashPublishClient {
  /** Publishes one message. */
  publish(request: QstashPublishRequest): Promise<QstashPublishResponse | readonly QstashPublishResponse[]>;
}

/** The part of `@upstash/qstash`'s `Client` {@link ensureSchedule} uses. */
export interface QstashScheduleClient {
  /** The schedules API. */
  readonly schedules: QstashSchedules;
}

/** One QStash queue, as `client.queue({ queueName })` returns it (the part {@link qstashTransport} uses). */
export interface QstashQueue {
  /** Creates the queue, or updates it (QStash's `POST /v2/queues`). */
  upsert(request: { parallelism?: number; paused?: boolean }): Promise<unknown>;
  /** Enqueues one message (QStash's `POST /v2/enqueue/<queue>/<destination>`). */
  enqueue(request: QstashPublishRequest): Promise<QstashPublishResponse | readonly QstashPublishResponse[]>;
}

/** The queues API of a QStash client. */
export interface QstashQueueClient {
  /** The queue named `queueName`. */
  queue(request: { queueName: string }): QstashQueue;
}

/** The part of `@upstash/qstash`'s `Client` {@link qstashTransport} uses. */
export interface QstashTransportClient extends QstashBatchClient, QstashPublishClient, QstashQueueClient {}

/** Everything this module uses of a QStash client; `new Client({ token })` from `@upstash/qstash` is one. */
export interface QstashClient extends QstashTransportClient, QstashScheduleClient {}

/** Where {@link qstashTransport} publishes. */
export type QstashDestination = string | ((message: OutboxMessage) => string) | { urlGroup: string };

/** Options of {@link qstashTransport}. */
export interface QstashTransportOptions {
  /** A URL, a function of the message returning a URL, or `{ urlGroup }`. */
  destination: QstashDestination;
  /** Messages per `batch` call. @default 100 */
  maxBatchSize?: number;
  /** Delivery retries QStash makes for each message. @default QStash's (your plan's) default */
  retries?: number;
  /** Static headers added to every message (forwarded to the destination). @default {} */
  headers?: Record<string, string>;
  /**
   * How many QStash queues (FIFO, parallelism 1) carry keyed messages: a key always maps to queue
   * `<queuePrefix><fnv1a(key) % queues>`, so its messages reach the destination one at a time in commit order.
   * Keys sharing a queue wait for each other; more queues, more keyed deliveries in parallel (each queue counts
   * against your plan's queue limit). `false` publishes keyed messages like keyless ones: no order past QStash.
   * Changing it (or `queuePrefix`) moves keys to other queues: let the old queues drain first. @default 8
   */
  queues?: number | false | undefined;
  /**
   * Prefix of the queue names. Queues are per QStash account: give each app (and each transport with another
   * destination) its own prefix. @default "outbox-"
   */
  queuePrefix?: string | undefined;
  /** Transport name in reports. @default "qstash" */
  name?: string;
}

/** Headers every published message carries (forwarded to the destination). */
export const MESSAGE_HEADERS: Readonly<{ id: string; topic: string; key: string }> = Object.freeze({
  /** The outbox message id (also the QStash deduplication id): dedupe on it. */
  id: "Outbox-Message-Id",
  /** The topic name. */
  topic: "Outbox-Topic",
  /** The ordering key, percent-encoded (absent for keyless messages). */
  key: "Outbox-Key",
});

const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$/;

const transportOptionsSchema = v.object({
  destination: v.union([
    v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
    v.function(),
    v.strictObject({ urlGroup: v.pipe(v.string(), v.minLength(1), v.maxLength(200)) }),
  ], "must be a URL, a function (message) => URL, or { urlGroup }"),
  maxBatchSize: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1_000)), 100),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
  headers: v.optional(v.record(
    v.pipe(v.string(), v.regex(HEADER_NAME_RE, "must be an HTTP header name")),
    v.string(),
  ), {}),
  queues: v.optional(v.union([v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1_000)), v.literal(false)], "must be an integer from 1 to 1000, or false"), 8),
  queuePrefix: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]{1,50}$/, "must be 1 to 50 of A-Z a-z 0-9 . _ -")), "outbox-"),
  name: v.optional(v.pipe(v.string(), v.minLength(1)), "qstash"),
});

/**
 * Creates a transport that publishes outbox messages to QStash: each message's JSON body as is, its headers
 * forwarded (plus `Outbox-Message-Id`, `Outbox-Topic`, `Outbox-Key`), the message id as `Upstash-Deduplication-Id`
 * (a resend after a lost answer is dropped by QStash). Keyed messages are enqueued to a QStash queue chosen by a
 * stable hash of the key (`queues`, default 8, each upserted once with parallelism 1): a queue is FIFO and starts
 * its next message only after the current one is delivered or failed for good (after QStash's retries), so a key's
 * messages reach the destination one at a time in commit order. QStash flow control (`parallelism: 1`) would not
 * do: its docs say the token handoff "does not guarantee strict ordering". Keyless messages go out in the same
 * `batch` calls without a queue, in parallel. Keys sharing a queue wait for each other.
 *
 * "Delivered" means accepted by QStash; QStash then retries the destination itself (`retries`) and keeps what
 * fails in its own dead-letter queue.
 *
 * Outcomes, one per message: QStash answers a batch with one entry per message and sends the others when it refuses
 * one, so a message is delivered only when its entry has a `messageId`. A refused entry (`{ error }`) is resent alone,
 * and the single publish's HTTP status classifies it: 429 → retry after the rate limit's reset; 401 and 403 (a wrong
 * or revoked QStash token: a configuration problem, not a bad message) and 408 → retry, so fixing the token loses
 * nothing; other 4xx → dead; 5xx and network errors → retry. A batch refused as a whole (the same statuses) is
 * classified the same way, and when that is a 4xx its messages are resent one at a time to find the bad one.
 * To a URL group, an entry is an array of per-endpoint results: delivered when every endpoint has a `messageId`;
 * when every endpoint refused, resent alone as above; when some accepted and others refused, dead with both lists in
 * the error (a resend would reach the accepting endpoints again, and QStash would deduplicate it anyway), so the
 * loss is visible in the dead letters and a replay, once fixed, reaches every endpoint (consumers dedupe on
 * `Outbox-Message-Id`); a group without endpoints is dead too (the message reached nobody). When the send's signal fires
 * before QStash answers (the client itself cannot be aborted and retries network errors for ~12 s by default),
 * the publish is abandoned and reported as retry: the deduplication id makes the resend safe.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally); create it with `retry: false` or a bounded retry
 * @param options destination, maxBatchSize (100), retries, headers, queues (8), queuePrefix ("outbox-"), name
 * @returns the transport
 * @throws {OutboxError} CONFIG naming the bad option
 * @example
 * ```ts
 * import { Client } from "@upstash/qstash";
 * import { createRelay } from "edge-outbox";
 * import { qstashTransport } from "edge-outbox/qstash";
 *
 * const qstash = new Client({ token: env.QSTASH_TOKEN, retry: false });
 * const transport = qstashTransport(qstash, {
 *   destination: (m) => `https://consumer.example/events/${m.topic}`,
 *   retries: 5,
 * });
 * const relay = createRelay({ outbox, transport, batchSize: 500, concurrency: 4, sendTimeoutMs: 5_000, leaseMs: 30_000 });
 * ```
 */
export function qstashTransport(client: QstashTransportClient, options: QstashTransportOptions): Transport {
  const c = client as { batch?: unknown; publish?: unknown } | null;
  if (typeof c?.batch !== "function" || typeof c.publish !== "function") {
    throw new OutboxError("CONFIG", "qstashTransport: client must be a QStash Client (with batch() and publish())");
  }
  const o = parseOptions("qstashTransport options", transportOptionsSchema, options);
  const destination = options.destination;
  const { maxBatchSize, retries, headers: staticHeaders, queues, queuePrefix, name } = o;
  /** Queue name → its upsert (parallelism 1), once per transport; forgotten when it fails, so the next send retries it. */
  const upserts = new Map<string, Promise<unknown>>();
  const ensureQueue = (queueName: string): Promise<unknown> => {
    let p = upserts.get(queueName);
    if (!p) {
      p = Promise.resolve().then(() => client.queue({ queueName }).upsert({ parallelism: 1 }));
      p.catch(() => upserts.delete(queueName));
      upserts.set(queueName, p);
    }
    return p;
  };

  function toRequest(m: OutboxMessage): QstashBatchRequest | DeliveryOutcome {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    const forward = (k: string, value: string): void => {
      if (k.toLowerCase() === "content-type") return; // the body is always JSON
      headers[`Upstash-Forward-${k}`] = value; // explicit prefix: a user header never acts as a QStash directive
    };
    for (const [k, val] of Object.entries(staticHeaders)) forward(k, val);
    for (const [k, val] of Object.entries(m.headers)) {
      if (/[^\t\x20-\x7e\x80-\xff]/.test(val)) {
        return { status: "dead", error: `qstash: header ${k} has characters an HTTP header cannot carry (use ASCII, or encode the value)` };
      }
      forward(k, val);
    }
    forward(MESSAGE_HEADERS.id, m.id);
    forward(MESSAGE_HEADERS.topic, m.topic);
    if (m.key !== null) forward(MESSAGE_HEADERS.key, encodeURIComponent(m.key));
    const seq = (m as { seq?: unknown }).seq; // the relay passes claimed messages: their commit-ordered seq (qstashReceiver)
    if (m.key !== null && typeof seq === "number") forward("Outbox-Seq", String(seq));
    const fields: QstashMessageFields = { body: m.body, headers, deduplicationId: m.id, method: "POST" };
    if (retries !== undefined) fields.retries = retries;
    const queue = m.key !== null && queues !== false ? { queueName: `${queuePrefix}${fnv1a(m.key) % queues}` } : {};
    if (typeof destination === "object") return { ...fields, ...queue, urlGroup: destination.urlGroup };
    let url: unknown;
    try {
      url = typeof destination === "function" ? destination(m) : destination;
    } catch (e) {
      return { status: "dead", error: `qstash: destination(message) threw: ${errorMessage(e)}` };
    }
    if (typeof url !== "string" || !isHttpUrl(url)) {
      return { status: "dead", error: `qstash: destination(message) returned ${JSON.stringify(url)}, not an absolute http(s) URL` };
    }
    return { ...fields, ...queue, url };
  }

  /**
   * Publishes one message on its own (the single-message endpoint answers with an HTTP status) and judges the
   * answer; a queued message is enqueued to its queue, never published past it.
   */
  async function publishAlone(request: QstashBatchRequest): Promise<DeliveryOutcome> {
    try {
      const { queueName, ...single } = request;
      const answer = queueName === undefined ? await client.publish(single) : await client.queue({ queueName }).enqueue(single);
      return judge(answer, request, false);
    } catch (e) {
      return classify(e);
    }
  }

  /**
   * The outcome of one batch entry. Delivered only with a `messageId` (a URL group: an array in which every
   * endpoint has one). An `{ error }` entry is resent alone, so QStash's HTTP status classifies it exactly like a
   * refused single publish; a URL group some endpoints accepted and others refused is dead (see the transport's doc).
   */
  function judge(entry: unknown, request: QstashBatchRequest, resend: boolean): DeliveryOutcome | Promise<DeliveryOutcome> {
    if (hasMessageId(entry)) return { status: "delivered" };
    if (Array.isArray(entry) && request.urlGroup !== undefined) {
      const refused = entry.filter((e) => !hasMessageId(e));
      if (entry.length > 0 && refused.length === 0) return { status: "delivered" };
      const accepted = entry.length - refused.length;
      if (accepted === 0 && resend) return publishAlone(request);
      const why = refused.map((e) => `${endpointOf(e)}: ${entryError(e)}`).join("; ");
      return {
        status: "dead",
        error: entry.length === 0
          ? `qstash: URL group ${request.urlGroup} has no endpoints: the message reached nobody`
          : `qstash: URL group ${request.urlGroup}: accepted for ${accepted} of ${entry.length} endpoints, refused for ${why}` +
            (accepted > 0 ? " (not resent: the accepted endpoints would get it again; replay it once fixed, consumers dedupe on the message id)" : ""),
      };
    }
    if (resend) return publishAlone(request);
    return { status: "dead", error: `qstash: refused: ${entryError(entry)}` };
  }

  async function publish(requests: QstashBatchRequest[]): Promise<DeliveryOutcome[]> {
    let answer: ReadonlyArray<unknown>;
    try {
      answer = await client.batch(requests);
    } catch (e) {
      const outcome = classify(e);
      if (outcome.status !== "dead" || requests.length === 1) return requests.map(() => outcome);
      // Refused as a whole (a malformed batch): find the message(s) QStash refuses, one per call.
      return mapConcurrent(requests, 8, publishAlone);
    }
    if (!Array.isArray(answer) || answer.length !== requests.length) {
      const error = `qstash: the batch answer has ${Array.isArray(answer) ? answer.length : "no"} entries for ${requests.length} messages`;
      return requests.map(() => ({ status: "retry", error }));
    }
    return mapConcurrent(requests, 8, (request, i) => judge(answer[i], request, true));
  }

  return {
    name,
    maxBatchSize,
    async send(messages: readonly OutboxMessage[], { signal }: SendContext): Promise<readonly DeliveryOutcome[]> {
      const abandoned = (): DeliveryOutcome => ({
        status: "retry",
        error: "qstash: publish abandoned: QStash did not answer before the send was aborted (the deduplication id makes the resend safe)",
      });
      if (signal.aborted) return messages.map(abandoned);
      const prepared = messages.map(toRequest);
      const outcomes: DeliveryOutcome[] = new Array(messages.length);
      // Keyed messages go to their queue, which must exist with parallelism 1 (FIFO) first.
      const queueNames = [...new Set(prepared.flatMap((p) => ("queueName" in p && p.queueName !== undefined ? [p.queueName] : [])))];
      const failed = new Map<string, DeliveryOutcome>();
      if (queueNames.length > 0) {
        const ready = await raceSignal(Promise.all(queueNames.map((q) => ensureQueue(q).then(() => null, (e: unknown) => failed.set(q, queueFailure(classify(e), `creating queue ${q}`))))), signal);
        if (ready === ABANDONED) return messages.map(abandoned);
      }
      const requests: QstashBatchRequest[] = [];
      const slots: number[] = [];
      prepared.forEach((p, i) => {
        const queueFailure = "queueName" in p && p.queueName !== undefined ? failed.get(p.queueName) : undefined;
        if ("status" in p) outcomes[i] = p;
        else if (queueFailure) outcomes[i] = queueFailure;
        else {
          requests.push(p);
          slots.push(i);
        }
      });
      if (requests.length > 0) {
        const result = await raceSignal(publish(requests), signal);
        const published = result === ABANDONED ? requests.map(abandoned) : result;
        slots.forEach((slot, j) => (outcomes[slot] = published[j]!));
      }
      return outcomes;
    },
  };
}

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

/** Options of {@link qstashFollowUp}. */
export interface QstashFollowUpOptions {
  /** The relay's drain URL, as QStash should call it. */
  url: string;
  /** Delivery retries of the follow-up call. @default QStash's default */
  retries?: number;
  /** Longest wait for QStash's answer, ms. @default 3000 */
  timeoutMs?: number;
}

const followUpOptionsSchema = v.object({
  url: v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
  timeoutMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(60_000)), 3_000),
});

/**
 * Makes the `followUp` function of `createRelayApp` (from `edge-outbox/hono`): publishes one drain call to `url`
 * right away, with the deduplication id the app derives from the incoming call, so a retried call never triggers a
 * second follow-up.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally)
 * @param options url, retries, timeoutMs (3000)
 * @returns `({ dedupId }) => Promise<void>`
 * @throws {OutboxError} CONFIG for a bad option (the returned function rejects with TRANSPORT when the publish fails)
 * @example
 * ```ts
 * import { createRelayApp } from "edge-outbox/hono";
 * import { qstashFollowUp } from "edge-outbox/qstash";
 *
 * const app = createRelayApp({
 *   relay, outbox, auth: { qstash: signingKeys }, publicUrl: "https://app.example/outbox",
 *   followUp: qstashFollowUp(qstash, { url: "https://app.example/outbox/drain" }),
 * });
 * ```
 */
export function qstashFollowUp(
  client: QstashPublishClient,
  options: QstashFollowUpOptions,
): (request: { readonly dedupId: string }) => Promise<void> {
  if (typeof (client as { publish?: unknown } | null)?.publish !== "function") {
    throw new OutboxError("CONFIG", "qstashFollowUp: client must be a QStash Client (with publish())");
  }
  const o = parseOptions("qstashFollowUp options", followUpOptionsSchema, options);
  return async ({ dedupId }): Promise<void> => {
    const request: QstashPublishRequest = { url: o.url, method: "POST", deduplicationId: dedupId };
    if (o.retries !== undefined) request.retries = o.retries;
    await publishOnce(client, request, o.timeoutMs, "qstashFollowUp");
  };
}

/** Options of {@link ensureSchedule}. */
export interface EnsureScheduleOptions {
  /** The relay's drain URL, as QStash should call it. */
  url: string;
  /** Cron expression (5 fields, optionally `CRON_TZ=<zone> ` first), e.g. `* * * * *`. */
  cron: string;
  /** The schedule id. @default `edge-outbox-<hash(url)>` (deterministic: one schedule per URL) */
  scheduleId?: string;
  /** HTTP method. @default "POST" */
  method?: QstashMethod;
  /** Delivery retries of each call. @default QStash's default */
  retries?: number;
}

/** What {@link ensureSchedule} did. */
export interface EnsureScheduleResult {
  /** The schedule id. */
  readonly scheduleId: string;
  /** `created` (there was none), `updated` (it differed) or `unchanged`. */
  readonly status: "created" | "updated" | "unchanged";
}

const scheduleOptionsSchema = v.object({
  url: v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
  cron: v.pipe(v.string(), v.regex(/^(CRON_TZ=\S+\s+)?\S+(\s+\S+){4}$/, "must be a 5-field cron expression, e.g. \"* * * * *\"")),
  scheduleId: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]{1,200}$/, "must be 1 to 200 of A-Z a-z 0-9 . _ -"))),
  method: v.optional(v.picklist(["GET", "POST", "PUT", "DELETE", "PATCH"]), "POST"),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
});

/**
 * Creates or updates ONE QStash schedule calling the relay's drain URL: the schedule id is derived from the URL
 * (or given), so calling this on every deploy never makes a duplicate; a schedule that already matches is left
 * alone.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally)
 * @param options url, cron, scheduleId (derived from url), method ("POST"), retries
 * @returns the schedule id and whether it was created, updated or unchanged
 * @throws {OutboxError} CONFIG for a bad option; TRANSPORT when QStash fails
 * @example
 * ```ts
 * import { ensureSchedule } from "edge-outbox/qstash";
 * // in your deploy script or at start:
 * const { scheduleId, status } = await ensureSchedule(qstash, { url: "https://app.example/outbox/drain", cron: "* * * * *" });
 * ```
 */
export async function ensureSchedule(client: QstashScheduleClient, options: EnsureScheduleOptions): Promise<EnsureScheduleResult> {
  if (typeof (client as { schedules?: { create?: unknown } } | null)?.schedules?.create !== "function") {
    throw new OutboxError("CONFIG", "ensureSchedule: client must be a QStash Client (with schedules)");
  }
  const o = parseOptions("ensureSchedule options", scheduleOptionsSchema, options);
  const scheduleId = o.scheduleId ?? `edge-outbox-${await shortHash(o.url)}`;
  let existing: QstashSchedule | null = null;
  try {
    // list, not get: a missing schedule is a normal case here, not a 404 the client logs as an error
    existing = (await client.schedules.list()).find((s) => s.scheduleId === scheduleId) ?? null;
  } catch (e) {
    throw transportError("ensureSchedule: listing the schedules failed", e);
  }
  if (
    existing && existing.cron === o.cron && existing.destination === o.url && (existing.method ?? "POST") === o.method &&
    (o.retries === undefined || existing.retries === o.retries)
  ) {
    return { scheduleId, status: "unchanged" };
  }
  const request: QstashCreateScheduleRequest = { destination: o.url, cron: o.cron, scheduleId, method: o.method };
  if (o.retries !== undefined) request.retries = o.retries;
  try {
    const created = await client.schedules.create(request);
    return { scheduleId: created.scheduleId ?? scheduleId, status: existing ? "updated" : "created" };
  } catch (e) {
    throw transportError("ensureSchedule: creating the schedule failed", e);
  }
}

const ABANDONED: unique symbol = Symbol("abandoned");

/** Resolves with `p`, or with ABANDONED as soon as `signal` aborts (`p` keeps running; its rejection is swallowed). */
function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T | typeof ABANDONED> {
  p.catch(() => {});
  if (signal.aborted) return Promise.resolve(ABANDONED);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => resolve(ABANDONED);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

async function publishOnce(
  client: QstashPublishClient,
  request: QstashPublishRequest,
  timeoutMs: number,
  what: string,
): Promise<QstashPublishResponse> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let result: Awaited<ReturnType<QstashPublishClient["publish"]>> | typeof ABANDONED;
  try {
    result = await raceSignal(client.publish(request), controller.signal);
  } catch (e) {
    throw transportError(`${what}: publishing to ${request.url ?? request.urlGroup} failed`, e);
  } finally {
    clearTimeout(timer);
  }
  if (result === ABANDONED) {
    throw new OutboxError("TRANSPORT", `[edge-outbox:qstash] ${what}: QStash did not answer within ${timeoutMs} ms`, { retryable: true });
  }
  const first = Array.isArray(result) ? result[0] : result;
  return { messageId: String((first as QstashPublishResponse | undefined)?.messageId ?? ""), deduplicated: (first as QstashPublishResponse | undefined)?.deduplicated === true };
}

/** Maps a failed QStash call to an outcome: 429 → retry after the reset; 401/403/408 → retry; other 4xx → dead; else retry. */
function classify(e: unknown): DeliveryOutcome {
  const status = statusOf(e);
  const error = `qstash: ${status !== undefined ? `HTTP ${status}: ` : ""}${errorMessage(e)}`.slice(0, 2_000);
  if (status === 429) {
    const retryAfterMs = resetToMs(e);
    return retryAfterMs === undefined ? { status: "retry", error } : { status: "retry", error, retryAfterMs };
  }
  if (status === 401 || status === 403 || status === 408) return { status: "retry", error };
  if (status !== undefined && status >= 400 && status < 500) return { status: "dead", error };
  return { status: "retry", error };
}

function hasMessageId(entry: unknown): boolean {
  const id = (entry as { messageId?: unknown } | null)?.messageId;
  return typeof id === "string" && id !== "";
}

function entryError(entry: unknown): string {
  const error = (entry as { error?: unknown } | null)?.error;
  return (typeof error === "string" && error !== "" ? error : `unexpected answer ${JSON.stringify(entry)}`).slice(0, 500);
}

function endpointOf(entry: unknown): string {
  const url = (entry as { url?: unknown } | null)?.url;
  return typeof url === "string" ? url : "an endpoint";
}

/** Maps `items` with at most `limit` calls of `fn` in flight, keeping the order. */
async function mapConcurrent<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => R | Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function statusOf(e: unknown): number | undefined {
  const s = (e as { status?: unknown } | null)?.status;
  return typeof s === "number" && Number.isInteger(s) ? s : undefined;
}

/**
 * The wait a QStash rate-limit error asks for, ms. QStash sends the reset as a unix timestamp (seconds; treated as
 * ms when it is that large, and as a delay in seconds when it is small).
 */
function resetToMs(e: unknown, now: number = Date.now()): number | undefined {
  const err = e as { reset?: unknown; resetRequests?: unknown } | null;
  const raw = err?.reset ?? err?.resetRequests;
  if (raw === null || raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) return undefined;
  let ms: number;
  if (n > 1e12) ms = n - now;
  else if (n > 1e9) ms = n * 1_000 - now;
  else ms = n * 1_000;
  return Math.min(Math.max(0, Math.ceil(ms)), 86_400_000);
}

function transportError(what: string, e: unknown): OutboxError {
  if (isOutboxError(e)) return e;
  const status = statusOf(e);
  const retryable = status === undefined || status === 429 || status >= 500;
  return new OutboxError("TRANSPORT", `[edge-outbox:qstash] ${what}: ${status !== undefined ? `HTTP ${status}: ` : ""}${errorMessage(e)}`, { cause: e, retryable });
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function isHttpUrl(u: string): boolean {
  try {
    const url = new URL(u);
    return url.protocol === "https:" || url.protocol === "http:";
  } catch {
    return false;
  }
}

/** First 16 hex characters of SHA-256. */
async function shortHash(s: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  return [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** 32-bit FNV-1a of the key's UTF-8 bytes: the same queue for a key in every process and runtime. */
function fnv1a(key: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(key)) h = Math.imul(h ^ b, 0x01000193);
  return h >>> 0;
}

/**
 * A failed queue upsert as the outcome of the messages bound for that queue: always retry (a missing queue, or a
 * plan's queue limit, is a configuration problem, not a bad message), with `what` said in the error.
 */
function queueFailure(outcome: DeliveryOutcome, what: string): DeliveryOutcome {
  if (outcome.status === "delivered") return outcome;
  const error = outcome.error.replace(/^qstash: /, `qstash: ${what}: `);
  return outcome.status === "retry" && outcome.retryAfterMs !== undefined ? { status: "retry", error, retryAfterMs: outcome.retryAfterMs } : { status: "retry", error };
}
export { type QstashReceiverOptions, qstashReceiver, type QstashVerifier, type QstashVerifyRequest } from "./receiver.ts";
