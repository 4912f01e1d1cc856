/**
 * The `deno test` harness of the storage conformance suite (deno-*.test.ts, run by scripts/test.sh, never by vitest):
 * `node:test`'s describe/it (Deno runs them as tests and steps) and the npm `expect` package (Jest's matchers).
 *
 * Each storage runs from its own entry file: with the memory and the libSQL suites in one module, Deno 2.9 crashes
 * (SIGSEGV) at exit while finalising @libsql's native objects, after every test passed.
 */
import { describe, it } from "node:test";
import { expect } from "expect";
import type { ConformanceHarness } from "../../src/testing/mod.ts";

export const harness: ConformanceHarness = {
  describe: (name, fn) => {
    describe(name, fn);
  },
  it: (name, fn, ms) => {
    if (ms === undefined) it(name, fn);
    else it(name, { timeout: ms }, fn);
  },
  expect: expect as unknown as ConformanceHarness["expect"],
};

