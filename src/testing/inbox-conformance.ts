/**
 * The inbox conformance suite: every case an `InboxStorage` must pass, written once against the runner-neutral
 * harness of the storage suite, so vitest, `bun test` and `deno test` run the same cases.
 *
 * @module
 */
import { isOutboxError, type OutboxErrorCode } from "../errors.ts";
import { createInbox, DEFAULT_INBOX_RETENTION_MS, type HandleResult, type Inbox, type InboxStorage } from "../inbox.ts";
import { uuidv7 } from "../message.ts";
import type { ConformanceHarness, FixtureTransaction } from "./harness.ts";

/** One fresh, migrated, empty inbox storage (plus a business table) for one test. */
export interface InboxConformanceFixture<Tx, Stmt> {
  /** The storage under test, already migrated and empty. */
  storage: InboxStorage<Tx, Stmt>;
  /** Opens a write transaction on the storage's database (batch-only storages: reject; it is not called). */
  begin(): Promise<FixtureTransaction<Tx>>;
  /** Writes one business effect of `messageId` inside `tx` (e.g. inserts a row into a table without unique keys). */
  effect(tx: Tx, messageId: string): Promise<void>;
  /** The same effect as a native statement, for batch-capable storages. */
  effectStatement?(messageId: string): Stmt;
  /** A statement that always fails (e.g. an insert into a missing table), for batch-capable storages. */
  failingStatement?(): Stmt;
  /** How many committed effects `messageId` has. */
  effects(messageId: string): Promise<number>;
  /** Makes every recorded row and key position look `ms` older (backdates them, or moves the storage's clock). */
  age(ms: number): Promise<void>;
  /** Another storage on the same data through a separate client or connection when the database has them. */
  another(): Promise<InboxStorage<Tx, Stmt>>;
  /** Releases clients, files and connections. */
  close(): Promise<void>;
}

/** What {@link inboxConformance} needs to know about the adapter. */
export interface InboxConformanceOptions<Tx, Stmt> {
  /** Shown in test names, e.g. "postgres". */
  name: string;
  /** Makes a fresh fixture; called once per test. */
  create(): Promise<InboxConformanceFixture<Tx, Stmt>>;
}

/**
 * Registers the inbox conformance cases for one inbox storage adapter.
 *
 * @param t the runner's `describe`, `it` and `expect`
 * @param options the adapter's name and fixture factory
 * @example
 * ```ts
 * import { describe, expect, it } from "vitest";
 * import { inboxConformance } from "edge-outbox/testing";
 * import { memoryInbox, type MemoryInboxTransaction } from "edge-outbox/memory";
 *
 * inboxConformance<MemoryInboxTransaction, never>({ describe, it, expect }, {
 *   name: "memory",
 *   async create() {
 *     let offset = 0;
 *     const storage = memoryInbox({ now: () => Date.now() + offset });
 *     const effects = new Map<string, number>();
 *     return {
 *       storage,
 *       begin: async () => storage.begin(),
 *       effect: async (tx, id) => tx.onCommit(() => effects.set(id, (effects.get(id) ?? 0) + 1)),
 *       effects: async (id) => effects.get(id) ?? 0,
 *       age: async (ms) => void (offset += ms),
 *       another: async () => memoryInbox({ shareWith: storage }),
 *       close: async () => {},
 *     };
 *   },
 * });
 * ```
 */
