/**
 * `createOutbox`: the write side (enqueue in the caller's transaction, or a statement for an atomic batch) and the
 * administrative reads (stats, dead letters).
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "./errors.ts";
import {
  assertTopicName,
  DEFAULT_MAX_PAYLOAD_BYTES,
  encodePayload,
  type EnqueueOptions,
  type NewMessage,
  normalizeEnqueueOptions,
} from "./message.ts";
import { parseOptions } from "./options.ts";
import type { DeadLetterPage, OutboxStats, OutboxStorage } from "./storage.ts";
import type { Tracing } from "./tracing.ts";
import { type AnyTopic, type TopicInput, validatePayload } from "./topic.ts";

/** Options of {@link createOutbox}. */
export interface OutboxOptions<Tx, Stmt, T extends AnyTopic> {
  /** The storage adapter (e.g. `libsqlStorage(client)`). */
  storage: OutboxStorage<Tx, Stmt>;
  /**
   * The topics this outbox accepts. When given, enqueueing any other topic is a VALIDATION error and payloads are
   * validated by the registered topic's schema. @default undefined (any topic)
   */
  topics?: readonly T[] | undefined;
  /** Largest encoded payload in UTF-8 bytes. @default 262144 (256 KiB) */
  maxPayloadBytes?: number | undefined;
  /**
   * Tracing hooks (e.g. `otelTracing()` from `edge-outbox/otel`): at enqueue, the active trace context is written into
   * the message headers (`traceparent`), unless the caller set one. A relay on this outbox traces with them too.
   * @default none (nothing is traced)
   */
  tracing?: Tracing | undefined;
}

/**
 * The payload type for a topic name: the declared topic's input, or `unknown` when no topics are declared
 * (the name is then checked at run time only).
 */
export type PayloadOf<T extends AnyTopic, N extends string> = string extends T["name"] ? unknown
  : TopicInput<Extract<T, { name: N }>>;

/**
 * One message of {@link Outbox.enqueueMany} / {@link Outbox.statementMany}: a topic (the object or its name), its
 * payload typed by that topic's schema, and the per-message options.
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { defineTopic, type EnqueueItem } from "edge-outbox";
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * const item: EnqueueItem<typeof orderCreated> = { topic: "order.created", payload: { id: "o1" }, options: { key: "c7" } };
 * ```
 */
export type EnqueueItem<T extends AnyTopic> = T extends AnyTopic ? {
    /** The topic, or its name. */
    readonly topic: T | T["name"];
    /** The payload, typed by the topic's schema input. */
    readonly payload: TopicInput<T>;
    /** Key, delay, headers, id. @default {} */
    readonly options?: EnqueueOptions | undefined;
  }
  : never;

/** Dead-letter operations. */
export interface DeadLetters {
  /** Pages through dead letters, oldest first. @param options.limit page size @default 50 */
  list(options?: { limit?: number | undefined; cursor?: string | null | undefined }): Promise<DeadLetterPage>;
  /** Makes a dead letter pending again: same id, attempts reset, same place in its key's order. False if not found. */
  replay(id: string): Promise<boolean>;
  /**
   * Deletes at most `limit` dead letters dead-lettered before `olderThan`. Returns how many; call again while it
   * returns `limit`. @param options.limit @default 1000
   */
  purge(options: { olderThan: Date | number; limit?: number | undefined }): Promise<number>;
}

