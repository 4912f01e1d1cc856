import { OutboxError } from "../../src/errors.ts";
import type { Lease, Lock } from "../../src/lock.ts";

/** An in-process lock (one process only: for tests, demos and single-instance servers). */
export interface MemoryLock extends Lock {
  /** Whether `key` is held by an unexpired lease. */
  isHeld(key: string): boolean;
}

interface Holder {
  token: symbol;
  expiresAt: number;
  controller: AbortController;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Creates an in-process lock implementing the Lock contract: a lease expires after `leaseMs` (its signal fires)
 * unless extended.
 *
 * @returns the lock
 * @example
 * ```ts
 * import { createRelay } from "edge-outbox";
 * import { memoryLock } from "edge-outbox/memory";
 * const relay = createRelay({ outbox, transport, lock: memoryLock() });
 * const report = await relay.drain();
 * if (report.skipped === "lock-busy") console.log("another drain is running");
 * ```
 */
export function memoryLock(): MemoryLock {
  const held = new Map<string, Holder>();
  const drop = (key: string, h: Holder): void => {
    clearTimeout(h.timer);
    if (held.get(key) === h) held.delete(key);
  };
  const arm = (key: string, h: Holder, leaseMs: number): void => {
    clearTimeout(h.timer);
    h.expiresAt = Date.now() + leaseMs;
    h.timer = setTimeout(() => {
      drop(key, h);
      h.controller.abort(new OutboxError("LEASE_LOST", `lock "${key}" expired`));
    }, leaseMs);
  };
  const check = (leaseMs: number): void => {
    if (!Number.isInteger(leaseMs) || leaseMs < 1) throw new OutboxError("CONFIG", "leaseMs must be a positive integer");
  };
  return {
    name: "memory",
    isHeld(key: string): boolean {
      const h = held.get(key);
      return h !== undefined && h.expiresAt > Date.now();
    },
    acquire(key: string, leaseMs: number): Promise<Lease | null> {
      check(leaseMs);
      const current = held.get(key);
      if (current && current.expiresAt > Date.now()) return Promise.resolve(null);
      if (current) {
        drop(key, current);
        current.controller.abort(new OutboxError("LEASE_LOST", `lock "${key}" expired`));
      }
      const h: Holder = { token: Symbol(key), expiresAt: 0, controller: new AbortController(), timer: 0 as never };
      held.set(key, h);
      arm(key, h, leaseMs);
      return Promise.resolve({
        key,
        signal: h.controller.signal,
        extend(ms: number): Promise<boolean> {
          check(ms);
          if (held.get(key) !== h || h.controller.signal.aborted) return Promise.resolve(false);
          arm(key, h, ms);
          return Promise.resolve(true);
        },
        release(): Promise<void> {
          drop(key, h);
          return Promise.resolve();
        },
      });
    },
  };
}
