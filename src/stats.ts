/**
 * Stats and health evaluation: pure functions over {@link OutboxStats} (no I/O), shared by the Hono relay app's
 * `/health` and `/stats` routes and by anyone wiring the outbox into their own health checks.
 *
 * @module
 */
import * as v from "valibot";
import { parseOptions } from "./options.ts";
import type { OutboxStats } from "./storage.ts";

/** Overall or per-check health, from best to worst. */
export type HealthStatus = "healthy" | "degraded" | "unhealthy";

/**
 * Two levels for one measure. A measure strictly above `degraded` makes the outbox `degraded`; strictly above
 * `unhealthy` makes it `unhealthy`. Either level may be left out; when both are given, `degraded` ≤ `unhealthy`.
 */
export interface HealthLevels {
  /** Above this, the check is degraded. @default none */
  degraded?: number | undefined;
  /** Above this, the check is unhealthy. @default none */
  unhealthy?: number | undefined;
}

/**
 * Thresholds of {@link evaluateHealth}: the queue length and the lag of the oldest message (Silverback's `maxQueueLength` and
 * `maxAge`, MediatR-style degraded/critical levels) and the dead-letter count. A measure without levels is not checked.
 */
export interface HealthThresholds {
  /** Pending rows (waiting, leased, backing off or delayed). @default none */
  pending?: HealthLevels | undefined;
  /**
   * How long the longest-waiting message has been waiting *while due*, ms: `stats.oldestDueAgeMs` (a delayed or
   * backing-off message counts only from when it became due, a leased one not at all), or `stats.oldestPendingAgeMs`
   * (from enqueue) for a storage that does not report `oldestDueAgeMs`. The name is kept from the first release.
   * @default { degraded: 30000, unhealthy: 300000 }
   */
  oldestPendingAgeMs?: HealthLevels | undefined;
  /** Dead letters waiting for replay or purge. @default none */
  dead?: HealthLevels | undefined;
}

/** The outcome of one measure. */
export interface HealthCheck {
  /** Which measure. */
  readonly name: "pending" | "oldestPendingAgeMs" | "dead";
  /** Its current value (null: nothing due, for the age). */
  readonly value: number | null;
  /** Its status. */
  readonly status: HealthStatus;
  /** The level above which it is degraded, if any. */
  readonly degraded: number | null;
  /** The level above which it is unhealthy, if any. */
  readonly unhealthy: number | null;
}

/** What {@link evaluateHealth} returns. */
export interface HealthReport {
  /** The worst status of all checks (`healthy` when nothing is checked). */
  readonly status: HealthStatus;
  /** One entry per configured measure. */
  readonly checks: readonly HealthCheck[];
}

/** Default health thresholds: only the oldest due message's wait is checked (30 s degraded, 5 min unhealthy). */
export const DEFAULT_HEALTH_THRESHOLDS: Readonly<HealthThresholds> = Object.freeze({
  oldestPendingAgeMs: Object.freeze({ degraded: 30_000, unhealthy: 300_000 }),
});

const level = v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER)));
const levelsSchema = v.optional(v.pipe(
  v.strictObject({ degraded: level, unhealthy: level }),
  v.check(
    (l) => l.degraded === undefined || l.unhealthy === undefined || l.degraded <= l.unhealthy,
    "degraded must not be above unhealthy",
  ),
));
const thresholdsSchema = v.strictObject({ pending: levelsSchema, oldestPendingAgeMs: levelsSchema, dead: levelsSchema });

/**
 * Validates health thresholds (non-negative integers, `degraded` ≤ `unhealthy`) and fills in the defaults for the
 * measures left out. Call it once at start to fail fast; {@link evaluateHealth} calls it too.
 *
 * @param thresholds the thresholds to check @default {@link DEFAULT_HEALTH_THRESHOLDS}
 * @param what the name used in error messages @default "health thresholds"
 * @returns the thresholds with defaults applied
 * @throws {OutboxError} CONFIG naming the bad field, e.g. `health thresholds: pending: degraded must not be above unhealthy`
 * @example
 * ```ts
 * import { parseHealthThresholds } from "edge-outbox";
 * const thresholds = parseHealthThresholds({ pending: { degraded: 1_000, unhealthy: 10_000 } });
 * ```
 */
