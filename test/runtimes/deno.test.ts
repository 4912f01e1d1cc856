/**
 * The storage conformance suite under `deno test` (run by scripts/test.sh, never by vitest): the memory storage
 * and the libSQL file storage, with `node:test`'s describe/it (Deno runs them as tests and steps) and the npm
 * `expect` package (Jest's matchers, the same semantics as vitest's).
 */
import { describe, it } from "node:test";
import { expect } from "expect";
import { type ConformanceHarness, storageConformance } from "../../src/testing/mod.ts";
import { libsqlFileFixture } from "../libsql-fixtures.ts";
import { memoryFixture } from "../memory-fixtures.ts";

const harness: ConformanceHarness = {
  describe: (name, fn) => {
    describe(name, fn);
  },
  it: (name, fn, ms) => {
    if (ms === undefined) it(name, fn);
    else it(name, { timeout: ms }, fn);
  },
  expect: expect as unknown as ConformanceHarness["expect"],
};

storageConformance(harness, { name: "memory (deno)", create: () => memoryFixture() });
storageConformance(harness, { name: "libsql file (deno)", create: () => libsqlFileFixture() });
