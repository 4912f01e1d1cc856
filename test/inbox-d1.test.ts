// The D1 inbox on a real D1 (Miniflare's local D1, the workerd implementation), through the inbox conformance suite.
import { Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createInbox, isOutboxError } from "../mod.ts";
import { type D1InboxDatabase, type D1InboxStatement, d1Inbox } from "../adapters/d1/inbox.ts";
import { inboxConformance } from "../src/testing/mod.ts";
import { D1_FETCH_WORKER, d1OverFetch } from "./fixtures/d1-over-fetch.ts";
import { caught } from "./helpers.ts";

let mf: Miniflare;
let counter = 0;
beforeAll(async () => {
  mf = new Miniflare({ modules: true, script: D1_FETCH_WORKER, d1Databases: ["DB"] });
  await mf.ready;
});
afterAll(() => mf.dispose());

async function fresh(): Promise<{ db: D1InboxDatabase; table: string }> {
  const db = d1OverFetch(mf) as unknown as D1InboxDatabase; // not mf.getD1Database(): see fixtures/d1-over-fetch.ts
  return { db, table: `inbox_${++counter}` }; // one database, a fresh table set per test
}

inboxConformance<never, D1InboxStatement>({ describe, it, expect }, {
  name: "d1",
  async create() {
    const { db, table } = await fresh();
    const storage = d1Inbox(db, { table });
    await storage.migrate();
    const effects = `${table}_effects`;
    await db.batch([db.prepare(`CREATE TABLE "${effects}" (message_id TEXT NOT NULL)`)]);
    const count = async (id: string): Promise<number> =>
      Number(((await db.prepare(`SELECT count(*) AS n FROM "${effects}" WHERE message_id = ?`).bind(id).all()).results?.[0] as { n: number }).n);
    return {
      storage,
      begin: () => Promise.reject(new Error("D1 has no interactive transactions")),
      effect: () => Promise.reject(new Error("D1 has no interactive transactions")),
      effectStatement: (id) => db.prepare(`INSERT INTO "${effects}" (message_id) VALUES (?)`).bind(id),
      failingStatement: () => db.prepare("INSERT INTO no_such_table (x) VALUES (1)"),
      effects: count,
      age: async (ms) => {
        await db.batch([
          db.prepare(`UPDATE "${table}" SET processed_at = processed_at - ?`).bind(ms),
          db.prepare(`UPDATE "${table}_keys" SET updated_at = updated_at - ?`).bind(ms),
        ]);
      },
      another: () => Promise.resolve(d1Inbox(db, { table })),
      close: () => Promise.resolve(),
    };
  },
});

describe("d1Inbox", () => {
  it("handle(tx) is CONFIG (no interactive transactions); a missing table is CONFIG; bad options are CONFIG", async () => {
    const { db, table } = await fresh();
    const inbox = createInbox({ storage: d1Inbox(db, { table }), consumer: "c" });
    expect(isOutboxError(await caught(inbox.process("m", () => {})), "CONFIG")).toBe(true);
    const missing = await caught(inbox.isProcessed("m"));
    expect(isOutboxError(missing, "CONFIG")).toBe(true);
    expect((missing as Error).message).toContain("migrate()");
    expect(isOutboxError(await caught(() => d1Inbox(db, { table: "x; drop" })), "CONFIG")).toBe(true);
    expect(isOutboxError(await caught(() => d1Inbox({} as never)), "CONFIG")).toBe(true);
  });
});
