/**
 * {@link qstashTransport}: the relay's transport onto QStash (batch publishes, FIFO queues for keyed messages, one
 * outcome per message).
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import type { OutboxMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type { DeliveryOutcome, SendContext, Transport } from "../../src/transport.ts";
import type { QstashBatchRequest, QstashMessageFields, QstashTransportClient } from "./client.ts";
import { ABANDONED, classify, errorMessage, isHttpUrl, raceSignal } from "./publish.ts";

/** Where {@link qstashTransport} publishes. */
export type QstashDestination = string | ((message: OutboxMessage) => string) | { urlGroup: string };

/** Options of {@link qstashTransport}. */
export interface QstashTransportOptions {
  /** A URL, a function of the message returning a URL, or `{ urlGroup }`. */
  destination: QstashDestination;
  /** Messages per `batch` call. @default 100 */
  maxBatchSize?: number | undefined;
  /** Delivery retries QStash makes for each message. @default QStash's (your plan's) default */
  retries?: number | undefined;
  /** Static headers added to every message (forwarded to the destination). @default {} */
  headers?: Record<string, string> | undefined;
  /**
   * How many QStash queues (FIFO, parallelism 1) carry keyed messages: a key always maps to queue
   * `<queuePrefix><fnv1a(key) % queues>`, so its messages reach the destination one at a time in commit order.
   * Keys sharing a queue wait for each other; more queues, more keyed deliveries in parallel (each queue counts
   * against your plan's queue limit). Each queue is upserted (parallelism 1, which also resumes it if paused) once
   * per transport instance, before its first message. `false` publishes keyed messages like keyless ones: no order
   * past QStash.
   * Changing it (or `queuePrefix`) moves keys to other queues: let the old queues drain first. @default 8
   */
  queues?: number | false | undefined;
  /**
   * Prefix of the queue names. Queues are per QStash account: give each app (and each transport with another
   * destination) its own prefix. @default "outbox-"
   */
  queuePrefix?: string | undefined;
  /** Transport name in reports. @default "qstash" */
  name?: string | undefined;
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

const transportOptionsSchema = v.strictObject({
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
    const { seq, prevSeq } = m as { seq?: unknown; prevSeq?: unknown }; // claimed messages' order (qstashReceiver)
    if (m.key !== null && typeof seq === "number") forward("Outbox-Seq", String(seq));
    if (m.key !== null && typeof prevSeq === "number") forward("Outbox-Prev-Seq", String(prevSeq));
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
