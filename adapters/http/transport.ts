import * as v from "valibot";
import { parseRetryAfter } from "../../src/backoff.ts";
import { OutboxError } from "../../src/errors.ts";
import type { OutboxMessage } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type { DeliveryOutcome, SendContext, Transport } from "../../src/transport.ts";
import { importWebhookKey, signWebhook, type WebhookSecret, webhookSecretBytes } from "./signature.ts";

/**
 * The `fetch` the transport calls (the global one by default); any Fetch API compatible function fits.
 *
 * @example
 * ```ts
 * import { webhookTransport, type WebhookFetch } from "edge-outbox/http";
 * const logged: WebhookFetch = (url, init) => (console.log("POST", url), fetch(url, init));
 * const transport = webhookTransport({ url: "https://app.example/hooks", secret: env.WEBHOOK_SECRET, fetch: logged });
 * ```
 */
export type WebhookFetch = (input: string, init: RequestInit) => Promise<Response>;

/**
 * Options of {@link webhookTransport}.
 *
 * @example
 * ```ts
 * import { webhookTransport, type WebhookTransportOptions } from "edge-outbox/http";
 * const options: WebhookTransportOptions = {
 *   url: "https://app.example/hooks",
 *   secret: env.WEBHOOK_SECRET, // "whsec_…"
 *   timeoutMs: 5_000,
 *   headers: { "x-sender": "orders" },
 * };
 * const transport = webhookTransport(options);
 * ```
 */
export interface WebhookTransportOptions {
  /** Where to POST: one URL, or a function choosing it per message (e.g. by topic). http(s) only. */
  url: string | ((message: OutboxMessage) => string);
  /** The Standard Webhooks signing secret, `whsec_<base64>` (or raw key bytes). */
  secret: WebhookSecret;
  /** Longest one request may take (until the response body is read), ms; then it is aborted and retried. @default 10000 */
  timeoutMs?: number | undefined;
  /** Extra headers on every request (a message's own headers override them; the protocol headers override both). @default {} */
  headers?: Record<string, string> | undefined;
  /** The fetch implementation. @default globalThis.fetch */
  fetch?: WebhookFetch | undefined;
  /** Name in reports and errors. @default "webhook" */
  name?: string | undefined;
}

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));
const httpUrl = (u: string): boolean => {
  try {
    const p = new URL(u).protocol;
    return p === "http:" || p === "https:";
  } catch {
    return false;
  }
};

const optionsSchema = v.strictObject({
  url: v.union(
    [v.pipe(v.string(), v.check(httpUrl, "must be an absolute http(s) URL")), v.function()],
    "must be an absolute http(s) URL or a function of the message returning one",
  ),
  secret: v.union([v.string(), v.instance(Uint8Array)], "must be a string (whsec_<base64>) or a Uint8Array"),
  timeoutMs: v.optional(int(1, 600_000), 10_000),
  headers: v.optional(v.record(v.string(), v.string()), {}),
  fetch: v.optional(v.function()),
  name: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(100)), "webhook"),
});

/** Statuses worth retrying: request timeout, too many requests, and every server error. */
const retryable = (status: number): boolean => status === 408 || status === 429 || status >= 500;

/**
 * A transport that POSTs each message to an HTTP endpoint, signed the Standard Webhooks way
 * (https://www.standardwebhooks.com), with `crypto.subtle` only: it runs on Node, Deno, Bun, Workers and Vercel Edge.
 *
 * Each request carries the message's raw JSON `body` and these headers:
 * - `content-type: application/json`;
 * - `webhook-id` (the message id, the same on every retry: deduplicate on it), `webhook-timestamp` (epoch seconds,
 *   fresh on each attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "${id}.${timestamp}.${body}">`);
 * - `outbox-topic`, `outbox-key` (keyed messages only, percent-encoded with `encodeURIComponent`) and
 *   `outbox-attempt` (1 on the first delivery);
 * - the message's own headers (given at enqueue), then the `headers` option underneath them.
 *
 * Outcomes: 2xx → delivered. 408, 429, 5xx, network errors and timeouts → retry, honouring `Retry-After` (seconds
 * or an HTTP date) as `retryAfterMs`. Redirects are not followed (a signed request must not land elsewhere): 3xx and
 * every other 4xx → dead, with the status in the error. The relay's send signal and `timeoutMs` both abort the
 * request. Verify deliveries with {@link verifyWebhook} (or any Standard Webhooks library).
 *
 * @param options url, secret, timeoutMs (10000), headers ({}), fetch (global), name ("webhook")
 * @returns the transport (one message per request)
 * @throws {OutboxError} CONFIG naming the bad option (an unusable secret, a relative URL, a bad header)
 * @example
 * ```ts
 * import { createRelay } from "edge-outbox";
 * import { webhookTransport } from "edge-outbox/http";
 *
 * const transport = webhookTransport({
 *   url: (m) => m.topic.startsWith("billing.") ? "https://billing.example/hooks" : "https://app.example/hooks",
 *   secret: env.WEBHOOK_SECRET, // "whsec_…"
 *   timeoutMs: 5_000,
 * });
 * const relay = createRelay({ outbox, transport, sendTimeoutMs: 6_000 });
 * ```
 */
