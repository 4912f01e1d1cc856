// RelayOptions.storageTimeoutMs: a storage call that never answers (a half-open connection, a partition) must not
// hold a drain, or a relay.run loop, past its bound; the drain fails with STORAGE, and nothing is lost.
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import { createRelayApp } from "../adapters/hono/mod.ts";
import { memoryLock, recordingTransport } from "../adapters/memory/mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { createOutbox, createRelay, isOutboxError, type Lock, type Outbox } from "../mod.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { startDelayProxy } from "./fixtures/delay-proxy.ts";
import { codeOf, event, fill, memoryOutbox, sleep } from "./helpers.ts";
import { PG_URL, postgresFixture, type Sql } from "./postgres-fixtures.ts";

type Method = "claim" | "settle" | "hasDue";

/**
 * The storage with switchable calls: `hang[m]` makes the next calls of `m` never answer (n of them, or all with
 * Infinity); `delayMs` slows every call that answers.
 */
function switchable(storage: OutboxStorage<unknown, unknown>) {
  const hang: Record<Method, number> = { claim: 0, settle: 0, hasDue: 0 };
  const calls: Record<Method, number> = { claim: 0, settle: 0, hasDue: 0 };
  const ctl = { hang, calls, delayMs: 0 };
  const wrapped: Record<string, unknown> = { ...storage };
  for (const name of ["claim", "settle", "hasDue"] as const) {
    const orig = (storage[name] as (...a: unknown[]) => Promise<unknown>).bind(storage);
    wrapped[name] = async (...args: unknown[]) => {
      calls[name]++;
      if (hang[name] > 0) {
        hang[name]--;
        return await new Promise(() => {});
      }
      if (ctl.delayMs > 0) await sleep(ctl.delayMs);
      return await orig(...args);
    };
  }
  return { storage: wrapped as unknown as OutboxStorage<unknown, unknown>, ctl };
}

/** What `p` did within `ms`: its value, its rejection, or "pending". */
async function within<T>(ms: number, p: Promise<T>): Promise<{ value: T } | { error: unknown } | "pending"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"pending">((resolve) => (timer = setTimeout(() => resolve("pending"), ms)));
  try {
    return await Promise.race([p.then((value) => ({ value }), (error: unknown) => ({ error })), late]);
  } finally {
    clearTimeout(timer);
  }
}

function setup(count: number) {
  const { storage, outbox } = memoryOutbox();
  const s = switchable(storage as unknown as OutboxStorage<unknown, unknown>);
  const relayOutbox = createOutbox({ storage: s.storage, topics: [event] }) as unknown as Outbox<unknown, unknown, typeof event>;
  return { storage, outbox, fill: () => fill(storage, outbox, count), relayOutbox, ctl: s.ctl };
}

