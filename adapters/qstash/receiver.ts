/**
 * {@link qstashReceiver}: the consumer endpoint behind QStash, exactly-once through the inbox.
 *
 * @module
 */
import { OutboxError } from "../../src/errors.ts";
import type { AnyTopic } from "../../src/topic.ts";
import {
  commonResponse,
  jsonResponse,
  readCappedBody,
  type Receiver,
  type ReceiverBaseOptions,
  resolveReceiver,
  toReceiver,
} from "../http/receiver.ts";

/**
 * What a QStash signature verification gets: the `Upstash-Signature` JWT, the exact body and the URL QStash called.
 * Every field is always set (no `| undefined`), so `@upstash/qstash`'s `Receiver.verify(VerifyRequest)` accepts it
 * under `exactOptionalPropertyTypes` too.
 */
export interface QstashVerifyRequest {
  /** The `Upstash-Signature` header. */
  signature: string;
  /** The raw body (the JWT's `body` claim is its SHA-256). */
  body: string;
  /** The URL QStash called (the JWT's `sub` claim must equal it). */
  url: string;
  /** Seconds of clock tolerance on `exp`/`nbf` (`clockToleranceSeconds`, 0 by default). */
  clockTolerance: number;
}

/**
 * The user's verifier: `@upstash/qstash`'s `Receiver` (its `verify` resolves true or throws), or a function
 * resolving true for a valid signature. Either way, it must check the signature, issuer, expiry, the body hash and
 * the URL. Anything but `true` (false, a rejection) is a 401.
 */
export type QstashVerifier =
  | { verify(request: QstashVerifyRequest): Promise<boolean> }
  | ((request: QstashVerifyRequest) => boolean | Promise<boolean>);

/** Options of {@link qstashReceiver}. */
export interface QstashReceiverOptions<Topics extends AnyTopic, Tx, Stmt> extends ReceiverBaseOptions<Topics, Tx, Stmt> {
  /** Verifies `Upstash-Signature`: `new Receiver({ currentSigningKey, nextSigningKey })`, or your own function. */
  verify: QstashVerifier;
  /**
   * The URL QStash calls, as signed (behind a proxy or a mounted sub-app the request URL may differ): a string, or a
   * function of the request. @default the request's URL
   */
  url?: string | ((request: Request) => string) | undefined;
  /** Seconds of clock tolerance passed to the verifier. @default 0 */
  clockToleranceSeconds?: number | undefined;
}

/**
 * A QStash destination endpoint for messages sent by `qstashTransport` (or any QStash publisher): verifies
 * `Upstash-Signature` against the body and the URL, resolves the topic (`Outbox-Topic`, or the only topic),
 * validates the payload with its schema, deduplicates on `Outbox-Message-Id` (stable across republishes; falls back
 * to `Upstash-Message-Id`) and runs `handler` in the consumer's transaction.
 *
 * Answers (what QStash does with them, per its docs, "Retry"):
 * - 200 `{ status: "processed" | "duplicate" }`: done.
 * - 401: no, forged, expired, wrong-URL or tampered signature; nothing recorded (QStash retries, and would fail again).
 * - 413: body larger than `maxBodyBytes`, refused before reading it all.
 * - 489 with `Upstash-NonRetryable-Error: true`: unknown topic, a body that is not JSON, or a payload failing the
 *   topic's schema: "respond with a 489 status code and include the header Upstash-NonRetryable-Error: true … QStash
 *   will immediately mark the message as failed and skip any further retry attempts" (to its dead-letter queue).
 * - 503 + `Retry-After`: a retryable storage error, or a strictly ordered message held for its predecessor (QStash
 *   honours `Retry-After`, up to a day).
 * - 500: the handler threw: rolled back, nothing recorded; QStash retries with its backoff.
 *
 * The signature covers the body and the URL only: the `Outbox-*` headers (id, topic, key, sequence) are not
 * authenticated. A captured request replayed while its signature is valid (`exp`, 5 minutes by default) with an
 * altered `Outbox-Message-Id` would be processed again: keep the endpoint on HTTPS and anything you must trust in the
 * payload.
 *
 * @param options verify, inbox, topics, handler, url (request URL), clockToleranceSeconds (0), maxBodyBytes
 *   (1048576), order, onError
 * @returns a receiver: a Hono handler (`app.post("/events", receiver)`) and a Fetch handler (`receiver.fetch`)
 * @throws {OutboxError} CONFIG naming the bad option
 * @example
 * ```ts
 * import { Receiver } from "@upstash/qstash";
 * import { Hono } from "hono";
 * import postgres from "postgres";
 * import * as v from "valibot";
 * import { createInbox, defineTopic } from "edge-outbox";
 * import { postgresInbox } from "edge-outbox/postgres";
 * import { qstashReceiver } from "edge-outbox/qstash";
 *
 * const sql = postgres(process.env.DATABASE_URL!);
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
 * const inbox = createInbox({ storage: postgresInbox(sql), consumer: "billing" });
 * const verify = new Receiver({ currentSigningKey: process.env.QSTASH_CURRENT_SIGNING_KEY!, nextSigningKey: process.env.QSTASH_NEXT_SIGNING_KEY! });
 * const app = new Hono();
 * app.post("/events", qstashReceiver({
 *   verify,
 *   url: "https://consumer.example/events",
 *   inbox,
 *   topics: [orderCreated],
 *   handler: async (message, { tx }) => {
 *     await tx.unsafe("insert into invoices (order_id, total) values ($1, $2)", [message.payload.id, message.payload.total]);
 *   },
 * }));
 * ```
 */
