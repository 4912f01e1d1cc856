// Text that no storage can hold (NUL, lone UTF-16 surrogates) in keys, header names and values and topic names is
// refused with VALIDATION before any SQL (issue 9 item 9): on Postgres it used to reach the database and fail as
// STORAGE, aborting the caller's transaction.
import { describe, expect, it } from "vitest";
import { createOutbox, type EnqueueOptions, isOutboxError } from "../mod.ts";
import { codeOf, event, memoryOutbox } from "./helpers.ts";
import { postgresFixture, reservedTransaction } from "./postgres-fixtures.ts";

const badOptions: Array<[string, EnqueueOptions]> = [
  ["a key with NUL", { key: "customer\u00007" }],
  ["a key with a lone high surrogate", { key: "customer-\ud83d" }],
  ["a key with a lone low surrogate", { key: "\ude00-customer" }],
  ["a header value with a lone surrogate", { headers: { "x-name": "Ad\ud800a" } }],
  ["a header value with NUL", { headers: { "x-name": "a\u0000" } }],
  ["a header name with NUL", { headers: { "x-na\u0000me": "a" } }],
  ["a header name with a lone surrogate", { headers: { "x-\ud800": "a" } }],
];
const badTopics: Array<[string, string]> = [
  ["a topic name with NUL", "order.\u0000created"],
  ["a topic name with a lone surrogate", "order.\ud800"],
];

describe("ill-formed text is VALIDATION before any SQL", () => {
  it("memory: each is refused, nothing is written; well-formed text (surrogate pairs, accents) is accepted", async () => {
    const { storage, outbox } = memoryOutbox();
    const open = createOutbox({ storage });
    const h = storage.begin();
    for (const [what, opts] of badOptions) {
      const e = await outbox.enqueue(h.tx, event, { n: 1 }, opts).then(() => null, (x: unknown) => x);
      expect(isOutboxError(e, "VALIDATION"), what).toBe(true);
    }
    for (const [what, name] of badTopics) expect(await codeOf(open.enqueue(h.tx, name, {})), what).toBe("VALIDATION");
    await outbox.enqueue(h.tx, event, { n: 2 }, { key: "clé-😀", headers: { "x-name": "Adà 😀" } });
    await h.commit();
    const [m] = (await storage.claim({ limit: 10, leaseMs: 10_000 })).messages;
    expect(m!.key).toBe("clé-😀");
    expect(m!.headers).toEqual({ "x-name": "Adà 😀" });
    expect(storage.count().pending).toBe(1);
  });

  it("postgres: each is refused with VALIDATION and the caller's transaction stays usable", async () => {
    const f = await postgresFixture();
    try {
      const outbox = createOutbox({ storage: f.storage, topics: [event] });
      const open = createOutbox({ storage: f.storage });
      const t = await reservedTransaction(f.sql);
      try {
        for (const [what, opts] of badOptions) {
          const e = await outbox.enqueue(t.tx, event, { n: 1 }, opts).then(() => null, (x: unknown) => x);
          expect(isOutboxError(e, "VALIDATION"), `${what}: ${String(e)}`).toBe(true);
        }
        for (const [what, name] of badTopics) {
          const e = await open.enqueue(t.tx, name, {}).then(() => null, (x: unknown) => x);
          expect(isOutboxError(e, "VALIDATION"), `${what}: ${String(e)}`).toBe(true);
        }
        // The transaction was never aborted: the business write and a good message still commit.
        await t.tx.unsafe(`CREATE TABLE "${f.schema}".orders (id text primary key)`);
        await t.tx.unsafe(`INSERT INTO "${f.schema}".orders (id) VALUES ('o1')`);
        await outbox.enqueue(t.tx, event, { n: 2 }, { key: "clé-😀", headers: { "x-name": "Adà 😀" } });
        await t.commit();
      } catch (e) {
        await t.rollback().catch(() => {});
        throw e;
      }
      const claim = await f.storage.claim({ limit: 10, leaseMs: 10_000 });
      expect(claim.messages.map((m) => [m.key, m.headers])).toEqual([["clé-😀", { "x-name": "Adà 😀" }]]);
      expect((await f.sql.unsafe(`SELECT id FROM "${f.schema}".orders`)).map((r) => r["id"])).toEqual(["o1"]);
    } finally {
      await f.close();
    }
  }, 60_000);
});
