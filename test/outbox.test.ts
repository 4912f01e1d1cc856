import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { createOutbox, createRelay, defineTopic, type EnqueueOptions, evaluateHealth, isOutboxError, scheduledDrain, type StandardSchemaV1 } from "../mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { caught, codeOf, event, memoryOutbox } from "./helpers.ts";

describe("enqueue: bad input gets a typed error and changes nothing", () => {
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  const open = defineTopic("open.topic", v.any());
  const cases: Array<[string, unknown, RegExp]> = [
    ["a BigInt", { n: 1n }, /BigInt/],
    ["a cycle", cyclic, /cycle/],
    ["a function", { n: 1, f: () => 1 }, /function/],
    ["a symbol", { n: Symbol("x") }, /symbol/],
    ["NaN", { n: Number.NaN }, /NaN/],
    ["Infinity", [Number.POSITIVE_INFINITY], /Infinity/],
    ["a Map", { n: new Map([[1, 2]]) }, /Map/],
    ["a class instance", { n: new (class Money { amount = 1 })() }, /Money/],
    ["undefined at top level", undefined, /undefined/],
    ["undefined in an array", [1, undefined], /undefined/],
  ];
  for (const [what, payload, message] of cases) {
    it(`rejects ${what}`, async () => {
      const storage = memoryStorage();
      const outbox = createOutbox({ storage, topics: [open] });
      const h = storage.begin();
      const e = await caught(outbox.enqueue(h.tx, open, payload));
      expect(isOutboxError(e, "VALIDATION")).toBe(true);
      expect((e as Error).message).toMatch(message);
      await h.commit();
      expect(storage.count().pending).toBe(0);
    });
  }

  it("rejects a payload larger than maxPayloadBytes, counting UTF-8 bytes", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [open], maxPayloadBytes: 20 });
    const h = storage.begin();
    await outbox.enqueue(h.tx, open, "é".repeat(8)); // "\"" + 16 bytes + "\"" = 18 bytes
    const e = await caught(outbox.enqueue(h.tx, open, "é".repeat(10))); // 22 bytes
    expect(isOutboxError(e, "VALIDATION")).toBe(true);
    expect((e as Error).message).toMatch(/22 bytes.*maxPayloadBytes \(20\)/);
    await h.commit();
    expect(storage.count().pending).toBe(1);
  });

  it("rejects an unknown topic, by object or by name, when topics are declared", async () => {
    const { storage, outbox } = memoryOutbox();
    const other = defineTopic("other.topic", v.object({ n: v.number() }));
    const h = storage.begin();
    // @ts-expect-error other is not a declared topic
    const e1 = await caught(outbox.enqueue(h.tx, other, { n: 1 }));
    expect(isOutboxError(e1, "VALIDATION")).toBe(true);
    expect((e1 as Error).message).toMatch(/unknown topic "other.topic".*"test.event"/);
    // @ts-expect-error not a declared name
    expect(await codeOf(outbox.enqueue(h.tx, "nope", { n: 1 }))).toBe("VALIDATION");
    await h.commit();
    expect(storage.count().pending).toBe(0);
  });

  it("validates a payload against its topic schema, by object and by name", async () => {
    const { storage, outbox } = memoryOutbox();
    const h = storage.begin();
    // @ts-expect-error n must be a number
    const e = await caught(outbox.enqueue(h.tx, event, { n: "1" }));
    expect(isOutboxError(e, "VALIDATION")).toBe(true);
    expect((e as Error).message).toMatch(/payload for topic "test.event" is invalid: n: /);
    // @ts-expect-error by name, still typed
    expect(await codeOf(outbox.enqueue(h.tx, "test.event", { n: "1" }))).toBe("VALIDATION");
    const id = await outbox.enqueue(h.tx, "test.event", { n: 1 });
    await h.commit();
    expect(storage.count().pending).toBe(1);
    const claim = await storage.claim({ limit: 5, leaseMs: 1000 });
    expect(claim.messages.map((m) => m.id)).toEqual([id]);
  });

  it("refuses a schema that validates asynchronously with CONFIG", async () => {
    const asyncTopic = defineTopic("async.topic", v.pipeAsync(v.object({ n: v.number() }), v.checkAsync(async () => true)));
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [asyncTopic] });
    const h = storage.begin();
    const e = await caught(outbox.enqueue(h.tx, asyncTopic, { n: 1 }));
    expect(isOutboxError(e, "CONFIG")).toBe(true);
    expect((e as Error).message).toMatch(/asynchronously/);
    await h.commit();
    expect(storage.count().pending).toBe(0);
  });

  it("stores the schema's output (transforms applied) and Dates as ISO strings", async () => {
    const t = defineTopic("user.created", v.object({ name: v.pipe(v.string(), v.trim()), at: v.date() }));
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [t] });
    const h = storage.begin();
    await outbox.enqueue(h.tx, t, { name: "  Ada ", at: new Date("2026-01-02T03:04:05.000Z") });
    await h.commit();
    const [m] = (await storage.claim({ limit: 1, leaseMs: 1000 })).messages;
    expect(m!.payload).toEqual({ name: "Ada", at: "2026-01-02T03:04:05.000Z" });
  });

  it("rejects bad keys, headers, delays and ids", async () => {
    const { storage, outbox } = memoryOutbox();
    const h = storage.begin();
    for (const opts of [
      { key: "" },
      { key: "k".repeat(256) },
      { delayMs: -1 },
      { delayMs: 1.5 },
      { headers: { "bad header": "x" } },
      { headers: { "x-ok": "line\nbreak" } },
      { headers: { "x-num": 5 as unknown as string } },
      { id: "not-a-uuid" },
    ] as EnqueueOptions[]) {
      expect(await codeOf(outbox.enqueue(h.tx, event, { n: 1 }, opts))).toBe("VALIDATION");
    }
    await h.commit();
    expect(storage.count().pending).toBe(0);
  });

  it("accepts any valid topic when none are declared, and checks names", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage });
    const h = storage.begin();
    await outbox.enqueue(h.tx, "free.topic", { anything: [1, "two"] });
    expect(await codeOf(outbox.enqueue(h.tx, "bad topic; drop", {}))).toBe("VALIDATION");
    await h.commit();
    expect(storage.count().pending).toBe(1);
  });
});

