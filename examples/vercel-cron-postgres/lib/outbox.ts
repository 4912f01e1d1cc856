// The outbox, shared by the functions. Module scope: Vercel reuses a warm instance across invocations, so the
// postgres.js pool (max 1: one connection per function instance, as serverless poolers expect) survives between them.
import postgres from "postgres";
import * as v from "valibot";
import { createOutbox, createRelay, defineTopic } from "edge-outbox";
import { webhookTransport } from "edge-outbox/http";
import { createRelayApp } from "edge-outbox/hono";
import { postgresStorage } from "edge-outbox/postgres";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};

export const orderCreated = defineTopic("order.created", v.object({ id: v.string(), total: v.number() }));

/** Budgets (see examples/README.md): maxDuration 60 s (vercel.json) = 45 s of drain + 10 s send timeout + 5 s spare. */
export const DRAIN_BUDGET_MS = 45_000;
const SEND_TIMEOUT_MS = 10_000;

export const sql = postgres(env("DATABASE_URL"), { max: 1, idle_timeout: 20 });
// notify: false: Vercel Cron drains this outbox, nothing LISTENs to it, so the enqueues skip pg_notify (PostgreSQL
// serialises the commits of notifying transactions cluster-wide; see the README's Postgres section).
export const outbox = createOutbox({ storage: postgresStorage(sql, { notify: false }), topics: [orderCreated] });
export const relay = createRelay({
  outbox,
  transport: webhookTransport({ url: env("WEBHOOK_URL"), secret: env("WEBHOOK_SECRET"), timeoutMs: SEND_TIMEOUT_MS }),
  sendTimeoutMs: SEND_TIMEOUT_MS,
  leaseMs: 60_000,
});

/** The relay app: Vercel Cron's `CRON_SECRET` may drain, `OUTBOX_READ_SECRET` may read health and stats. */
export const relayApp = createRelayApp({
  relay,
  outbox,
  auth: { drain: env("CRON_SECRET"), read: env("OUTBOX_READ_SECRET") },
  budgetMs: DRAIN_BUDGET_MS,
});