export function webhookTransport(options: WebhookTransportOptions): Transport {
  const o = parseOptions("webhookTransport options", optionsSchema, options);
  webhookSecretBytes(options.secret, "webhookTransport options: secret");
  try {
    new Headers(o.headers);
  } catch (e) {
    throw new OutboxError("CONFIG", `webhookTransport options: headers: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  const name = o.name;
  const timeoutMs = o.timeoutMs;
  const doFetch: WebhookFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  let key: Promise<CryptoKey> | undefined;
  const signingKey = (): Promise<CryptoKey> => (key ??= importWebhookKey(options.secret));

  async function deliver(m: OutboxMessage, signal: AbortSignal): Promise<DeliveryOutcome> {
    let url: string;
    try {
      url = typeof options.url === "function" ? options.url(m) : options.url;
    } catch (e) {
      return { status: "retry", error: `${name}: url(message) threw: ${errorText(e)}` };
    }
    if (typeof url !== "string" || !httpUrl(url)) return { status: "dead", error: `${name}: ${JSON.stringify(url)} is not an http(s) URL` };

    const timestamp = Math.floor(Date.now() / 1000);
    let headers: Headers;
    try {
      headers = new Headers(o.headers);
      for (const [k, val] of Object.entries(m.headers)) headers.set(k, val);
      headers.set("content-type", "application/json");
      headers.set("webhook-id", m.id);
      headers.set("webhook-timestamp", String(timestamp));
      headers.set("webhook-signature", await signWebhook(await signingKey(), m.id, timestamp, m.body));
      headers.set("outbox-topic", m.topic);
      if (m.key !== null) headers.set("outbox-key", encodeURIComponent(m.key));
      else headers.delete("outbox-key");
      const { seq, prevSeq } = m as { seq?: unknown; prevSeq?: unknown }; // claimed messages' order (webhookReceiver)
      for (const [name, value] of [["outbox-seq", seq], ["outbox-prev-seq", prevSeq]] as const) {
        if (m.key !== null && typeof value === "number") headers.set(name, String(value));
        else headers.delete(name);
      }
      headers.set("outbox-attempt", String(m.attempts));
    } catch (e) {
      return { status: "dead", error: `${name}: the message's headers cannot be sent over HTTP: ${errorText(e)}` };
    }

    if (signal.aborted) return { status: "retry", error: `${name}: aborted before sending: ${errorText(signal.reason)}` };
    const controller = new AbortController();
    let timedOut = false;
    const onAbort = (): void => controller.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new OutboxError("ABORTED", `${name}: request timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    try {
      const res = await doFetch(url, { method: "POST", headers, body: m.body, signal: controller.signal, redirect: "manual" });
      const status = res.status;
      if (status >= 200 && status < 300) {
        await res.body?.cancel().catch(() => {});
        return { status: "delivered" };
      }
      const detail = await snippet(res);
      const error = `${name}: HTTP ${status || res.type}${res.statusText ? ` ${res.statusText}` : ""}${
        status >= 300 && status < 400 ? ` (redirect to ${res.headers.get("location") ?? "?"} not followed)` : ""
      }${detail ? `: ${detail}` : ""}`;
      if (!retryable(status)) return { status: "dead", error };
      const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"));
      return retryAfterMs === undefined ? { status: "retry", error } : { status: "retry", error, retryAfterMs };
    } catch (e) {
      if (timedOut) return { status: "retry", error: `${name}: request timed out after ${timeoutMs} ms` };
      if (signal.aborted) return { status: "retry", error: `${name}: request aborted: ${errorText(signal.reason)}` };
      return { status: "retry", error: `${name}: request failed: ${errorText(e)}` };
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
  }

  return {
    name,
    maxBatchSize: 1,
    async send(messages: readonly OutboxMessage[], context: SendContext): Promise<readonly DeliveryOutcome[]> {
      const outcomes: DeliveryOutcome[] = [];
      for (const m of messages) outcomes.push(await deliver(m, context.signal));
      return outcomes;
    },
  };
}

/** The start of a response body, for error messages (at most `max` characters, whitespace collapsed). */
async function snippet(res: Response, max = 200): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max * 4) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.length;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  const text = new TextDecoder().decode(bytes).replace(/\s+/g, " ").trim();
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** An error's message, with its cause (fetch's "fetch failed" hides the real reason there). */
function errorText(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const cause = (e as { cause?: unknown }).cause;
  return cause instanceof Error && cause.message && cause.message !== e.message ? `${e.message} (${cause.message})` : e.message;
}
