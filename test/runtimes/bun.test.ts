/**
 * The storage conformance suite under `bun test` (run by scripts/test.sh, never by vitest):
 * the memory storage and the libSQL file storage, with bun:test's describe/it/expect.
 */
import { describe, expect, it } from "bun:test";
import { type ConformanceHarness, storageConformance } from "../../src/testing/mod.ts";
import { libsqlFileFixture } from "../libsql-fixtures.ts";
import { memoryFixture } from "../memory-fixtures.ts";

const harness: ConformanceHarness = {
  describe: (name, fn) => describe(name, fn),
  it: (name, fn, ms) => it(name, fn, ms),
  expect: expect as unknown as ConformanceHarness["expect"],
};

storageConformance(harness, { name: "memory (bun)", create: () => memoryFixture(), semantics: 2, deliveryPositions: true });
storageConformance(harness, { name: "libsql file (bun)", create: () => libsqlFileFixture(), semantics: 2, deliveryPositions: true });
