/**
 * postgres.js at the edge: the write side and a drain through `postgresStorage` (with `pgAdvisoryLock`) inside
 * workerd (Miniflare 4, `nodejs_compat`, TCP through `cloudflare:sockets`) against the local PostgreSQL, checked from
 * Node. Worker: test/fixtures/workers/postgres-worker.ts.
 */
import { Miniflare } from "miniflare";
import { resolve } from "node:path";
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from "vitest";
import type { DrainReport } from "../mod.ts";
import { bundleWorker } from "./fixtures/workers/bundle.ts";
import { PG_URL, type PgFixture, postgresFixture } from "./postgres-fixtures.ts";

let mf: Miniflare;
let f: PgFixture;

beforeAll(async () => {
  mf = new Miniflare({
    modules: true,
    script: await bundleWorker(resolve(import.meta.dirname, "fixtures/workers/postgres-worker.ts"), {
      external: ["cloudflare:sockets", "node:*"],
    }),
    compatibilityDate: "2025-06-01",
    compatibilityFlags: ["nodejs_compat"],
    bindings: { DATABASE_URL: PG_URL },
  });
  await mf.ready;
}, 60_000);

afterAll(async () => {
  await mf?.dispose();
});

beforeEach(async () => {
  f = await postgresFixture();
  await f.sql.unsafe(`CREATE TABLE "${f.schema}".orders (id text PRIMARY KEY)`);
});

afterEach(async () => {
  await f?.close();
});

async function call<T>(path: string): Promise<T> {
  const res = await mf.dispatchFetch(`http://pg.internal${path}`, { method: "POST" });
  const body = (await res.json()) as T & { error?: string };
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${body.error}`);
  return body;
}

describe("postgres.js inside workerd (nodejs_compat + cloudflare:sockets)", () => {
  it("enqueue in the business transaction, then a drain through postgresStorage: every message once, keys in commit order", async () => {
    const { ids } = await call<{ ids: string[] }>(`/enqueue?schema=${f.schema}&n=60&keys=3`);
    expect(ids).toHaveLength(60);
    // Committed together with the business row, seen from Node.
    expect((await f.sql.unsafe(`SELECT count(*)::int AS n FROM "${f.schema}".orders`))[0]!.n).toBe(1);
    expect((await f.storage.stats()).pending).toBe(60);

    const delivered: Array<{ id: string; key: string | null; n: number }> = [];
    let report: DrainReport | undefined;
    for (let i = 0; i < 60 && (await f.storage.stats()).pending > 0; i++) {
      const r = await call<{ report: DrainReport; delivered: typeof delivered }>(`/drain?schema=${f.schema}`);
      report = r.report;
      expect(r.report.skipped).toBeUndefined();
      delivered.push(...r.delivered);
    }
    expect(report?.dead).toBe(0);
    expect(delivered.map((d) => d.id).sort()).toEqual([...ids].sort());
    for (const key of ["k0", "k1", "k2"]) {
      const ns = delivered.filter((d) => d.key === key).map((d) => d.n);
      expect(ns).toEqual([...ns].sort((a, b) => a - b));
      expect(ns).toHaveLength(20);
    }
    expect((await f.storage.stats()).pending).toBe(0);
  });

  it("a rolled-back business transaction leaves no message", async () => {
    await f.sql.unsafe(`INSERT INTO "${f.schema}".orders (id) VALUES ('order-5')`); // the worker's insert will collide
    const res = await mf.dispatchFetch(`http://pg.internal/enqueue?schema=${f.schema}&n=5`, { method: "POST" });
    expect(res.status).toBe(500);
    expect(((await res.json()) as { error: string }).error).toContain("duplicate key");
    expect((await f.storage.stats()).pending).toBe(0);
  });

  it("pgAdvisoryLock from workerd: a drain while Node holds the relay lock is skipped", async () => {
    await call(`/enqueue?schema=${f.schema}&n=3`);
    const { pgAdvisoryLock } = await import("../adapters/postgres/mod.ts");
    const lock = pgAdvisoryLock(f.sql);
    const held = await lock.acquire(`workerd-relay:${f.schema}`, 30_000);
    expect(held).not.toBeNull();
    try {
      const r = await call<{ report: DrainReport }>(`/drain?schema=${f.schema}`);
      expect(r.report.skipped).toBe("lock-busy");
      expect((await f.storage.stats()).pending).toBe(3);
    } finally {
      await held!.release();
    }
    const r = await call<{ report: DrainReport }>(`/drain?schema=${f.schema}`);
    expect(r.report).toMatchObject({ delivered: 3 });
  });
});
