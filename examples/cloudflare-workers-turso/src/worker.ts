// Cloudflare Worker + Turso (libSQL over HTTP): the write side as one atomic batch, the relay on a Cron Trigger,
// and the relay app under /outbox (POST /outbox/drain for manual or QStash calls, GET /outbox/health).
import { createClient } from "@libsql/client/web";
import { Hono } from "hono";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, scheduledDrain } from "edge-outbox";
import { webhookTransport } from "edge-outbox/http";
import { createRelayApp } from "edge-outbox/hono";
import { libsqlStorage } from "edge-outbox/libsql";

export interface Env {
  TURSO_DATABASE_URL: string;
  TURSO_AUTH_TOKEN?: string;
  /** Where messages are POSTed, signed (Standard Webhooks). */
  WEBHOOK_URL: string;
  WEBHOOK_SECRET: string;
  /** Bearer secret of POST /outbox/drain. */
  DRAIN_SECRET: string;
  /** Bearer secret of GET /outbox/health and /outbox/stats. */
  READ_SECRET: string;
}

const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));

/** Budgets (see examples/README.md): a cron run may use 25 s, each send at most 5 s. */
const CRON_BUDGET_MS = 25_000;
const HTTP_BUDGET_MS = 8_000;
const SEND_TIMEOUT_MS = 5_000;

/** A client per invocation: a Worker cannot reuse a connection across requests. */
function open(env: Env) {
  const client = createClient({ url: env.TURSO_DATABASE_URL, ...(env.TURSO_AUTH_TOKEN ? { authToken: env.TURSO_AUTH_TOKEN } : {}) });
  const outbox = createOutbox({ storage: libsqlStorage(client), topics: [orderCreated] });
  const relay = createRelay({
    outbox,
    transport: webhookTransport({ url: env.WEBHOOK_URL, secret: env.WEBHOOK_SECRET, timeoutMs: SEND_TIMEOUT_MS }),
    concurrency: 4, // Workers allow 6 simultaneous connections: sends plus the database
    sendTimeoutMs: SEND_TIMEOUT_MS,
    leaseMs: 30_000,
  });
  return { client, outbox, relay };
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const { client, outbox, relay } = open(env);
    try {
      const app = new Hono();
      app.post("/orders", async (c) => {
        const order = await c.req.json<{ id: string; total: number }>();
        // The business row and its message commit together, in one round trip.
        await client.batch([
          { sql: "INSERT INTO orders (id, total) VALUES (?, ?)", args: [order.id, order.total] },
          outbox.statement(orderCreated, order),
        ], "write");
        return c.json({ ok: true }, 201);
      });
      app.route("/outbox", createRelayApp({
        relay,
        outbox,
        auth: { drain: env.DRAIN_SECRET, read: env.READ_SECRET },
        budgetMs: HTTP_BUDGET_MS,
      }));
      return await app.fetch(request);
    } finally {
      client.close();
    }
  },

  async scheduled(_controller: ScheduledController, env: Env, _ctx: ExecutionContext): Promise<void> {
    const { client, relay } = open(env);
    try {
      const summary = await scheduledDrain(relay, { budgetMs: CRON_BUDGET_MS, drainBudgetMs: 10_000 });
      console.log("outbox drain", JSON.stringify(summary));
    } finally {
      client.close();
    }
  },
} satisfies ExportedHandler<Env>;