describe("createOutbox", () => {
  it("rejects bad options with CONFIG naming the field", async () => {
    const storage = memoryStorage();
    const e = await caught(() => createOutbox({ storage, maxPayloadBytes: -5 }));
    expect(isOutboxError(e, "CONFIG")).toBe(true);
    expect((e as Error).message).toMatch(/maxPayloadBytes/);
    expect(await codeOf(() => createOutbox({ storage: {} as never }))).toBe("CONFIG");
    expect(await codeOf(() => createOutbox({ storage, topics: [event, defineTopic("test.event", v.any())] }))).toBe("CONFIG");
  });

  it("option errors say what to do, and their cause never carries the options object", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    const transport = recordingTransport();
    const message = async (f: () => unknown): Promise<string> => {
      const e = await caught(f);
      expect(isOutboxError(e, "CONFIG"), String(e)).toBe(true);
      // The cause is plain data: no reference to the options, the storage, the transport or a client.
      const seen = new Set<unknown>();
      const walk = (x: unknown): void => {
        if (typeof x !== "object" || x === null || seen.has(x)) return;
        seen.add(x);
        expect(x === storage || x === outbox || x === transport).toBe(false);
        for (const value of Object.values(x)) walk(value);
      };
      walk((e as Error).cause);
      expect(JSON.stringify((e as Error).cause).length).toBeLessThan(2_000);
      return (e as Error).message;
    };
    expect(await message(() => createRelay({ outbox, transport, backoff: { base: 5 } as never }))).toBe(
      "createRelay options: unknown option backoff.base (did you mean baseMs?)",
    );
    // A misspelt option is refused, never ignored (a silently ignored maxAttemps would keep the default of 10).
    expect(await message(() => createRelay({ outbox, transport, batchsize: 5 } as never))).toBe(
      "createRelay options: unknown option batchsize (did you mean batchSize?)",
    );
    expect(await message(() => createRelay({ outbox, transport, maxAttemps: 3 } as never))).toBe(
      "createRelay options: unknown option maxAttemps (did you mean maxAttempts?)",
    );
    const relay = createRelay({ outbox, transport });
    expect(await message(() => relay.drain({ budgetMS: 100 } as never))).toBe("drain options: unknown option budgetMS (did you mean budgetMs?)");
    expect(await message(() => relay.run({ signal: AbortSignal.abort(), pollIntervalMS: 5 } as never))).toBe(
      "run options: unknown option pollIntervalMS (did you mean pollIntervalMs?)",
    );
    expect(await message(() => scheduledDrain(relay, { budgetMs: 1_000, maxdrains: 2 } as never))).toBe(
      "scheduledDrain options: unknown option maxdrains (did you mean maxDrains?)",
    );
    expect(transport.calls).toBe(0);
    expect(await message(() => memoryStorage({ retainDelivered: 5 } as never))).toBe(
      "memoryStorage options: unknown option retainDelivered (known: now, retainDeliveredMs, shareWith)",
    );
    expect(await message(() => createRelay({ outbox } as never))).toBe("createRelay options: transport is required");
    expect(await message(() => createRelay({ outbox, transport: undefined } as never))).toBe("createRelay options: transport is required");
    expect(await message(() => createOutbox({ storage, maxpayloadbytes: 5 } as never))).toBe(
      "createOutbox options: unknown option maxpayloadbytes (did you mean maxPayloadBytes?)",
    );
    expect(await message(() => createOutbox({ storage, zzz: 1 } as never))).toBe(
      "createOutbox options: unknown option zzz (known: storage, topics, maxPayloadBytes, tracing)",
    );
    expect(await message(() => createOutbox(undefined as never))).toBe("createOutbox options: options are required");
    expect(await message(() => createOutbox({ storage, maxPayloadBytes: 1.5 }))).toMatch(/^createOutbox options: maxPayloadBytes: Invalid integer/);
  });

  it("statement() is a CONFIG error on a storage that cannot join a batch", async () => {
    const { outbox } = memoryOutbox();
    const e = await caught(() => outbox.statement(event, { n: 1 }));
    expect(isOutboxError(e, "CONFIG")).toBe(true);
    expect((e as Error).message).toMatch(/memory storage cannot join a batch/);
  });

  it("defineTopic refuses bad names and non-schemas", async () => {
    expect(await codeOf(() => defineTopic("bad name", v.any()))).toBe("VALIDATION");
    expect(await codeOf(() => defineTopic("ok", {} as StandardSchemaV1))).toBe("CONFIG");
  });

  it("dead-letter admin validates its arguments", async () => {
    const { outbox } = memoryOutbox();
    expect(await codeOf(() => outbox.deadLetters.list({ limit: 0 }))).toBe("VALIDATION");
    expect(await codeOf(() => outbox.deadLetters.purge({ olderThan: Number.NaN }))).toBe("VALIDATION");
    expect(await codeOf(() => outbox.deadLetters.replay(""))).toBe("VALIDATION");
    expect(await outbox.deadLetters.purge({ olderThan: new Date() })).toBe(0);
    expect(await codeOf(() => outbox.stats({ windowMs: 0 }))).toBe("VALIDATION");
  });
});