export function parseHealthThresholds(thresholds: HealthThresholds = {}, what = "health thresholds"): HealthThresholds {
  const t = parseOptions(what, thresholdsSchema, thresholds ?? {});
  return {
    pending: t.pending,
    oldestPendingAgeMs: thresholds?.oldestPendingAgeMs === undefined ? DEFAULT_HEALTH_THRESHOLDS.oldestPendingAgeMs : t.oldestPendingAgeMs,
    dead: t.dead,
  };
}

const RANK: Record<HealthStatus, number> = { healthy: 0, degraded: 1, unhealthy: 2 };

/**
 * Decides whether the outbox is healthy from its stats: each configured measure (pending count, how long the oldest
 * due message has waited, dead letters) is `unhealthy` strictly above its `unhealthy` level, `degraded` strictly above its
 * `degraded` level, else `healthy`; the overall status is the worst check. Pure: read the stats with
 * `outbox.stats()` (database counters, right on serverless) and pass them in.
 *
 * @param stats what `outbox.stats()` returned
 * @param thresholds levels per measure @default {@link DEFAULT_HEALTH_THRESHOLDS} (oldest due wait 30 s / 5 min)
 * @returns the overall status and one check per measure
 * @throws {OutboxError} CONFIG for invalid thresholds
 * @example
 * ```ts
 * import { evaluateHealth } from "edge-outbox";
 * const health = evaluateHealth(await outbox.stats(), {
 *   pending: { degraded: 1_000, unhealthy: 10_000 },
 *   oldestPendingAgeMs: { degraded: 30_000, unhealthy: 300_000 },
 *   dead: { degraded: 0, unhealthy: 100 },
 * });
 * if (health.status === "unhealthy") console.error(health.checks);
 * ```
 */
export function evaluateHealth(stats: OutboxStats, thresholds?: HealthThresholds): HealthReport {
  const t = parseHealthThresholds(thresholds);
  const checks: HealthCheck[] = [];
  const check = (name: HealthCheck["name"], value: number | null, levels: HealthLevels | undefined): void => {
    if (!levels || (levels.degraded === undefined && levels.unhealthy === undefined)) return;
    let status: HealthStatus = "healthy";
    if (value !== null && levels.unhealthy !== undefined && value > levels.unhealthy) status = "unhealthy";
    else if (value !== null && levels.degraded !== undefined && value > levels.degraded) status = "degraded";
    checks.push({ name, value, status, degraded: levels.degraded ?? null, unhealthy: levels.unhealthy ?? null });
  };
  check("pending", stats.pending, t.pending);
  // Due age when the storage reports it (a delayed message must not turn /health 503), else the enqueue age.
  const age = stats.oldestDueAgeMs !== undefined ? stats.oldestDueAgeMs : stats.oldestPendingAgeMs;
  check("oldestPendingAgeMs", age, t.oldestPendingAgeMs);
  check("dead", stats.dead, t.dead);
  let status: HealthStatus = "healthy";
  for (const c of checks) if (RANK[c.status] > RANK[status]) status = c.status;
  return { status, checks };
}

/**
 * The share of delivery attempts in the stats window that failed and were scheduled for retry:
 * `retried / (delivered + retried + dead)`.
 *
 * @param stats what `outbox.stats()` returned
 * @returns a number in [0, 1], or null when the window saw no outcome
 * @example
 * ```ts
 * import { retryRate } from "edge-outbox";
 * const rate = retryRate(await outbox.stats({ windowMs: 300_000 })); // e.g. 0.02
 * ```
 */
export function retryRate(stats: OutboxStats): number | null {
  const { delivered, retried, dead } = stats.window;
  const total = delivered + retried + dead;
  return total === 0 ? null : retried / total;
}
