/**
 * `edge-outbox/http`: deliver messages as signed webhooks (Standard Webhooks, https://www.standardwebhooks.com) and
 * verify them on the receiving side. Web APIs only (`fetch`, `crypto.subtle`): runs on Node, Deno, Bun, Cloudflare
 * Workers and Vercel Edge; interoperates with the `standardwebhooks` package and every Standard Webhooks library.
 *
 * - {@link webhookTransport} POSTs each message's JSON body with `webhook-id` (the message id, stable across
 *   retries), `webhook-timestamp` and `webhook-signature` headers; 2xx is delivered, 408/429/5xx/network errors and
 *   timeouts are retried (honouring `Retry-After`), other statuses dead-letter the message.
 * - {@link verifyWebhook} checks a received request (signature in constant time, timestamp within 5 minutes) and
 *   returns its id and parsed payload, or throws `OutboxError` VALIDATION.
 *
 * @example
 * ```ts
 * import { createRelay } from "edge-outbox";
 * import { verifyWebhook, webhookTransport } from "edge-outbox/http";
 *
 * // Sender: the relay posts each message, signed.
 * const relay = createRelay({ outbox, transport: webhookTransport({ url: "https://app.example/hooks", secret: env.WEBHOOK_SECRET }) });
 *
 * // Receiver (any Fetch API runtime):
 * async function onWebhook(request: Request): Promise<Response> {
 *   const { id, payload } = await verifyWebhook(request, env.WEBHOOK_SECRET); // throws VALIDATION when forged
 *   await handleOnce(id, payload);
 *   return new Response(null, { status: 204 });
 * }
 * ```
 *
 * @module
 */
export { type WebhookFetch, webhookTransport, type WebhookTransportOptions } from "./transport.ts";
export {
  importWebhookKey,
  signWebhook,
  type VerifiedWebhook,
  verifyWebhook,
  type VerifyWebhookOptions,
  type WebhookSecret,
  webhookSecretBytes,
} from "./signature.ts";
export { DEFAULT_MAX_BODY_BYTES, type ReceivedMessage, type Receiver, type ReceiverBaseOptions, type ReceiverContext, type ReceiverHandler, type ReceiverOrderOptions, webhookReceiver, type WebhookReceiverOptions } from "./receiver.ts";
