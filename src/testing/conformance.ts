/**
 * The storage conformance suite: every case an `OutboxStorage` must pass, written once against a runner-neutral
 * harness so vitest, `bun test` and `deno test` run the same cases.
 *
 * @module
 */
import { isOutboxError, type OutboxErrorCode } from "../errors.ts";
import { type NewMessage, uuidv7 } from "../message.ts";
import { createOutbox } from "../outbox.ts";
import { createRelay } from "../relay.ts";
import type { ClaimedMessage, OutboxStorage } from "../storage.ts";
import type { DeliveryOutcome, Transport } from "../transport.ts";
import type { ConformanceFixture, ConformanceHarness, ConformanceOptions } from "./harness.ts";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Builds a valid NewMessage for tests. */
function message(n: number, extra: Partial<NewMessage> = {}): NewMessage {
  return {
    id: uuidv7(),
    topic: "test.event",
    key: null,
    payload: JSON.stringify({ n }),
    headers: "{}",
    delayMs: 0,
    ...extra,
  };
}

const payloadN = (m: { payload: unknown }): number => (m.payload as { n: number }).n;

/**
 * Registers the conformance cases for one storage adapter.
 *
 * @param t the runner's `describe`, `it` and `expect`
 * @param options the adapter's name and fixture factory
 * @example
 * ```ts
 * import { describe, expect, it } from "vitest";
 * import { storageConformance } from "edge-outbox/testing";
 * import { memoryStorage } from "edge-outbox/memory";
 *
 * storageConformance({ describe, it, expect }, {
 *   name: "memory",
 *   async create() {
 *     const storage = memoryStorage();
 *     return {
 *       storage,
 *       begin: async () => storage.begin(),
 *       another: async () => memoryStorage({ shareWith: storage }),
 *       close: async () => {},
 *     };
 *   },
 * });
 * ```
 */
