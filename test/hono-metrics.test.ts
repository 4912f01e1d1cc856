// GET /metrics: the Prometheus text exposition format (0.0.4), every value read from the database by
// outbox.stats(), so a scrape served by a brand-new process (new client, new storage, new app) is right.
import { type Client, createClient } from "@libsql/client";
import { Hono } from "hono";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createOutbox, createRelay, OutboxError } from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createRelayApp } from "../adapters/hono/mod.ts";
import { event, fill } from "./helpers.ts";

const METRICS = "metrics-secret-0123456789abcdef";
const READ = "read-secret-0123456789abcdef";
const DRAIN = "drain-secret-0123456789abcdef";
const auth = { drain: DRAIN, metrics: METRICS, read: READ };
const bearer = (s: string): Record<string, string> => ({ authorization: `Bearer ${s}` });

/**
 * A strict reader of the text format: `# HELP name text`, `# TYPE name gauge|counter|…`, and samples
 * `name{label="value",…} value`; every sample's metric has a TYPE before it, HELP and TYPE appear once per
 * metric, a series appears once. Returns the samples keyed by `name{labels}` (labels as written).
 */
function parsePrometheus(text: string): { samples: Map<string, number>; types: Map<string, string>; help: Map<string, string> } {
  const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const sampleRe = new RegExp(`^(${NAME})(\\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\.)*")*)?\\})? (\\S+)$`);
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  expect(text.endsWith("\n"), "the exposition ends with a line feed").toBe(true);
  for (const line of text.slice(0, -1).split("\n")) {
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^# HELP (${NAME}) (.+)$`).exec(line))) {
      expect(help.has(m[1]!), `one HELP for ${m[1]}`).toBe(false);
      help.set(m[1]!, m[2]!);
    } else if ((m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      expect(types.has(m[1]!), `one TYPE for ${m[1]}`).toBe(false);
      types.set(m[1]!, m[2]!);
    } else if ((m = sampleRe.exec(line))) {
      expect(types.has(m[1]!), `TYPE before the samples of ${m[1]}`).toBe(true);
      const key = `${m[1]}${m[2] ?? ""}`;
      expect(samples.has(key), `one sample for ${key}`).toBe(false);
      const raw = m[3]!;
      const value = raw === "NaN" ? Number.NaN : raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
      expect(raw === "NaN" || Number.isFinite(value) || Math.abs(value) === Infinity, `a float value in ${line}`).toBe(true);
      samples.set(key, value);
    } else {
      throw new Error(`not a line of the Prometheus text format: ${JSON.stringify(line)}`);
    }
  }
  return { samples, types, help };
}

async function scrape(app: Hono, secret = METRICS): Promise<ReturnType<typeof parsePrometheus>> {
  const res = await app.request("/metrics", { headers: bearer(secret) });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
  expect(res.headers.get("cache-control")).toBe("no-store");
  return parsePrometheus(await res.text());
}

