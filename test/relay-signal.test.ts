// The drain's signal reaches the transport: aborting drain({ signal }) or run({ signal }) fires SendContext.signal
// within a few ms, and the drain returns then instead of waiting for the send timeout.
import { describe, expect, it } from "vitest";
import { functionTransport } from "../adapters/memory/mod.ts";
import { createRelay } from "../mod.ts";
import { fill, memoryOutbox, sleep } from "./helpers.ts";

/** A transport whose sends wait for their signal, recording how long after `abortedAt()` it fired. */
function waitingTransport(abortedAt: () => number): { transport: ReturnType<typeof functionTransport>; lags: number[]; started: number[] } {
  const lags: number[] = [];
  const started: number[] = [];
  const transport = functionTransport((_m, { signal }) =>
    new Promise<void>((_, reject) => {
      started.push(performance.now());
      signal.addEventListener("abort", () => {
        lags.push(performance.now() - abortedAt());
        reject(signal.reason);
      });
    })
  );
  return { transport, lags, started };
}

// Generous bounds for a loaded 2-core machine: the point is "a few ms", against a 10 s send timeout.
const SIGNAL_LAG_MS = 50;
const RETURN_MS = 1_000;

describe("the drain's signal reaches the transport", () => {
  it("drain({ signal }): every in-flight send's signal fires within a few ms of the abort, and the drain returns promptly", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 4);
    let abortedAt = Infinity;
    const { transport, lags, started } = waitingTransport(() => abortedAt);
    const relay = createRelay({ outbox, transport, concurrency: 4, leaseMs: 30_000, sendTimeoutMs: 10_000 });
    const c = new AbortController();
    const draining = relay.drain({ budgetMs: 20_000, signal: c.signal });
    for (let i = 0; i < 100 && started.length < 4; i++) await sleep(5);
    expect(started).toHaveLength(4);
    await sleep(50);
    abortedAt = performance.now();
    c.abort();
    const report = await draining;
    const returnedAfter = performance.now() - abortedAt;
    expect(lags).toHaveLength(4);
    expect(Math.max(...lags)).toBeLessThan(SIGNAL_LAG_MS);
    expect(returnedAfter).toBeLessThan(RETURN_MS);
    expect(report).toMatchObject({ claimed: 4, retried: 4, delivered: 0 });
    expect((await storage.stats()).leased).toBe(0); // settled, not left leased
  });

  it("run({ signal }): the same, and run() resolves promptly", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 2);
    let abortedAt = Infinity;
    const { transport, lags, started } = waitingTransport(() => abortedAt);
    const relay = createRelay({ outbox, transport, concurrency: 2, leaseMs: 30_000, sendTimeoutMs: 10_000 });
    const c = new AbortController();
    const running = relay.run({ signal: c.signal, pollIntervalMs: 10 });
    for (let i = 0; i < 100 && started.length < 2; i++) await sleep(5);
    expect(started).toHaveLength(2);
    abortedAt = performance.now();
    c.abort();
    await running;
    expect(performance.now() - abortedAt).toBeLessThan(RETURN_MS);
    expect(lags).toHaveLength(2);
    expect(Math.max(...lags)).toBeLessThan(SIGNAL_LAG_MS);
    expect((await storage.stats()).pending).toBe(2); // retried later, not lost
  });

  it("a transport that ignores its signal does not hold the aborted drain either", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 1);
    let sent = false;
    const transport = functionTransport(() => {
      sent = true;
      return new Promise<void>(() => {});
    });
    const c = new AbortController();
    const draining = createRelay({ outbox, transport, leaseMs: 30_000, sendTimeoutMs: 10_000 }).drain({ signal: c.signal });
    for (let i = 0; i < 100 && !sent; i++) await sleep(5);
    const t0 = performance.now();
    c.abort();
    const report = await draining;
    expect(performance.now() - t0).toBeLessThan(RETURN_MS);
    expect(report.retried).toBe(1);
  });
});
