// The storage conformance suite on the memory storage under `deno test` (run by scripts/test.sh, not vitest).
import { storageConformance } from "../../src/testing/mod.ts";
import { memoryFixture } from "../memory-fixtures.ts";
import { harness } from "./deno-harness.ts";

storageConformance(harness, { name: "memory (deno)", create: () => memoryFixture(), semantics: 2, deliveryPositions: true });
