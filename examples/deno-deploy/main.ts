// Deno Deploy: Deno.cron drains the outbox every minute (Deno.cron never overlaps runs), Deno.serve takes orders
// (order row + message in one atomic batch on libSQL/Turso) and serves the relay app under /outbox.
import { createClient } from "@libsql/client/web";
import { Hono } from "hono";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, scheduledDrain } from "edge-outbox";
import { webhookTransport } from "edge-outbox/http";
import { createRelayApp } from "edge-outbox/hono";
import { libsqlStorage } from "edge-outbox/libsql";

const env = (name: string): string => {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`set ${name}`);
  return value;
};

/** Budgets (see examples/README.md): a cron run drains for up to 50 s of its minute; sends time out after 10 s. */
const CRON_BUDGET_MS = 50_000;
const SEND_TIMEOUT_MS = 10_000;

const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));
const authToken = Deno.env.get("TURSO_AUTH_TOKEN");
const client = createClient({ url: env("TURSO_DATABASE_URL"), ...(authToken ? { authToken } : {}) });
const outbox = createOutbox({ storage: libsqlStorage(client), topics: [orderCreated] });
const relay = createRelay({
  outbox,
  transport: webhookTransport({ url: env("WEBHOOK_URL"), secret: env("WEBHOOK_SECRET"), timeoutMs: SEND_TIMEOUT_MS }),
  sendTimeoutMs: SEND_TIMEOUT_MS,
  leaseMs: 60_000,
});

// Registered at the top level, before Deno.serve, as Deno Deploy requires.
Deno.cron("drain outbox", "* * * * *", async () => {
  const summary = await scheduledDrain(relay, { budgetMs: CRON_BUDGET_MS, drainBudgetMs: 20_000 });
  console.log("outbox drain", JSON.stringify(summary));
});

const app = new Hono();
app.post("/orders", async (c) => {
  const order = await c.req.json<{ id: string; total: number }>();
  await client.batch([
    { sql: "INSERT INTO orders (id, total) VALUES (?, ?)", args: [order.id, order.total] },
    outbox.statement(orderCreated, order),
  ], "write");
  return c.json({ ok: true }, 201);
});
app.route("/outbox", createRelayApp({ relay, outbox, auth: { drain: env("DRAIN_SECRET"), read: env("READ_SECRET") } }));

Deno.serve({
  port: Number(Deno.env.get("PORT") ?? 8000),
  hostname: Deno.env.get("HOST") ?? "0.0.0.0",
  onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}`),
}, app.fetch);
