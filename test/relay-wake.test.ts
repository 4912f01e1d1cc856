// run() wakes on storage.subscribe: a commit ends the wait between drains at once; polling is only the fallback.
import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from "vitest";
import { type MemoryStorage, memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createOutbox, createRelay, type OutboxError } from "../mod.ts";
import type { OutboxStorage } from "../src/storage.ts";
import { event, sleep } from "./helpers.ts";

/** The memory storage plus a subscribe that wakes its listeners when the test says a commit happened. */
function wakingStorage(base: MemoryStorage = memoryStorage()) {
  const listeners = new Set<() => void>();
  const storage: OutboxStorage<unknown, never> = {
    ...base,
    subscribe(onWake, signal) {
      listeners.add(onWake);
      signal.addEventListener("abort", () => listeners.delete(onWake), { once: true });
      return Promise.resolve();
    },
  };
  return { base, storage, listeners, wakeAll: () => listeners.forEach((l) => l()) };
}

async function commitOne(base: MemoryStorage, n: number): Promise<void> {
  const outbox = createOutbox({ storage: base, topics: [event] });
  const h = base.begin();
  await outbox.enqueue(h.tx, event, { n });
  await h.commit();
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (!cond() && performance.now() < end) await sleep(2);
}

describe("run() wake-ups", () => {
  let logged: MockInstance<typeof console.error>;
  beforeEach(() => {
    logged = vi.spyOn(console, "error").mockImplementation(() => {});
  });
  afterEach(() => logged.mockRestore());

  it("memory storage: a commit wakes run() (its own subscribe), delivery within milliseconds with a 60 s poll interval", async () => {
    const storage = memoryStorage();
    const transport = recordingTransport();
    const c = new AbortController();
    const running = createRelay({ outbox: createOutbox({ storage }), transport }).run({ signal: c.signal, pollIntervalMs: 60_000 });
    await sleep(50); // the first drain found nothing and waits for 60 s
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      await commitOne(storage, i);
      await until(() => transport.delivered.length === i + 1, 2_000);
      latencies.push(performance.now() - t0);
    }
    c.abort();
    await running;
    expect(transport.delivered.map((m) => (m.payload as { n: number }).n)).toEqual([0, 1, 2, 3, 4]);
    expect(Math.max(...latencies)).toBeLessThan(200);
  });

  it("a wake-up ends the poll wait at once: delivery within milliseconds with a 60 s poll interval", async () => {
    const { base, storage, listeners, wakeAll } = wakingStorage();
    const transport = recordingTransport();
    const c = new AbortController();
    const running = createRelay({ outbox: createOutbox({ storage }), transport }).run({ signal: c.signal, pollIntervalMs: 60_000 });
    await until(() => listeners.size > 0, 1_000);
    await sleep(50); // the first drain found nothing and waits for 60 s
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) {
      await commitOne(base, i);
      const t0 = performance.now();
      wakeAll();
      await until(() => transport.delivered.length === i + 1, 2_000);
      latencies.push(performance.now() - t0);
      await sleep(20);
    }
    c.abort();
    await running;
    expect(transport.delivered).toHaveLength(5);
    expect(Math.max(...latencies)).toBeLessThan(200); // against 60 s without the wake-up
    expect(listeners.size).toBe(0); // the subscription ended with run()
  });

  it("a wake-up during a drain (after its last claim) makes the next drain start without waiting", async () => {
    const { base, storage, wakeAll } = wakingStorage();
    let injected = false;
    // A commit lands right after the drain's last, empty claim: that drain cannot see it.
    const racing: OutboxStorage<unknown, never> = {
      ...storage,
      async claim(o) {
        const claim = await base.claim(o);
        if (claim.messages.length === 0 && transport.delivered.length === 1 && !injected) {
          injected = true;
          await commitOne(base, 1);
          wakeAll();
        }
        return claim;
      },
    };
    const transport = recordingTransport({ delayMs: 10 });
    await commitOne(base, 0);
    const c = new AbortController();
    const running = createRelay({ outbox: createOutbox({ storage: racing }), transport }).run({ signal: c.signal, pollIntervalMs: 60_000 });
    await until(() => transport.delivered.length === 2, 2_000);
    c.abort();
    await running;
    expect(injected).toBe(true);
    expect(transport.delivered).toHaveLength(2);
  });

  it("a failing subscribe is reported through onError and run() falls back to polling", async () => {
    const base = memoryStorage();
    const storage: OutboxStorage<unknown, never> = { ...base, subscribe: () => Promise.reject(new Error("LISTEN failed")) };
    const transport = recordingTransport();
    const errors: OutboxError[] = [];
    const c = new AbortController();
    const running = createRelay({ outbox: createOutbox({ storage }), transport }).run({
      signal: c.signal,
      pollIntervalMs: 20,
      onError: (e) => errors.push(e),
    });
    await commitOne(base, 1);
    await until(() => transport.delivered.length === 1, 2_000);
    c.abort();
    await running;
    expect(transport.delivered).toHaveLength(1);
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/subscribe failed: polling every 20 ms only/)]);
  });
});
