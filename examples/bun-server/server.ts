// Bun: one long-running process — an HTTP server taking orders (business row + message in one transaction) and the
// relay app's read routes, plus `relay.run`, which drains continuously, woken by commits (LISTEN/NOTIFY) and
// polling as a fallback. SIGINT/SIGTERM stop the loop (in-flight sends finish, unsent claims are released).
import { Hono } from "hono";
import postgres from "postgres";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic } from "edge-outbox";
import { webhookTransport } from "edge-outbox/http";
import { createRelayApp } from "edge-outbox/hono";
import { pgAdvisoryLock, postgresStorage } from "edge-outbox/postgres";

const env = Bun.env;
const required = (name: string): string => {
  const value = env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};

const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
const sql = postgres(required("DATABASE_URL"), { max: 5 });
const storage = postgresStorage(sql, { schema: env.OUTBOX_SCHEMA ?? "public" });
await storage.migrate();
await sql.unsafe(`CREATE TABLE IF NOT EXISTS "${env.OUTBOX_SCHEMA ?? "public"}".orders (id text PRIMARY KEY, total numeric NOT NULL)`);
const outbox = createOutbox({ storage, topics: [orderCreated] });
const relay = createRelay({
  outbox,
  transport: webhookTransport({ url: required("WEBHOOK_URL"), secret: required("WEBHOOK_SECRET") }),
  lock: pgAdvisoryLock(sql), // one relay at a time across replicas (efficiency only)
});

const app = new Hono();
app.post("/orders", async (c) => {
  const order = await c.req.json<{ id: string; total: number }>();
  await sql.begin(async (tx) => {
    await tx`INSERT INTO ${sql(env.OUTBOX_SCHEMA ?? "public")}.orders ${tx(order, "id", "total")}`;
    await outbox.enqueue(tx, orderCreated, order, { key: order.id });
  });
  return c.json({ ok: true }, 201);
});
app.route("/outbox", createRelayApp({ relay, outbox, auth: { read: required("READ_SECRET") } }));

const server = Bun.serve({ port: Number(env.PORT ?? 3000), hostname: env.HOST ?? "127.0.0.1", fetch: app.fetch });
console.log(`listening on ${server.url}`);

const stop = new AbortController();
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => stop.abort());
await relay.run({ signal: stop.signal, budgetMs: 30_000, pollIntervalMs: 1_000 });
await server.stop();
await sql.end({ timeout: 5 });
console.log("stopped");
