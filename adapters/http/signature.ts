import { OutboxError } from "../../src/errors.ts";

const PREFIX = "[edge-outbox:http]";
const SECRET_PREFIX = "whsec_";
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$/;

/**
 * A Standard Webhooks signing secret: `whsec_<base64>` (the usual form), bare base64, or the raw key bytes.
 *
 * @example
 * ```ts
 * import type { WebhookSecret } from "edge-outbox/http";
 * const secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
 * ```
 */
export type WebhookSecret = string | Uint8Array;

/**
 * The key bytes of a secret: `whsec_` is stripped and the rest base64-decoded (as the `standardwebhooks` package does).
 *
 * @param secret the secret
 * @param field the option name for the error message @default "secret"
 * @returns the HMAC key bytes
 * @throws {OutboxError} CONFIG when the secret is empty or not base64
 * @example
 * ```ts
 * import { webhookSecretBytes } from "edge-outbox/http";
 * webhookSecretBytes("whsec_c2VjcmV0").length; // 6
 * ```
 */
export function webhookSecretBytes(secret: WebhookSecret, field = "secret"): Uint8Array {
  if (secret instanceof Uint8Array) {
    if (secret.length === 0) throw new OutboxError("CONFIG", `${field} must not be empty`);
    return secret;
  }
  if (typeof secret !== "string") throw new OutboxError("CONFIG", `${field} must be a string (whsec_<base64>) or a Uint8Array`);
  const b64 = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret;
  const bytes = decodeBase64(b64);
  if (!bytes || bytes.length === 0) {
    throw new OutboxError("CONFIG", `${field} must be "whsec_" followed by the base64 of the key (got ${b64.length} unusable characters)`);
  }
  return bytes;
}

/**
 * Imports a secret as an HMAC-SHA256 key for `crypto.subtle` (Web Crypto: Node, Deno, Bun, Workers).
 *
 * @param secret the secret
 * @returns the key, usable for "sign"
 * @throws {OutboxError} CONFIG for an unusable secret
 * @example
 * ```ts
 * import { importWebhookKey, signWebhook } from "edge-outbox/http";
 * const key = await importWebhookKey(env.WEBHOOK_SECRET); // import once, sign many
 * const signature = await signWebhook(key, id, Math.floor(Date.now() / 1000), body);
 * ```
 */