/** The outbox: typed enqueue and administration over one storage. */
export interface Outbox<Tx, Stmt, T extends AnyTopic = AnyTopic> {
  /** The storage this outbox writes to. */
  readonly storage: OutboxStorage<Tx, Stmt>;
  /** The declared topics, or null when any topic is accepted. */
  readonly topics: readonly T[] | null;
  /** Largest encoded payload in bytes. */
  readonly maxPayloadBytes: number;
  /**
   * Enqueues one message inside the caller's open transaction `tx`. Validates everything before writing anything.
   * @returns the message id (UUIDv7)
   * @throws {OutboxError} VALIDATION (bad payload, unknown topic, oversized) with nothing written; CONFLICT when
   *   `options.id` is already in the outbox (nothing written, `tx` still usable); STORAGE from the database
   */
  enqueue<K extends T>(tx: Tx, topic: K, payload: TopicInput<K>, options?: EnqueueOptions): Promise<string>;
  /** Enqueues by topic name (topics must be declared for the payload to be typed and validated). */
  enqueue<N extends T["name"]>(
    tx: Tx,
    topic: N,
    payload: PayloadOf<T, N>,
    options?: EnqueueOptions,
  ): Promise<string>;
  /**
   * Returns the storage's native statement inserting one message, for the caller's atomic batch
   * (`client.batch([insertOrder, outbox.statement(topic, payload)], "write")`). Synchronous; sends nothing.
   * Pass `options.id` to know the id in advance.
   * @throws {OutboxError} VALIDATION as `enqueue`; CONFIG when the storage cannot join a batch this way
   */
  statement<K extends T>(topic: K, payload: TopicInput<K>, options?: EnqueueOptions): Stmt;
  /** Returns the insert statement by topic name (typed like `enqueue` by name). */
  statement<N extends T["name"]>(topic: N, payload: PayloadOf<T, N>, options?: EnqueueOptions): Stmt;
  /**
   * Enqueues many messages inside the caller's open transaction `tx` in **one** storage call: every item is validated
   * before anything is written, the rows keep the array's order (per key, that is their delivery order), and the
   * storage takes its per-key locks in one sorted pass, so two transactions enqueueing overlapping keys in opposite
   * orders cannot deadlock (separate `enqueue` calls can, on Postgres). An empty array writes nothing.
   * @param tx the caller's open transaction
   * @param items `{ topic, payload, options }` per message; `topic` is a declared topic or its name
   * @returns the message ids, in the order of `items`
   * @throws {OutboxError} VALIDATION naming the first bad item (`items[2]: …`), or two items with one `id`, with
   *   nothing written; CONFLICT when an `id` is already in the outbox (nothing written); STORAGE from the database
   * @example
   * ```ts
   * import * as v from "valibot";
   * import { createOutbox, defineTopic } from "edge-outbox";
   * import { memoryStorage } from "edge-outbox/memory";
   *
   * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
   * const orderPaid = defineTopic("order.paid", v.object({ id: v.string(), amount: v.number() }));
   * const storage = memoryStorage();
   * const outbox = createOutbox({ storage, topics: [orderCreated, orderPaid] });
   * const { tx, commit } = storage.begin();
   * const ids = await outbox.enqueueMany(tx, [
   *   { topic: orderCreated, payload: { id: "o1" }, options: { key: "customer-7" } },
   *   { topic: "order.paid", payload: { id: "o1", amount: 5 }, options: { key: "customer-7" } },
   * ]);
   * await commit();
   * ```
   */
  enqueueMany(tx: Tx, items: readonly EnqueueItem<T>[]): Promise<string[]>;
  /**
   * Returns ONE native statement inserting many messages, for the caller's atomic batch
   * (`client.batch([insertOrder, outbox.statementMany([...])], "write")`): the batch equivalent of
   * {@link Outbox.enqueueMany}, validated the same way. Synchronous; sends nothing. Pass `options.id` to know the ids
   * in advance. A taken id fails the whole batch atomically.
   * @param items `{ topic, payload, options }` per message (at least one)
   * @returns the storage's statement
   * @throws {OutboxError} VALIDATION as `enqueueMany`, or for an empty array; CONFIG when the storage cannot join a
   *   batch this way
   * @example
   * ```ts
   * import * as v from "valibot";
   * import { createClient } from "@libsql/client";
   * import { createOutbox, defineTopic } from "edge-outbox";
   * import { libsqlStorage } from "edge-outbox/libsql";
   *
   * const client = createClient({ url: ":memory:" });
   * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
   * const storage = libsqlStorage(client);
   * await storage.migrate();
   * const outbox = createOutbox({ storage, topics: [orderCreated] });
   * await client.batch([
   *   outbox.statementMany([
   *     { topic: orderCreated, payload: { id: "o1" } },
   *     { topic: "order.created", payload: { id: "o2" }, options: { key: "customer-7" } },
   *   ]),
   * ], "write");
   * ```
   */
  statementMany(items: readonly EnqueueItem<T>[]): Stmt;
  /** Counts and windowed counters from the database. @param options.windowMs @default 300000 */
  stats(options?: { windowMs?: number | undefined }): Promise<OutboxStats>;
  /** Dead-letter operations. */
  readonly deadLetters: DeadLetters;
  /**
   * Deletes at most `limit` delivered rows kept by a retention window and delivered before `olderThan`.
   * @param options.limit @default 1000
   */
  purgeDelivered(options: { olderThan: Date | number; limit?: number | undefined }): Promise<number>;
  /** The tracing hooks given to {@link createOutbox}, if any (a relay on this outbox uses them by default). */
  readonly tracing?: Tracing | undefined;
}