export function storageConformance<Tx, Stmt>(t: ConformanceHarness, options: ConformanceOptions<Tx, Stmt>): void {
  const { describe, it, expect } = t;
  const scale = options.scale ?? 1;
  const semantics = options.semantics ?? 1;
  const interactive = options.interactiveTransactions ?? true;
  const positions = options.deliveryPositions ?? false;

  /** Runs a test body on a fresh fixture, closing it afterwards. */
  const withFixture = (fn: (f: ConformanceFixture<Tx, Stmt>) => Promise<void>) => async (): Promise<void> => {
    const f = await options.create();
    try {
      await fn(f);
    } finally {
      await f.close();
    }
  };
  const test = (name: string, fn: (f: ConformanceFixture<Tx, Stmt>) => Promise<void>, timeoutMs = 30_000): void =>
    it(name, withFixture(fn), timeoutMs);

  async function enqueueCommitted(f: ConformanceFixture<Tx, Stmt>, messages: NewMessage[]): Promise<void> {
    const h = await f.begin();
    try {
      for (let i = 0; i < messages.length; i += 500) await f.storage.enqueue(h.tx, messages.slice(i, i + 500));
    } catch (e) {
      await h.rollback();
      throw e;
    }
    await h.commit();
  }

  async function expectError(p: Promise<unknown>, code: OutboxErrorCode): Promise<void> {
    let caught: unknown;
    try {
      await p;
    } catch (e) {
      caught = e;
    }
    expect(isOutboxError(caught, code)).toBe(true);
  }

  const ids = (ms: readonly { id: string }[]): string[] => ms.map((m) => m.id);
  /** What one claim returns of a key whose rows are all due: all of them, or only the head. */
  const prefix = (f: ConformanceFixture<Tx, Stmt>, keyIds: string[]): string[] =>
    f.storage.capabilities.keyPrefixClaims ? keyIds : keyIds.slice(0, 1);
  /** The seq of the last row of key "m" in a claim (what a continuation names as `after`). */
  const lastSeqOfM = (c: { messages: readonly ClaimedMessage[] }): number => c.messages.filter((x) => x.key === "m").at(-1)!.seq;

  describe(`storage conformance: ${options.name}`, () => {
    describe("transactions", () => {
      test("rollback leaves no message; commit leaves exactly one", async (f) => {
        const a = await f.begin();
        await f.storage.enqueue(a.tx, [message(1)]);
        await a.rollback();
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
        expect((await f.storage.stats()).pending).toBe(0);

        const m = message(2, { key: "k", headers: JSON.stringify({ "x-trace": "abc" }) });
        const b = await f.begin();
        await f.storage.enqueue(b.tx, [m]);
        await b.commit();
        const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(claim.messages).toHaveLength(1);
        const got = claim.messages[0]!;
        expect(got.id).toBe(m.id);
        expect(got.topic).toBe("test.event");
        expect(got.key).toBe("k");
        expect(got.payload).toEqual({ n: 2 });
        expect(got.body).toBe(m.payload);
        expect(got.headers).toEqual({ "x-trace": "abc" });
        expect(got.attempts).toBe(1);
        expect(got.lastError).toBeNull();
      });

      test("payloads round-trip exactly (unicode, nesting, numbers)", async (f) => {
        const payload = { s: "héllo ✓ 🚀 \u0000 \"q\"", a: [1, 2.5, -3e-7, null, true], o: { deep: { x: "y" } } };
        const m = message(0, { payload: JSON.stringify(payload) });
        await enqueueCommitted(f, [m]);
        const [got] = (await f.storage.claim({ limit: 1, leaseMs: 10_000 })).messages;
        expect(got!.payload).toEqual(payload);
        expect(got!.body).toBe(m.payload);
      });

      if (semantics === 1) {
        test("a duplicate message id is a STORAGE error", async (f) => {
          const m = message(1);
          await enqueueCommitted(f, [m]);
          const h = await f.begin();
          let caught: unknown;
          try {
            await f.storage.enqueue(h.tx, [{ ...m }]);
            await h.commit();
          } catch (e) {
            caught = e;
            await h.rollback().catch(() => {});
          }
          expect(isOutboxError(caught, "STORAGE")).toBe(true);
          expect((await f.storage.stats()).pending).toBe(1);
        });
      } else {
        // Decision 2 (issue 9 item 9): ids are unique among the rows in the table.
        test("an id a pending row already has is a CONFLICT: nothing of the call written, the first row unchanged, the transaction usable", async (f) => {
          const m = message(1, { key: "k", headers: JSON.stringify({ "x-first": "1" }) });
          await enqueueCommitted(f, [m]);
          const fresh = message(2);
          const after = message(3);
          const h = await f.begin();
          let caught: unknown;
          try {
            await f.storage.enqueue(h.tx, [fresh, { ...m, key: null, payload: JSON.stringify({ n: 99 }), headers: "{}" }]);
          } catch (e) {
            caught = e;
          }
          if (interactive) {
            expect(isOutboxError(caught, "CONFLICT")).toBe(true);
            // The caller's transaction is still usable: a later enqueue in it commits.
            await f.storage.enqueue(h.tx, [after]);
            await h.commit();
          } else {
            if (caught === undefined) await h.commit().catch((e: unknown) => (caught = e));
            else await h.rollback().catch(() => {});
            expect(isOutboxError(caught, "CONFLICT")).toBe(true);
          }
          const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(claim.messages)).toEqual(interactive ? [m.id, after.id] : [m.id]);
          const first = claim.messages[0]!;
          expect(first.key).toBe("k");
          expect(first.payload).toEqual({ n: 1 });
          expect(first.headers).toEqual({ "x-first": "1" });
          expect(first.attempts).toBe(1);
        });

        test("an id a dead letter has is a CONFLICT and the dead letter stays as it was", async (f) => {
          const m = message(1);
          await enqueueCommitted(f, [m]);
          const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          await f.storage.settle(c.token, [{ id: m.id, outcome: "dead", error: "poison" }]);
          const h = await f.begin();
          let caught: unknown;
          try {
            await f.storage.enqueue(h.tx, [{ ...m, payload: JSON.stringify({ n: 2 }) }]);
            await h.commit();
          } catch (e) {
            caught = e;
            await h.rollback().catch(() => {});
          }
          expect(isOutboxError(caught, "CONFLICT")).toBe(true);
          const s = await f.storage.stats();
          expect(s.pending).toBe(0);
          expect(s.dead).toBe(1);
          const page = await f.storage.listDead({ limit: 10 });
          expect(ids(page.items)).toEqual([m.id]);
          expect(page.items[0]!.payload).toEqual({ n: 1 });
          expect(page.items[0]!.lastError).toBe("poison");
        });

        test("an id whose row was delivered and deleted is accepted again", async (f) => {
          const m = message(1);
          await enqueueCommitted(f, [m]);
          const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          await f.storage.settle(c.token, [{ id: m.id, outcome: "delivered" }]);
          await enqueueCommitted(f, [{ ...m, payload: JSON.stringify({ n: 2 }) }]);
          const again = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          expect(ids(again.messages)).toEqual([m.id]);
          expect(again.messages[0]!.payload).toEqual({ n: 2 });
          expect(again.messages[0]!.attempts).toBe(1);
        });

        it("a colliding id fails an atomic batch as a whole (when supported)", withFixture(async (f) => {
          if (!f.storage.capabilities.batchStatement) return;
          const m = message(1);
          await enqueueCommitted(f, [m]);
          const fresh = message(2);
          let caught: unknown;
          try {
            await f.runBatch!([f.storage.statement!([fresh]), f.storage.statement!([{ ...m, payload: JSON.stringify({ n: 3 }) }])]);
          } catch (e) {
            caught = e;
          }
          expect(caught === undefined).toBe(false);
          const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(claim.messages)).toEqual([m.id]);
          expect(claim.messages[0]!.payload).toEqual({ n: 1 });
        }));

        test("scope names the data: another storage on the same table has the same scope", async (f) => {
          expect(typeof f.storage.scope).toBe("string");
          expect(f.storage.scope!.length).toBeGreaterThan(0);
          expect((await f.another()).scope).toBe(f.storage.scope);
        });

        test("subscribe wakes after a commit that enqueued, not before, and stops when its signal aborts (when present)", async (f) => {
          if (typeof f.storage.subscribe !== "function") return;
          let wakes = 0;
          const ac = new AbortController();
          await f.storage.subscribe(() => wakes++, ac.signal);
          try {
            const h = await f.begin();
            await f.storage.enqueue(h.tx, [message(1)]);
            await sleep(100);
            expect(wakes).toBe(0);
            await h.commit();
            const end = Date.now() + 10_000;
            while (wakes === 0 && Date.now() < end) await sleep(10);
            expect(wakes).toBeGreaterThan(0);
          } finally {
            ac.abort();
          }
          await sleep(100);
          const seen = wakes;
          await enqueueCommitted(f, [message(2)]);
          await sleep(300);
          expect(wakes).toBe(seen);
        });
      }

      test("migrate is idempotent and keeps the data", async (f) => {
        await enqueueCommitted(f, [message(1)]);
        await f.storage.migrate();
        await f.storage.migrate();
        expect((await f.storage.stats()).pending).toBe(1);
      });

      it(`statement() joins an atomic batch (when supported)`, withFixture(async (f) => {
        if (!f.storage.capabilities.batchStatement) {
          expect(f.storage.statement).toBe(undefined);
          return;
        }
        expect(typeof f.runBatch).toBe("function");
        const m1 = message(1), m2 = message(2, { key: "k" });
        await f.runBatch!([f.storage.statement!([m1, m2])]);
        const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(claim.messages)).toEqual([m1.id, m2.id]);
      }));
    });

    describe("claims", () => {
      test("claims come back in commit (seq) order with a fresh token each time", async (f) => {
        const ms = Array.from({ length: 20 }, (_, i) => message(i));
        for (const m of ms) await enqueueCommitted(f, [m]);
        const c1 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        const c2 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(c1.messages)).toEqual(ids(ms.slice(0, 10)));
        expect(ids(c2.messages)).toEqual(ids(ms.slice(10)));
        expect(c1.token).not.toBe(c2.token);
        for (let i = 1; i < c1.messages.length; i++) expect(c1.messages[i]!.seq).toBeGreaterThan(c1.messages[i - 1]!.seq);
        expect(c1.leaseUntil).toBeGreaterThanOrEqual(c1.now + 10_000);
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
      });

      test("concurrent claimers on separate connections get disjoint sets whose union is everything", async (f) => {
        const total = Math.max(200, Math.round(3_000 * scale));
        const all = Array.from({ length: total }, (_, i) => message(i));
        await enqueueCommitted(f, all);
        const claimers: OutboxStorage<Tx, Stmt>[] = [f.storage];
        for (let i = 0; i < 3; i++) claimers.push(await f.another());
        const seen: string[][] = await Promise.all(claimers.map(async (s) => {
          const mine: string[] = [];
          for (;;) {
            const c = await s.claim({ limit: 37, leaseMs: 60_000 });
            if (c.messages.length === 0) return mine;
            mine.push(...ids(c.messages));
          }
        }));
        const flat = seen.flat();
        expect(flat).toHaveLength(total);
        expect(new Set(flat).size).toBe(total);
        const expected = new Set(ids(all));
        for (const id of flat) expect(expected.has(id)).toBe(true);
      }, 120_000);

      test("an expired lease makes the row claimable again, with the attempt counted", async (f) => {
        const m = message(1);
        await enqueueCommitted(f, [m]);
        const c1 = await f.storage.claim({ limit: 1, leaseMs: 100 });
        expect(ids(c1.messages)).toEqual([m.id]);
        expect((await f.storage.claim({ limit: 1, leaseMs: 100 })).messages).toHaveLength(0);
        await sleep(160);
        const c2 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(c2.messages)).toEqual([m.id]);
        expect(c2.messages[0]!.attempts).toBe(2);
      });

      test("a stale lease token cannot settle (fencing)", async (f) => {
        const m = message(1);
        await enqueueCommitted(f, [m]);
        const stale = await f.storage.claim({ limit: 1, leaseMs: 100 });
        await sleep(160);
        const fresh = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(fresh.messages)).toEqual([m.id]);
        for (const outcome of ["delivered", "dead", "released"] as const) {
          const r = await f.storage.settle(stale.token, [
            outcome === "dead" ? { id: m.id, outcome, error: "late" } : { id: m.id, outcome } as never,
          ]);
          expect(r.applied).toBe(0);
          expect(r.lost).toEqual([m.id]);
        }
        const late = await f.storage.settle(stale.token, [{ id: m.id, outcome: "retry", delayMs: 0, error: "late" }]);
        expect(late.lost).toEqual([m.id]);
        const s = await f.storage.stats();
        expect(s.pending).toBe(1);
        expect(s.leased).toBe(1);
        expect(s.dead).toBe(0);
        const ok = await f.storage.settle(fresh.token, [{ id: m.id, outcome: "delivered" }]);
        expect(ok).toEqual({ applied: 1, lost: [] });
        expect((await f.storage.stats()).pending).toBe(0);
        // Settling twice with the same token finds nothing the second time.
        expect((await f.storage.settle(fresh.token, [{ id: m.id, outcome: "delivered" }])).lost).toEqual([m.id]);
      });

      test("delayed messages are not claimed early", async (f) => {
        const m = message(1, { delayMs: 400 });
        await enqueueCommitted(f, [m]);
        expect(await f.storage.hasDue()).toBe(false);
        expect((await f.storage.claim({ limit: 1, leaseMs: 10_000 })).messages).toHaveLength(0);
        const s = await f.storage.stats();
        expect(s.pending).toBe(1);
        expect(s.due).toBe(0);
        await sleep(500);
        expect(await f.storage.hasDue()).toBe(true);
        expect(ids((await f.storage.claim({ limit: 1, leaseMs: 10_000 })).messages)).toEqual([m.id]);
      });
    });

    describe("settling", () => {
      test("retry moves the row into the future and records the error", async (f) => {
        const m = message(1);
        await enqueueCommitted(f, [m]);
        const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        const r = await f.storage.settle(c.token, [{ id: m.id, outcome: "retry", delayMs: 400, error: "HTTP 503" }]);
        expect(r).toEqual({ applied: 1, lost: [] });
        expect(await f.storage.hasDue()).toBe(false);
        expect((await f.storage.claim({ limit: 1, leaseMs: 10_000 })).messages).toHaveLength(0);
        const s = await f.storage.stats();
        expect(s.leased).toBe(0);
        expect(s.due).toBe(0);
        await sleep(500);
        const again = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(again.messages)).toEqual([m.id]);
        expect(again.messages[0]!.attempts).toBe(2);
        expect(again.messages[0]!.lastError).toBe("HTTP 503");
      });

      test("released rows keep their attempt count and are due at once", async (f) => {
        const m = message(1);
        await enqueueCommitted(f, [m]);
        const c1 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(c1.messages[0]!.attempts).toBe(1);
        await f.storage.settle(c1.token, [{ id: m.id, outcome: "released" }]);
        expect(await f.storage.hasDue()).toBe(true);
        const c2 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(c2.messages[0]!.attempts).toBe(1);
        await f.storage.settle(c2.token, [{ id: m.id, outcome: "retry", delayMs: 0, error: "x" }]);
        const c3 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(c3.messages[0]!.attempts).toBe(2);
      });

      test("attempts counted at claim let a crashing relay's message reach dead letters", async (f) => {
        const m = message(1);
        await enqueueCommitted(f, [m]);
        // Three relays claim it and die without settling.
        for (let i = 0; i < 3; i++) {
          expect((await f.storage.claim({ limit: 1, leaseMs: 50 })).messages).toHaveLength(1);
          await sleep(80);
        }
        const transport = recording();
        const outbox = createOutbox({ storage: f.storage });
        const relay = createRelay({ outbox, transport, maxAttempts: 3, leaseMs: 2_000, sendTimeoutMs: 500 });
        const report = await relay.drain({ budgetMs: 5_000 });
        expect(report.dead).toBe(1);
        expect(transport.sent).toHaveLength(0);
        const page = await f.storage.listDead({ limit: 10 });
        expect(ids(page.items)).toEqual([m.id]);
        expect(page.items[0]!.attempts).toBe(4);
      });

      test("a settle of deliveries reports exactly the ids that did not apply (unknown, another claim's, repeated)", async (f) => {
        const ms = [message(1), message(2), message(3)];
        await enqueueCommitted(f, ms);
        const c = await f.storage.claim({ limit: 2, leaseMs: 10_000 });
        const other = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(c.messages)).toEqual([ms[0]!.id, ms[1]!.id]);
        expect(ids(other.messages)).toEqual([ms[2]!.id]);
        const unknown = uuidv7();
        const r = await f.storage.settle(c.token, [
          { id: ms[0]!.id, outcome: "delivered" },
          { id: unknown, outcome: "delivered" },
          { id: ms[2]!.id, outcome: "delivered" },
          { id: ms[1]!.id, outcome: "delivered" },
          { id: ms[0]!.id, outcome: "delivered" },
        ]);
        expect(r.applied).toBe(2);
        expect([...r.lost].sort()).toEqual([unknown, ms[2]!.id, ms[0]!.id].sort());
        const s = await f.storage.stats();
        expect(s.pending).toBe(1);
        expect(s.leased).toBe(1);
        expect(await f.storage.settle(other.token, [{ id: ms[2]!.id, outcome: "delivered" }])).toEqual({ applied: 1, lost: [] });
        expect((await f.storage.stats()).pending).toBe(0);
      });

      test("one settle applies mixed outcomes in one call", async (f) => {
        const ms = [message(1), message(2), message(3), message(4)];
        await enqueueCommitted(f, ms);
        const c = await f.storage.claim({ limit: 4, leaseMs: 10_000 });
        const r = await f.storage.settle(c.token, [
          { id: ms[0]!.id, outcome: "delivered" },
          { id: ms[1]!.id, outcome: "retry", delayMs: 60_000, error: "later" },
          { id: ms[2]!.id, outcome: "dead", error: "HTTP 400" },
          { id: ms[3]!.id, outcome: "released" },
          { id: uuidv7(), outcome: "delivered" },
        ]);
        expect(r.applied).toBe(4);
        expect(r.lost).toHaveLength(1);
        const s = await f.storage.stats();
        expect(s.pending).toBe(2);
        expect(s.due).toBe(1);
        expect(s.dead).toBe(1);
        expect(s.leased).toBe(0);
      });
    });

    describe("per-key order", () => {
      test("a key's claimed rows are a prefix of its queue; other keys and keyless rows flow", async (f) => {
        const a = [message(1, { key: "a" }), message(2, { key: "a" }), message(3, { key: "a" })];
        const b = message(4, { key: "b" });
        const n = message(5);
        for (const m of [...a, b, n]) await enqueueCommitted(f, [m]);
        const c1 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(c1.messages)).toEqual([a[0]!.id]);
        // a1 is leased: a2 and a3 are blocked; b and the keyless row are not.
        const c2 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(c2.messages)).toEqual([b.id, n.id]);
        // The head retries: its key stays blocked while it backs off.
        await f.storage.settle(c1.token, [{ id: a[0]!.id, outcome: "retry", delayMs: 300, error: "boom" }]);
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
        expect(await f.storage.hasDue()).toBe(false);
        await sleep(400);
        // Head due again: the key comes back in order (its whole due prefix, or its head alone).
        const c3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(c3.messages)).toEqual(prefix(f, ids(a)));
      });

      test("one claim never returns a key's rows out of order, nor past its head when keyPrefixClaims is false", async (f) => {
        const ms = [message(1, { key: "k" }), message(2), message(3, { key: "k" }), message(4, { key: "j" })];
        await enqueueCommitted(f, ms);
        const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        const k = c.messages.filter((m) => m.key === "k").map((m) => m.id);
        expect(k).toEqual(prefix(f, [ms[0]!.id, ms[2]!.id]));
        expect(c.messages.map((m) => m.id)).toContain(ms[1]!.id);
        expect(c.messages.map((m) => m.id)).toContain(ms[3]!.id);
      });

      test("continue (capabilities.continueClaims): a claim takes a held key's next rows behind the rows leased to the caller, never when a row up to `after` is not leased with the caller's tokens; others still cannot claim the key; its settles in either order free it (without the capability, continue is ignored)", async (f) => {
        const keyed = (key: string, ns: number[]) => ns.map((n) => message(n, { key }));
        const [a1, a2, a3, a4, a5, a6] = keyed("a", [1, 2, 3, 4, 5, 6]);
        const [b1, b2] = keyed("b", [7, 8]);
        for (const m of [a1!, a2!, b1!, a3!, a4!, a5!, a6!, b2!]) await enqueueCommitted(f, [m]);
        const byKey = (ms: readonly ClaimedMessage[], key: string): string[] => ms.filter((m) => m.key === key).map((m) => m.id);
        const c1 = await f.storage.claim({ limit: 2, leaseMs: 10_000 });
        expect(ids(c1.messages)).toEqual(prefix(f, [a1!.id, a2!.id]));
        const held = c1.messages[c1.messages.length - 1]!;
        const c2 = await f.storage.claim({ limit: 10, leaseMs: 10_000, continue: { after: [held.seq], tokens: [c1.token] } });
        expect(byKey(c2.messages, "b")).toEqual(prefix(f, [b1!.id, b2!.id])); // b was due: claimed as usual
        if (!f.storage.capabilities.continueClaims) {
          expect(byKey(c2.messages, "a")).toEqual([]); // continue ignored: a's head is leased
          return;
        }
        expect(byKey(c2.messages, "a")).toEqual([a3!.id, a4!.id, a5!.id, a6!.id]);
        expect(c2.messages.map((m) => m.seq)).toEqual(c2.messages.map((m) => m.seq).sort((x, y) => x - y));
        const other = await f.another();
        expect((await other.claim({ limit: 10, leaseMs: 10_000 })).messages).toEqual([]);
        // The later claim's settle lands first: the key is still held by the earlier claim, then free.
        const deliver = (c: { token: string; messages: readonly ClaimedMessage[] }) =>
          f.storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
        expect((await deliver(c2)).applied).toBe(c2.messages.length);
        expect((await other.claim({ limit: 10, leaseMs: 10_000 })).messages).toEqual([]);
        expect((await deliver(c1)).applied).toBe(2);
        const [a7] = keyed("a", [9]);
        await enqueueCommitted(f, [a7!]);
        const c3 = await other.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(c3.messages)).toEqual([a7!.id]);

        // A released (or retried) row up to `after`: the key is not continued, and its due rows wait behind the leased one.
        const [k1, k2, k3, k4] = keyed("k", [10, 11, 12, 13]);
        await enqueueCommitted(f, [k1!, k2!, k3!, k4!]);
        await f.storage.settle(c3.token, [{ id: a7!.id, outcome: "delivered" }]);
        const d1 = await f.storage.claim({ limit: 2, leaseMs: 10_000 });
        expect(ids(d1.messages)).toEqual([k1!.id, k2!.id]);
        await f.storage.settle(d1.token, [{ id: k2!.id, outcome: "released" }]);
        const cont = { after: [d1.messages[1]!.seq], tokens: [d1.token] };
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000, continue: cont })).messages).toEqual([]);
        // Named with tokens that do not hold the key's rows (another claimer's): nothing.
        const d2 = await f.storage.claim({ limit: 10, leaseMs: 10_000, continue: { after: [d1.messages[0]!.seq], tokens: [crypto.randomUUID()] } });
        expect(d2.messages).toEqual([]);
        await f.storage.settle(d1.token, [{ id: k1!.id, outcome: "delivered" }]);
        const d3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(d3.messages)).toEqual([k2!.id, k3!.id, k4!.id]);
      });

      test("continue (capabilities.continueClaims): a row retried by the settle of an earlier claim of the chain, after a later claim continued the key, stops the key's continuation; a dead one does not; the key then drains from the retried row, in order", async (f) => {
        if (!f.storage.capabilities.continueClaims) return;
        const m = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => message(n, { key: "m" }));
        await enqueueCommitted(f, m);
        const of = (c: { messages: readonly ClaimedMessage[] }) => c.messages.filter((x) => x.key === "m");
        const e1 = await f.storage.claim({ limit: 2, leaseMs: 10_000 });
        expect(ids(of(e1))).toEqual([m[0]!.id, m[1]!.id]);
        const e2 = await f.storage.claim({ limit: 2, leaseMs: 20_000, continue: { after: [lastSeqOfM(e1)], tokens: [e1.token] } });
        expect(ids(of(e2))).toEqual([m[2]!.id, m[3]!.id]);
        // The earlier claim settles last-but-one: its first row is retried (due at once), its second delivered.
        const s1 = await f.storage.settle(e1.token, [
          { id: m[0]!.id, outcome: "retry", delayMs: 0, error: "503" },
          { id: m[1]!.id, outcome: "delivered" },
        ]);
        expect(s1.applied).toBe(2);
        // m1 is pending and no longer leased: the key is not continued past m4 (m1 itself, the key's head, may come).
        const after = { after: [lastSeqOfM(e2)], tokens: [e1.token, e2.token] };
        const c = await f.storage.claim({ limit: 10, leaseMs: 10_000, continue: after });
        expect(ids(of(c)).filter((id) => id !== m[0]!.id)).toEqual([]);
        await f.storage.settle(c.token, of(c).map((x) => ({ id: x.id, outcome: "released" as const })));
        // Handing back the held rows frees the key: it goes from the retried row, in seq order.
        expect((await f.storage.settle(e2.token, of(e2).map((x) => ({ id: x.id, outcome: "released" as const })))).applied).toBe(2);
        const g1 = await f.storage.claim({ limit: 3, leaseMs: 10_000 });
        expect(ids(of(g1))).toEqual([m[0]!.id, m[2]!.id, m[3]!.id]);
        // A dead row of the chain is no longer pending: the key is still continued behind the rows the caller holds.
        const g2 = await f.storage.claim({ limit: 2, leaseMs: 20_000, continue: { after: [lastSeqOfM(g1)], tokens: [g1.token] } });
        expect(ids(of(g2))).toEqual([m[4]!.id, m[5]!.id]);
        await f.storage.settle(g1.token, [
          { id: m[0]!.id, outcome: "dead", error: "gone" },
          { id: m[2]!.id, outcome: "delivered" },
          { id: m[3]!.id, outcome: "delivered" },
        ]);
        const g3 = await f.storage.claim({ limit: 10, leaseMs: 10_000, continue: { after: [lastSeqOfM(g2)], tokens: [g2.token] } });
        expect(ids(of(g3))).toEqual([m[6]!.id, m[7]!.id]);
      });

      test("maxKeys (capabilities.continueClaims): a claim takes rows of at most maxKeys keys besides the ones it continues, keyless rows uncounted; 0 takes no new key, yet continued keys and keyless rows still come; the keys left are claimed next (without the capability it may be ignored)", async (f) => {
        const rows: NewMessage[] = [];
        for (let i = 0; i < 3; i++) for (const key of ["a", "b", "c", "d"]) rows.push(message(rows.length + 1, { key }));
        const free = [message(20), message(21)];
        for (const m of [...rows.slice(0, 4), free[0]!, ...rows.slice(4), free[1]!]) await enqueueCommitted(f, [m]);
        const of = (key: string): string[] => rows.filter((m) => m.key === key).map((m) => m.id);
        const byKey = (ms: readonly ClaimedMessage[], key: string): string[] => ms.filter((m) => m.key === key).map((m) => m.id);
        const c1 = await f.storage.claim({ limit: 100, leaseMs: 10_000, maxKeys: 2 });
        if (!f.storage.capabilities.continueClaims) {
          // Ignored or honoured: either way, whole due prefixes of the keys it took, and every keyless row.
          for (const key of ["a", "b", "c", "d"]) {
            const got = byKey(c1.messages, key);
            if (got.length > 0) expect(got).toEqual(prefix(f, of(key)));
          }
          expect(c1.messages.filter((m) => m.key === null).map((m) => m.id)).toEqual(ids(free));
          return;
        }
        // The first keys due (a and b committed first), each its whole due prefix; the keyless rows besides.
        expect(byKey(c1.messages, "a")).toEqual(prefix(f, of("a")));
        expect(byKey(c1.messages, "b")).toEqual(prefix(f, of("b")));
        expect(byKey(c1.messages, "c")).toEqual([]);
        expect(byKey(c1.messages, "d")).toEqual([]);
        expect(c1.messages.filter((m) => m.key === null).map((m) => m.id)).toEqual(ids(free));
        // maxKeys 0 while continuing a: a's next row and a new keyless row come; c and d (due) do not.
        const a4 = message(30, { key: "a" }), n3 = message(31);
        await enqueueCommitted(f, [a4, n3]);
        const lastOfA = c1.messages.filter((m) => m.key === "a").at(-1)!;
        const c2 = await f.storage.claim({ limit: 100, leaseMs: 10_000, maxKeys: 0, continue: { after: [lastOfA.seq], tokens: [c1.token] } });
        expect(ids(c2.messages)).toEqual([a4.id, n3.id]);
        expect((await f.storage.claim({ limit: 100, leaseMs: 10_000, maxKeys: 0 })).messages).toEqual([]);
        // Without the limit, the keys left: c and d.
        const c3 = await f.storage.claim({ limit: 100, leaseMs: 10_000 });
        expect(byKey(c3.messages, "c")).toEqual(prefix(f, of("c")));
        expect(byKey(c3.messages, "d")).toEqual(prefix(f, of("d")));
        expect(c3.messages.filter((m) => m.key !== "c" && m.key !== "d")).toEqual([]);
      });

      if (positions) {
        test("claims carry each key's delivery position (prevSeq): the seq of its last delivered message; a retry, a dead letter, a release or a stale settle never moves it", async (f) => {
          const a = [1, 2, 3, 4, 5].map((n) => message(n, { key: "a" }));
          const free = message(6);
          for (const m of [...a.slice(0, 4), free]) await enqueueCommitted(f, [m]);
          const claim = () => f.storage.claim({ limit: 10, leaseMs: 10_000 });
          const positionsOf = (c: { messages: readonly ClaimedMessage[] }) => c.messages.map((m) => [m.id, m.prevSeq]);
          const settleAll = (c: { token: string; messages: readonly ClaimedMessage[] }, chosen: Record<string, "delivered" | "retry" | "dead">) =>
            f.storage.settle(c.token, c.messages.map((m) => {
              const outcome = chosen[m.id] ?? "released";
              if (outcome === "retry") return { id: m.id, outcome, delayMs: 0, error: "503" };
              if (outcome === "dead") return { id: m.id, outcome, error: "poison" };
              return { id: m.id, outcome };
            }));
          // Nothing of key a delivered yet; a keyless row has no position.
          const c1 = await claim();
          expect(positionsOf(c1)).toEqual([...prefix(f, ids(a.slice(0, 4))), free.id].map((id) => [id, null]));
          const seq1 = c1.messages[0]!.seq;
          await settleAll(c1, { [a[0]!.id]: "delivered", [free.id]: "delivered" });
          // a1 delivered (in a settle that also released rows): every row of key a in the next claim carries its seq.
          const c2 = await claim();
          expect(positionsOf(c2)).toEqual(prefix(f, ids(a.slice(1, 4))).map((id) => [id, seq1]));
          await settleAll(c2, { [a[1]!.id]: "retry" });
          const c3 = await claim(); // a2 retried: unchanged
          expect(positionsOf(c3)).toEqual(prefix(f, ids(a.slice(1, 4))).map((id) => [id, seq1]));
          await settleAll(c3, { [a[1]!.id]: "dead" });
          const c4 = await claim(); // a2 dead: unchanged
          expect(positionsOf(c4)).toEqual(prefix(f, ids(a.slice(2, 4))).map((id) => [id, seq1]));
          const seq3 = c4.messages[0]!.seq;
          await settleAll(c4, { [a[2]!.id]: "delivered" });
          // A settle with a token that no longer holds the row changes nothing.
          expect((await f.storage.settle(crypto.randomUUID(), [{ id: a[3]!.id, outcome: "delivered" }])).lost).toEqual([a[3]!.id]);
          const other = await f.another(); // positions are in the database: another connection reads them
          const c5 = await other.claim({ limit: 10, leaseMs: 10_000 });
          expect(positionsOf(c5)).toEqual([[a[3]!.id, seq3]]);
          await other.settle(c5.token, [{ id: a[3]!.id, outcome: "delivered" }]); // a settle of delivered rows only
          await enqueueCommitted(f, [a[4]!]);
          const c6 = await claim();
          expect(positionsOf(c6)).toEqual([[a[4]!.id, c5.messages[0]!.seq]]);
          expect(c5.messages[0]!.seq).toBeGreaterThan(seq3);
        });
      }

      test("a delayed head delays its key; a dead-lettered head unblocks it", async (f) => {
        const h = message(1, { key: "k", delayMs: 300 });
        const rest = [message(2, { key: "k" }), message(3, { key: "k" })];
        await enqueueCommitted(f, [h]);
        await enqueueCommitted(f, rest);
        expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
        await sleep(400);
        const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        expect(ids(c.messages)).toEqual([h.id]);
        await f.storage.settle(c.token, [{ id: h.id, outcome: "dead", error: "poison" }]);
        const next = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
        expect(ids(next.messages)).toEqual(prefix(f, ids(rest)));
      });

      if (semantics === 1) {
        test("a replayed dead letter keeps its id and regains its place in its key's order", async (f) => {
          const ms = [message(1, { key: "k" }), message(2, { key: "k" }), message(3, { key: "k" })];
          await enqueueCommitted(f, ms);
          const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          await f.storage.settle(c.token, [{ id: ms[0]!.id, outcome: "dead", error: "poison" }]);
          expect(await f.storage.replayDead(ms[0]!.id)).toBe(true);
          expect(await f.storage.replayDead(ms[0]!.id)).toBe(false);
          expect(await f.storage.replayDead(uuidv7())).toBe(false);
          const again = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(again.messages)).toEqual(prefix(f, ids(ms)));
          expect(again.messages[0]!.attempts).toBe(1);
          expect((await f.storage.stats()).dead).toBe(0);
        });
      } else {
        // Decision 1 (issue 9 item 4): a replay re-enters at the tail of its key.
        test("a replayed dead letter keeps its id, payload and headers and re-enters at the tail of its key", async (f) => {
          const ms = [
            message(1, { key: "k", headers: JSON.stringify({ "x-trace": "t1" }) }),
            message(2, { key: "k" }),
            message(3, { key: "k" }),
          ];
          await enqueueCommitted(f, ms);
          const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          expect(ids(c.messages)).toEqual([ms[0]!.id]);
          await f.storage.settle(c.token, [{ id: ms[0]!.id, outcome: "dead", error: "poison" }]);
          expect(await f.storage.replayDead(ms[0]!.id)).toBe(true);
          expect(await f.storage.replayDead(ms[0]!.id)).toBe(false);
          expect(await f.storage.replayDead(uuidv7())).toBe(false);
          expect((await f.storage.stats()).dead).toBe(0);
          const later = message(4, { key: "k" });
          await enqueueCommitted(f, [later]);
          const order = [ms[1]!.id, ms[2]!.id, ms[0]!.id, later.id];
          const got: ClaimedMessage[] = [];
          for (let i = 0; i < 8 && got.length < order.length; i++) {
            const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
            expect(ids(claim.messages)).toEqual(prefix(f, order.slice(got.length)));
            got.push(...claim.messages);
            await f.storage.settle(claim.token, claim.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
          }
          expect(ids(got)).toEqual(order);
          const replayed = got[2]!;
          expect(replayed.attempts).toBe(1);
          expect(replayed.payload).toEqual({ n: 1 });
          expect(replayed.headers).toEqual({ "x-trace": "t1" });
          expect(replayed.seq).toBeGreaterThan(got[1]!.seq);
          expect(replayed.seq).toBeLessThan(got[3]!.seq);
        });

        test("a replayed row is not claimable while a later message of its key is leased by another claimer, and comes after it", async (f) => {
          const k1 = message(1, { key: "k" });
          const k2 = message(2, { key: "k" });
          await enqueueCommitted(f, [k1, k2]);
          const c1 = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
          expect(ids(c1.messages)).toEqual([k1.id]);
          await f.storage.settle(c1.token, [{ id: k1.id, outcome: "dead", error: "poison" }]);
          const other = await f.another();
          const c2 = await other.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(c2.messages)).toEqual([k2.id]);
          // k2 is in flight at the other claimer: the replayed k1 must wait behind it.
          expect(await f.storage.replayDead(k1.id)).toBe(true);
          expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
          expect((await other.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
          expect(await f.storage.hasDue()).toBe(false);
          // k2 backs off: still ahead of k1, so k1 stays blocked.
          await other.settle(c2.token, [{ id: k2.id, outcome: "retry", delayMs: 300, error: "HTTP 503" }]);
          expect((await f.storage.claim({ limit: 10, leaseMs: 10_000 })).messages).toHaveLength(0);
          await sleep(400);
          const c3 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(c3.messages)).toEqual(prefix(f, [k2.id, k1.id]));
          expect(c3.messages[0]!.attempts).toBe(2);
          await f.storage.settle(c3.token, [{ id: k2.id, outcome: "delivered" }]);
          if (c3.messages.length === 1) {
            const c4 = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
            expect(ids(c4.messages)).toEqual([k1.id]);
            expect(c4.messages[0]!.attempts).toBe(1);
          } else {
            expect(c3.messages[1]!.attempts).toBe(1);
          }
        });
      }
    });

    describe("dead letters and purge", () => {
      test("dead letters page oldest first with a cursor; purge is bounded", async (f) => {
        const ms = Array.from({ length: 5 }, (_, i) => message(i));
        await enqueueCommitted(f, ms);
        const c = await f.storage.claim({ limit: 5, leaseMs: 10_000 });
        await f.storage.settle(c.token, ms.map((m, i) => ({ id: m.id, outcome: "dead" as const, error: `e${i}` })));
        const seen: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page = await f.storage.listDead({ limit: 2, cursor });
          expect(page.items.length).toBeLessThanOrEqual(2);
          seen.push(...ids(page.items));
          for (const d of page.items) {
            expect(d.deadAt).toBeGreaterThanOrEqual(d.createdAt);
            expect(d.attempts).toBe(1);
            expect(d.topic).toBe("test.event");
          }
          cursor = page.cursor;
          pages++;
        } while (cursor !== null && pages < 10);
        expect(seen).toEqual(ids(ms));
        expect(pages).toBe(3);
        expect((await f.storage.listDead({ limit: 10 })).items[4]!.lastError).toBe("e4");
        await expectError(f.storage.listDead({ limit: 2, cursor: "'; drop table x; --" }), "VALIDATION");

        const future = (await f.storage.stats()).now + 60_000;
        expect(await f.storage.purge({ status: "dead", olderThan: future, limit: 2 })).toBe(2);
        expect(await f.storage.purge({ status: "dead", olderThan: future, limit: 2 })).toBe(2);
        expect(await f.storage.purge({ status: "dead", olderThan: future, limit: 2 })).toBe(1);
        expect(await f.storage.purge({ status: "dead", olderThan: future, limit: 2 })).toBe(0);
        expect((await f.storage.stats()).dead).toBe(0);
      });

      test("purge keeps dead letters newer than olderThan", async (f) => {
        await enqueueCommitted(f, [message(1)]);
        const c = await f.storage.claim({ limit: 1, leaseMs: 10_000 });
        await f.storage.settle(c.token, [{ id: c.messages[0]!.id, outcome: "dead", error: "x" }]);
        const past = c.now - 60_000;
        expect(await f.storage.purge({ status: "dead", olderThan: past, limit: 100 })).toBe(0);
        expect((await f.storage.stats()).dead).toBe(1);
      });
    });

    describe("stats", () => {
      test("counts and database counters are right, and read the same from another connection", async (f) => {
        const ms = [message(1), message(2), message(3), message(4, { delayMs: 60_000 })];
        await enqueueCommitted(f, ms);
        await sleep(30);
        const c = await f.storage.claim({ limit: 3, leaseMs: 10_000 });
        expect(c.messages).toHaveLength(3);
        let s = await f.storage.stats();
        expect(s.pending).toBe(4);
        expect(s.leased).toBe(3);
        expect(s.due).toBe(0);
        expect(s.oldestPendingAgeMs!).toBeGreaterThanOrEqual(25);
        await f.storage.settle(c.token, [
          { id: ms[0]!.id, outcome: "delivered" },
          { id: ms[1]!.id, outcome: "retry", delayMs: 60_000, error: "503" },
          { id: ms[2]!.id, outcome: "dead", error: "400" },
        ]);
        const other = await f.another();
        s = await other.stats({ windowMs: 300_000 });
        expect(s.pending).toBe(2);
        expect(s.leased).toBe(0);
        expect(s.dead).toBe(1);
        expect(s.due).toBe(0);
        expect(s.window.windowMs).toBe(300_000);
        expect(s.window.delivered).toBe(1);
        expect(s.window.retried).toBe(1);
        expect(s.window.dead).toBe(1);
        expect(s.window.avgLatencyMs!).toBeGreaterThanOrEqual(25);
        expect(s.window.maxLatencyMs!).toBeGreaterThanOrEqual(s.window.avgLatencyMs!);
        expect(s.window.avgLatencyMs!).toBeLessThan(60_000);
        expect(Math.abs(s.now - Date.now())).toBeLessThan(60_000);
      });

      test("an empty outbox reports zeros and nulls", async (f) => {
        const s = await f.storage.stats();
        expect(s.pending).toBe(0);
        expect(s.due).toBe(0);
        expect(s.leased).toBe(0);
        expect(s.dead).toBe(0);
        expect(s.oldestPendingAgeMs).toBeNull();
        if (semantics === 2) expect(s.oldestDueAgeMs).toBeNull();
        expect(s.window.delivered).toBe(0);
        expect(s.window.avgLatencyMs).toBeNull();
        expect(s.window.maxLatencyMs).toBeNull();
      });

      if (semantics === 2) {
        // Decision 3: oldestDueAgeMs = now − min(available_at) over pending rows that are due.
        test("oldestDueAgeMs counts a delayed or backing-off row only from when it is due, and a leased row not at all", async (f) => {
          const delayed = message(1, { delayMs: 60_000 });
          const r = message(2);
          await enqueueCommitted(f, [delayed]);
          let s = await f.storage.stats();
          expect(s.pending).toBe(1);
          expect(s.oldestPendingAgeMs === null).toBe(false);
          expect(s.oldestDueAgeMs).toBeNull();
          await enqueueCommitted(f, [r]);
          await sleep(300);
          s = await f.storage.stats();
          expect(s.oldestDueAgeMs!).toBeGreaterThanOrEqual(250);
          const c = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
          expect(ids(c.messages)).toEqual([r.id]);
          expect((await f.storage.stats()).oldestDueAgeMs).toBeNull(); // leased
          await f.storage.settle(c.token, [{ id: r.id, outcome: "retry", delayMs: 100, error: "HTTP 503" }]);
          expect((await f.storage.stats()).oldestDueAgeMs).toBeNull(); // backing off
          await sleep(250);
          s = await f.storage.stats();
          expect(s.due).toBe(1);
          // Due since settle + 100 ms, which is at least 400 ms after the delayed row's enqueue.
          expect(s.oldestDueAgeMs!).toBeGreaterThanOrEqual(100);
          expect(s.oldestPendingAgeMs! - s.oldestDueAgeMs!).toBeGreaterThanOrEqual(350);
        });
      }
    });

    describe("relay on this storage", () => {
      test("concurrent relays deliver every message exactly once, each key in commit order", async (f) => {
        const keys = ["k0", "k1", "k2", "k3", "k4"];
        const total = Math.max(100, Math.round(600 * scale));
        const all: NewMessage[] = [];
        for (let i = 0; i < total; i++) all.push(message(i, { key: i % 6 === 5 ? null : keys[i % 5]! }));
        for (let i = 0; i < all.length; i += 50) await enqueueCommitted(f, all.slice(i, i + 50));
        let rolls = 0;
        const transport = recording((m) => (++rolls % 7 === 0 && m.attempts < 3) ? { status: "retry", error: "flaky" } : { status: "delivered" });
        const storages = [f.storage, await f.another(), await f.another()];
        await Promise.all(storages.map(async (storage) => {
          const relay = createRelay({
            outbox: createOutbox({ storage }),
            transport,
            batchSize: 25,
            concurrency: 4,
            leaseMs: 20_000,
            sendTimeoutMs: 5_000,
            backoff: { baseMs: 5, maxMs: 20, minMs: 1 },
          });
          for (let i = 0; i < 2_000; i++) {
            const r = await relay.drain({ budgetMs: 5_000 });
            if (r.claimed === 0 && (await storage.stats()).pending === 0) return;
            if (r.claimed === 0) await sleep(5);
          }
        }));
        expect(transport.delivered).toHaveLength(total);
        expect(new Set(ids(transport.delivered)).size).toBe(total);
        for (const k of keys) {
          const got = transport.delivered.filter((m) => m.key === k).map(payloadN);
          const want = all.filter((m) => m.key === k).map((m) => JSON.parse(m.payload).n as number);
          expect(got).toEqual(want);
        }
        expect((await f.storage.stats()).pending).toBe(0);
      }, 120_000);

      test("retries until maxAttempts, then dead-letters; replay delivers with the same id", async (f) => {
        const m = message(1, { key: "k" });
        const follower = message(2, { key: "k" });
        await enqueueCommitted(f, [m, follower]);
        let fail = true;
        const transport = recording((x) => fail && x.id === m.id ? { status: "retry", error: "HTTP 503" } : { status: "delivered" });
        const relay = createRelay({
          outbox: createOutbox({ storage: f.storage }),
          transport,
          maxAttempts: 3,
          leaseMs: 2_000,
          sendTimeoutMs: 500,
          backoff: { baseMs: 1, maxMs: 1, minMs: 0 },
        });
        const report = await relay.drain({ budgetMs: 5_000 });
        expect(report.retried).toBe(2);
        expect(report.dead).toBe(1);
        expect(report.delivered).toBe(1);
        expect(ids(transport.attempts)).toEqual([m.id, m.id, m.id, follower.id]);
        const dead = await f.storage.listDead({ limit: 10 });
        expect(ids(dead.items)).toEqual([m.id]);
        expect(dead.items[0]!.lastError).toContain("HTTP 503");
        fail = false;
        expect(await createOutbox({ storage: f.storage }).deadLetters.replay(m.id)).toBe(true);
        const again = await relay.drain({ budgetMs: 5_000 });
        expect(again.delivered).toBe(1);
        expect(ids(transport.delivered)).toEqual([follower.id, m.id]);
        expect((await f.storage.stats()).dead).toBe(0);
      });
    });
  });
}

interface Recording extends Transport {
  readonly sent: ClaimedMessageLike[];
  readonly attempts: ClaimedMessageLike[];
  readonly delivered: ClaimedMessageLike[];
}
type ClaimedMessageLike = Pick<ClaimedMessage, "id" | "key" | "payload" | "attempts">;

/** A minimal recording transport, local to the suite so it depends on nothing but the contracts. */
function recording(decide?: (m: ClaimedMessageLike) => DeliveryOutcome): Recording {
  const attempts: ClaimedMessageLike[] = [];
  const delivered: ClaimedMessageLike[] = [];
  return {
    name: "conformance-recording",
    sent: attempts,
    attempts,
    delivered,
    send(messages) {
      return Promise.resolve(messages.map((m) => {
        attempts.push(m);
        const o = decide ? decide(m) : { status: "delivered" as const };
        if (o.status === "delivered") delivered.push(m);
        return o;
      }));
    },
  };
}
