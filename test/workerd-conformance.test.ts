/**
 * The storage conformance suite inside workerd (Miniflare 4): test/fixtures/workers/conformance-worker.ts bundles
 * src/testing with a runner-neutral harness; each case runs inside the worker and reports back here, one vitest
 * case per conformance case. Storages: libSQL over HTTP (`@libsql/client/web`) to a real sqld.
 */
import { Miniflare } from "miniflare";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { storageConformance } from "../src/testing/mod.ts";
import { type CaseResult, caseHarness } from "./fixtures/workers/case-harness.ts";
import { bundleWorker } from "./fixtures/workers/bundle.ts";
import { type SqldServer, startSqld } from "./fixtures/workers/sqld-interim.ts";

// The case names, recorded in Node from the same suite the worker bundles (the fixture is never called here).
const names = caseHarness();
storageConformance(names, { name: "libsql http (workerd)", create: () => Promise.reject(new Error("not run in Node")), semantics: 2 });
const CASES = names.cases();

let sqld: SqldServer;
let mf: Miniflare;

beforeAll(async () => {
  sqld = await startSqld();
  mf = new Miniflare({
    modules: true,
    script: await bundleWorker(resolve(import.meta.dirname, "fixtures/workers/conformance-worker.ts")),
    compatibilityDate: "2025-06-01",
    bindings: { LIBSQL_URL: sqld.url },
  });
  await mf.ready;
}, 60_000);

afterAll(async () => {
  await mf?.dispose();
  await sqld?.close();
});

describe("storage conformance inside workerd", () => {
  it("the worker records the same cases as Node", async () => {
    const res = await mf.dispatchFetch("http://conformance.internal/cases");
    expect(await res.json()).toEqual(CASES);
  });

  for (const c of CASES) {
    it(c.name, async () => {
      const res = await mf.dispatchFetch(`http://conformance.internal/run?name=${encodeURIComponent(c.name)}`, { method: "POST" });
      const result = (await res.json()) as CaseResult;
      if (!result.ok) throw new Error(`inside workerd: ${result.error}`);
      expect(result).toMatchObject({ name: c.name, ok: true });
    }, c.timeoutMs + 10_000);
  }
});
