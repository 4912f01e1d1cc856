/**
 * The relay app under Vercel's Edge runtime (the `edge-runtime` npm package, the VM `vercel dev` uses): the same app
 * as the workerd test, bundled by esbuild as a Vercel Edge function (test/fixtures/workers/vercel-edge.ts,
 * configured through `process.env`), on libSQL over HTTP to a real sqld, delivering signed webhooks.
 */
import { EdgeRuntime } from "edge-runtime";
import { resolve } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { DrainResponse, HealthResponse } from "../adapters/hono/mod.ts";
import { signQstashJwt } from "./fixtures/qstash-emulator.ts";
import { bundleWorker } from "./fixtures/workers/bundle.ts";
import {
  CRON_SECRET,
  expectPartialDrain,
  PUBLIC_URL,
  READ_SECRET,
  type RelayBackend,
  SIGNING_KEYS,
  startRelayBackend,
} from "./fixtures/workers/relay-backend.ts";

const BUDGET_MS = 1_500;
const SEND_TIMEOUT_MS = 500;
const SLACK_MS = 2_500;

let backend: RelayBackend;
let runtime: EdgeRuntime;

beforeAll(async () => {
  backend = await startRelayBackend();
  const script = await bundleWorker(resolve(import.meta.dirname, "fixtures/workers"), {
    format: "iife",
    // Vercel calls the default export; edge-runtime dispatches fetch events: this adapts one to the other.
    contents: `import handler from "./vercel-edge.ts";
addEventListener("fetch", (event) => event.respondWith(handler(event.request)));`,
  });
  const env = { ...backend.env, BUDGET_MS: String(BUDGET_MS), SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS) };
  runtime = new EdgeRuntime({
    initialCode: script,
    extend: (context) => Object.assign(context, { process: { env } }),
  });
}, 60_000);

afterAll(async () => {
  await backend?.close();
});

beforeEach(async () => {
  backend.delayMs = 0;
  await backend.reset();
});

const bearer = { authorization: `Bearer ${CRON_SECRET}` };

async function call(path: string, init: RequestInit = {}): Promise<{ status: number; json: unknown; wallMs: number }> {
  const t0 = performance.now();
  const res = await runtime.dispatchFetch(`https://relay.example${path}`, init);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`${path} answered ${res.status} ${text.slice(0, 200)}`);
  }
  await res.waitUntil();
  return { status: res.status, json, wallMs: performance.now() - t0 };
}

describe("edge-runtime (Vercel): the relay app", () => {
  it("POST /drain with the cron secret delivers the backlog as signed webhooks", async () => {
    const ids = await backend.seed(30);
    // One call normally drains all 30; on a loaded machine the budget may end first: call again while `more`.
    let delivered = 0;
    for (let n = 0; n < 10; n++) {
      const { status, json } = await call("/drain", { method: "POST", headers: bearer });
      expect(status).toBe(200);
      expect(json).toMatchObject({ retried: 0, dead: 0, leaseLost: 0 });
      delivered += (json as DrainResponse).delivered;
      if (!(json as DrainResponse).more) break;
    }
    expect(delivered).toBe(30);
    expect(backend.forged).toBe(0);
    expect(backend.deliveries.map((d) => d.id).sort()).toEqual([...ids].sort());
    expect(await backend.pending()).toBe(0);
  });

  it(`POST /drain on a backlog larger than one budget answers within budget + send timeout (${BUDGET_MS} + ${SEND_TIMEOUT_MS} ms), more: true`, async () => {
    await backend.seed(200);
    backend.delayMs = 100;
    const { status, json, wallMs } = await call("/drain", { method: "POST", headers: bearer });
    const report = json as DrainResponse;
    expect(status).toBe(200);
    await expectPartialDrain(backend, report, { total: 200, budgetMs: BUDGET_MS, sendTimeoutMs: SEND_TIMEOUT_MS, slackMs: SLACK_MS, wallMs });
  });

  it("POST /drain with a QStash signature; 401 for a forged one and for no auth", async () => {
    await backend.seed(4);
    const body = "";
    const forged = signQstashJwt("sig_someone_else", { url: `${PUBLIC_URL}/drain`, body });
    expect((await call("/drain", { method: "POST", headers: { "upstash-signature": forged } })).status).toBe(401);
    expect((await call("/drain", { method: "POST" })).status).toBe(401);
    expect(await backend.pending()).toBe(4);
    const signature = signQstashJwt(SIGNING_KEYS.current, { url: `${PUBLIC_URL}/drain`, body });
    const ok = await call("/drain", { method: "POST", headers: { "upstash-signature": signature } });
    expect(ok.status).toBe(200);
    expect(ok.json).toMatchObject({ delivered: 4, more: false });
  });

  it("GET /health reports the database's counts", async () => {
    await backend.seed(3);
    const { status, json } = await call("/health", { headers: { authorization: `Bearer ${READ_SECRET}` } });
    expect(status).toBe(200);
    const health = json as HealthResponse;
    expect(health.status).toBe("healthy");
    expect(health.stats.pending).toBe(3);
  });
});
