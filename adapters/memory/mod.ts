/**
 * In-memory adapters for tests and demos: `memoryStorage()` (real transactions, the full storage contract),
 * `recordingTransport()`, `functionTransport(fn)` and `memoryLock()`.
 *
 * @example
 * ```ts
 * import { createOutbox, createRelay, defineTopic } from "edge-outbox";
 * import { memoryStorage, recordingTransport } from "edge-outbox/memory";
 * import * as v from "valibot";
 *
 * const storage = memoryStorage();
 * const ping = defineTopic("ping", v.object({ n: v.number() }));
 * const outbox = createOutbox({ storage, topics: [ping] });
 * const { tx, commit } = storage.begin();
 * await outbox.enqueue(tx, ping, { n: 1 });
 * await commit();
 * const transport = recordingTransport();
 * await createRelay({ outbox, transport }).drain();
 * console.log(transport.delivered.length); // 1
 * ```
 *
 * @module
 */
export {
  type MemoryStorage,
  memoryStorage,
  type MemoryStorageOptions,
  type MemoryTransaction,
  type MemoryTransactionHandle,
} from "./storage.ts";
export {
  functionTransport,
  type FunctionTransportOptions,
  type RecordingTransport,
  recordingTransport,
  type RecordingTransportOptions,
} from "./transport.ts";
export { type MemoryLock, memoryLock } from "./lock.ts";
export { type MemoryInbox, memoryInbox, type MemoryInboxOptions, type MemoryInboxTransaction, type MemoryInboxTransactionHandle } from "./inbox.ts";
