/**
 * The `Lock` contract: keeps two drains from overlapping, for efficiency only. Correctness never rests on it
 * (every settle is fenced by the claim's lease token), so a lost or expired lock costs duplicate work, never a
 * lost or doubled message.
 *
 * @module
 */

/** A held lock. */
export interface Lease {
  /** The lock key. */
  readonly key: string;
  /** Fires when the lease is known lost (expired, stolen, connection gone). Stop claiming when it fires. */
  readonly signal: AbortSignal;
  /** Extends the lease to `leaseMs` from now. Resolves false when it was already lost. */
  extend(leaseMs: number): Promise<boolean>;
  /** Releases the lease if still held; a no-op otherwise. Never throws for a lost lease. */
  release(): Promise<void>;
}

/**
 * The lock contract.
 *
 * @example
 * ```ts
 * import type { Lock } from "edge-outbox";
 * async function exclusive(lock: Lock, work: () => Promise<void>): Promise<boolean> {
 *   const lease = await lock.acquire("edge-outbox:relay", 30_000);
 *   if (!lease) return false; // busy: another drain runs
 *   try { await work() } finally { await lease.release() }
 *   return true;
 * }
 * ```
 */
export interface Lock {
  /** Name for reports and error messages. */
  readonly name: string;
  /**
   * Tries once to take `key` for `leaseMs`. Resolves a {@link Lease}, or null when another holder has it
   * (busy is a normal result, not an error).
   * @throws {OutboxError} LOCK when the lock store itself fails
   */
  acquire(key: string, leaseMs: number): Promise<Lease | null>;
}
