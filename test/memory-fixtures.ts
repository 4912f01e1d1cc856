// Conformance fixture for the memory storage; shared by vitest, Bun and Deno entry files (no runner imports here).
import { type MemoryStorage, memoryStorage, type MemoryTransaction } from "../adapters/memory/mod.ts";
import type { ConformanceFixture } from "../src/testing/mod.ts";

export function memoryFixture(): Promise<ConformanceFixture<MemoryTransaction, never>> {
  const storage: MemoryStorage = memoryStorage();
  return Promise.resolve({
    storage,
    begin: () => Promise.resolve(storage.begin()),
    another: () => Promise.resolve(memoryStorage({ shareWith: storage })),
    close: () => Promise.resolve(),
  });
}