describe("GET /metrics", () => {
  it("reports the seeded state exactly: counts, ages, windowed totals and latency (memory storage, fixed clock)", async () => {
    const T0 = 1_700_000_040_000; // 40 s into a minute: the window buckets are per minute
    let now = T0;
    const storage = memoryStorage({ now: () => now });
    const outbox = createOutbox({ storage, topics: [event] });
    await fill(storage, outbox, 10); // n = 0..9, enqueued at T0
    now += 10_000;
    // 0, 1 → dead; 2, 3, 4 → retry in an hour; 5..9 → delivered, each 10 s after its enqueue
    const transport = recordingTransport({
      outcome: (m) => {
        const n = (m.payload as { n: number }).n;
        return n < 2 ? { status: "dead", error: "HTTP 400" } : n < 5 ? { status: "retry", error: "HTTP 503" } : { status: "delivered" };
      },
    });
    await createRelay({ outbox, transport, backoff: { baseMs: 3_600_000, minMs: 3_600_000, maxMs: 3_600_000 } }).drain();
    // 4 delayed by 10 minutes, 3 claimed by a relay that then stalls (leased for a minute), 2 due
    {
      const { tx, commit } = storage.begin();
      for (let i = 0; i < 4; i++) await outbox.enqueue(tx, event, { n: 100 + i }, { delayMs: 600_000 });
      await commit();
    }
    await fill(storage, outbox, 3, { start: 200 });
    const claim = await storage.claim({ limit: 3, leaseMs: 60_000 });
    expect(claim.messages.map((m) => (m.payload as { n: number }).n).sort()).toEqual([200, 201, 202]);
    await fill(storage, outbox, 2, { start: 300 });
    now += 5_000;

    const app = createRelayApp({ relay: createRelay({ outbox, transport }), outbox, auth, metricsWindowsMs: [60_000, 3_600_000] });
    const { samples, types, help } = await scrape(app);
    const stats = await outbox.stats();
    const expected: Record<string, number> = {
      edge_outbox_pending: 3 + 4 + 3 + 2,
      edge_outbox_due: 2,
      edge_outbox_leased: 3,
      edge_outbox_dead: 2,
      edge_outbox_oldest_pending_age_seconds: 15, // the retrying rows, enqueued at T0
      'edge_outbox_window_delivered{window_seconds="60"}': 5,
      'edge_outbox_window_delivered{window_seconds="3600"}': 5,
      'edge_outbox_window_retried{window_seconds="60"}': 3,
      'edge_outbox_window_retried{window_seconds="3600"}': 3,
      'edge_outbox_window_dead{window_seconds="60"}': 2,
      'edge_outbox_window_dead{window_seconds="3600"}': 2,
      'edge_outbox_window_delivery_latency_avg_seconds{window_seconds="60"}': 10,
      'edge_outbox_window_delivery_latency_max_seconds{window_seconds="3600"}': 10,
      edge_outbox_database_time_seconds: now / 1_000,
    };
    // the storage may or may not report the due age (optional member); when it does, the metric must be right
    if (stats.oldestDueAgeMs !== undefined) expected.edge_outbox_oldest_due_age_seconds = 5;
    else expect(samples.has("edge_outbox_oldest_due_age_seconds")).toBe(false);
    for (const [series, value] of Object.entries(expected)) expect(samples.get(series), series).toBe(value);
    for (const name of types.keys()) {
      expect(types.get(name)).toBe("gauge");
      expect(name).toMatch(/^edge_outbox_[a-z_]+$/);
      expect(help.get(name)?.length).toBeGreaterThan(10);
    }

    // nothing delivered in the window yet → latency is NaN (unknown), not 0
    const empty = memoryStorage({ now: () => now });
    const emptyOutbox = createOutbox({ storage: empty, topics: [event] });
    const bare = await scrape(createRelayApp({ relay: createRelay({ outbox: emptyOutbox, transport }), outbox: emptyOutbox, auth }));
    expect(bare.samples.get("edge_outbox_pending")).toBe(0);
    expect(bare.samples.get("edge_outbox_oldest_pending_age_seconds")).toBe(0);
    expect(bare.samples.get('edge_outbox_window_delivered{window_seconds="300"}')).toBe(0); // the default window
    expect(bare.samples.get('edge_outbox_window_delivery_latency_avg_seconds{window_seconds="300"}')).toBeNaN();
  });

  it("scope: metrics, read and admin secrets scrape; the drain secret and QStash signatures do not; off without them", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    const relay = createRelay({ outbox, transport: recordingTransport() });
    const admin = "admin-secret-0123456789abcdef";
    const app = createRelayApp({ relay, outbox, auth: { ...auth, admin } });
    for (const s of [METRICS, READ, admin]) expect((await app.request("/metrics", { headers: bearer(s) })).status, s).toBe(200);
    expect((await app.request("/metrics", { headers: bearer(DRAIN) })).status).toBe(403);
    expect((await app.request("/metrics")).status).toBe(401);
    // a metrics secret reads nothing else
    expect((await app.request("/stats", { headers: bearer(METRICS) })).status).toBe(403);
    expect((await app.request("/dead-letters", { headers: bearer(METRICS) })).status).toBe(403);
    // a drain-only app has no /metrics; routes.metrics: false turns it off
    expect((await createRelayApp({ relay, outbox, auth: { drain: DRAIN } }).request("/metrics", { headers: bearer(DRAIN) })).status).toBe(404);
    expect((await createRelayApp({ relay, outbox, auth, routes: { metrics: false } }).request("/metrics", { headers: bearer(METRICS) })).status).toBe(404);
    expect(() => createRelayApp({ relay, outbox, auth, metricsWindowsMs: [] })).toThrow(/metricsWindowsMs/);
    expect(() => createRelayApp({ relay, outbox, auth, metricsWindowsMs: [60_000, 60_000] })).toThrow(/twice/);
  });

  it("a failing storage answers 503 (or 500) with a code and no driver text: Prometheus records the scrape as down", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    const driver = Object.assign(new Error("SQLITE_IOERR: disk I/O error at /var/db/outbox.db"), { code: "SQLITE_IOERR" });
    const hidden: unknown[] = [];
    const app = createRelayApp({ relay: createRelay({ outbox, transport: recordingTransport() }), outbox, auth, onError: (e) => void hidden.push(e) });
    storage.stats = () => Promise.reject(new OutboxError("STORAGE", `[edge-outbox:libsql] stats failed: ${driver.message}`, { cause: driver, retryable: true }));
    const res = await app.request("/metrics", { headers: bearer(METRICS) });
    expect(res.status).toBe(503);
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ error: "STORAGE", message: "the outbox storage is unavailable; retry later", retryable: true });
    expect(text).not.toMatch(/SQLITE|disk|\/var\/db/);
    storage.stats = () => Promise.reject(driver); // an unwrapped error: 500, still no driver text
    const res2 = await app.request("/metrics", { headers: bearer(METRICS) });
    expect(res2.status).toBe(500);
    expect(await res2.text()).not.toMatch(/SQLITE|disk|\/var\/db/);
    expect(hidden).toHaveLength(2);
  });

  describe("on libSQL: every scrape from a new process (new client, storage and app) is right", () => {
    const dirs: string[] = [];
    const clients: Client[] = [];
    afterAll(() => {
      for (const c of clients) c.close();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    it("counters written by one process are read by fresh ones, and follow later drains", async () => {
      const dir = mkdtempSync(join(tmpdir(), "edge-outbox-hono-metrics-"));
      dirs.push(dir);
      const url = `file:${join(dir, "outbox.db")}`;
      /** What a cold serverless invocation does: open a client, build the storage and the app, scrape once. */
      let reportsDueAge = false;
      const coldScrape = async (): Promise<Map<string, number>> => {
        const client = createClient({ url });
        clients.push(client);
        const outbox = createOutbox({ storage: libsqlStorage(client), topics: [event] });
        const app = new Hono();
        app.route("/outbox", createRelayApp({ relay: createRelay({ outbox, transport: recordingTransport() }), outbox, auth }));
        const res = await app.request("/outbox/metrics", { headers: bearer(METRICS) });
        expect(res.status).toBe(200);
        reportsDueAge = (await outbox.stats()).oldestDueAgeMs !== undefined; // optional member of the contract
        return parsePrometheus(await res.text()).samples;
      };

      const writer = createClient({ url });
      clients.push(writer);
      const storage = libsqlStorage(writer);
      await storage.migrate();
      const outbox = createOutbox({ storage, topics: [event] });
      await writer.batch(Array.from({ length: 12 }, (_, n) => outbox.statement(event, { n })), "write");
      const transport = recordingTransport({
        outcome: (m) => {
          const n = (m.payload as { n: number }).n;
          return n === 0 ? { status: "dead", error: "HTTP 422" } : n < 4 ? { status: "retry", error: "HTTP 503" } : { status: "delivered" };
        },
      });
      const relay = createRelay({ outbox, transport, backoff: { baseMs: 3_600_000, minMs: 3_600_000, maxMs: 3_600_000 } });
      expect(await relay.drain()).toMatchObject({ delivered: 8, retried: 3, dead: 1 });

      const first = await coldScrape();
      expect(first.get("edge_outbox_pending")).toBe(3);
      expect(first.get("edge_outbox_due")).toBe(0);
      expect(first.get("edge_outbox_leased")).toBe(0);
      expect(first.get("edge_outbox_dead")).toBe(1);
      expect(first.get('edge_outbox_window_delivered{window_seconds="300"}')).toBe(8);
      expect(first.get('edge_outbox_window_retried{window_seconds="300"}')).toBe(3);
      expect(first.get('edge_outbox_window_dead{window_seconds="300"}')).toBe(1);
      expect(first.get("edge_outbox_oldest_pending_age_seconds")).toBeGreaterThanOrEqual(0);
      expect(first.get("edge_outbox_oldest_pending_age_seconds")).toBeLessThan(60);
      // nothing due: the retries wait an hour (left out when the storage does not report the due age)
      expect(first.get("edge_outbox_oldest_due_age_seconds")).toBe(reportsDueAge ? 0 : undefined);
      const avg = first.get('edge_outbox_window_delivery_latency_avg_seconds{window_seconds="300"}')!;
      const max = first.get('edge_outbox_window_delivery_latency_max_seconds{window_seconds="300"}')!;
      expect(avg).toBeGreaterThanOrEqual(0);
      expect(max).toBeGreaterThanOrEqual(avg);
      expect(max).toBeLessThan(60);

      // more traffic in the writer process; a second cold process sees it
      await writer.batch(Array.from({ length: 5 }, (_, n) => outbox.statement(event, { n: 100 + n })), "write");
      expect(await relay.drain()).toMatchObject({ delivered: 5 });
      await writer.batch([outbox.statement(event, { n: 200 })], "write");
      const second = await coldScrape();
      expect(second.get('edge_outbox_window_delivered{window_seconds="300"}')).toBe(13);
      expect(second.get("edge_outbox_pending")).toBe(4);
      expect(second.get("edge_outbox_due")).toBe(1);
      if (reportsDueAge) {
        expect(second.get("edge_outbox_oldest_due_age_seconds")).toBeGreaterThanOrEqual(0);
        expect(second.get("edge_outbox_oldest_due_age_seconds")).toBeLessThan(60);
      }
    });
  });
});
