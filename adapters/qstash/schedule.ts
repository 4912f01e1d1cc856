/**
 * {@link ensureSchedule}: one idempotent QStash cron schedule calling the relay's drain URL.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError } from "../../src/errors.ts";
import { parseOptions } from "../../src/options.ts";
import type { QstashCreateScheduleRequest, QstashMethod, QstashSchedule, QstashScheduleClient } from "./client.ts";
import { isHttpUrl, shortHash, transportError } from "./publish.ts";

/** Options of {@link ensureSchedule}. */
export interface EnsureScheduleOptions {
  /** The relay's drain URL, as QStash should call it. */
  url: string;
  /** Cron expression (5 fields, optionally `CRON_TZ=<zone> ` first), e.g. `* * * * *`. */
  cron: string;
  /** The schedule id. @default `edge-outbox-<hash(url)>` (deterministic: one schedule per URL) */
  scheduleId?: string | undefined;
  /** HTTP method. @default "POST" */
  method?: QstashMethod | undefined;
  /** Delivery retries of each call. @default QStash's default */
  retries?: number | undefined;
}

/** What {@link ensureSchedule} did. */
export interface EnsureScheduleResult {
  /** The schedule id. */
  readonly scheduleId: string;
  /** `created` (there was none), `updated` (it differed) or `unchanged`. */
  readonly status: "created" | "updated" | "unchanged";
}

const scheduleOptionsSchema = v.strictObject({
  url: v.pipe(v.string(), v.check(isHttpUrl, "must be an absolute http(s) URL")),
  cron: v.pipe(v.string(), v.regex(/^(CRON_TZ=\S+\s+)?\S+(\s+\S+){4}$/, "must be a 5-field cron expression, e.g. \"* * * * *\"")),
  scheduleId: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]{1,200}$/, "must be 1 to 200 of A-Z a-z 0-9 . _ -"))),
  method: v.optional(v.picklist(["GET", "POST", "PUT", "DELETE", "PATCH"]), "POST"),
  retries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(100))),
});

/**
 * Creates or updates ONE QStash schedule calling the relay's drain URL: the schedule id is derived from the URL
 * (or given), so calling this on every deploy never makes a duplicate; a schedule that already matches is left
 * alone.
 *
 * @param client a `@upstash/qstash` `Client` (typed structurally)
 * @param options url, cron, scheduleId (derived from url), method ("POST"), retries
 * @returns the schedule id and whether it was created, updated or unchanged
 * @throws {OutboxError} CONFIG for a bad option; TRANSPORT when QStash fails
 * @example
 * ```ts
 * import { ensureSchedule } from "edge-outbox/qstash";
 * // in your deploy script or at start:
 * const { scheduleId, status } = await ensureSchedule(qstash, { url: "https://app.example/outbox/drain", cron: "* * * * *" });
 * ```
 */
export async function ensureSchedule(client: QstashScheduleClient, options: EnsureScheduleOptions): Promise<EnsureScheduleResult> {
  if (typeof (client as { schedules?: { create?: unknown } } | null)?.schedules?.create !== "function") {
    throw new OutboxError("CONFIG", "ensureSchedule: client must be a QStash Client (with schedules)");
  }
  const o = parseOptions("ensureSchedule options", scheduleOptionsSchema, options);
  const scheduleId = o.scheduleId ?? `edge-outbox-${await shortHash(o.url)}`;
  let existing: QstashSchedule | null = null;
  try {
    // list, not get: a missing schedule is a normal case here, not a 404 the client logs as an error
    existing = (await client.schedules.list()).find((s) => s.scheduleId === scheduleId) ?? null;
  } catch (e) {
    throw transportError("ensureSchedule: listing the schedules failed", e);
  }
  if (
    existing && existing.cron === o.cron && existing.destination === o.url && (existing.method ?? "POST") === o.method &&
    (o.retries === undefined || existing.retries === o.retries)
  ) {
    return { scheduleId, status: "unchanged" };
  }
  const request: QstashCreateScheduleRequest = { destination: o.url, cron: o.cron, scheduleId, method: o.method };
  if (o.retries !== undefined) request.retries = o.retries;
  try {
    const created = await client.schedules.create(request);
    return { scheduleId: created.scheduleId ?? scheduleId, status: existing ? "updated" : "created" };
  } catch (e) {
    throw transportError("ensureSchedule: creating the schedule failed", e);
  }
}