const outboxOptionsSchema = v.strictObject({
  storage: v.custom<object>((s) => typeof s === "object" && s !== null && typeof (s as { claim?: unknown }).claim === "function", "must be an OutboxStorage"),
  topics: v.optional(v.array(v.custom<AnyTopic>((t) => typeof t === "object" && t !== null && typeof (t as { name?: unknown }).name === "string" && typeof (t as { schema?: unknown }).schema === "object", "must be topics made by defineTopic"))),
  maxPayloadBytes: v.optional(v.pipe(v.number(), v.integer(), v.minValue(2), v.maxValue(64 * 1024 * 1024)), DEFAULT_MAX_PAYLOAD_BYTES),
  tracing: v.optional(v.custom<Tracing>(
    (t) => typeof t === "object" && t !== null && typeof (t as Tracing).inject === "function" && typeof (t as Tracing).startSpan === "function",
    "must be Tracing hooks (inject and startSpan), e.g. otelTracing() from edge-outbox/otel",
  )),
});

const limitSchema = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(100_000));

/**
 * Creates an outbox over a storage.
 *
 * @param options storage, topics (optional), maxPayloadBytes (default 256 KiB)
 * @returns the outbox
 * @throws {OutboxError} CONFIG for a bad option or two topics with one name
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { createClient } from "@libsql/client";
 * import { createOutbox, defineTopic } from "edge-outbox";
 * import { libsqlStorage } from "edge-outbox/libsql";
 *
 * const client = createClient({ url: "file:app.db" });
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
 * const storage = libsqlStorage(client);
 * await storage.migrate();
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 *
 * const tx = await client.transaction("write");
 * await tx.execute({ sql: "insert into orders (id, total) values (?, ?)", args: ["o1", 5] });
 * await outbox.enqueue(tx, orderCreated, { id: "o1", total: 5 }, { key: "customer-7" });
 * await tx.commit();
 * ```
 */