export function importWebhookKey(secret: WebhookSecret): Promise<CryptoKey> {
  const bytes = webhookSecretBytes(secret);
  return crypto.subtle.importKey("raw", bytes as Uint8Array<ArrayBuffer>, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

async function mac(key: CryptoKey, id: string, timestamp: number, body: string): Promise<Uint8Array> {
  const data = new TextEncoder().encode(`${id}.${timestamp}.${body}`);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
}

/**
 * Signs one webhook the Standard Webhooks way: HMAC-SHA256 of `"${id}.${timestamp}.${body}"`, base64, prefixed `v1,`.
 *
 * @param secret the secret, or a key from {@link importWebhookKey}
 * @param id the `webhook-id` (the message id)
 * @param timestamp the `webhook-timestamp`, integer epoch seconds
 * @param body the exact request body
 * @returns the `webhook-signature` header value, `v1,<base64>`
 * @throws {OutboxError} CONFIG for an unusable secret
 * @example
 * ```ts
 * import { signWebhook } from "edge-outbox/http";
 * const signature = await signWebhook("whsec_c2VjcmV0", "msg_1", 1_700_000_000, '{"a":1}'); // "v1,…"
 * ```
 */
export async function signWebhook(secret: WebhookSecret | CryptoKey, id: string, timestamp: number, body: string): Promise<string> {
  const key = isCryptoKey(secret) ? secret : await importWebhookKey(secret);
  return `v1,${encodeBase64(await mac(key, id, timestamp, body))}`;
}

/**
 * Options of {@link verifyWebhook}.
 *
 * @example
 * ```ts
 * import { verifyWebhook, type VerifyWebhookOptions } from "edge-outbox/http";
 * const options: VerifyWebhookOptions = { toleranceMs: 60_000 }; // accept at most 1 minute of skew
 * const { payload } = await verifyWebhook(request, env.WEBHOOK_SECRET, options);
 * ```
 */
export interface VerifyWebhookOptions {
  /** Largest accepted distance between `webhook-timestamp` and now, either way, ms. @default 300000 (5 minutes) */
  toleranceMs?: number | undefined;
  /** The current time, epoch ms (for tests). @default Date.now() */
  now?: number | undefined;
}

/**
 * A verified webhook, as {@link verifyWebhook} returns it.
 *
 * @example
 * ```ts
 * import { verifyWebhook, type VerifiedWebhook } from "edge-outbox/http";
 * const hook: VerifiedWebhook<{ orderId: string }> = await verifyWebhook(request, env.WEBHOOK_SECRET);
 * console.log(hook.id, new Date(hook.sentAt), hook.payload.orderId);
 * ```
 */
export interface VerifiedWebhook<T = unknown> {
  /** The `webhook-id`: the outbox message id, the same on every retry. Deduplicate on it. */
  id: string;
  /** The `webhook-timestamp`, as epoch ms (the header carries whole seconds). */
  sentAt: number;
  /** The body, exactly as received. */
  body: string;
  /** The body parsed as JSON (`null` for an empty body). */
  payload: T;
}

/**
 * Verifies a Standard Webhooks request (as sent by `webhookTransport`, or any Standard Webhooks sender) and returns
 * its parsed payload. Reads the request's body: pass `request.clone()` if you need the body again.
 *
 * Checks the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers; the signature header may hold several
 * space-separated signatures (during a secret rotation), and any `v1` one matching is enough. Signatures are compared
 * in constant time. Only the id, the timestamp and the body are signed: other headers (`outbox-topic`, `outbox-key`,
 * …) are not authenticated, so put anything you must trust into the payload.
 *
 * @param request the incoming Fetch API request
 * @param secret the signing secret (`whsec_…`)
 * @param options toleranceMs (300000), now
 * @returns the id, timestamp, raw body and parsed payload
 * @throws {OutboxError} VALIDATION for missing headers, a timestamp outside the tolerance, no matching signature
 *   (tampered body, wrong secret) or a body that is not JSON; CONFIG for an unusable secret
 * @example
 * ```ts
 * import { isOutboxError } from "edge-outbox";
 * import { verifyWebhook } from "edge-outbox/http";
 *
 * export default {
 *   async fetch(request: Request, env: { WEBHOOK_SECRET: string }): Promise<Response> {
 *     try {
 *       const { id, payload } = await verifyWebhook<{ orderId: string }>(request, env.WEBHOOK_SECRET);
 *       // … process payload once per id …
 *       return new Response(null, { status: 204 });
 *     } catch (e) {
 *       if (isOutboxError(e, "VALIDATION")) return new Response(e.message, { status: 400 });
 *       throw e;
 *     }
 *   },
 * };
 * ```
 */
export async function verifyWebhook<T = unknown>(
  request: Request,
  secret: WebhookSecret,
  options: VerifyWebhookOptions = {},
): Promise<VerifiedWebhook<T>> {
  const toleranceMs = options.toleranceMs ?? 300_000;
  if (!Number.isFinite(toleranceMs) || toleranceMs < 0) throw new OutboxError("CONFIG", "verifyWebhook options: toleranceMs must be a non-negative number");
  const key = await importWebhookKey(secret);
  const id = request.headers.get("webhook-id");
  const timestampHeader = request.headers.get("webhook-timestamp");
  const signatureHeader = request.headers.get("webhook-signature");
  if (!id || !timestampHeader || !signatureHeader) {
    const missing = [["webhook-id", id], ["webhook-timestamp", timestampHeader], ["webhook-signature", signatureHeader]]
      .filter(([, value]) => !value).map(([name]) => name);
    throw invalid(`missing header${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`);
  }
  if (!/^\d{1,15}$/.test(timestampHeader.trim())) throw invalid(`webhook-timestamp ${JSON.stringify(timestampHeader)} is not epoch seconds`);
  const timestamp = Number(timestampHeader.trim());
  const now = options.now ?? Date.now();
  const skew = timestamp * 1000 - now;
  if (skew < -toleranceMs) throw invalid(`webhook-timestamp is ${Math.round(-skew / 1000)} s old (tolerance ${toleranceMs / 1000} s)`);
  if (skew > toleranceMs) throw invalid(`webhook-timestamp is ${Math.round(skew / 1000)} s in the future (tolerance ${toleranceMs / 1000} s)`);

  const body = await request.text();
  const expected = await mac(key, id, timestamp, body);
  let matched = false;
  for (const candidate of signatureHeader.split(" ")) {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") continue;
    const given = decodeBase64(candidate.slice(comma + 1));
    if (given && constantTimeEqual(given, expected)) matched = true; // no early exit: same work for every candidate
  }
  if (!matched) throw invalid("no matching signature (tampered body, wrong secret, or not signed with v1)");
  let payload: unknown = null;
  if (body !== "") {
    try {
      payload = JSON.parse(body);
    } catch {
      throw invalid("the body is not JSON");
    }
  }
  return { id, sentAt: timestamp * 1000, body, payload: payload as T };
}

function invalid(why: string): OutboxError {
  return new OutboxError("VALIDATION", `${PREFIX} webhook rejected: ${why}`);
}

/** Compares two byte arrays in time independent of where they differ (their lengths are not secret). */
function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function isCryptoKey(x: unknown): x is CryptoKey {
  return typeof x === "object" && x !== null && !(x instanceof Uint8Array) && "algorithm" in x && "usages" in x;
}

function encodeBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function decodeBase64(b64: string): Uint8Array | undefined {
  if (!BASE64_RE.test(b64)) return undefined;
  try {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  } catch {
    return undefined;
  }
}
