/**
 * `edge-outbox/testing`: the storage conformance suite, for this project's adapters and for third-party ones.
 * It takes the runner's `describe`, `it` and `expect`, so vitest, `bun test` and `deno test` run the same cases.
 *
 * @example
 * ```ts
 * import { describe, expect, it } from "vitest";
 * import type { OutboxStorage } from "edge-outbox";
 * import { type FixtureTransaction, storageConformance } from "edge-outbox/testing";
 *
 * // Your adapter and your database's test helpers:
 * interface Db { begin(): Promise<FixtureTransaction<Db>>; connectAgain(): Promise<Db>; close(): Promise<void> }
 * declare function openFreshDatabase(): Promise<Db>;
 * declare function myStorage(db: Db): OutboxStorage<Db>;
 *
 * storageConformance({ describe, it, expect }, {
 *   name: "my-storage",
 *   semantics: 2, // replay at the tail of its key, CONFLICT on a taken id, oldestDueAgeMs
 *   deliveryPositions: true, // claims return ClaimedMessage.prevSeq
 *   async create() {
 *     const db = await openFreshDatabase();
 *     const storage = myStorage(db);
 *     await storage.migrate();
 *     return { storage, begin: () => db.begin(), another: async () => myStorage(await db.connectAgain()), close: () => db.close() };
 *   },
 * });
 * ```
 *
 * @module
 */
export { storageConformance } from "./conformance.ts";
export type {
  ConformanceFixture,
  ConformanceHarness,
  ConformanceOptions,
  ExpectLike,
  FixtureTransaction,
  Matchers,
} from "./harness.ts";
export { type InboxConformanceFixture, inboxConformance, type InboxConformanceOptions } from "./inbox-conformance.ts";