export function createOutbox<Tx, Stmt, const T extends AnyTopic = AnyTopic>(
  options: OutboxOptions<Tx, Stmt, T>,
): Outbox<Tx, Stmt, T> {
  const parsed = parseOptions("createOutbox options", outboxOptionsSchema, options);
  const storage = options.storage;
  const maxPayloadBytes = parsed.maxPayloadBytes;
  const topics = options.topics ?? null;
  const byName = new Map<string, AnyTopic>();
  for (const t of topics ?? []) {
    if (byName.has(t.name)) throw new OutboxError("CONFIG", `createOutbox options: topics: "${t.name}" is declared twice`);
    byName.set(t.name, t);
  }

  const tracing = options.tracing;
  /** The options with the active trace context (W3C traceparent) added to their headers, when tracing is on. */
  function withTrace(opts: EnqueueOptions | undefined): EnqueueOptions | undefined {
    if (!tracing) return opts;
    const given = opts?.headers;
    if (given !== undefined && (typeof given !== "object" || given === null || Array.isArray(given))) return opts; // refused later
    const headers: Record<string, string> = { ...given };
    try {
      tracing.inject(headers);
    } catch {
      return opts; // tracing must never fail an enqueue
    }
    return { ...opts, headers };
  }

  function prepare(topic: AnyTopic | string, payload: unknown, opts: EnqueueOptions | undefined): NewMessage {
    const name = typeof topic === "string" ? topic : topic?.name;
    if (typeof name !== "string") throw new OutboxError("VALIDATION", "topic must be a topic from defineTopic or its name");
    assertTopicName(name);
    let schemaTopic: AnyTopic | undefined;
    if (topics) {
      schemaTopic = byName.get(name);
      if (!schemaTopic) {
        throw new OutboxError("VALIDATION", `unknown topic "${name}": this outbox declares ${[...byName.keys()].map((n) => `"${n}"`).join(", ") || "no topics"}`);
      }
    } else if (typeof topic !== "string") {
      schemaTopic = topic;
    }
    const value = schemaTopic ? validatePayload(schemaTopic, payload) : payload;
    const meta = normalizeEnqueueOptions(withTrace(opts));
    const body = encodePayload(value, maxPayloadBytes);
    return { id: meta.id, topic: name, key: meta.key, payload: body, headers: meta.headers, delayMs: meta.delayMs };
  }

  /** Validates every item (in order) before anything is written; errors name the item. */
  function prepareMany(items: readonly { topic: AnyTopic | string; payload: unknown; options?: EnqueueOptions | undefined }[], what: string): NewMessage[] {
    if (!Array.isArray(items)) throw new OutboxError("VALIDATION", `${what}(items): items must be an array of { topic, payload, options }`);
    const messages: NewMessage[] = [];
    const ids = new Set<string>();
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      if (typeof item !== "object" || item === null) {
        throw new OutboxError("VALIDATION", `${what}: items[${i}] must be an object { topic, payload, options }`);
      }
      let m: NewMessage;
      try {
        m = prepare(item.topic, item.payload, item.options);
      } catch (e) {
        if (e instanceof OutboxError) throw new OutboxError(e.code, `${what}: items[${i}]: ${e.message}`, { cause: e.cause });
        throw e;
      }
      if (ids.has(m.id)) throw new OutboxError("VALIDATION", `${what}: items[${i}]: id ${m.id} is given to two items`);
      ids.add(m.id);
      messages.push(m);
    }
    return messages;
  }
  const assertBatch = (what: string): void => {
    if (!storage.capabilities.batchStatement || typeof storage.statement !== "function") {
      throw new OutboxError(
        "CONFIG",
        `the ${storage.name} storage cannot join a batch with ${what}(): use enqueue(tx, …) inside your transaction`,
      );
    }
  };

  const toEpoch = (d: Date | number, field: string): number => {
    const ms = d instanceof Date ? d.getTime() : d;
    if (typeof ms !== "number" || !Number.isFinite(ms)) throw new OutboxError("VALIDATION", `${field} must be a Date or epoch milliseconds`);
    return ms;
  };
  const toLimit = (n: number | undefined, fallback: number, field: string): number => {
    const r = v.safeParse(limitSchema, n ?? fallback);
    if (!r.success) throw new OutboxError("VALIDATION", `${field} must be an integer between 1 and 100000`);
    return r.output;
  };

  return {
    storage,
    topics,
    maxPayloadBytes,
    async enqueue(tx: Tx, topic: AnyTopic | string, payload: unknown, opts?: EnqueueOptions): Promise<string> {
      const message = prepare(topic, payload, opts);
      await storage.enqueue(tx, [message]);
      return message.id;
    },
    statement(topic: AnyTopic | string, payload: unknown, opts?: EnqueueOptions): Stmt {
      assertBatch("statement");
      return storage.statement!([prepare(topic, payload, opts)]);
    },
    async enqueueMany(tx: Tx, items: readonly { topic: AnyTopic | string; payload: unknown; options?: EnqueueOptions | undefined }[]): Promise<string[]> {
      const messages = prepareMany(items, "enqueueMany");
      if (messages.length > 0) await storage.enqueue(tx, messages);
      return messages.map((m) => m.id);
    },
    statementMany(items: readonly { topic: AnyTopic | string; payload: unknown; options?: EnqueueOptions | undefined }[]): Stmt {
      assertBatch("statementMany");
      const messages = prepareMany(items, "statementMany");
      if (messages.length === 0) throw new OutboxError("VALIDATION", "statementMany: items must hold at least one message");
      return storage.statement!(messages);
    },
    stats(opts?: { windowMs?: number | undefined }): Promise<OutboxStats> {
      const windowMs = opts?.windowMs ?? 300_000;
      if (!Number.isInteger(windowMs) || windowMs < 1 || windowMs > 30 * 86_400_000) {
        throw new OutboxError("VALIDATION", "windowMs must be an integer between 1 and 30 days in ms");
      }
      return storage.stats({ windowMs });
    },
    deadLetters: {
      list(opts?: { limit?: number | undefined; cursor?: string | null | undefined }): Promise<DeadLetterPage> {
        return storage.listDead({ limit: toLimit(opts?.limit, 50, "limit"), cursor: opts?.cursor ?? null });
      },
      replay(id: string): Promise<boolean> {
        if (typeof id !== "string" || id.length === 0) throw new OutboxError("VALIDATION", "replay(id): id must be a message id");
        return storage.replayDead(id);
      },
      purge(opts: { olderThan: Date | number; limit?: number | undefined }): Promise<number> {
        return storage.purge({ status: "dead", olderThan: toEpoch(opts?.olderThan, "olderThan"), limit: toLimit(opts?.limit, 1000, "limit") });
      },
    },
    purgeDelivered(opts: { olderThan: Date | number; limit?: number | undefined }): Promise<number> {
      return storage.purge({ status: "delivered", olderThan: toEpoch(opts?.olderThan, "olderThan"), limit: toLimit(opts?.limit, 1000, "limit") });
    },
    tracing,
  } as Outbox<Tx, Stmt, T>;
}
