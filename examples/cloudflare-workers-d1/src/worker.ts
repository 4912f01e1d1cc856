// Cloudflare Worker + D1: the order and its message in one atomic D1 batch, the relay on a Cron Trigger (signed
// webhooks out), and the relay app under /outbox: POST /outbox/drain accepts QStash-signed calls (a QStash schedule
// or nudge), GET /outbox/health the read secret.
import { Receiver } from "@upstash/qstash";
import { Hono } from "hono";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic, scheduledDrain } from "edge-outbox";
import { d1Storage } from "edge-outbox/d1";
import { webhookTransport } from "edge-outbox/http";
import { createRelayApp } from "edge-outbox/hono";

export interface Env {
  DB: D1Database;
  WEBHOOK_URL: string;
  WEBHOOK_SECRET: string;
  /** Where this worker's /outbox app is reachable, as QStash calls it (QStash signs that URL). */
  PUBLIC_URL: string;
  QSTASH_CURRENT_SIGNING_KEY: string;
  QSTASH_NEXT_SIGNING_KEY: string;
  READ_SECRET: string;
}

const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));

/** Budgets (see examples/README.md): a cron run may use 25 s, each send at most 5 s. */
const CRON_BUDGET_MS = 25_000;
const HTTP_BUDGET_MS = 8_000;
const SEND_TIMEOUT_MS = 5_000;

function open(env: Env) {
  const storage = d1Storage(env.DB); // tables from migrations/ (wrangler d1 migrations apply)
  const outbox = createOutbox({ storage, topics: [orderCreated] });
  const relay = createRelay({
    outbox,
    transport: webhookTransport({ url: env.WEBHOOK_URL, secret: env.WEBHOOK_SECRET, timeoutMs: SEND_TIMEOUT_MS }),
    concurrency: 4, // Workers allow 6 simultaneous connections
    sendTimeoutMs: SEND_TIMEOUT_MS,
    leaseMs: 30_000,
  });
  return { storage, outbox, relay };
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const { storage, outbox, relay } = open(env);
    const app = new Hono();
    app.post("/orders", async (c) => {
      const order = await c.req.json<{ id: string; total: number }>();
      // D1 has no interactive transactions: the batch is the atomic unit.
      await storage.batch([
        env.DB.prepare("INSERT INTO orders (id, total) VALUES (?1, ?2)").bind(order.id, order.total),
        outbox.statement(orderCreated, order),
      ]);
      return c.json({ ok: true }, 201);
    });
    app.route("/outbox", createRelayApp({
      relay,
      outbox,
      auth: {
        qstash: { verifier: new Receiver({ currentSigningKey: env.QSTASH_CURRENT_SIGNING_KEY, nextSigningKey: env.QSTASH_NEXT_SIGNING_KEY }) },
        read: env.READ_SECRET,
      },
      publicUrl: env.PUBLIC_URL,
      budgetMs: HTTP_BUDGET_MS,
    }));
    return await app.fetch(request);
  },

  async scheduled(_controller: ScheduledController, env: Env): Promise<void> {
    const summary = await scheduledDrain(open(env).relay, { budgetMs: CRON_BUDGET_MS, drainBudgetMs: 10_000 });
    console.log("outbox drain", JSON.stringify(summary));
  },
} satisfies ExportedHandler<Env>;