describe("storageTimeoutMs: a storage call that never answers", () => {
  it("a claim that hangs fails the drain with STORAGE within the timeout, naming the call", async () => {
    const t = setup(10);
    await t.fill();
    t.ctl.hang.claim = 1;
    const relay = createRelay({ outbox: t.relayOutbox, transport: recordingTransport(), storageTimeoutMs: 200 });
    const t0 = performance.now();
    const r = await within(3_000, relay.drain({ budgetMs: 5_000 }));
    const took = performance.now() - t0;
    expect(r).not.toBe("pending");
    const error = (r as { error: unknown }).error;
    expect(isOutboxError(error) && error.code).toBe("STORAGE");
    expect(String((error as Error).message) + String(((error as Error).cause as Error | undefined)?.message)).toMatch(
      /claim\(\) did not answer within storageTimeoutMs \(200 ms\)/,
    );
    expect((error as { retryable?: boolean }).retryable).toBe(true);
    expect(took).toBeGreaterThanOrEqual(195);
    expect(took).toBeLessThan(200 + 500);
    // The abandoned claim took nothing; a drain once the storage answers delivers everything.
    const transport = recordingTransport();
    expect((await createRelay({ outbox: t.relayOutbox, transport, storageTimeoutMs: 200 }).drain()).delivered).toBe(10);
  });

  it("a settle that hangs: the drain rejects within budget + sendTimeout + 2 x storageTimeout, and the rows come back after their lease", async () => {
    const t = setup(20);
    await t.fill();
    t.ctl.hang.settle = Infinity;
    const transport = recordingTransport({ maxBatchSize: 5 });
    const relay = createRelay({ outbox: t.relayOutbox, transport, leaseMs: 600, sendTimeoutMs: 100, storageTimeoutMs: 150, batchSize: 10 });
    const t0 = performance.now();
    const r = await within(5_000, relay.drain({ budgetMs: 400 }));
    const took = performance.now() - t0;
    expect(r).not.toBe("pending");
    expect(isOutboxError((r as { error: unknown }).error) && ((r as { error: { code: string } }).error.code)).toBe("STORAGE");
    expect(took).toBeLessThan(400 + 100 + 2 * 150 + 300);
    expect(transport.delivered.length).toBeGreaterThan(0); // sent, never recorded
    // Nothing is lost: once the leases run out, a relay whose storage answers delivers every message.
    t.ctl.hang.settle = 0;
    await sleep(650);
    const again = recordingTransport();
    expect((await createRelay({ outbox: t.outbox, transport: again }).drain()).delivered).toBe(20);
    expect((await t.storage.stats()).pending).toBe(0);
    const ids = new Set([...transport.delivered, ...again.delivered].map((m) => m.id));
    expect(ids.size).toBe(20);
  });

  it("a lingering drain whose hasDue hangs rejects instead of waiting out the linger", async () => {
    const t = setup(3);
    await t.fill();
    const relay = createRelay({ outbox: t.relayOutbox, transport: recordingTransport(), storageTimeoutMs: 150 });
    t.ctl.hang.hasDue = Infinity;
    const t0 = performance.now();
    const r = await within(3_000, relay.drain({ budgetMs: 10_000, lingerMs: 5_000 }));
    expect(r).not.toBe("pending");
    expect((r as { error: { code: string } }).error.code).toBe("STORAGE");
    expect(performance.now() - t0).toBeLessThan(150 + 400);
  });

  it("relay.run reports the stalled drain through onError and drains again once the storage answers", async () => {
    const t = setup(15);
    await t.fill();
    t.ctl.hang.claim = 1;
    const transport = recordingTransport();
    const relay = createRelay({ outbox: t.relayOutbox, transport, storageTimeoutMs: 150 });
    const errors: string[] = [];
    const stop = new AbortController();
    const running = relay.run({ signal: stop.signal, pollIntervalMs: 20, budgetMs: 2_000, onError: (e) => errors.push(`${e.code}: ${e.message}`) });
    for (let i = 0; i < 100 && transport.delivered.length < 15; i++) await sleep(20);
    stop.abort();
    expect(await within(2_000, running)).not.toBe("pending");
    expect(transport.delivered.length).toBe(15);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^STORAGE: /);
  });

  it("the relay app answers 503 STORAGE (retryable) within its budget + 2 x storageTimeoutMs when the database stops answering", async () => {
    const t = setup(5);
    await t.fill();
    t.ctl.hang.claim = Infinity;
    const relay = createRelay({ outbox: t.relayOutbox, transport: recordingTransport(), storageTimeoutMs: 200, sendTimeoutMs: 100, leaseMs: 1_000 });
    const app = createRelayApp({ relay, auth: { drain: "cron-secret-0123456789abcdef" }, budgetMs: 1_000, onError: () => {} });
    const t0 = performance.now();
    const r = await within(4_000, Promise.resolve(app.request("/drain", { method: "POST", headers: { authorization: "Bearer cron-secret-0123456789abcdef" } })));
    expect(r).not.toBe("pending");
    const res = (r as { value: Response }).value;
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ error: "STORAGE", retryable: true });
    expect(performance.now() - t0).toBeLessThan(1_000 + 100 + 2 * 200 + 300);
  });

  it("a lock whose acquire hangs fails the drain with LOCK in time; one whose release hangs does not hold the report", async () => {
    const t = setup(4);
    await t.fill();
    const real = memoryLock();
    const hangingAcquire: Lock = { name: "stuck-lock", acquire: () => new Promise(() => {}) };
    const r = await within(3_000, createRelay({ outbox: t.relayOutbox, transport: recordingTransport(), lock: hangingAcquire, storageTimeoutMs: 150 }).drain());
    expect(r).not.toBe("pending");
    const error = (r as { error: Error & { code: string } }).error;
    expect(error.code).toBe("LOCK");
    expect(`${error.message} ${(error.cause as Error | undefined)?.message}`).toMatch(/stuck-lock acquire\(\) did not answer within storageTimeoutMs \(150 ms\)/);
    expect((await t.storage.stats()).pending).toBe(4); // nothing was claimed
    const hangingRelease: Lock = {
      name: "sticky-lock",
      acquire: async (key, ms) => {
        const lease = await real.acquire(key, ms);
        return lease && { ...lease, signal: lease.signal, release: () => new Promise<void>(() => {}) };
      },
    };
    const t0 = performance.now();
    const done = await within(3_000, createRelay({ outbox: t.relayOutbox, transport: recordingTransport(), lock: hangingRelease, storageTimeoutMs: 150 }).drain());
    expect(done).not.toBe("pending");
    expect((done as { value: { delivered: number } }).value.delivered).toBe(4);
    expect(performance.now() - t0).toBeLessThan(150 + 500);
  });

  it("a slow storage that answers within the timeout is not cut off", async () => {
    const t = setup(30);
    await t.fill();
    t.ctl.delayMs = 60;
    const transport = recordingTransport();
    const report = await createRelay({ outbox: t.relayOutbox, transport, storageTimeoutMs: 300, batchSize: 10 }).drain({ budgetMs: 10_000 });
    expect(report.delivered).toBe(30);
    expect(t.ctl.calls.claim).toBeGreaterThan(2);
  });

  it("rejects a bad storageTimeoutMs with CONFIG", async () => {
    const { outbox } = memoryOutbox();
    for (const bad of [0, 9, 1.5, 3_600_001, "1000"]) {
      expect(await codeOf(() => createRelay({ outbox, transport: recordingTransport(), storageTimeoutMs: bad as number }))).toBe("CONFIG");
    }
  });
});

