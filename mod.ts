/**
 * edge-outbox (JSR `@edge-outbox/core`, npm `edge-outbox`): a transactional outbox for Node, Bun, Deno, Cloudflare
 * Workers and Vercel Edge. This entry point is the runtime-agnostic core: `defineTopic`, `createOutbox`,
 * `createRelay`, the storage / transport / lock contracts, errors and health evaluation.
 *
 * Subpaths (the same on JSR and npm: `jsr:@edge-outbox/core/postgres` ≡ `edge-outbox/postgres`):
 * - `./libsql`: the storage on libSQL / SQLite / Turso (`@libsql/client`)
 * - `./d1`: the storage on Cloudflare D1 (batch-only writes)
 * - `./postgres`: the storage on PostgreSQL (postgres.js) and an advisory lock
 * - `./memory`: in-memory storage, transports and lock, for tests and demos
 * - `./upstash`: a lock on Upstash Redis
 * - `./http`: signed webhook transport and receiver (Standard Webhooks)
 * - `./qstash`: Upstash QStash transport, schedule, nudge, follow-up and receiver
 * - `./hono`: the relay as a Hono app (`/drain`, `/health`, `/stats`, `/metrics`, dead letters)
 * - `./otel`: OpenTelemetry tracing for the outbox and the relay
 * - `./testing`: the storage and inbox conformance suites, for adapter authors
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { createOutbox, createRelay, defineTopic } from "@edge-outbox/core";
 * import { memoryStorage, recordingTransport } from "@edge-outbox/core/memory";
 *
 * const orderCreated = defineTopic("order.created", v.object({ id: v.string() }));
 * const storage = memoryStorage();
 * const outbox = createOutbox({ storage, topics: [orderCreated] });
 * const { tx, commit } = storage.begin();
 * await outbox.enqueue(tx, orderCreated, { id: "o1" });
 * await commit();
 * await createRelay({ outbox, transport: recordingTransport() }).drain();
 * ```
 *
 * @module
 */
export * from "./src/mod.ts";
