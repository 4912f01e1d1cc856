// Type-level test, checked by `tsc -p tsconfig.exact.json` (strict + exactOptionalPropertyTypes, the settings of
// TypeScript 7's `tsc --init`): a user may pass `undefined` to every optional option of the core and of the memory
// adapters. It fails to type-check when a public optional field is declared `?: T` instead of `?: T | undefined`.
import * as v from "valibot";
import {
  createOutbox,
  createRelay,
  defineTopic,
  type DeliveryOutcome,
  type EnqueueOptions,
  evaluateHealth,
  type HealthThresholds,
  OutboxError,
  type Transport,
} from "../../mod.ts";
import { functionTransport, memoryLock, memoryStorage, recordingTransport } from "../../adapters/memory/mod.ts";

declare const env: Record<string, string | undefined>;
declare const maybe: <T>(value: T) => T | undefined;

const ping = defineTopic("ping", v.object({ n: v.number() }));
const storage = memoryStorage({ now: maybe(Date.now), retainDeliveredMs: maybe(0), shareWith: undefined });
const outbox = createOutbox({ storage, topics: maybe([ping]), maxPayloadBytes: undefined });

export async function enqueueWithUndefined(): Promise<void> {
  const key: string | undefined = env["ORDER_KEY"];
  const { tx, commit } = storage.begin();
  await outbox.enqueue(tx, ping, { n: 1 }, { key });
  const options: EnqueueOptions = { key, delayMs: maybe(0), headers: undefined, id: undefined };
  await outbox.enqueue(tx, "ping", { n: 2 }, options);
  await outbox.enqueueMany(tx, [{ topic: ping, payload: { n: 3 }, options: undefined }, { topic: "ping", payload: { n: 4 }, options: { key } }]);
  await commit();
}

export async function relayWithUndefined(cond: boolean): Promise<void> {
  const transport = cond ? recordingTransport({ maxBatchSize: undefined, delayMs: undefined, outcome: undefined }) : functionTransport(() => {}, { name: undefined });
  const relay = createRelay({ outbox, transport, lock: cond ? memoryLock() : undefined, batchSize: maybe(10) });
  await relay.drain({ signal: undefined, budgetMs: maybe(1_000) });
  await relay.drain({ signal: cond ? AbortSignal.timeout(1_000) : undefined });
}

export async function adminWithUndefined(): Promise<void> {
  await outbox.stats({ windowMs: undefined });
  const page = await outbox.deadLetters.list({ limit: undefined, cursor: undefined });
  await outbox.deadLetters.purge({ olderThan: Date.now(), limit: maybe(100) });
  await outbox.purgeDelivered({ olderThan: new Date(), limit: undefined });
  const thresholds: HealthThresholds = { pending: undefined, oldestPendingAgeMs: { degraded: maybe(1), unhealthy: undefined }, dead: undefined };
  evaluateHealth(await outbox.stats(), thresholds);
  void page;
}

export const error: OutboxError = new OutboxError("CONFIG", "x", { cause: undefined, retryable: maybe(true) });

export const transport: Transport = {
  name: "custom",
  maxBatchSize: undefined,
  send(messages): Promise<DeliveryOutcome[]> {
    return Promise.resolve(messages.map((): DeliveryOutcome => ({ status: "retry", error: "later", retryAfterMs: maybe(1_000) })));
  },
};
