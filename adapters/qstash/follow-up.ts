/**
 * {@link qstashFollowUp}: the `followUp` function of `createRelayApp`, one deduplicated drain call per incoming call.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import { parseOptions } from "../../src/options.ts";
import type { QstashPublishClient, QstashPublishRequest } from "./client.ts";
import { isHttpUrl, publishOnce } from "./publish.ts";

/** Options of {@link qstashFollowUp}. */
export interface QstashFollowUpOptions {
  /** The relay's drain URL, as QStash should call it. */
  url: string;
  /** Delivery retries of the follow-up call. @default QStash's default */
  retries?: number | undefined;
  /** Longest wait for QStash's answer, ms. @default 3000 */
  timeoutMs?: number | undefined;
}

const followUpOptionsSchema = v.strictObject({
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
 * import { Receiver } from "@upstash/qstash";
 * import { createRelayApp } from "edge-outbox/hono";
 * import { qstashFollowUp } from "edge-outbox/qstash";
 *
 * const verifier = new Receiver({ currentSigningKey: env.QSTASH_CURRENT_SIGNING_KEY, nextSigningKey: env.QSTASH_NEXT_SIGNING_KEY });
 * const app = createRelayApp({
 *   relay, outbox, auth: { drain: env.CRON_SECRET, qstash: { verifier } }, publicUrl: "https://app.example/outbox",
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
