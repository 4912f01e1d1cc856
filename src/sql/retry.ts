/**
 * The busy-retry loop shared by the SQL storages (internal, not exported): relay-side calls retry a transient
 * conflict (SQLite `SQLITE_BUSY`, Postgres serialization failures) with an asynchronous, jittered, doubling backoff,
 * never a blocking wait, then throw the adapter's typed error.
 *
 * @module
 */
import { isOutboxError, type OutboxError } from "../errors.ts";

/** How {@link busyRetrier} retries. */
export interface BusyRetryOptions {
  /** How long to keep retrying, ms; 0 never retries. */
  readonly budgetMs: number;
  /** Whether a caught error is a transient conflict worth retrying at once. */
  isBusy(e: unknown): boolean;
  /** Turns a caught error into the adapter's typed error (the `storage` of `sqlErrors`). */
  fail(what: string, e: unknown): OutboxError;
}

/** Runs `op`, retrying busy errors within the budget; rejects with the adapter's typed error. */
export type BusyRetrier = <T>(what: string, op: () => Promise<T>) => Promise<T>;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Makes the retry loop of one storage. The first wait is 2.5–5 ms, doubling up to 125–250 ms; the loop gives up
 * when the next wait would pass the budget. OutboxErrors thrown by `op` are never retried.
 *
 * @param options budget, busy test and error wrapper
 * @returns the retrier: `relaySide("claim", () => …)`
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const relaySide = busyRetrier({
 *   budgetMs: 2_000,
 *   isBusy: (e) => (e as { code?: unknown }).code === "SQLITE_BUSY",
 *   fail: (what, e) => new OutboxError("STORAGE", `${what} failed`, { cause: e }),
 * });
 * const rs = await relaySide("claim", () => client.execute("SELECT 1"));
 * ```
 */
export function busyRetrier(options: BusyRetryOptions): BusyRetrier {
  const { budgetMs, isBusy, fail } = options;
  return async function relaySide<T>(what: string, op: () => Promise<T>): Promise<T> {
    const start = Date.now();
    let delay = 5;
    for (;;) {
      try {
        return await op();
      } catch (e) {
        if (isOutboxError(e) || !isBusy(e)) throw fail(what, e);
        const wait = Math.round(delay * (0.5 + Math.random() * 0.5));
        if (Date.now() - start + wait > budgetMs) throw fail(what, e);
        await sleep(wait);
        delay = Math.min(delay * 2, 250);
      }
    }
  };
}
