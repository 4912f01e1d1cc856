/**
 * `edge-outbox/d1`: the outbox storage on a Cloudflare D1 binding (`env.DB`), sharing the SQLite SQL of the libSQL
 * adapter (one dialect, two drivers).
 *
 * D1 has no interactive transactions: its only atomic unit is `batch()`. So the write side is batch-only: put
 * `outbox.statement(topic, payload)` into your `env.DB.batch([...])` next to your business statements, or collect
 * them in an array with `outbox.enqueue(list, …)` and run it with `storage.batch(list)` (which maps a colliding id to
 * CONFLICT and wakes a relay in the same isolate). `enqueue` with anything that is not such a list (the binding itself,
 * another driver's transaction) is refused with CONFIG. `migrate()` runs through batches; claims and settles are
 * single batches. The binding is typed structurally ({@link D1Binding}): no `@cloudflare/workers-types` at run time.
 *
 * @example
 * ```ts
 * import { createOutbox, createRelay, defineTopic } from "edge-outbox";
 * import { d1Storage, type D1Binding } from "edge-outbox/d1";
 * import { functionTransport } from "edge-outbox/memory";
 * import * as v from "valibot";
 *
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * export default {
 *   async fetch(_req: Request, env: { DB: D1Binding }): Promise<Response> {
 *     const storage = d1Storage(env.DB, { table: "outbox" });
 *     await storage.migrate();
 *     const outbox = createOutbox({ storage, topics: [orderCreated] });
 *     await env.DB.batch([env.DB.prepare("INSERT INTO orders (id) VALUES (?1)").bind("o1"), outbox.statement(orderCreated, { id: "o1" })]);
 *     const relay = createRelay({ outbox, transport: functionTransport(async (m) => console.log(m.id)) });
 *     return Response.json(await relay.drain({ budgetMs: 5_000 }));
 *   },
 * };
 * ```
 *
 * @module
 */
export { type D1Binding, type D1Result, type D1Row, type D1Statement } from "./client.ts";
export { d1Schema } from "./schema.ts";
export { type D1StatementList, d1Storage, type D1Storage, type D1StorageOptions } from "./storage.ts";
export { type D1Inbox, d1Inbox, type D1InboxDatabase, type D1InboxOptions, type D1InboxStatement } from "./inbox.ts";
