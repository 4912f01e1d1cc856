/**
 * The consumer side over HTTP: {@link webhookReceiver} (Standard Webhooks, as `webhookTransport` sends them) and the
 * pipeline it shares with `qstashReceiver` (`edge-outbox/qstash`): read the body with a size cap, verify, resolve the
 * topic, validate the payload with the topic's schema, deduplicate in the inbox, run the handler in the consumer's
 * transaction, answer.
 *
 * @module
 */
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import { assertMessageId, type HandleInfo, type HandleResult, type Inbox, type OrderInfo, type OrderPosition } from "../../src/inbox.ts";
import type { AnyTopic, TopicOutput } from "../../src/topic.ts";
import { validatePayload } from "../../src/topic.ts";
import { verifyWebhook, type WebhookSecret } from "./signature.ts";

/** Default largest accepted request body: 1 MiB (QStash's message size limit on the free plan). */
export const DEFAULT_MAX_BODY_BYTES = 1_048_576;

/** A verified, validated message as the handler receives it, typed by its topic. */
export type ReceivedMessage<T extends AnyTopic = AnyTopic> = T extends AnyTopic ? {
    /** The message id the inbox deduplicates on (the outbox message id). */
    readonly id: string;
    /** The topic name. */
    readonly topic: T["name"];
    /** The payload, validated (and transformed) by the topic's schema. */
    readonly payload: TopicOutput<T>;
    /** The raw body. */
    readonly body: string;
    /** The ordering key, or null. */
    readonly key: string | null;
    /** The sender's sequence of the message within its key (`Outbox-Seq`), or null. */
    readonly seq: number | null;
    /** How many earlier delivery attempts the transport reports (0 on the first). */
    readonly retried: number;
    /** The request headers (not authenticated unless your transport signs them). */
    readonly headers: Headers;
  }
  : never;

/** What the handler gets besides the message. */
export interface ReceiverContext<Tx> {
  /** The consumer's open transaction: write the effects through it. `undefined` for batch-only storages (D1). */
  readonly tx: Tx;
  /** Ordering information (late or gap), or null for keyless messages / without ordering. */
  readonly order: OrderInfo | null;
}

/**
 * The handler: apply the message's effects through `context.tx` (they commit with the inbox record). With a
 * batch-only storage (D1), return the effect statements instead; they run in one atomic batch with the record.
 */
export type ReceiverHandler<Topics extends AnyTopic, Tx, Stmt> = (
  message: ReceivedMessage<Topics>,
  context: ReceiverContext<Tx>,
) => void | readonly Stmt[] | Promise<void | readonly Stmt[]>;

/** Ordering options of a receiver. */
export interface ReceiverOrderOptions {
  /**
   * A message older than one already processed of its key (arriving late): "process" runs the handler with
   * `order.stale: true`; "skip" records and acknowledges it without running the handler. @default "process"
   */
  stale?: "process" | "skip" | undefined;
  /**
   * Hold a message whose declared predecessor (`Outbox-Prev-Seq`) is not processed: answer 503 with `Retry-After`
   * (the sender retries later) at most `maxHolds` times, counted by the transport's retry header; after that it is
   * processed with `order.gap: true`, so a predecessor that never comes (dead-lettered) cannot block its key
   * forever. Keep `maxHolds` below the transport's retries. A key never seen, or a message without
   * `Outbox-Prev-Seq`, is never held. @default false
   */
  strict?: false | { maxHolds?: number | undefined; retryAfterSeconds?: number | undefined } | undefined;
}

