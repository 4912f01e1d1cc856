// Shared test helpers (vitest-free).
import * as v from "valibot";
import { createOutbox, defineTopic, type Outbox } from "../mod.ts";
import { type MemoryStorage, memoryStorage, type MemoryStorageOptions, type MemoryTransaction } from "../adapters/memory/mod.ts";
import { isOutboxError, type OutboxErrorCode } from "../src/errors.ts";

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const event = defineTopic("test.event", v.object({ n: v.number() }));

export function memoryOutbox(
  options: MemoryStorageOptions = {},
): { storage: MemoryStorage; outbox: Outbox<MemoryTransaction, never, typeof event> } {
  const storage = memoryStorage(options);
  return { storage, outbox: createOutbox({ storage, topics: [event] }) };
}

/** Enqueues `count` messages (payload n = start..) in one committed transaction. */
export async function fill(
  storage: MemoryStorage,
  outbox: Outbox<MemoryTransaction, never, typeof event>,
  count: number,
  opts: { key?: (i: number) => string | null; start?: number } = {},
): Promise<string[]> {
  const { tx, commit } = storage.begin();
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const n = (opts.start ?? 0) + i;
    ids.push(await outbox.enqueue(tx, event, { n }, { key: opts.key?.(n) ?? null }));
  }
  await commit();
  return ids;
}

/** Resolves the error a promise (or function) rejects/throws with; fails if it does not. */
export async function caught(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection, got none");
}

export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<OutboxErrorCode | "not an OutboxError"> {
  const e = await caught(p);
  return isOutboxError(e) ? e.code : "not an OutboxError";
}
