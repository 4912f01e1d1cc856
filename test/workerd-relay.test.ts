/**
 * The relay app inside workerd (Miniflare 4): a worker bundled by esbuild from test/fixtures/workers/relay-worker.ts
 * — `createRelayApp` as the fetch handler, `scheduledDrain` on the cron trigger — on libSQL over HTTP
 * (`@libsql/client/web`) to a real sqld, delivering signed webhooks to a local receiver.
 */
import { Miniflare } from "miniflare";
import { resolve } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { DrainResponse, HealthResponse } from "../adapters/hono/mod.ts";
import type { ScheduledDrainSummary } from "../mod.ts";
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
/** Slack for a loaded 2-core machine on top of the documented bound (budget + send timeout). */
const SLACK_MS = 2_500;
const BOUND = { budgetMs: BUDGET_MS, sendTimeoutMs: SEND_TIMEOUT_MS, slackMs: SLACK_MS };

let backend: RelayBackend;
let mf: Miniflare;

beforeAll(async () => {
  backend = await startRelayBackend();
  const script = await bundleWorker(resolve(import.meta.dirname, "fixtures/workers/relay-worker.ts"));
  mf = new Miniflare({
    modules: true,
    script,
    compatibilityDate: "2025-06-01",
    bindings: { ...backend.env, REPORT_URL: backend.reportUrl, BUDGET_MS: String(BUDGET_MS), SEND_TIMEOUT_MS: String(SEND_TIMEOUT_MS) },
  });
  await mf.ready;
}, 60_000);

afterAll(async () => {
  await mf?.dispose();
  await backend?.close();
});

beforeEach(async () => {
  backend.delayMs = 0;
  await backend.reset();
});

const bearer = { authorization: `Bearer ${CRON_SECRET}` };
const reader = { authorization: `Bearer ${READ_SECRET}` };

async function drainCall(headers: Record<string, string>, body = ""): Promise<{ status: number; json: DrainResponse; wallMs: number }> {
  const t0 = performance.now();
  const res = await mf.dispatchFetch("http://relay.internal/drain", { method: "POST", headers, body });
  const json = (await res.json()) as DrainResponse;
  return { status: res.status, json, wallMs: performance.now() - t0 };
}

describe("workerd: POST /drain", () => {
  it("bearer: delivers the backlog as signed webhooks, every id once", async () => {
    const ids = await backend.seed(30);
    // One call normally drains all 30; on a loaded machine the budget may end first: call again while `more`.
    let delivered = 0;
    for (let call = 0; call < 10; call++) {
      const { status, json } = await drainCall(bearer);
      expect(status).toBe(200);
      expect(json).toMatchObject({ retried: 0, dead: 0, leaseLost: 0 });
      delivered += json.delivered;
      if (!json.more) break;
    }
    expect(delivered).toBe(30);
    expect(backend.forged).toBe(0);
    expect(backend.deliveries.map((d) => d.id).sort()).toEqual([...ids].sort());
    expect(await backend.pending()).toBe(0);
  });

  it(`bearer: a backlog larger than one budget answers within budget + send timeout (${BUDGET_MS} + ${SEND_TIMEOUT_MS} ms) with more: true`, async () => {
    await backend.seed(200);
    backend.delayMs = 100; // 2 sends in flight × 100 ms: ~20 messages/s, 10 s for the backlog
    const { status, json, wallMs } = await drainCall(bearer);
    expect(status).toBe(200);
    await expectPartialDrain(backend, json, { total: 200, ...BOUND, wallMs });
  });

  it("wrong or missing bearer: 401 before any work", async () => {
    await backend.seed(3);
    for (const headers of [{}, { authorization: "Bearer not-the-cron-secret-at-all" }, { authorization: CRON_SECRET }]) {
      const res = await mf.dispatchFetch("http://relay.internal/drain", { method: "POST", headers });
      expect(res.status).toBe(401);
      await res.arrayBuffer();
    }
    expect(backend.deliveries).toHaveLength(0);
    expect(await backend.pending()).toBe(3);
  });

  it("QStash signature (as the emulator signs deliveries): accepted for the public URL, refused for another URL or key", async () => {
    await backend.seed(5);
    const body = JSON.stringify({ scheduleId: "outbox-drain" });
    const wrongUrl = signQstashJwt(SIGNING_KEYS.current, { url: "https://evil.example/outbox/drain", body });
    const wrongKey = signQstashJwt("sig_someone_else", { url: `${PUBLIC_URL}/drain`, body });
    const wrongBody = signQstashJwt(SIGNING_KEYS.current, { url: `${PUBLIC_URL}/drain`, body: "{}" });
    for (const signature of [wrongUrl, wrongKey, wrongBody]) {
      const r = await drainCall({ "upstash-signature": signature, "content-type": "application/json" }, body);
      expect(r.status).toBe(401);
    }
    expect(await backend.pending()).toBe(5);

    // The next signing key is accepted too (key rotation).
    for (const key of [SIGNING_KEYS.next, SIGNING_KEYS.current]) {
      const signature = signQstashJwt(key, { url: `${PUBLIC_URL}/drain`, body });
      const ok = await drainCall({ "upstash-signature": signature, "content-type": "application/json", "upstash-message-id": `msg_${key}` }, body);
      expect(ok.status).toBe(200);
      if (key === SIGNING_KEYS.next) expect(ok.json).toMatchObject({ delivered: 5, more: false });
    }
    expect(backend.deliveries).toHaveLength(5);
  });
});

