/**
 * The storage conformance suite inside workerd (Miniflare 4): each worker in test/fixtures/workers/conformance-*
 * bundles src/testing with a runner-neutral harness; each case runs inside the worker and reports back here, one
 * vitest case per conformance case. Storages: libSQL over HTTP (`@libsql/client/web`) to a real sqld, a local D1
 * database (the worker's own `DB` binding), and postgres.js (nodejs_compat, `cloudflare:sockets`) to the local
 * PostgreSQL.
 */
import { Miniflare, type MiniflareOptions } from "miniflare";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { storageConformance } from "../src/testing/mod.ts";
import { type CaseResult, caseHarness } from "./fixtures/workers/case-harness.ts";
import { bundleWorker } from "./fixtures/workers/bundle.ts";
import { type SqldServer, startSqld } from "./fixtures/sqld.ts";
import { PG_URL } from "./postgres-fixtures.ts";

/** The case names, recorded in Node from the same suite the worker bundles (the fixture is never called here). */
function caseNames(name: string, interactiveTransactions: boolean): ReturnType<ReturnType<typeof caseHarness>["cases"]> {
  const names = caseHarness();
  storageConformance(names, { name, create: () => Promise.reject(new Error("not run in Node")), semantics: 2, deliveryPositions: true, interactiveTransactions });
  return names.cases();
}

/** Declares one vitest case per conformance case, each run inside the worker `entry`. */
function conformanceInWorkerd(
  name: string,
  entry: string,
  interactiveTransactions: boolean,
  setup: () => Promise<{ options: Partial<MiniflareOptions>; external?: string[]; close(): Promise<void> }>,
): void {
  const cases = caseNames(name, interactiveTransactions);
  describe(`storage conformance inside workerd: ${name}`, () => {
    let mf: Miniflare;
    let close = async (): Promise<void> => {};

    beforeAll(async () => {
      const s = await setup();
      close = s.close;
      const script = await bundleWorker(resolve(import.meta.dirname, "fixtures/workers", entry), { external: s.external ?? [] });
      mf = new Miniflare({ modules: true, script, compatibilityDate: "2025-06-01", ...s.options } as MiniflareOptions);
      await mf.ready;
    }, 60_000);

    afterAll(async () => {
      await mf?.dispose();
      await close();
    });

    it("the worker records the same cases as Node", async () => {
      const res = await mf.dispatchFetch("http://conformance.internal/cases");
      expect(await res.json()).toEqual(cases);
    });

    for (const c of cases) {
      it(c.name, async () => {
        const res = await mf.dispatchFetch(`http://conformance.internal/run?name=${encodeURIComponent(c.name)}`, { method: "POST" });
        const result = (await res.json()) as CaseResult;
        if (!result.ok) throw new Error(`inside workerd: ${result.error}`);
        expect(result).toMatchObject({ name: c.name, ok: true });
      }, c.timeoutMs + 10_000);
    }
  });
}

conformanceInWorkerd("libsql http (workerd)", "conformance-libsql-worker.ts", true, async () => {
  const sqld: SqldServer = await startSqld({ wal: "libsql-wal" }); // many concurrent writers: see startSqld's `wal`
  return { options: { bindings: { LIBSQL_URL: sqld.url } }, close: () => sqld.close() };
});

conformanceInWorkerd("d1 (workerd)", "conformance-d1-worker.ts", false, async () => ({
  options: { d1Databases: ["DB"] },
  close: async () => {},
}));

conformanceInWorkerd("postgres (workerd)", "conformance-postgres-worker.ts", true, async () => ({
  options: { compatibilityFlags: ["nodejs_compat"], bindings: { DATABASE_URL: PG_URL } },
  external: ["cloudflare:sockets", "node:*"],
  close: async () => {},
}));
