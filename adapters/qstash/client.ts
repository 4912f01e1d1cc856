/**
 * The QStash client as this adapter uses it, typed structurally: `new Client({ token })` from `@upstash/qstash` fits
 * (a test checks it), and nothing here imports the SDK.
 *
 * @module
 */

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
