// The relay app when the database stops answering: every outbox call of the read, metrics and admin routes is
// bounded by `storageTimeoutMs`, so the call answers 503 STORAGE (`GET /health`: 503 unhealthy) within that bound
// instead of being held open until the platform kills the function; once the database answers again, so do they.
import { describe, expect, it } from "vitest";
import { createRelayApp } from "../adapters/hono/mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay, type OutboxStorage } from "../mod.ts";
import { isOutboxError } from "../src/errors.ts";
import { event } from "./helpers.ts";

const READ = "read-secret-0123456789abcdef";
const ADMIN = "admin-secret-0123456789abcdef";
const auth = (s: string): Record<string, string> => ({ authorization: `Bearer ${s}` });

/** A memory storage whose read and dead-letter calls hang (never settle) while `hung.on`. */
function hangingStorage(): { storage: OutboxStorage; inner: ReturnType<typeof memoryStorage>; hung: { on: boolean }; calls: string[] } {
  const inner = memoryStorage();
  const hung = { on: false };
  const calls: string[] = [];
  const never = new Promise<never>(() => {});
  const gate = <A extends unknown[], R>(name: string, f: (...a: A) => Promise<R>) => (...a: A): Promise<R> => {
    calls.push(name);
    return hung.on ? never : f(...a);
  };
  const storage: OutboxStorage = {
    ...inner,
    stats: gate("stats", (o) => inner.stats(o)),
    listDead: gate("listDead", (o) => inner.listDead(o)),
    replayDead: gate("replayDead", (id) => inner.replayDead(id)),
    purge: gate("purge", (o) => inner.purge(o)),
  };
  return { storage, inner, hung, calls };
}

/** The response, or a failure naming the route when none came within `ms` (a hung call, as without the bound). */
async function answered(res: Response | Promise<Response>, route: string, ms = 3_000): Promise<Response> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${route} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.resolve(res), late]);
  } finally {
    clearTimeout(timer);
  }
}

describe("createRelayApp: storageTimeoutMs", () => {
  const routes: [string, RequestInit & { headers: Record<string, string> }][] = [
    ["/stats", { headers: auth(READ) }],
    ["/dead-letters", { headers: auth(READ) }],
    ["/metrics", { headers: auth(READ) }],
    [`/dead-letters/${crypto.randomUUID()}/replay`, { method: "POST", headers: auth(ADMIN) }],
    ["/dead-letters?olderThan=0", { method: "DELETE", headers: auth(ADMIN) }],
  ];

  it("a hung database: every read, metrics and admin route answers 503 STORAGE (retryable) within storageTimeoutMs, /health 503 unhealthy; onError gets the timeout; then the routes answer again", async () => {
    const { storage, inner, hung, calls } = hangingStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    const errors: unknown[] = [];
    const app = createRelayApp({
      relay: createRelay({ outbox, transport: recordingTransport() }),
      outbox,
      auth: { read: READ, admin: ADMIN },
      storageTimeoutMs: 50,
      onError: (e) => errors.push(e),
    });
    hung.on = true;
    for (const [path, init] of routes) {
      const t0 = performance.now();
      const res = await answered(app.request(path, init), path);
      const ms = performance.now() - t0;
      expect(res.status, path).toBe(503);
      expect(await res.json(), path).toEqual({ error: "STORAGE", message: "the outbox storage is unavailable; retry later", retryable: true });
      expect(res.headers.get("cache-control"), path).toBe("no-store");
      expect(res.headers.get("retry-after"), path).toBe("1");
      expect(ms, path).toBeGreaterThanOrEqual(45); // it did wait for the storage…
      expect(ms, path).toBeLessThan(50 + 1_000); // …and no longer than the bound (plus a margin for a busy machine)
    }
    const health = await answered(app.request("/health", { headers: auth(READ) }), "/health");
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: "unhealthy", error: "STORAGE", retryable: true });
    expect(calls).toEqual(["stats", "listDead", "stats", "replayDead", "purge", "stats"]);
    expect(errors).toHaveLength(routes.length + 1);
    for (const e of errors) {
      expect(isOutboxError(e, "STORAGE")).toBe(true);
      expect((e as Error).message).toMatch(/^outbox (stats|deadLetters\.(list|replay|purge))\(\) did not answer within storageTimeoutMs \(50 ms\)$/);
      expect((e as { retryable?: boolean }).retryable).toBe(true);
    }

    hung.on = false;
    const { tx, commit } = inner.begin();
    await outbox.enqueue(tx as never, event, { n: 1 });
    await commit();
    const stats = await answered(app.request("/stats", { headers: auth(READ) }), "/stats");
    expect(stats.status).toBe(200);
    expect(await stats.json()).toMatchObject({ pending: 1 });
    for (const [path, init] of routes.slice(1, 3)) expect((await answered(app.request(path, init), path)).status, path).toBe(200);
    const replay = await answered(app.request(routes[3]![0], routes[3]![1]), "replay");
    expect(replay.status).toBe(404); // no such dead letter: the storage answered
    expect((await answered(app.request(routes[4]![0], routes[4]![1]), "purge")).status).toBe(200);
    expect((await answered(app.request("/health", { headers: auth(READ) }), "/health")).status).toBe(200);
  });

  it("refuses a storageTimeoutMs that is not an integer from 10 ms to an hour with CONFIG", () => {
    const { storage } = hangingStorage();
    const outbox = createOutbox({ storage });
    const relay = createRelay({ outbox, transport: recordingTransport() });
    for (const storageTimeoutMs of [9, 3_600_001, 1.5, Number.NaN, "50" as unknown as number]) {
      let error: unknown;
      try {
        createRelayApp({ relay, outbox, auth: { read: READ }, storageTimeoutMs });
      } catch (e) {
        error = e;
      }
      expect(isOutboxError(error, "CONFIG"), String(storageTimeoutMs)).toBe(true);
      expect((error as Error).message).toContain("storageTimeoutMs");
    }
  });
});
