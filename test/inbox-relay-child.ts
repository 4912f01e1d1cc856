// A relay process for the end-to-end test (test/inbox-e2e.test.ts): drains a Postgres outbox to the QStash emulator
// in a loop until killed. Prints "drain <claimed> <delivered>" after each drain. Environment: E2E_PG_URL,
// E2E_SCHEMA, E2E_QSTASH_URL, E2E_QSTASH_TOKEN, E2E_DESTINATION.
import { Client } from "@upstash/qstash";
import postgres from "postgres";
import { createOutbox, createRelay } from "../mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { qstashTransport } from "../adapters/qstash/mod.ts";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const sql = postgres(env("E2E_PG_URL"), { max: 3, onnotice: () => {} });
const storage = postgresStorage(sql, { schema: env("E2E_SCHEMA") });
const outbox = createOutbox({ storage });
const qstash = new Client({ baseUrl: env("E2E_QSTASH_URL"), token: env("E2E_QSTASH_TOKEN"), retry: false, enableTelemetry: false, devMode: false } as ConstructorParameters<typeof Client>[0]);
const relay = createRelay({
  outbox,
  transport: qstashTransport(qstash, { destination: env("E2E_DESTINATION"), maxBatchSize: 10, queues: 4 }),
  batchSize: 20,
  concurrency: 4,
  leaseMs: 2_000,
  sendTimeoutMs: 1_000,
});
const controller = new AbortController();
process.stdout.write("running\n");
await relay.run({
  signal: controller.signal,
  pollIntervalMs: 100,
  budgetMs: 5_000,
  onReport: (r) => void process.stdout.write(`drain ${r.claimed} ${r.delivered}\n`),
  onError: (e) => void process.stderr.write(`relay error: ${e.message}\n`),
});
