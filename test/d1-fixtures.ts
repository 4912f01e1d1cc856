// Conformance fixtures for the D1 storage on a real local D1 (Miniflare 4: workerd's D1, SQLite underneath), for
// Node. One Miniflare per test file; every fixture gets its own table on the shared database, so tests stay
// independent without starting workerd per test. No test-runner imports here.
import { Miniflare } from "miniflare";
import { type D1Binding, type D1Statement, type D1StatementList, d1Storage, type D1Storage, type D1StorageOptions } from "../adapters/d1/mod.ts";
import type { ConformanceFixture } from "../src/testing/mod.ts";
import { D1_FETCH_WORKER, d1OverFetch } from "./fixtures/d1-over-fetch.ts";
import { d1BatchTransaction, d1RunBatch } from "./fixtures/fixture-transactions.ts";

export type D1Fixture = ConformanceFixture<D1StatementList, D1Statement> & { storage: D1Storage; db: D1Binding };

/** A Miniflare with one D1 database bound as `DB`. */
export async function startD1(): Promise<{ db: D1Binding; dispose(): Promise<void> }> {
  const mf = new Miniflare({ modules: true, script: D1_FETCH_WORKER, d1Databases: ["DB"] });
  await mf.ready;
  // Not mf.getD1Database(): its synchronous prepare() goes through Miniflare's SynchronousFetcher (see d1-over-fetch.ts).
  const db = d1OverFetch(mf) as unknown as D1Binding;
  return { db, dispose: () => mf.dispose() };
}

let tables = 0;

/**
 * A fresh, migrated storage on its own table of `db`. `begin()` emulates a transaction the only way D1 has: a list of
 * statements run as one batch at commit (`storage.batch`), dropped at rollback.
 */
export async function d1Fixture(db: D1Binding, options: D1StorageOptions = {}): Promise<D1Fixture> {
  const table = options.table ?? `outbox_${process.pid}_${++tables}`;
  const storage = d1Storage(db, { ...options, table });
  await storage.migrate();
  return {
    storage,
    db,
    begin: () => d1BatchTransaction(storage),
    another: () => Promise.resolve(d1Storage(db, { ...options, table })),
    runBatch: (statements) => d1RunBatch(storage, statements),
    close: () => Promise.resolve(),
  };
}
