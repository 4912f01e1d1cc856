// The lock key names the drained data, and run()'s callbacks cannot change its loop.
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { memoryLock, memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay, type DrainReport, type Lock } from "../mod.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { event, fill, memoryOutbox, sleep } from "./helpers.ts";

describe("default lockKey", () => {
  it("relays of two outboxes (two scopes) sharing one lock store both drain at the same time", async () => {
    const lock = memoryLock();
    const keys: string[] = [];
    const recording: Lock = { name: "recording", acquire: (k, ms) => (keys.push(k), lock.acquire(k, ms)) };
    const drains = await Promise.all(["a", "b"].map(async (scope) => {
      const { storage, outbox: base } = memoryOutbox();
      await fill(storage, base, 3);
      const scoped: OutboxStorage<unknown, never> = { ...storage, scope: `memory:${scope}` };
      const transport = recordingTransport({ delayMs: 50 }); // both drains hold their locks at once
      return createRelay({ outbox: createOutbox({ storage: scoped }), transport, lock: recording }).drain();
    }));
    expect(keys.sort()).toEqual(["edge-outbox:relay:memory:a", "edge-outbox:relay:memory:b"]);
    expect(drains.map((r) => r.skipped)).toEqual([undefined, undefined]);
    expect(drains.map((r) => r.delivered)).toEqual([3, 3]);
  });

  it("falls back to the storage name without a scope, and an explicit lockKey wins", async () => {
    const { storage, outbox } = memoryOutbox();
    const lock = memoryLock();
    const keys: string[] = [];
    const recording: Lock = { name: "recording", acquire: (k, ms) => (keys.push(k), lock.acquire(k, ms)) };
    const unscoped: OutboxStorage<unknown, never> = { ...storage, scope: undefined };
    await createRelay({ outbox: createOutbox({ storage: unscoped }), transport: recordingTransport(), lock: recording }).drain();
    await createRelay({ outbox, transport: recordingTransport(), lock: recording, lockKey: "mine" }).drain();
    expect(keys).toEqual([`edge-outbox:relay:${storage.name}`, "mine"]);
  });
});

describe("run(): callbacks cannot change the loop", () => {
  let logged: MockInstance<typeof console.error>;
  beforeEach(() => {
    logged = vi.spyOn(console, "error").mockImplementation(() => {});
  });
  afterEach(() => logged.mockRestore());

  it("a throwing onReport is not a drain failure: no onError, no backoff, messages keep flowing", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    const transport = recordingTransport();
    const errors: unknown[] = [];
    const reports: DrainReport[] = [];
    const c = new AbortController();
    const running = createRelay({ outbox, transport }).run({
      signal: c.signal,
      pollIntervalMs: 10,
      onReport: (r) => {
        reports.push(r);
        throw new Error("metrics sink down");
      },
      onError: (e) => errors.push(e),
    });
    await sleep(300);
    const h = storage.begin();
    await outbox.enqueue(h.tx, event, { n: 1 });
    await h.commit();
    for (let i = 0; i < 50 && transport.delivered.length === 0; i++) await sleep(10);
    const seen = reports.length;
    c.abort();
    await running;
    expect(errors).toEqual([]);
    // Every 10 ms, not backing off (10, 20, 40, 80, 160 ms … would give about 5 drains in 300 ms).
    expect(seen).toBeGreaterThanOrEqual(10);
    expect(transport.delivered).toHaveLength(1);
    expect(logged).toHaveBeenCalled();
  });

  it("a throwing (or rejecting) onError does not end run(): it keeps retrying and resolves when aborted", async () => {
    for (const onError of [() => { throw new Error("pager down") }, () => Promise.reject(new Error("pager down"))]) {
      const storage = memoryStorage();
      let failClaims = 3;
      const flaky = {
        ...storage,
        claim: (o: { limit: number; leaseMs: number }) => failClaims-- > 0 ? Promise.reject(new Error("db restarting")) : storage.claim(o),
      };
      const outbox = createOutbox({ storage: flaky, topics: [event] });
      const transport = recordingTransport();
      let calls = 0;
      const c = new AbortController();
      let settled = "pending";
      const running = createRelay({ outbox, transport }).run({
        signal: c.signal,
        pollIntervalMs: 5,
        onError: () => {
          calls++;
          return onError() as unknown as void;
        },
      }).then(() => (settled = "resolved"), () => (settled = "rejected"));
      const h = storage.begin();
      await outbox.enqueue(h.tx, event, { n: 7 });
      await h.commit();
      for (let i = 0; i < 200 && transport.delivered.length === 0; i++) await sleep(10);
      expect(settled).toBe("pending");
      c.abort();
      await running;
      expect(settled).toBe("resolved");
      expect(calls).toBe(3);
      expect(transport.delivered).toHaveLength(1); // the loop went on after the failures
    }
  });
});

describe("signal validation", () => {
  it("accepts any structural AbortSignal and refuses other values with CONFIG", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 1);
    const relay = createRelay({ outbox, transport: recordingTransport() });
    const real = new AbortController().signal;
    const structural = { aborted: false, reason: undefined, addEventListener: real.addEventListener.bind(real), removeEventListener: real.removeEventListener.bind(real) };
    expect((await relay.drain({ signal: structural as unknown as AbortSignal })).delivered).toBe(1);
    await expect(relay.drain({ signal: {} as AbortSignal })).rejects.toMatchObject({ code: "CONFIG" });
    await expect(relay.run({ signal: "no" as unknown as AbortSignal })).rejects.toMatchObject({ code: "CONFIG" });
  });
});
