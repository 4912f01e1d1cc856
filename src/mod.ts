/**
 * edge-outbox: a transactional outbox for Node, Bun, Deno, Cloudflare Workers and Vercel Edge.
 *
 * Write your business rows and your outgoing messages in one database transaction; a relay later drains the
 * messages to a transport with retries, dead letters and per-key ordering, never losing one.
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { createClient } from "@libsql/client";
 * import { createOutbox, createRelay, defineTopic } from "edge-outbox";
 * import { libsqlStorage } from "edge-outbox/libsql";
 * import { recordingTransport } from "edge-outbox/memory";
 *
 * const client = createClient({ url: "file:app.db" });
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
 * const storage = libsqlStorage(client);
 * await storage.migrate();
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 * await client.batch([outbox.statement(orderCreated, { id: "o1", total: 5 })], "write");
 *
 * const transport = recordingTransport();
 * const relay = createRelay({ outbox, transport });
 * console.log(await relay.drain({ budgetMs: 5_000 }), transport.delivered);
 * ```
 *
 * @module
 */
export { type OutboxErrorCode, OutboxError, type OutboxErrorOptions, isOutboxError, toOutboxError } from "./errors.ts";
export {
  assertTopicName,
  DEFAULT_MAX_PAYLOAD_BYTES,
  encodePayload,
  type EnqueueOptions,
  isUuid,
  MAX_DELAY_MS,
  MAX_KEY_LENGTH,
  type NewMessage,
  normalizeEnqueueOptions,
  type OutboxMessage,
  utf8Length,
  uuidv7,
} from "./message.ts";
export {
  type AnyTopic,
  defineTopic,
  type StandardResult,
  type StandardSchemaV1,
  type Topic,
  type TopicInput,
  type TopicOutput,
  validatePayload,
} from "./topic.ts";
export type {
  Claim,
  ClaimedMessage,
  ClaimOptions,
  DeadLetter,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StmtOf,
  StorageCapabilities,
  TxOf,
} from "./storage.ts";
export type { DeliveryOutcome, SendContext, Transport } from "./transport.ts";
export type { Lease, Lock } from "./lock.ts";
export type { TraceAttributes, TraceSpan, TraceSpanOptions, Tracing } from "./tracing.ts";
export { type BackoffOptions, backoffDelay, MAX_RETRY_AFTER_MS, parseRetryAfter } from "./backoff.ts";
export { type OptionsOutput, type OptionsSchema, parseOptions, quoteIdentifier } from "./options.ts";
export { createOutbox, type DeadLetters, type EnqueueItem, type Outbox, type OutboxOptions, type PayloadOf } from "./outbox.ts";
export { createRelay, type DrainOptions, type DrainReport, type Relay, type RelayOptions, type RunOptions } from "./relay.ts";
export {
  DEFAULT_HEALTH_THRESHOLDS,
  evaluateHealth,
  type HealthCheck,
  type HealthLevels,
  type HealthReport,
  type HealthStatus,
  type HealthThresholds,
  parseHealthThresholds,
  retryRate,
} from "./stats.ts";
export { assertMessageId, createInbox, DEFAULT_INBOX_RETENTION_MS, type HandleInfo, type HandleOptions, type HandleResult, type Inbox, type InboxCapabilities, type InboxOptions, type InboxPurgeOptions, type InboxStmtOf, type InboxStorage, type InboxTxOf, MAX_INBOX_KEY_LENGTH, MAX_MESSAGE_ID_LENGTH, type OrderInfo, type OrderPosition } from "./inbox.ts";
export { scheduledDrain, type ScheduledDrainOptions, type ScheduledDrainStop, type ScheduledDrainSummary } from "./scheduled.ts";