export function qstashReceiver<const Topics extends AnyTopic, Tx, Stmt = never>(
  options: QstashReceiverOptions<Topics, Tx, Stmt>,
): Receiver {
  const pipeline = resolveReceiver("qstashReceiver", options);
  const verifier = options.verify;
  const verify: (r: QstashVerifyRequest) => boolean | Promise<boolean> = typeof verifier === "function"
    ? verifier
    : typeof verifier?.verify === "function"
    ? (r) => verifier.verify(r)
    : (() => {
      throw new OutboxError("CONFIG", "qstashReceiver options: verify must be a QStash Receiver or a function");
    })();
  const urlOption = options.url;
  if (urlOption !== undefined && typeof urlOption !== "function" && !/^https?:\/\//.test(String(urlOption))) {
    throw new OutboxError("CONFIG", "qstashReceiver options: url must be an absolute http(s) URL or a function of the request");
  }
  const clockTolerance = options.clockToleranceSeconds ?? 0;
  if (!Number.isSafeInteger(clockTolerance) || clockTolerance < 0 || clockTolerance > 3_600) {
    throw new OutboxError("CONFIG", "qstashReceiver options: clockToleranceSeconds must be an integer between 0 and 3600");
  }
  const nonRetryable = (message: string): Response =>
    jsonResponse(489, { status: "invalid", message }, { "upstash-nonretryable-error": "true" });

  return toReceiver(async (request: Request): Promise<Response> => {
    if (request.method !== "POST") return jsonResponse(405, { status: "invalid", message: "use POST" }, { allow: "POST" });
    const signature = request.headers.get("upstash-signature");
    if (!signature) {
      await request.body?.cancel().catch(() => {});
      return jsonResponse(401, { status: "unauthorized", message: "missing Upstash-Signature" });
    }
    const body = await readCappedBody(request, pipeline.maxBodyBytes);
    if (body === null) return jsonResponse(413, { status: "invalid", message: `the body is larger than ${pipeline.maxBodyBytes} bytes` });
    let url: string;
    try {
      url = typeof urlOption === "function" ? urlOption(request) : urlOption ?? request.url;
    } catch (e) {
      return jsonResponse(500, { status: "failed", message: `url(request) threw: ${e instanceof Error ? e.message : String(e)}` });
    }
    let valid = false;
    try {
      valid = (await verify({ signature, body, url, clockTolerance })) === true;
    } catch {
      valid = false;
    }
    if (!valid) return jsonResponse(401, { status: "unauthorized", message: "invalid Upstash-Signature" });
    const id = request.headers.get("outbox-message-id") ?? request.headers.get("upstash-message-id");
    if (!id) return nonRetryable("no Outbox-Message-Id or Upstash-Message-Id header");
    const retried = Number(request.headers.get("upstash-retried") ?? "0");
    const outcome = await pipeline.receive({
      id,
      topic: request.headers.get("outbox-topic"),
      body,
      headers: request.headers,
      retried: Number.isSafeInteger(retried) && retried >= 0 ? retried : 0,
    });
    if (outcome.kind === "invalid") return nonRetryable(outcome.message);
    return commonResponse(outcome);
  });
}
