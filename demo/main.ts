// `npm start`: edge-outbox end to end on a local SQLite file through libSQL (no server needed).
//
// 1. Writes orders and their events atomically: an interactive transaction, then an atomic batch.
// 2. Shows that a rolled-back transaction leaves no event and that an invalid payload writes nothing.
// 3. Drains the outbox with a relay whose transport fails one message once: the retry blocks that customer's
//    later messages (per-key order) until a second drain delivers all three in order.
//
// Environment: OUTBOX_DEMO_DB, the SQLite file to use (default ./demo.db; deleted at start).
import { rmSync } from "node:fs";
import { createClient } from "@libsql/client";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, type DrainReport, isOutboxError } from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { functionTransport } from "../adapters/memory/mod.ts";

const path = process.env.OUTBOX_DEMO_DB || "./demo.db";
for (const suffix of ["", "-journal", "-wal", "-shm"]) rmSync(path + suffix, { force: true });
const client = createClient({ url: `file:${path}` });

// Topics: a name and a schema; payloads are typed by it and validated at enqueue.
const orderCreated = defineTopic(
  "order.created",
  v.object({ id: v.string(), customer: v.string(), total: v.pipe(v.number(), v.minValue(0)) }),
);
const orderPaid = defineTopic("order.paid", v.object({ id: v.string(), amount: v.number() }));

await client.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total REAL NOT NULL)");
const storage = libsqlStorage(client);
await storage.migrate();
const outbox = createOutbox({ storage, topics: [orderCreated, orderPaid] });

const insertOrder = (id: string, customer: string, total: number) => ({
  sql: "INSERT INTO orders (id, customer, total) VALUES (?, ?, ?)",
  args: [id, customer, total],
});
const state = async (what: string): Promise<string> => {
  const orders = (await client.execute("SELECT count(*) AS n FROM orders")).rows[0]!.n;
  return `${what.padEnd(58)} -> ${orders} orders, ${(await outbox.stats()).pending} pending events`;
};
console.log(`edge-outbox demo on file:${path}\n`);

// (a) Interactive transaction: the order row and two events commit together.
const tx = await client.transaction("write");
try {
  await tx.execute(insertOrder("o1", "ada", 30));
  await outbox.enqueue(tx, orderCreated, { id: "o1", customer: "ada", total: 30 }, { key: "ada" });
  await outbox.enqueue(tx, orderPaid, { id: "o1", amount: 30 }, { key: "ada" });
  await tx.commit();
} finally {
  tx.close();
}
console.log(await state("(a) transaction: o1 + order.created + order.paid"));

// (b) Atomic batch (one round trip, the right choice at the edge): order row + event statement.
await client.batch([insertOrder("o2", "bob", 12.5), outbox.statement(orderCreated, { id: "o2", customer: "bob", total: 12.5 }, { key: "bob" })], "write");
await client.batch([insertOrder("o3", "ada", 7), outbox.statement(orderCreated, { id: "o3", customer: "ada", total: 7 }, { key: "ada" })], "write");
console.log(await state("(b) two batches: o2 (bob), o3 (ada), each + order.created"));

// (c) Rollback: the event vanishes with the order.
const rolledBack = await client.transaction("write");
try {
  await rolledBack.execute(insertOrder("o4", "cy", 99));
  await outbox.enqueue(rolledBack, orderCreated, { id: "o4", customer: "cy", total: 99 }, { key: "cy" });
  await rolledBack.rollback();
} finally {
  rolledBack.close();
}
console.log(await state("(c) transaction rolled back: o4 + order.created"));

// (d) An invalid payload is refused before anything is sent: the whole batch never runs.
try {
  await client.batch([insertOrder("o5", "dee", -1), outbox.statement(orderCreated, { id: "o5", customer: "dee", total: -1 })], "write");
} catch (e) {
  if (!isOutboxError(e, "VALIDATION")) throw e;
  console.log(await state("(d) batch refused before sending: o5 with total -1"));
  console.log(`    OutboxError ${e.code}: ${e.message}`);
}

// The relay: a transport that prints each message, and fails o1's order.created on its first attempt.
const transport = functionTransport((m) => {
  const line = `${m.topic.padEnd(13)} key=${m.key} id=${m.id} ${m.body}`;
  if (m.topic === orderCreated.name && (m.payload as { id: string }).id === "o1" && m.attempts === 1) {
    console.log(`    ✗ attempt ${m.attempts}  ${line}`);
    throw new Error("simulated outage");
  }
  console.log(`    ✓ attempt ${m.attempts}  ${line}`);
});
const relay = createRelay({ outbox, transport, backoff: { baseMs: 100, maxMs: 100, minMs: 50 } });
const show = (r: DrainReport): string =>
  `claimed ${r.claimed}, delivered ${r.delivered}, retried ${r.retried}, dead ${r.dead}, released ${r.released}, ` +
  `leaseLost ${r.leaseLost}, more ${r.more}, ${r.elapsedMs} ms`;

console.log("\ndrain 1 (ada's head fails once, so ada's later messages wait; bob is not held up):");
console.log(`  report: ${show(await relay.drain({ budgetMs: 5_000 }))}`);
await new Promise((r) => setTimeout(r, 200)); // past the retry's backoff (50-100 ms here)
console.log("drain 2 (ada's three messages, in commit order):");
console.log(`  report: ${show(await relay.drain({ budgetMs: 5_000 }))}`);

const s = await outbox.stats();
console.log(
  `\nstats: pending ${s.pending}, due ${s.due}, leased ${s.leased}, dead ${s.dead}; last ${s.window.windowMs / 60_000} min: ` +
    `delivered ${s.window.delivered}, retried ${s.window.retried}, dead ${s.window.dead}, ` +
    `avg latency ${Math.round(s.window.avgLatencyMs ?? 0)} ms, max ${s.window.maxLatencyMs} ms`,
);
console.log(`dead letters: ${(await outbox.deadLetters.list()).items.length}`);
client.close();
