/**
 * The Upstash lock against the real @upstash/redis client, talking REST to a bridge (test/fixtures/upstash-bridge.ts)
 * in front of the real redis-server at 127.0.0.1:6379.
 */
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { Redis } from "@upstash/redis";
import type { Redis as CloudflareRedis } from "@upstash/redis/cloudflare";
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from "vitest";
import { createRelay, isOutboxError, type Lease, type Lock } from "../mod.ts";
import { recordingTransport } from "../adapters/memory/mod.ts";
import {
  EXTEND_SCRIPT,
  EXTEND_SCRIPT_SHA1,
  RELEASE_SCRIPT,
  RELEASE_SCRIPT_SHA1,
  upstashLock,
  type UpstashLockOptions,
  type UpstashRedis,
} from "../adapters/upstash/mod.ts";
import { type UpstashBridge, startUpstashBridge } from "./fixtures/upstash-bridge.ts";
import { caught, codeOf, fill, memoryOutbox, sleep } from "./helpers.ts";

/** This file's key prefix, so parallel test files never share a Redis key. */
const P = `eo-test:upstash:${process.pid}:`;
let keyCount = 0;
const freshKey = (name: string): string => `${name}:${++keyCount}`;

let bridge: UpstashBridge;
const client = (extra: { responseEncoding?: false | "base64" } = {}): Redis =>
  new Redis({ url: bridge.url, token: bridge.token, retry: { retries: 0 }, enableTelemetry: false, ...extra });
const lockOn = (redis: UpstashRedis = client(), options: UpstashLockOptions = {}) => upstashLock(redis, { prefix: P, ...options });

beforeAll(async () => {
  bridge = await startUpstashBridge();
});
afterAll(async () => {
  const keys = (await bridge.redis("KEYS", `${P}*`)) as string[];
  if (keys.length > 0) await bridge.redis("DEL", ...keys);
  await bridge.close();
});

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