/** Options shared by `webhookReceiver` and `qstashReceiver`. */
export interface ReceiverBaseOptions<Topics extends AnyTopic, Tx, Stmt> {
  /** The consumer's inbox (`createInbox({ storage, consumer })`). */
  inbox: Inbox<Tx, Stmt>;
  /** The topics this endpoint accepts: a message of any other topic is refused as invalid. */
  topics: readonly Topics[];
  /** Applies one message's effects (see {@link ReceiverHandler}). */
  handler: ReceiverHandler<Topics, Tx, Stmt>;
  /** Largest accepted body, bytes; larger requests are refused with 413 before the body is read past it. @default 1048576 */
  maxBodyBytes?: number | undefined;
  /**
   * Ordering at the consumer for keyed messages carrying `Outbox-Seq` (needs an inbox storage with
   * `capabilities.keyOrder`); false turns it off. @default { stale: "process", strict: false }
   */
  order?: ReceiverOrderOptions | false | undefined;
  /** Called with every handler or storage error before the 5xx answer (logging). @default none */
  onError?: ((error: unknown, message: { id: string; topic: string }) => void) | undefined;
}

/** A receiver: a Hono handler (`app.post("/events", receiver)`) that is also a plain Fetch handler. */
export interface Receiver {
  /** As a Hono handler: `app.post(path, receiver)`. */
  (c: { req: { raw: Request } }): Promise<Response>;
  /** As a Fetch handler: `export default { fetch: receiver.fetch }`, `Deno.serve(receiver.fetch)`. */
  fetch(request: Request): Promise<Response>;
}

/** One delivery after authentication, before the inbox (what the transport-specific part extracts). */
export interface Delivery {
  /** The id to deduplicate on. */
  readonly id: string;
  /** The topic header, or null. */
  readonly topic: string | null;
  /** The body text. */
  readonly body: string;
  /** The headers. */
  readonly headers: Headers;
  /** Earlier attempts (0 on the first). */
  readonly retried: number;
}

/** What the shared pipeline decided. */
export type ReceiveOutcome =
  | { readonly kind: "processed" | "duplicate"; readonly id: string }
  | { readonly kind: "invalid"; readonly message: string }
  | { readonly kind: "held"; readonly id: string; readonly retryAfterSeconds: number }
  | { readonly kind: "failed"; readonly message: string; readonly retryable: boolean };

/** Options after validation. */
export interface ResolvedReceiver<Topics extends AnyTopic, Tx, Stmt> {
  /** Runs a delivery through topic resolution, validation, the inbox and the handler. */
  receive(delivery: Delivery): Promise<ReceiveOutcome>;
  /** The body cap, bytes. */
  readonly maxBodyBytes: number;
  /** The options as given. */
  readonly options: ReceiverBaseOptions<Topics, Tx, Stmt>;
}

const SEQ_RE = /^\d{1,15}$/;

function headerSeq(headers: Headers, name: string): number | null {
  const raw = headers.get(name);
  if (raw === null) return null;
  return SEQ_RE.test(raw.trim()) ? Number(raw.trim()) : NaN;
}

/**
 * Validates the shared options and builds the pipeline (internal to the receivers).
 *
 * @param what the factory name for error messages
 * @param options the shared options
 * @returns the pipeline
 * @throws {OutboxError} CONFIG naming the bad option
 * @example
 * ```ts
 * const pipeline = resolveReceiver("webhookReceiver", { inbox, topics: [orderCreated], handler: async (message) => void message.id });
 * ```
 */