describe("workerd: GET /health", () => {
  it("answers healthy with the database's counts (pending, due) to the read secret; 403 to the drain secret, 401 without auth", async () => {
    const empty = await mf.dispatchFetch("http://relay.internal/health", { headers: reader });
    expect(empty.status).toBe(200);
    const emptyBody = (await empty.json()) as HealthResponse;
    expect(emptyBody.status).toBe("healthy");
    expect(emptyBody.stats.pending).toBe(0);

    await backend.seed(4);
    const res = await mf.dispatchFetch("http://relay.internal/health", { headers: reader });
    expect(res.status).toBe(200);
    const body = (await res.json()) as HealthResponse;
    expect(body.stats.pending).toBe(4);
    expect(body.stats.due).toBe(4);

    const anon = await mf.dispatchFetch("http://relay.internal/health");
    expect(anon.status).toBe(401);
    await anon.arrayBuffer();
    const drainer = await mf.dispatchFetch("http://relay.internal/health", { headers: bearer });
    expect(drainer.status).toBe(403); // the cron secret drains, it reads nothing
    await drainer.arrayBuffer();
  });
});

describe("workerd: cron trigger (scheduled handler → scheduledDrain)", () => {
  async function trigger(): Promise<{ outcome: string; summary: ScheduledDrainSummary; wallMs: number }> {
    const worker = await mf.getWorker();
    const t0 = performance.now();
    const result = await worker.scheduled({ cron: "* * * * *", scheduledTime: new Date() });
    const wallMs = performance.now() - t0;
    const report = backend.reports.at(-1) as { cron: string; summary: ScheduledDrainSummary } | undefined;
    if (!report) throw new Error(`the scheduled handler posted no report (outcome ${result.outcome})`);
    expect(report.cron).toBe("* * * * *");
    return { outcome: result.outcome, summary: report.summary, wallMs };
  }

  it("drains a small backlog completely and stops idle", async () => {
    const ids = await backend.seed(25);
    // One run normally drains all 25; on a loaded machine its budget may end first: the next trigger continues.
    let delivered = 0;
    for (let run = 0; run < 10; run++) {
      const { outcome, summary } = await trigger();
      expect(outcome).toBe("ok");
      delivered += summary.delivered;
      if (!summary.more) {
        expect(summary.stopped).toBe("idle");
        break;
      }
      expect(summary.stopped).toBe("budget");
    }
    expect(delivered).toBe(25);
    expect(backend.deliveries.map((d) => d.id).sort()).toEqual([...ids].sort());
    expect(await backend.pending()).toBe(0);
  });

  it(`a backlog larger than the cron budget: several drains, the run ends within budget + send timeout, more: true`, async () => {
    await backend.seed(200);
    backend.delayMs = 100;
    const { outcome, summary, wallMs } = await trigger();
    expect(outcome).toBe("ok");
    expect(summary.stopped).toBe("budget");
    expect(summary.drains).toBeGreaterThanOrEqual(2); // drainBudgetMs = budget / 3
    await expectPartialDrain(backend, summary, { total: 200, ...BOUND, wallMs });
  });
});