// deno-lint-ignore no-explicit-any
async function raw(path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string; json: any }> {
  const res = await fetch(`${bridge.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${bridge.token}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, json: JSON.parse(text) };
}

/** Wraps a lock to record each lease and the [acquired, releasing] interval it was held. */
function spy(lock: Lock): { lock: Lock; leases: Lease[]; holds: Array<[number, number]> } {
  const leases: Lease[] = [];
  const holds: Array<[number, number]> = [];
  return {
    leases,
    holds,
    lock: {
      name: lock.name,
      async acquire(key: string, leaseMs: number): Promise<Lease | null> {
        const lease = await lock.acquire(key, leaseMs);
        if (!lease) return null;
        const start = performance.now();
        leases.push(lease);
        return {
          key: lease.key,
          signal: lease.signal,
          extend: (ms) => lease.extend(ms),
          release: () => {
            holds.push([start, performance.now()]);
            return lease.release();
          },
        };
      },
    },
  };
}

describe("Upstash REST bridge (the real @upstash/redis client against redis-server)", () => {
  it("refuses a bad or missing token with 401 {error}", async () => {
    for (const authorization of ["Bearer wrong", ""]) {
      const res = await fetch(bridge.url, {
        method: "POST",
        headers: authorization ? { authorization } : {},
        body: JSON.stringify(["ping"]),
      });
      expect(res.status).toBe(401);
      expect(await res.json()).toEqual({ error: expect.any(String) });
    }
    const bad = new Redis({ url: bridge.url, token: "wrong", retry: { retries: 0 }, enableTelemetry: false });
    expect(String(await caught(bad.get(`${P}x`)))).toMatch(/Unauthorized/);
  });

  it("answers {result} with nil as an explicit null, and 400 {error} for a Redis error", async () => {
    const key = P + freshKey("plain");
    expect((await raw("/", ["get", key])).text).toBe('{"result":null}');
    expect((await raw("/", ["set", key, "v", "px", 60_000])).json).toEqual({ result: "OK" });
    const err = await raw("/", ["incr", key]);
    expect(err.status).toBe(400);
    expect(err.json).toEqual({ error: expect.stringMatching(/not an integer/) });
  });

  it("Upstash-Encoding: base64 encodes every string result except a literal OK; numbers and nulls stay", async () => {
    const key = P + freshKey("b64");
    const list = P + freshKey("b64list");
    const enc = { "upstash-encoding": "base64" };
    expect((await raw("/", ["set", key, "héllo ✓", "px", 60_000], enc)).json).toEqual({ result: "OK" });
    expect((await raw("/", ["get", key], enc)).json).toEqual({ result: Buffer.from("héllo ✓").toString("base64") });
    expect((await raw("/", ["get", key])).json).toEqual({ result: "héllo ✓" });
    expect((await raw("/", ["strlen", key], enc)).json).toEqual({ result: Buffer.byteLength("héllo ✓") });
    expect((await raw("/", ["get", `${key}:none`], enc)).text).toBe('{"result":null}');
    expect((await raw("/", ["ping"], enc)).json).toEqual({ result: Buffer.from("PONG").toString("base64") });
    expect((await raw("/", ["echo", "OK"], enc)).json).toEqual({ result: "T0s=" }); // a bulk "OK" is data: encoded
    await raw("/", ["rpush", list, "OK", "a"]);
    await raw("/", ["pexpire", list, 60_000]);
    expect((await raw("/", ["lrange", list, 0, -1], enc)).json).toEqual({ result: ["T0s=", "YQ=="] }); // nested OK encoded
    // The real client (base64 by default, and with encoding off) round-trips the same values.
    for (const redis of [client(), client({ responseEncoding: false })]) {
      expect(await redis.get(key)).toBe("héllo ✓");
      expect(await redis.lrange(list, 0, -1)).toEqual(["OK", "a"]);
      expect(await redis.set(`${key}:2`, "x", { px: 60_000 })).toBe("OK");
      expect(await redis.echo("OK")).toBe("OK");
    }
  });

  it("pipelines answer one {result} or {error} per command", async () => {
    const key = P + freshKey("pipe");
    const { status, json } = await raw("/pipeline", [["set", key, "x", "px", 60_000], ["incr", key], ["get", key]], {
      "upstash-encoding": "base64",
    });
    expect(status).toBe(200);
    expect(json).toEqual([{ result: "OK" }, { error: expect.stringMatching(/not an integer/) }, { result: "eA==" }]);
    const p = client().pipeline();
    p.set(key, "y", { px: 60_000 });
    p.incr(key);
    p.get(key);
    const results = await p.exec({ keepErrors: true });
    expect(results.map((r) => r.result)).toEqual(["OK", undefined, "y"]);
    expect(results[1]!.error).toMatch(/not an integer/);
  });

  it("multi-exec is a real MULTI/EXEC: all or nothing, never interleaved", async () => {
    const key = P + freshKey("tx");
    const counter = P + freshKey("txcounter");
    // A command Redis refuses while queuing aborts the whole transaction: the SET before it never runs.
    const aborted = await raw("/multi-exec", [["set", key, "1"], ["set", key]]);
    expect(aborted.status).toBe(400);
    expect(aborted.json.error).toMatch(/EXECABORT/);
    expect(await bridge.redis("EXISTS", key)).toBe(0);
    // Concurrent transactions of two INCRs each always see consecutive values.
    const pairs = await Promise.all(Array.from({ length: 20 }, async () => {
      const tx = client().multi();
      tx.incr(counter);
      tx.incr(counter);
      return (await tx.exec()) as number[];
    }));
    for (const [a, b] of pairs) expect(b).toBe(a! + 1);
    expect(pairs.flat().sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    await bridge.redis("DEL", counter);
  });

  it("EVALSHA answers NOSCRIPT until the script is cached; the lock then falls back to EVAL", async () => {
    await bridge.redis("SCRIPT", "FLUSH");
    const key = P + freshKey("noscript");
    const direct = await raw("/", ["evalsha", RELEASE_SCRIPT_SHA1, 1, key, "t"]);
    expect(direct.status).toBe(400);
    expect(direct.json.error).toMatch(/^NOSCRIPT/);

    const lock = lockOn();
    const lease = (await lock.acquire(freshKey("noscript"), 5_000))!;
    const from = bridge.commands.length;
    await lease.release();
    expect(bridge.commands.slice(from).map((c) => c[0])).toEqual(["evalsha", "eval"]);
    const again = (await lock.acquire(freshKey("noscript"), 5_000))!;
    const from2 = bridge.commands.length;
    await again.release();
    expect(bridge.commands.slice(from2).map((c) => c[0])).toEqual(["evalsha"]); // cached by the EVAL
  });
});

describe("upstashLock: scripts and types", () => {
  it("pins the SHA1 of each Lua script (and Redis agrees)", async () => {
    const sha1 = (s: string): string => createHash("sha1").update(s).digest("hex");
    expect(RELEASE_SCRIPT_SHA1).toBe("c7634f8c5c1d9ef2d68e601354a9a81a4d03bb5d");
    expect(EXTEND_SCRIPT_SHA1).toBe("bb9285f4450c4eac98f055e430363f7a132cb42d");
    expect(sha1(RELEASE_SCRIPT)).toBe(RELEASE_SCRIPT_SHA1);
    expect(sha1(EXTEND_SCRIPT)).toBe(EXTEND_SCRIPT_SHA1);
    expect(await bridge.redis("SCRIPT", "LOAD", RELEASE_SCRIPT)).toBe(RELEASE_SCRIPT_SHA1);
    expect(await bridge.redis("SCRIPT", "LOAD", EXTEND_SCRIPT)).toBe(EXTEND_SCRIPT_SHA1);
  });

  it("the real Redis classes are assignable to the structural UpstashRedis", () => {
    expectTypeOf<Redis>().toExtend<UpstashRedis>();
    expectTypeOf<CloudflareRedis>().toExtend<UpstashRedis>();
    const redis: UpstashRedis = client();
    expect(typeof redis.evalsha).toBe("function");
  });

  it("rejects bad options with CONFIG naming the field", async () => {
    const redis = client();
    expect(String(await caught(() => upstashLock(redis, { leaseMs: 1_000, renewEveryMs: 1_000 })))).toMatch(/renewEveryMs/);
    expect(String(await caught(() => upstashLock(redis, { timeoutMs: 0 })))).toMatch(/timeoutMs/);
    expect(String(await caught(() => upstashLock(redis, { nope: 1 } as never)))).toMatch(/nope/);
    expect(await codeOf(() => upstashLock(redis, { leaseMs: 1.5 }))).toBe("CONFIG");
    expect(await codeOf(() => upstashLock({} as never))).toBe("CONFIG");
    expect(await codeOf(lockOn(redis).acquire("k", 0))).toBe("CONFIG");
    // Options given as undefined take their defaults (the fields are declared `?: T | undefined`).
    expect(typeof upstashLock(redis, { prefix: undefined, leaseMs: undefined, renewEveryMs: undefined, autoRenew: undefined, timeoutMs: undefined }).acquire).toBe("function");
  });
});

describe("upstashLock", () => {
  it("stores a random token with a millisecond TTL (SET NX PX) and answers null while held", async () => {
    const key = freshKey("basic");
    const lock = lockOn(client(), { leaseMs: 10_000 });
    const lease = (await lock.acquire(key, 5_000))!;
    expect(lease.key).toBe(key);
    expect(await bridge.redis("GET", P + key)).toMatch(/^[0-9a-f-]{36}$/);
    const pttl = (await bridge.redis("PTTL", P + key)) as number;
    expect(pttl).toBeGreaterThan(4_000);
    expect(pttl).toBeLessThanOrEqual(5_000);
    expect(await lockOn().acquire(key, 5_000)).toBeNull();
    expect(await lease.extend(3_000)).toBe(true);
    expect((await bridge.redis("PTTL", P + key)) as number).toBeLessThanOrEqual(3_000);
    await lease.release();
    expect(await bridge.redis("EXISTS", P + key)).toBe(0);
    await lease.release(); // idempotent
    expect(await lease.extend(1_000)).toBe(false); // released
    expect(lease.signal.aborted).toBe(false);
  });

  it("20 concurrent acquirers: exactly one holds it at a time, and all 20 get it eventually", async () => {
    const key = freshKey("mutex");
    let holders = 0, maxHolders = 0, turns = 0, busy = 0;
    await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const lock = lockOn(client(), { leaseMs: 5_000 }); // one client per worker, like 20 processes
      for (;;) {
        const lease = await lock.acquire(key, 5_000);
        if (!lease) {
          busy++;
          await sleep(3 + ((i * 7) % 11));
          continue;
        }
        holders++;
        maxHolders = Math.max(maxHolders, holders);
        await sleep(5);
        holders--;
        turns++;
        await lease.release();
        return;
      }
    }));
    expect(turns).toBe(20);
    expect(maxHolders).toBe(1);
    expect(busy).toBeGreaterThan(0);
  });

  it("expiry frees it when nothing renews it, and the stale lease's signal fires", async () => {
    const key = freshKey("expiry");
    const lock = lockOn(client(), { autoRenew: false });
    const first = (await lock.acquire(key, 200))!;
    expect(await lockOn().acquire(key, 200)).toBeNull();
    await sleep(300);
    expect(first.signal.aborted).toBe(true);
    expect(isOutboxError(first.signal.reason, "LEASE_LOST")).toBe(true);
    const second = await lockOn().acquire(key, 5_000);
    expect(second).not.toBeNull();
    await second!.release();
  });

  it("a non-owner's release and extend are refused (compare-and-set)", async () => {
    const key = freshKey("cas");
    const stale = (await lockOn(client(), { autoRenew: false }).acquire(key, 150))!;
    await sleep(250);
    const owner = (await lockOn().acquire(key, 5_000))!;
    const token = await bridge.redis("GET", P + key);
    expect(await stale.extend(60_000)).toBe(false);
    await stale.release(); // no throw, and no effect
    expect(await bridge.redis("GET", P + key)).toBe(token);
    expect((await bridge.redis("PTTL", P + key)) as number).toBeLessThanOrEqual(5_000);
    // The same, with the value changed behind the lock's back.
    await bridge.redis("SET", P + key, "someone-else", "PX", 5_000);
    expect(await owner.extend(60_000)).toBe(false);
    expect(owner.signal.aborted).toBe(true);
    await owner.release();
    expect(await bridge.redis("GET", P + key)).toBe("someone-else");
  });

  it("renewal keeps a drain that outlives leaseMs locked", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 100);
    const watched = spy(lockOn(client(), { leaseMs: 300 })); // renewed every 100 ms
    const lockKey = freshKey("renew");
    const transport = recordingTransport({ delayMs: 50 });
    const relay = createRelay({ outbox, transport, lock: watched.lock, lockKey, batchSize: 2, concurrency: 1, sendTimeoutMs: 500, leaseMs: 5_000 });
    const other = lockOn();
    const t0 = performance.now();
    const draining = relay.drain({ budgetMs: 1_100, safetyMarginMs: 100 });
    const probes: Array<Lease | null> = [];
    const ttls: number[] = [];
    for (const at of [200, 450, 700, 950]) {
      await sleep(at - (performance.now() - t0));
      probes.push(await other.acquire(lockKey, 5_000));
      ttls.push((await bridge.redis("PTTL", P + lockKey)) as number);
    }
    const report = await draining;
    expect(performance.now() - t0).toBeGreaterThanOrEqual(900); // 3 × leaseMs
    expect(probes).toEqual([null, null, null, null]);
    for (const ttl of ttls) expect(ttl).toBeGreaterThan(0), expect(ttl).toBeLessThanOrEqual(300);
    expect(report.skipped).toBeUndefined();
    expect(report.delivered).toBeGreaterThan(10);
    expect(watched.leases[0]!.signal.aborted).toBe(false);
    const after = await other.acquire(lockKey, 1_000);
    expect(after).not.toBeNull(); // released at the end
    await after!.release();
  });

  it("two relays sharing the lock never drain at the same time", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 200);
    const lockKey = freshKey("shared");
    const transport = recordingTransport({ delayMs: 3 });
    const a = spy(lockOn(client(), { leaseMs: 1_000 }));
    const b = spy(lockOn(client(), { leaseMs: 1_000 }));
    const reports = { a: [] as string[], b: [] as string[] };
    const loop = async (name: "a" | "b", lock: Lock): Promise<void> => {
      const relay = createRelay({ outbox, transport, lock, lockKey, batchSize: 10, concurrency: 2, sendTimeoutMs: 200, leaseMs: 2_000 });
      // Until everything is delivered (bounded), not for a fixed time: under load 1.5 s drained ~170 of the 200.
      const stopAt = performance.now() + 15_000;
      while (performance.now() < stopAt && new Set(transport.delivered.map((m) => m.id)).size < 200) {
        const report = await relay.drain({ budgetMs: 60, safetyMarginMs: 10 });
        reports[name].push(report.skipped ?? "drained");
        if (report.skipped) await sleep(1);
      }
    };
    await Promise.all([loop("a", a.lock), loop("b", b.lock)]);
    const holds = [...a.holds.map((h) => ({ who: "a", h })), ...b.holds.map((h) => ({ who: "b", h }))]
      .sort((x, y) => x.h[0] - y.h[0]);
    for (let i = 1; i < holds.length; i++) expect(holds[i]!.h[0]).toBeGreaterThan(holds[i - 1]!.h[1]);
    expect(a.holds.length).toBeGreaterThan(0);
    expect(b.holds.length).toBeGreaterThan(0);
    expect(holds.some((x, i) => i > 0 && x.who !== holds[i - 1]!.who)).toBe(true); // they took turns
    expect(reports.a.concat(reports.b)).toContain("lock-busy");
    expect(new Set(transport.delivered.map((m) => m.id)).size).toBe(200);
    expect(transport.delivered).toHaveLength(200); // no message sent twice
  });

  it("an unreachable Redis (bridge up, redis-server down) fails the drain fast with LOCK and drains nothing", async () => {
    const dead = await startUpstashBridge({ redisPort: await closedPort() });
    try {
      const { storage, outbox } = memoryOutbox();
      await fill(storage, outbox, 5);
      const transport = recordingTransport();
      const lock = upstashLock(new Redis({ url: dead.url, token: dead.token, retry: { retries: 0 }, enableTelemetry: false }));
      const relay = createRelay({ outbox, transport, lock });
      const t0 = performance.now();
      const e = await caught(relay.drain());
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(isOutboxError(e, "LOCK")).toBe(true);
      expect((e as { retryable: boolean }).retryable).toBe(true);
      expect(transport.attempts).toHaveLength(0);
      expect((await storage.stats()).pending).toBe(5);
    } finally {
      await dead.close();
    }
  });

  it("a stopped bridge (connection refused) fails fast with LOCK even with the client's default ~12 s retries", async () => {
    const gone = await startUpstashBridge();
    await gone.close();
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 5);
    const transport = recordingTransport();
    const redis = new Redis({ url: gone.url, token: gone.token, enableTelemetry: false }); // default retry: 5 tries
    const relay = createRelay({ outbox, transport, lock: upstashLock(redis, { timeoutMs: 800 }) });
    const t0 = performance.now();
    const e = await caught(relay.drain());
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(isOutboxError(e, "LOCK")).toBe(true);
    expect(String((e as Error).message)).toMatch(/timed out after 800 ms/);
    expect(transport.attempts).toHaveLength(0);
    expect((await storage.stats()).pending).toBe(5);
  });

  it("a non-OK answer to SET is never success", async () => {
    const weird: UpstashRedis = {
      set: () => Promise.resolve("Aborted"), // what an aborted @upstash/redis command can resolve to
      eval: () => Promise.resolve(0),
      evalsha: () => Promise.resolve(0),
    };
    const e = await caught(upstashLock(weird).acquire("k", 1_000));
    expect(isOutboxError(e, "LOCK")).toBe(true);
    expect(String(e)).toMatch(/not "OK"/);
    const odd: UpstashRedis = { ...weird, set: () => Promise.resolve("OK"), evalsha: () => Promise.resolve("1") };
    const lease = (await upstashLock(odd).acquire("k", 1_000))!;
    expect(await codeOf(lease.extend(1_000))).toBe("LOCK"); // "1" is not the number 1
    expect(lease.signal.aborted).toBe(true);
  });

  it.each(["deleted", "overwritten"] as const)("a lost lease (key %s behind its back) fires the signal and stops the drain's claiming", async (how) => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 40);
    const lockKey = freshKey(`lost-${how}`);
    const watched = spy(lockOn(client(), { leaseMs: 3_000, renewEveryMs: 100 })); // only the refused renewal can stop it early
    const transport = recordingTransport({ delayMs: 50 });
    const relay = createRelay({ outbox, transport, lock: watched.lock, lockKey, batchSize: 2, concurrency: 1, sendTimeoutMs: 500, leaseMs: 5_000 });
    const t0 = performance.now();
    const draining = relay.drain({ budgetMs: 10_000 });
    await sleep(250);
    if (how === "deleted") await bridge.redis("DEL", P + lockKey);
    else await bridge.redis("SET", P + lockKey, "intruder", "PX", 10_000);
    const report = await draining;
    expect(performance.now() - t0).toBeLessThan(1_000);
    const lease = watched.leases[0]!;
    expect(lease.signal.aborted).toBe(true);
    expect(isOutboxError(lease.signal.reason, "LEASE_LOST")).toBe(true);
    expect(report.more).toBe(true);
    expect(report.claimed).toBeGreaterThan(0);
    expect(report.claimed).toBeLessThan(20);
    expect((await storage.stats()).pending).toBe(40 - report.delivered);
    if (how === "overwritten") expect(await bridge.redis("GET", P + lockKey)).toBe("intruder"); // release did not touch it
  });
});