export function resolveReceiver<Topics extends AnyTopic, Tx, Stmt>(
  what: string,
  options: ReceiverBaseOptions<Topics, Tx, Stmt>,
): ResolvedReceiver<Topics, Tx, Stmt> {
  const o = options ?? ({} as ReceiverBaseOptions<Topics, Tx, Stmt>);
  const inbox = o.inbox;
  if (typeof inbox?.process !== "function" || typeof inbox?.storage !== "object") {
    throw new OutboxError("CONFIG", `${what} options: inbox must be an inbox (createInbox({ storage, consumer }))`);
  }
  const caps = inbox.storage.capabilities;
  if (!caps.transaction && !caps.batchStatement) {
    throw new OutboxError("CONFIG", `${what} options: the inbox storage has neither transactions nor atomic batches`);
  }
  if (!Array.isArray(o.topics) || o.topics.length === 0) throw new OutboxError("CONFIG", `${what} options: topics must be a non-empty array`);
  const byName = new Map<string, AnyTopic>();
  for (const t of o.topics) {
    if (typeof t?.name !== "string" || typeof t.schema?.["~standard"]?.validate !== "function") {
      throw new OutboxError("CONFIG", `${what} options: every topic must come from defineTopic(name, schema)`);
    }
    if (byName.has(t.name)) throw new OutboxError("CONFIG", `${what} options: topic ${t.name} is listed twice`);
    byName.set(t.name, t);
  }
  if (typeof o.handler !== "function") throw new OutboxError("CONFIG", `${what} options: handler must be a function`);
  const maxBodyBytes = o.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 1 || maxBodyBytes > 104_857_600) {
    throw new OutboxError("CONFIG", `${what} options: maxBodyBytes must be an integer between 1 and 104857600`);
  }
  const order = o.order === false ? null : (o.order ?? {});
  const stale = order?.stale ?? "process";
  if (stale !== "process" && stale !== "skip") throw new OutboxError("CONFIG", `${what} options: order.stale must be "process" or "skip"`);
  const strict = order?.strict ? order.strict : null;
  const maxHolds = strict?.maxHolds ?? 3;
  const retryAfterSeconds = strict?.retryAfterSeconds ?? 10;
  if (strict && (!Number.isSafeInteger(maxHolds) || maxHolds < 0 || maxHolds > 100)) {
    throw new OutboxError("CONFIG", `${what} options: order.strict.maxHolds must be an integer between 0 and 100`);
  }
  if (strict && (!Number.isSafeInteger(retryAfterSeconds) || retryAfterSeconds < 1 || retryAfterSeconds > 86_400)) {
    throw new OutboxError("CONFIG", `${what} options: order.strict.retryAfterSeconds must be an integer between 1 and 86400`);
  }
  const onlyTopic = byName.size === 1 ? [...byName.values()][0]! : null;
  const handler = o.handler;

  async function receive(d: Delivery): Promise<ReceiveOutcome> {
    try {
      assertMessageId(d.id);
    } catch (e) {
      return { kind: "invalid", message: (e as Error).message };
    }
    const topicName = d.topic ?? onlyTopic?.name ?? null;
    if (topicName === null) return { kind: "invalid", message: "the request names no topic (Outbox-Topic header)" };
    const topic = byName.get(topicName);
    if (!topic) return { kind: "invalid", message: `unknown topic ${JSON.stringify(topicName.slice(0, 200))}` };
    let parsed: unknown;
    try {
      parsed = JSON.parse(d.body);
    } catch {
      return { kind: "invalid", message: "the body is not JSON" };
    }
    let payload: unknown;
    try {
      payload = validatePayload(topic, parsed);
    } catch (e) {
      return { kind: "invalid", message: e instanceof Error ? e.message : String(e) };
    }
    const rawKey = d.headers.get("outbox-key");
    let key: string | null = null;
    if (rawKey !== null) {
      try {
        key = decodeURIComponent(rawKey);
      } catch {
        return { kind: "invalid", message: "the Outbox-Key header is not percent-encoded" };
      }
    }
    const seq = headerSeq(d.headers, "outbox-seq");
    const prevSeq = headerSeq(d.headers, "outbox-prev-seq");
    if (Number.isNaN(seq) || Number.isNaN(prevSeq)) return { kind: "invalid", message: "Outbox-Seq / Outbox-Prev-Seq must be integers" };
    const message = { id: d.id, topic: topic.name, payload, body: d.body, key, seq, retried: d.retried, headers: d.headers } as ReceivedMessage<Topics>;
    let position: OrderPosition | null = null;
    if (order !== null && caps.keyOrder && caps.transaction && key !== null && seq !== null) {
      const usablePrev = prevSeq !== null && prevSeq < seq ? prevSeq : null;
      position = { key, seq, prevSeq: usablePrev, strict: strict !== null, force: d.retried >= maxHolds };
    }
    try {
      let result: HandleResult;
      if (caps.transaction) {
        result = await inbox.process(d.id, async (tx: Tx, info: HandleInfo) => {
          if (info.order?.stale && stale === "skip") return;
          await handler(message, { tx, order: info.order });
        }, { order: position });
      } else {
        result = await inbox.handleBatch(d.id, async () => {
          const statements = await handler(message, { tx: undefined as Tx, order: null });
          if (!Array.isArray(statements)) {
            throw new OutboxError("CONFIG", "receiver handler: with a batch-only inbox storage, return the effect statements");
          }
          return statements as readonly Stmt[];
        });
      }
      if (result === "held") return { kind: "held", id: d.id, retryAfterSeconds };
      return { kind: result, id: d.id };
    } catch (e) {
      try {
        o.onError?.(e, { id: d.id, topic: topic.name });
      } catch {
        // a failing logger must not change the answer
      }
      // A busy or unreachable database is a 503 (try again shortly); anything the handler throws is a 500.
      const retryable = isOutboxError(e, "STORAGE") && e.retryable;
      return { kind: "failed", message: e instanceof Error ? e.message : String(e), retryable };
    }
  }

  return { receive, maxBodyBytes, options: o };
}

