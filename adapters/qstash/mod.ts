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
export type {
  QstashBatchClient,
  QstashBatchEntry,
  QstashBatchRequest,
  QstashClient,
  QstashCreateScheduleRequest,
  QstashMessageFields,
  QstashMethod,
  QstashPublishClient,
  QstashPublishRequest,
  QstashPublishResponse,
  QstashQueue,
  QstashQueueClient,
  QstashSchedule,
  QstashScheduleClient,
  QstashSchedules,
  QstashTransportClient,
} from "./client.ts";
export { MESSAGE_HEADERS, type QstashDestination, qstashTransport, type QstashTransportOptions } from "./transport.ts";
export { type NudgeResult, qstashNudge, type QstashNudgeOptions } from "./nudge.ts";
export { qstashFollowUp, type QstashFollowUpOptions } from "./follow-up.ts";
export { ensureSchedule, type EnsureScheduleOptions, type EnsureScheduleResult } from "./schedule.ts";
export { type QstashReceiverOptions, qstashReceiver, type QstashVerifier, type QstashVerifyRequest } from "./receiver.ts";
