/**
 * Wake-ups for the SQL storages' `subscribe` (internal, not exported): an in-process channel per database client and
 * table (a commit through the storage in this process wakes every subscribed relay at once), and a cheap change
 * watch for commits the process cannot see (other connections, other processes).
 *
 * @module
 */

type Listener = () => void;

const CHANNELS = new WeakMap<object, Map<string, Set<Listener>>>();

/** One in-process wake-up channel. */
export interface WakeChannel {
  /** Calls every listener soon (in a microtask; a throwing listener is ignored). */
  notify(): void;
  /** Adds a listener until `signal` aborts. */
  listen(onWake: Listener, signal: AbortSignal): void;
}

/**
 * The channel of `(owner, name)`: storages built on the same client object for the same table share it.
 *
 * @param owner the database client (the channel lives as long as it does)
 * @param name the table's scope, e.g. "libsql:outbox"
 * @returns the channel
 * @example
 * ```ts
 * const wake = wakeChannel(client, "libsql:outbox");
 * wake.listen(() => console.log("commit"), signal);
 * wake.notify();
 * ```
 */
export function wakeChannel(owner: object, name: string): WakeChannel {
  let byName = CHANNELS.get(owner);
  if (!byName) CHANNELS.set(owner, (byName = new Map()));
  let listeners = byName.get(name);
  if (!listeners) byName.set(name, (listeners = new Set()));
  const set = listeners;
  return {
    notify(): void {
      if (set.size === 0) return;
      queueMicrotask(() => {
        for (const l of [...set]) {
          try {
            l();
          } catch {
            // a listener's failure is its own; the others still wake
          }
        }
      });
    },
    listen(onWake: Listener, signal: AbortSignal): void {
      if (signal.aborted) return;
      const l: Listener = () => onWake();
      set.add(l);
      signal.addEventListener("abort", () => set.delete(l), { once: true });
    },
  };
}

/**
 * Polls `read` every `intervalMs` and calls `onWake` whenever its value changes, until `signal` aborts. A failing
 * read (a busy database, a held connection) is skipped: the next tick tries again. Resolves after the first read,
 * so the caller knows the watch is in place.
 *
 * @param read returns a value that changes when a relevant commit happens (e.g. the newest `seq`)
 * @param intervalMs time between reads, ms
 * @param onWake called on a change
 * @param signal stops the watch
 * @returns resolves once the baseline is read (or could not be)
 * @example
 * ```ts
 * let head = 0;
 * await watchChanges(() => Promise.resolve(head), 50, () => console.log("a commit"), signal);
 * head++; // seen within 50 ms
 * ```
 */
export async function watchChanges(
  read: () => Promise<unknown>,
  intervalMs: number,
  onWake: Listener,
  signal: AbortSignal,
): Promise<void> {
  let last: unknown = await read().catch(() => undefined);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const tick = async (): Promise<void> => {
    if (signal.aborted) return;
    try {
      const now = await read();
      if (now !== last) {
        last = now;
        if (!signal.aborted) onWake(); // a throwing onWake is caught below: the watch goes on
      }
    } catch {
      // skipped: the next tick reads again
    }
    if (!signal.aborted) schedule();
  };
  const schedule = (): void => {
    timer = setTimeout(() => void tick(), intervalMs);
    // A watch must not keep a process alive on its own (Node, Bun, Deno return an object with unref).
    (timer as { unref?: () => void }).unref?.();
  };
  if (signal.aborted) return;
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
  schedule();
}