/** Reads a request body as text, refusing (null) once it passes `maxBytes`, without reading the rest. */
export async function readCappedBody(request: Request, maxBytes: number): Promise<string | null> {
  const length = request.headers.get("content-length");
  if (length !== null && /^\d+$/.test(length) && Number(length) > maxBytes) {
    await request.body?.cancel().catch(() => {});
    return null;
  }
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/** A JSON response. */
export function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...headers },
  });
}

/** Turns a `(request) => Response` into a {@link Receiver} (Hono handler and Fetch handler at once). */
export function toReceiver(fetchHandler: (request: Request) => Promise<Response>): Receiver {
  const receiver = ((c: { req: { raw: Request } }) => fetchHandler(c.req.raw)) as Receiver;
  receiver.fetch = fetchHandler;
  return receiver;
}

/** Maps the outcomes every receiver answers the same way; `invalid` is the caller's (its status differs). */
export function commonResponse(outcome: Exclude<ReceiveOutcome, { kind: "invalid" }>): Response {
  switch (outcome.kind) {
    case "processed":
    case "duplicate":
      return jsonResponse(200, { status: outcome.kind, id: outcome.id });
    case "held":
      return jsonResponse(503, { status: "held", id: outcome.id, message: "the previous message of this key is not processed yet" }, {
        "retry-after": String(outcome.retryAfterSeconds),
      });
    case "failed":
      return outcome.retryable
        ? jsonResponse(503, { status: "failed", message: outcome.message }, { "retry-after": "1" })
        : jsonResponse(500, { status: "failed", message: outcome.message });
  }
}

/** Options of {@link webhookReceiver}. */
export interface WebhookReceiverOptions<Topics extends AnyTopic, Tx, Stmt> extends ReceiverBaseOptions<Topics, Tx, Stmt> {
  /** The Standard Webhooks signing secret (`whsec_…`), the same as the sender's `webhookTransport`. */
  secret: WebhookSecret;
  /** Largest accepted distance between `webhook-timestamp` and now, ms. @default 300000 */
  toleranceMs?: number | undefined;
}

