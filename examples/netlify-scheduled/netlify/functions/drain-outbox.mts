// A Netlify scheduled function: runs every minute for at most 30 s (Netlify's limit for scheduled functions).
// scheduledDrain drains for 20 s at most; with the 5 s send timeout the run ends by ~25 s.
import { createClient } from "@libsql/client";
import { createOutbox, createRelay, scheduledDrain } from "edge-outbox";
import { webhookTransport } from "edge-outbox/http";
import { libsqlStorage } from "edge-outbox/libsql";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
};

const BUDGET_MS = 20_000;
const SEND_TIMEOUT_MS = 5_000;

const client = createClient({ url: env("TURSO_DATABASE_URL"), authToken: env("TURSO_AUTH_TOKEN") });
const relay = createRelay({
  outbox: createOutbox({ storage: libsqlStorage(client) }),
  transport: webhookTransport({ url: env("WEBHOOK_URL"), secret: env("WEBHOOK_SECRET"), timeoutMs: SEND_TIMEOUT_MS }),
  sendTimeoutMs: SEND_TIMEOUT_MS,
  leaseMs: 30_000,
});

export default async (_request: Request): Promise<Response> => {
  const summary = await scheduledDrain(relay, { budgetMs: BUDGET_MS });
  console.log("outbox drain", JSON.stringify(summary));
  return Response.json(summary);
};

/** Netlify reads the schedule from here (or from netlify.toml). */
export const config = { schedule: "* * * * *" };