export function inboxConformance<Tx, Stmt>(t: ConformanceHarness, options: InboxConformanceOptions<Tx, Stmt>): void {
  const { describe, it, expect } = t;
  type F = InboxConformanceFixture<Tx, Stmt>;

  const test = (name: string, fn: (f: F) => Promise<void>, timeoutMs = 30_000): void =>
    it(name, async () => {
      const f = await options.create();
      try {
        await fn(f);
      } finally {
        await f.close();
      }
    }, timeoutMs);

  async function expectError(p: Promise<unknown> | (() => unknown), code: OutboxErrorCode): Promise<void> {
    let caught: unknown;
    try {
      await (typeof p === "function" ? p() : p);
    } catch (e) {
      caught = e;
    }
    expect(isOutboxError(caught, code)).toBe(true);
  }

  /** Handles one delivery in its own transaction, the way the storage supports. */
  async function deliver(f: F, inbox: Inbox<Tx, Stmt>, id: string): Promise<HandleResult> {
    if (f.storage.capabilities.transaction) return await inbox.process(id, (tx) => f.effect(tx, id));
    return await inbox.handleBatch(id, () => [f.effectStatement!(id)]);
  }

  describe(`inbox conformance: ${options.name}`, () => {
    test("a new message is processed once; its redelivery is a duplicate that runs nothing", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const id = uuidv7();
      expect(await inbox.isProcessed(id)).toBe(false);
      expect(await deliver(f, inbox, id)).toBe("processed");
      expect(await inbox.isProcessed(id)).toBe(true);
      expect(await deliver(f, inbox, id)).toBe("duplicate");
      expect(await deliver(f, inbox, id)).toBe("duplicate");
      expect(await f.effects(id)).toBe(1);
    });

    test("handle() in the caller's transaction: a rollback forgets the message and its effects", async (f) => {
      if (!f.storage.capabilities.transaction) return; // batch-only (D1): covered by the statement-form case
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const id = uuidv7();
      const a = await f.begin();
      let ran = 0;
      expect(await inbox.handle(a.tx, id, async (tx, info) => {
        ran++;
        expect(info.messageId).toBe(id);
        expect(info.consumer).toBe("billing");
        await f.effect(tx, id);
      })).toBe("processed");
      await a.rollback();
      expect(await inbox.isProcessed(id)).toBe(false);
      expect(await f.effects(id)).toBe(0);

      const b = await f.begin();
      expect(await inbox.handle(b.tx, id, (tx) => f.effect(tx, id))).toBe("processed");
      await b.commit();
      const c = await f.begin();
      expect(await inbox.handle(c.tx, id, () => {
        ran++;
      })).toBe("duplicate");
      await c.commit();
      expect(ran).toBe(1);
      expect(await f.effects(id)).toBe(1);
    });

    test("a failing handler records nothing, and the redelivery processes the message", async (f) => {
      if (!f.storage.capabilities.transaction) return;
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const id = uuidv7();
      let caught: unknown;
      try {
        await inbox.process(id, async (tx) => {
          await f.effect(tx, id);
          throw new Error("handler failed");
        });
      } catch (e) {
        caught = e;
      }
      expect((caught as Error).message).toBe("handler failed");
      expect(await inbox.isProcessed(id)).toBe(false);
      expect(await f.effects(id)).toBe(0);
      expect(await deliver(f, inbox, id)).toBe("processed");
      expect(await f.effects(id)).toBe(1);
    });

    test("two consumers each process the same message once", async (f) => {
      const billing = createInbox({ storage: f.storage, consumer: "billing" });
      const emails = createInbox({ storage: f.storage, consumer: "emails" });
      const id = uuidv7();
      expect(await deliver(f, billing, id)).toBe("processed");
      expect(await deliver(f, emails, id)).toBe("processed");
      expect(await deliver(f, billing, id)).toBe("duplicate");
      expect(await deliver(f, emails, id)).toBe("duplicate");
      expect(await f.effects(id)).toBe(2);
    });

    test("concurrent deliveries of one message, through two clients, apply its effects once", async (f) => {
      const other = await f.another();
      const inboxes = [f.storage, other].map((storage) => createInbox({ storage, consumer: "billing" }));
      for (let round = 0; round < 5; round++) {
        const id = uuidv7();
        const results = await Promise.all(Array.from({ length: 6 }, (_, i) => deliver(f, inboxes[i % 2]!, id)));
        expect(results.filter((r) => r === "processed")).toHaveLength(1);
        expect(results.filter((r) => r === "duplicate")).toHaveLength(5);
        expect(await f.effects(id)).toBe(1);
      }
    });

    test("a delivery waits for a concurrent uncommitted one of the same message", async (f) => {
      if (!f.storage.capabilities.transaction) return;
      const other = await f.another();
      const first = createInbox({ storage: f.storage, consumer: "billing" });
      const second = createInbox({ storage: other, consumer: "billing" });
      for (const outcome of ["commit", "rollback"] as const) {
        const id = uuidv7();
        const a = await f.begin();
        expect(await first.handle(a.tx, id, (tx) => f.effect(tx, id))).toBe("processed");
        let settled = false;
        const late = second.process(id, (tx) => f.effect(tx, id)).finally(() => (settled = true));
        await new Promise((r) => setTimeout(r, 150));
        expect(settled).toBe(false); // blocked by the first transaction's row
        if (outcome === "commit") await a.commit();
        else await a.rollback();
        expect(await late).toBe(outcome === "commit" ? "duplicate" : "processed");
        expect(await f.effects(id)).toBe(1);
      }
    });

    test("many distinct messages are each processed once", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const ids = Array.from({ length: 120 }, () => uuidv7());
      for (const id of ids) expect(await deliver(f, inbox, id)).toBe("processed");
      for (const id of ids.slice(0, 40)) expect(await deliver(f, inbox, id)).toBe("duplicate");
      for (const id of ids.slice(0, 40)) expect(await f.effects(id)).toBe(1);
    });

    test("any id form is accepted (QStash msg_ ids, webhook ids); bad ids are VALIDATION and record nothing", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      for (const id of ["msg_26hZCxZCuWyyTWPmSVBrNCtiJG", "evt-1", "x".repeat(255), "é✓"]) {
        expect(await deliver(f, inbox, id)).toBe("processed");
        expect(await deliver(f, inbox, id)).toBe("duplicate");
      }
      for (const bad of ["", "x".repeat(256), "a\nb", 42 as unknown as string]) {
        await expectError(() => deliver(f, inbox, bad), "VALIDATION");
        await expectError(() => inbox.isProcessed(bad), "VALIDATION");
      }
      await expectError(() => createInbox({ storage: f.storage, consumer: "" }), "CONFIG");
      await expectError(() => createInbox({ storage: f.storage, consumer: "bad consumer" }), "CONFIG");
      await expectError(() => createInbox({ storage: f.storage, consumer: "ok", retentionMs: 5 }), "CONFIG");
      expect(createInbox({ storage: f.storage, consumer: "ok" }).retentionMs).toBe(DEFAULT_INBOX_RETENTION_MS);
    });

    test("purge deletes only rows older than the window, at most `limit` per call", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing", retentionMs: 86_400_000 });
      const otherConsumer = createInbox({ storage: f.storage, consumer: "emails", retentionMs: 86_400_000 });
      const old = Array.from({ length: 5 }, () => uuidv7());
      for (const id of old) await deliver(f, inbox, id);
      const foreign = uuidv7();
      await deliver(f, otherConsumer, foreign);
      await f.age(2 * 86_400_000);
      const fresh = uuidv7();
      await deliver(f, inbox, fresh);
      expect(await inbox.purge({ limit: 2 })).toBe(2);
      expect(await inbox.purge({ limit: 2 })).toBe(2);
      expect(await inbox.purge({ limit: 2 })).toBe(1);
      expect(await inbox.purge({ limit: 2 })).toBe(0);
      for (const id of old) expect(await inbox.isProcessed(id)).toBe(false);
      expect(await inbox.isProcessed(fresh)).toBe(true);
      expect(await otherConsumer.isProcessed(foreign)).toBe(true); // another consumer's rows are its own business
      await expectError(() => inbox.purge({ limit: 0 }), "VALIDATION");
    });

    test("migrate is idempotent and keeps the data", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const id = uuidv7();
      await deliver(f, inbox, id);
      await f.storage.migrate();
      await f.storage.migrate();
      expect(await deliver(f, inbox, id)).toBe("duplicate");
    });

    test("statement form: the batch is applied once; a duplicate batch applies nothing", async (f) => {
      if (!f.storage.capabilities.batchStatement) {
        const inbox = createInbox({ storage: f.storage, consumer: "billing" });
        await expectError(() => inbox.statement(uuidv7()), "CONFIG");
        return;
      }
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      const id = uuidv7();
      expect(await inbox.handleBatch(id, [f.effectStatement!(id)])).toBe("processed");
      expect(await inbox.handleBatch(id, [f.effectStatement!(id)])).toBe("duplicate");
      // The raw statement in the caller's own batch: the batch fails as a whole on a duplicate.
      let failed = false;
      try {
        await f.storage.runBatch!([inbox.statement(id), f.effectStatement!(id)]);
      } catch {
        failed = true;
      }
      expect(failed).toBe(true);
      expect(await f.effects(id)).toBe(1);
      if (f.failingStatement) {
        const other = uuidv7();
        await expectError(inbox.handleBatch(other, [f.effectStatement!(other), f.failingStatement()]), "STORAGE");
        expect(await inbox.isProcessed(other)).toBe(false);
        expect(await f.effects(other)).toBe(0);
      }
    });

    test("key order: a late (older) message is flagged stale; strict holds a message whose predecessor is missing", async (f) => {
      const inbox = createInbox({ storage: f.storage, consumer: "billing" });
      if (!f.storage.capabilities.keyOrder || !f.storage.capabilities.transaction) {
        if (f.storage.capabilities.transaction) {
          await expectError(inbox.process(uuidv7(), () => {}, { order: { key: "k", seq: 1 } }), "CONFIG");
        }
        return;
      }
      const seen: { id: string; stale: boolean; gap: boolean; lastSeq: number | null }[] = [];
      const run = (id: string, order: { key: string; seq: number; prevSeq?: number; strict?: boolean; force?: boolean }) =>
        inbox.process(id, async (tx, info) => {
          seen.push({ id, stale: info.order!.stale, gap: info.order!.gap, lastSeq: info.order!.lastSeq });
          await f.effect(tx, id);
        }, { order });
      const [a, b, c, d, e] = [uuidv7(), uuidv7(), uuidv7(), uuidv7(), uuidv7()];
      expect(await run(b, { key: "k", seq: 20 })).toBe("processed");
      expect(await run(a, { key: "k", seq: 10 })).toBe("processed"); // arrives late
      expect(seen).toEqual([{ id: b, stale: false, gap: false, lastSeq: null }, { id: a, stale: true, gap: false, lastSeq: 20 }]);
      // strict: predecessor 30 not processed (position 20) → held, nothing recorded
      expect(await run(d, { key: "k", seq: 40, prevSeq: 30, strict: true })).toBe("held");
      expect(await inbox.isProcessed(d)).toBe(false);
      expect(await run(c, { key: "k", seq: 30, prevSeq: 20, strict: true })).toBe("processed");
      expect(await run(d, { key: "k", seq: 40, prevSeq: 30, strict: true })).toBe("processed");
      // a redelivery of a processed message is a duplicate, never held
      expect(await run(c, { key: "k", seq: 30, prevSeq: 20, strict: true })).toBe("duplicate");
      // a forced message (hold budget spent) is processed with gap: true
      expect(await run(e, { key: "k", seq: 60, prevSeq: 50, strict: true })).toBe("held");
      expect(await run(e, { key: "k", seq: 60, prevSeq: 50, strict: true, force: true })).toBe("processed");
      expect(seen.at(-1)).toEqual({ id: e, stale: false, gap: true, lastSeq: 40 });
      // a key never seen is not held (nothing is known about its predecessor)
      expect(await run(uuidv7(), { key: "fresh", seq: 7, prevSeq: 3, strict: true })).toBe("processed");
      // keys are per consumer
      const other = createInbox({ storage: f.storage, consumer: "emails" });
      expect(await other.process(uuidv7(), (_tx, info) => void expect(info.order!.lastSeq).toBeNull(), { order: { key: "k", seq: 5 } }))
        .toBe("processed");
      await expectError(run(uuidv7(), { key: "", seq: 1 }), "VALIDATION");
      await expectError(run(uuidv7(), { key: "k", seq: -1 }), "VALIDATION");
      await expectError(run(uuidv7(), { key: "k", seq: 5, prevSeq: 5 }), "VALIDATION");
    });
  });
}