/**
 * A webhook endpoint for messages sent by `webhookTransport` (or any Standard Webhooks sender): verifies the
 * signature (id, timestamp and body are signed), validates the payload with its topic's schema, deduplicates on
 * `webhook-id` in the inbox and runs `handler` in the consumer's transaction.
 *
 * Answers (what `webhookTransport` does with them):
 * - 200 `{ status: "processed" | "duplicate" }`: done (a duplicate is acknowledged without running the handler).
 * - 401: missing, forged, expired (outside `toleranceMs`) or tampered signature; nothing recorded. The sender
 *   dead-letters it (a 4xx); fix the secret and replay.
 * - 413: body larger than `maxBodyBytes`, refused before reading it all (dead-lettered by the sender).
 * - 422: the topic is unknown (`outbox-topic`), the body is not JSON, or the payload fails the topic's schema:
 *   retrying cannot help, so the sender dead-letters it.
 * - 503 + `Retry-After`: a retryable storage error (busy database), or a strictly ordered message held for its
 *   predecessor: the sender retries later.
 * - 500: the handler threw: the transaction is rolled back, nothing recorded, and the sender retries.
 *
 * @param options secret, inbox, topics, handler, toleranceMs (300000), maxBodyBytes (1048576), order, onError
 * @returns a receiver: a Hono handler (`app.post("/hooks", receiver)`) and a Fetch handler (`receiver.fetch`)
 * @throws {OutboxError} CONFIG naming the bad option
 * @example
 * ```ts
 * import { Hono } from "hono";
 * import postgres from "postgres";
 * import * as v from "valibot";
 * import { createInbox, defineTopic } from "edge-outbox";
 * import { webhookReceiver } from "edge-outbox/http";
 * import { postgresInbox } from "edge-outbox/postgres";
 *
 * const sql = postgres(process.env.DATABASE_URL!);
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
 * const inbox = createInbox({ storage: postgresInbox(sql), consumer: "billing" });
 * const app = new Hono();
 * app.post("/hooks", webhookReceiver({
 *   secret: process.env.WEBHOOK_SECRET!,
 *   inbox,
 *   topics: [orderCreated],
 *   handler: async (message, { tx }) => {
 *     await tx.unsafe("insert into invoices (order_id, total) values ($1, $2)", [message.payload.id, message.payload.total]);
 *   },
 * }));
 * ```
 */
export function webhookReceiver<const Topics extends AnyTopic, Tx, Stmt = never>(
  options: WebhookReceiverOptions<Topics, Tx, Stmt>,
): Receiver {
  const pipeline = resolveReceiver("webhookReceiver", options);
  const secret = options.secret;
  if (secret === undefined || secret === null) throw new OutboxError("CONFIG", "webhookReceiver options: secret is required");
  const toleranceMs = options.toleranceMs ?? 300_000;
  if (!Number.isFinite(toleranceMs) || toleranceMs < 0) throw new OutboxError("CONFIG", "webhookReceiver options: toleranceMs must be a non-negative number");

  return toReceiver(async (request: Request): Promise<Response> => {
    if (request.method !== "POST") return jsonResponse(405, { status: "invalid", message: "use POST" }, { allow: "POST" });
    const body = await readCappedBody(request, pipeline.maxBodyBytes);
    if (body === null) return jsonResponse(413, { status: "invalid", message: `the body is larger than ${pipeline.maxBodyBytes} bytes` });
    let id: string;
    try {
      const verified = await verifyWebhook(new Request(request.url, { method: "POST", headers: request.headers, body }), secret, { toleranceMs });
      id = verified.id;
    } catch (e) {
      if (isOutboxError(e, "VALIDATION") && e.message.endsWith("the body is not JSON")) {
        return jsonResponse(422, { status: "invalid", message: "the body is not JSON" });
      }
      if (isOutboxError(e, "VALIDATION")) return jsonResponse(401, { status: "unauthorized", message: e.message }, { "www-authenticate": "webhook-signature" });
      throw e;
    }
    const attempt = Number(request.headers.get("outbox-attempt") ?? "1");
    const outcome = await pipeline.receive({
      id,
      topic: request.headers.get("outbox-topic"),
      body,
      headers: request.headers,
      retried: Number.isSafeInteger(attempt) && attempt >= 1 ? attempt - 1 : 0,
    });
    if (outcome.kind === "invalid") return jsonResponse(422, { status: "invalid", message: outcome.message });
    return commonResponse(outcome);
  });
}