describe("storageTimeoutMs on PostgreSQL behind a partition", () => {
  it("postgres.js through a proxy that stops forwarding mid-drain: the drain rejects in time, and a relay on a good connection delivers every message", async () => {
    const f = await postgresFixture();
    const target = new URL(PG_URL);
    const proxy = await startDelayProxy({ target: { port: Number(target.port || 5432), host: "127.0.0.1" }, delayMs: 0 });
    const url = new URL(PG_URL);
    url.hostname = "127.0.0.1";
    url.port = String(proxy.port);
    const remote = postgres(url.toString(), { max: 2, onnotice: () => {}, connection: { application_name: f.appName } }) as unknown as Sql;
    try {
      const outbox = createOutbox({ storage: f.storage, topics: [event] });
      await f.sql.begin(async (tx) => {
        for (let i = 0; i < 30; i++) await outbox.enqueue(tx, event, { n: i });
      });
      // The partition falls at the first send: from then on nothing crosses the proxy (bytes wait ten minutes), while
      // both TCP connections stay open, as behind a dropped route or a half-open connection.
      const sent = recordingTransport({ maxBatchSize: 10, outcome: () => ((proxy.delayMs = 600_000), { status: "delivered" }) });
      const relay = createRelay({
        outbox: createOutbox({ storage: postgresStorage(remote, f.options), topics: [event] }),
        transport: sent,
        batchSize: 10,
        leaseMs: 1_000,
        sendTimeoutMs: 200,
        storageTimeoutMs: 300,
      });
      const t0 = performance.now();
      const r = await within(6_000, relay.drain({ budgetMs: 500 }));
      const took = performance.now() - t0;
      expect(r).not.toBe("pending");
      expect((r as { error: { code: string } }).error.code).toBe("STORAGE");
      expect(took).toBeLessThan(500 + 200 + 2 * 300 + 500);
      expect(sent.delivered.length).toBeGreaterThan(0);
      // After the leases end, a relay on a direct connection delivers everything (the settle never landed).
      await sleep(1_100);
      const again = recordingTransport({ maxBatchSize: 10 });
      await createRelay({ outbox, transport: again }).drain({ budgetMs: 5_000 });
      expect((await f.storage.stats()).pending).toBe(0);
      expect(new Set([...sent.delivered, ...again.delivered].map((m) => m.id)).size).toBe(30);
    } finally {
      await proxy.close();
      await remote.end({ timeout: 1 }).catch(() => {});
      await f.close();
    }
  });
});