describe("typing", () => {
  it("statement() and enqueue() by name take that topic's payload type", async () => {
    const { outbox, storage } = memoryOutbox();
    // @ts-expect-error n must be a number, also by name
    expect(await codeOf(() => outbox.statement("test.event", { n: "x" }))).toBe("CONFIG");
    const h = storage.begin();
    await outbox.enqueue(h.tx, "test.event", { n: 1 });
    await h.rollback();
  });
});

describe("health from stats", () => {
  it("a delayed or backing-off message does not turn health unhealthy; a message due for too long does", async () => {
    let now = 1_700_000_000_000;
    const { storage, outbox } = memoryOutbox({ now: () => now });
    const h = storage.begin();
    await outbox.enqueue(h.tx, event, { n: 1 }, { delayMs: 86_400_000 });
    await h.commit();
    now += 600_000; // enqueued 10 minutes ago, due in 23 h 50 min
    let stats = await outbox.stats();
    expect(stats.oldestPendingAgeMs).toBe(600_000);
    expect(stats.oldestDueAgeMs).toBeNull();
    expect(evaluateHealth(stats).status).toBe("healthy");

    // A message that failed and backs off for 10 minutes: not waiting while due either.
    const h2 = storage.begin();
    await outbox.enqueue(h2.tx, event, { n: 2 });
    await h2.commit();
    const claim = await storage.claim({ limit: 10, leaseMs: 3_600_000 });
    expect(claim.messages).toHaveLength(1);
    now += 600_000; // leased for 10 minutes: in flight, not waiting
    expect(evaluateHealth(await outbox.stats()).status).toBe("healthy");
    await storage.settle(claim.token, [{ id: claim.messages[0]!.id, outcome: "retry", delayMs: 900_000, error: "HTTP 503" }]);
    now += 600_000;
    expect(evaluateHealth(await outbox.stats()).status).toBe("healthy");

    // Due for 6 minutes now (the backoff ended 6 minutes ago): unhealthy.
    now += 300_000 + 360_000;
    stats = await outbox.stats();
    expect(stats.oldestDueAgeMs).toBe(360_000);
    const report = evaluateHealth(stats);
    expect(report.status).toBe("unhealthy");
    expect(report.checks).toEqual([
      { name: "oldestPendingAgeMs", value: 360_000, status: "unhealthy", degraded: 30_000, unhealthy: 300_000 },
    ]);
  });

  it("falls back to oldestPendingAgeMs for a storage that does not report oldestDueAgeMs", () => {
    const base = {
      pending: 1, due: 1, leased: 0, dead: 0, now: 0,
      window: { windowMs: 60_000, delivered: 0, retried: 0, dead: 0, avgLatencyMs: null, maxLatencyMs: null },
    };
    expect(evaluateHealth({ ...base, oldestPendingAgeMs: 400_000 }).status).toBe("unhealthy");
    expect(evaluateHealth({ ...base, oldestPendingAgeMs: 400_000, oldestDueAgeMs: 10 }).status).toBe("healthy");
    expect(evaluateHealth({ ...base, oldestPendingAgeMs: 400_000, oldestDueAgeMs: null }).status).toBe("healthy");
  });
});
