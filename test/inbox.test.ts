import { describe, expect, it } from "vitest";
import { createInbox, isOutboxError } from "../mod.ts";
import { libsqlInbox, libsqlInboxSchema } from "../adapters/libsql/mod.ts";
import { postgresInbox, postgresInboxSchema } from "../adapters/postgres/mod.ts";
import { memoryInbox } from "../adapters/memory/mod.ts";
import { inboxConformance } from "../src/testing/mod.ts";
import { libsqlInboxFixture, memoryInboxFixture, postgresInboxFixture } from "./inbox-fixtures.ts";
import { connect } from "./postgres-fixtures.ts";
import { createClient } from "@libsql/client";
import { caught } from "./helpers.ts";

inboxConformance({ describe, it, expect }, { name: "memory", create: () => Promise.resolve(memoryInboxFixture()) });
inboxConformance({ describe, it, expect }, { name: "postgres", create: () => postgresInboxFixture() });
inboxConformance({ describe, it, expect }, { name: "libsql :memory:", create: () => libsqlInboxFixture("memory") });
inboxConformance({ describe, it, expect }, { name: "libsql file", create: () => libsqlInboxFixture("file") });

describe("inbox storages: configuration and missing tables", () => {
  it("hostile table names and unknown options are CONFIG before anything is sent", async () => {
    const sql = connect("eo-inbox-config");
    try {
      for (const table of ['inbox"; drop table x; --', "1abc", "a-b", "x".repeat(60)]) {
        expect(isOutboxError(await caught(() => postgresInbox(sql, { table })), "CONFIG")).toBe(true);
        if (table.length < 60) expect(isOutboxError(await caught(() => libsqlInbox(createClient({ url: ":memory:" }), { table })), "CONFIG")).toBe(true);
      }
      expect(isOutboxError(await caught(() => postgresInbox(sql, { tabel: "x" } as never)), "CONFIG")).toBe(true);
      expect(isOutboxError(await caught(() => postgresInbox({} as never)), "CONFIG")).toBe(true);
      expect(isOutboxError(await caught(() => libsqlInbox({} as never)), "CONFIG")).toBe(true);
      expect(isOutboxError(await caught(() => createInbox({ storage: {} as never, consumer: "c" })), "CONFIG")).toBe(true);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });

  it("a configurable table name is used, and a storage on a missing table says to migrate", async () => {
    const sql = connect("eo-inbox-missing");
    const schema = `eo_inbox_missing_${crypto.randomUUID().slice(0, 8)}`;
    try {
      await sql.unsafe(`CREATE SCHEMA "${schema}"`);
      const missing = createInbox({ storage: postgresInbox(sql, { schema, table: "received" }), consumer: "c" });
      const e = await caught(missing.isProcessed("m1"));
      expect(isOutboxError(e, "CONFIG")).toBe(true);
      expect((e as Error).message).toContain("migrate()");
      await missing.storage.migrate();
      expect(await missing.process("m1", () => {})).toBe("processed");
      const [t] = await sql.unsafe(`SELECT count(*)::int AS n FROM "${schema}".received`);
      expect(t!["n"]).toBe(1);
      // The exported DDL is what migrate() installs, and running it after migrate() is a no-op.
      const ddl = postgresInboxSchema({ schema, table: "received" });
      expect(ddl.join("\n")).toContain(`"${schema}"."received"`);
      await sql.begin(async (tx) => {
        for (const s of ddl) await tx.unsafe(s);
      });
      expect(await missing.process("m1", () => {})).toBe("duplicate");
    } finally {
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await sql.end({ timeout: 1 });
    }

    const client = createClient({ url: ":memory:" });
    const lmissing = createInbox({ storage: libsqlInbox(client, { table: "received" }), consumer: "c" });
    const le = await caught(lmissing.isProcessed("m1"));
    expect(isOutboxError(le, "CONFIG")).toBe(true);
    await client.batch(libsqlInboxSchema({ table: "received" }), "write");
    expect(await lmissing.process("m1", () => {})).toBe("processed");
    expect(await lmissing.handleBatch("m1", [])).toBe("duplicate");
    client.close();
  });

  it("handle() with the pool or client itself (which would autocommit the record apart from the effects) is VALIDATION", async () => {
    const sql = connect("eo-inbox-pool");
    try {
      const inbox = createInbox({ storage: postgresInbox(sql), consumer: "c" });
      expect(isOutboxError(await caught(inbox.handle(sql, "m", () => {})), "VALIDATION")).toBe(true);
    } finally {
      await sql.end({ timeout: 1 });
    }
    const client = createClient({ url: ":memory:" });
    const storage = libsqlInbox(client);
    await storage.migrate();
    const inbox = createInbox({ storage, consumer: "c" });
    expect(isOutboxError(await caught(inbox.handle(client, "m", () => {})), "VALIDATION")).toBe(true);
    expect(await inbox.isProcessed("m")).toBe(false);
    client.close();
  });

  it("memory: handle() outside a transaction of its storage is VALIDATION", async () => {
    const storage = memoryInbox();
    const inbox = createInbox({ storage, consumer: "c" });
    expect(isOutboxError(await caught(inbox.handle({} as never, "m", () => {})), "VALIDATION")).toBe(true);
    const { tx, commit } = storage.begin();
    await commit();
    expect(isOutboxError(await caught(inbox.handle(tx, "m", () => {})), "STORAGE")).toBe(true);
    expect(storage.size()).toBe(0);
  });
});
