/**
 * Draining from a cron trigger: repeated budgeted drains inside one scheduled invocation (Cloudflare's `scheduled`
 * handler, Vercel Cron, Netlify scheduled functions, `Deno.cron`), bounded by the invocation's total budget.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError, toOutboxError } from "./errors.ts";
import { parseOptions } from "./options.ts";
import type { DrainReport, Relay } from "./relay.ts";

/** Options of {@link scheduledDrain}. */
export interface ScheduledDrainOptions {
  /**
   * Total time budget of the invocation, ms: no drain starts after it, and each drain is given at most what is
   * left of it. The call returns within about `budgetMs` plus the relay's `sendTimeoutMs` (sends in flight finish):
   * keep that sum under the platform's limit (Cloudflare cron: 15 min wall, 30 s CPU by default; Netlify
   * scheduled functions: 30 s; Vercel functions: 300 s).
   */
  budgetMs: number;
  /**
   * Budget of each single drain, ms (a drain's lock lease and its report cover this much). @default budgetMs
   * (one drain unless it stops early with `more`)
   */
  drainBudgetMs?: number | undefined;
  /** No drain starts when less than this is left of the total budget, ms. @default min(1000, budgetMs / 10) */
  minDrainMs?: number | undefined;
  /** At most this many drains. @default 1000 */
  maxDrains?: number | undefined;
  /** Stops early: no further drain starts and the running one stops claiming. @default none */
  signal?: AbortSignal | undefined;
  /** Called after each drain with its report (logging, metrics). @default none */
  onReport?: ((report: DrainReport) => void) | undefined;
}

/** Why {@link scheduledDrain} stopped. */
export type ScheduledDrainStop =
  /** The last drain reported no `more`: nothing was due any longer. */
  | "idle"
  /** Less than `minDrainMs` was left of the total budget while messages were still due. */
  | "budget"
  /** The relay's lock was held by another drain (the last drain was skipped). */
  | "lock-busy"
  /** `maxDrains` drains ran. */
  | "max-drains"
  /** `signal` aborted. */
  | "signal"
  /** A drain reported `more` without claiming anything (e.g. its budget was too small to claim): stopped to avoid spinning. */
  | "no-progress";

/**
 * What {@link scheduledDrain} did: the counts of its drains' reports summed (`claimed`, `delivered`, `retried`,
 * `dead`, `released`, `leaseLost`), the wall time of the whole call, whether messages were still due at the end
 * (`more`: the next trigger, or a follow-up, continues), and why it stopped.
 */
export interface ScheduledDrainSummary extends Omit<DrainReport, "skipped"> {
  /** Drains run (a drain skipped for a busy lock counts). */
  drains: number;
  /** Why it stopped. */
  stopped: ScheduledDrainStop;
}

const COUNTS = ["claimed", "delivered", "retried", "dead", "released", "leaseLost"] as const;

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));

const optionsSchema = v.strictObject({
  budgetMs: int(1, 86_400_000),
  drainBudgetMs: v.optional(int(1, 86_400_000)),
  minDrainMs: v.optional(int(1, 86_400_000)),
  maxDrains: v.optional(int(1, 1_000_000), 1_000),
  // Not v.instance(AbortSignal): Deno's default libs type the AbortSignal constructor oddly (see DESIGN.md).
  signal: v.optional(v.custom<AbortSignal>(
    (s) => typeof s === "object" && s !== null && typeof (s as { aborted?: unknown }).aborted === "boolean" &&
      typeof (s as { addEventListener?: unknown }).addEventListener === "function",
    "must be an AbortSignal",
  )),
  onReport: v.optional(v.custom<(report: DrainReport) => void>((f) => typeof f === "function", "must be a function")),
});

const relaySchema = v.custom<Pick<Relay, "drain">>(
  (r) => typeof r === "object" && r !== null && typeof (r as { drain?: unknown }).drain === "function",
  "must be a relay made by createRelay",
);

/**
 * Drains an outbox from a scheduled (cron) invocation: runs `relay.drain` again and again while it reports `more`,
 * each drain given at most what is left of the total budget, and returns the summed reports. A busy lock (another
 * drain is running) ends the call at once.
 *
 * @param relay the relay (from `createRelay`)
 * @param options budgetMs (required), drainBudgetMs (budgetMs), minDrainMs (min(1000, budgetMs / 10)), maxDrains (1000), signal, onReport
 * @returns the summary: counts summed over the drains, `more`, `stopped` and the wall time
 * @throws {OutboxError} CONFIG for bad options (nothing runs); STORAGE or LOCK when a drain fails (the drains before
 *   it are settled; `onReport` has seen their reports)
 * @example
 * ```ts
 * import { createOutbox, createRelay, scheduledDrain } from "edge-outbox";
 * import { memoryStorage, recordingTransport } from "edge-outbox/memory";
 *
 * const relay = createRelay({ outbox: createOutbox({ storage: memoryStorage() }), transport: recordingTransport() });
 * // A Cloudflare Worker: the cron trigger drains for up to 25 s, the relay's sends time out after 10 s.
 * export default {
 *   scheduled(_controller: unknown, _env: unknown, ctx: { waitUntil(p: Promise<unknown>): void }): void {
 *     ctx.waitUntil(scheduledDrain(relay, { budgetMs: 25_000, drainBudgetMs: 10_000 }).then((s) => console.log(s)));
 *   },
 * };
 * ```
 */
export async function scheduledDrain(relay: Pick<Relay, "drain">, options: ScheduledDrainOptions): Promise<ScheduledDrainSummary> {
  parseOptions("scheduledDrain relay", relaySchema, relay);
  const o = parseOptions("scheduledDrain options", optionsSchema, options);
  const minDrainMs = o.minDrainMs ?? Math.max(1, Math.min(1_000, Math.floor(o.budgetMs / 10)));
  if (minDrainMs > o.budgetMs) {
    throw new OutboxError("CONFIG", `scheduledDrain options: minDrainMs (${minDrainMs}) must not exceed budgetMs (${o.budgetMs})`);
  }
  const drainBudgetMs = o.drainBudgetMs ?? o.budgetMs;
  const started = performance.now();
  const summary: ScheduledDrainSummary = { drains: 0, claimed: 0, delivered: 0, retried: 0, dead: 0, released: 0, leaseLost: 0, elapsedMs: 0, more: false, stopped: "idle" };
  const finish = (stopped: ScheduledDrainStop, more: boolean): ScheduledDrainSummary => {
    summary.stopped = stopped;
    summary.more = more;
    summary.elapsedMs = Math.round(performance.now() - started);
    return summary;
  };

  let more = false;
  for (;;) {
    if (o.signal?.aborted) return finish("signal", more);
    if (summary.drains >= o.maxDrains) return finish("max-drains", more);
    const left = Math.floor(o.budgetMs - (performance.now() - started));
    if (left < minDrainMs) return finish("budget", more);

    let report: DrainReport;
    try {
      report = await relay.drain({ budgetMs: Math.min(drainBudgetMs, left), ...(o.signal ? { signal: o.signal } : {}) });
    } catch (e) {
      throw toOutboxError("STORAGE", "[edge-outbox:scheduled] drain failed", e, true);
    }
    summary.drains++;
    for (const k of COUNTS) summary[k] += report[k];
    o.onReport?.(report);
    more = report.more;
    if (report.skipped === "lock-busy") return finish("lock-busy", more); // the drain holding the lock carries on
    if (!report.more) return finish("idle", false);
    if (report.claimed === 0 && !o.signal?.aborted) return finish("no-progress", true);
  }
}
