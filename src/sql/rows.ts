/**
 * Row decoding shared by the SQL storages (internal, not exported): each adapter reads its driver's row into the
 * raw column values below (by name, or by position from a JSON array), and these build the contract's objects.
 *
 * @module
 */
import type { ClaimedMessage, DeadLetter, OutboxStats } from "../storage.ts";
import { num, numOrNull, text, textOrNull } from "./coerce.ts";

/** The raw columns every message row has, as the driver returned them. */
export interface RawMessageRow {
  /** `id`. */
  readonly id: unknown;
  /** `topic`. */
  readonly topic: unknown;
  /** `key`. */
  readonly key: unknown;
  /** `payload`, JSON text. */
  readonly payload: unknown;
  /** `headers`, JSON text. */
  readonly headers: unknown;
  /** `created_at`, epoch ms. */
  readonly createdAt: unknown;
  /** `attempts`. */
  readonly attempts: unknown;
  /** `last_error`. */
  readonly lastError: unknown;
}

/** The raw columns of a claimed row (`attempts` already incremented by the claim). */
export interface RawClaimedRow extends RawMessageRow {
  /** `seq`. */
  readonly seq: unknown;
  /**
   * The key's delivery position (the `seq` of its last delivered message), null when unknown or keyless; absent
   * (undefined) for a storage that does not track positions.
   */
  readonly prevSeq?: unknown;
}

/**
 * Builds a claimed message; the payload text is kept as `body`, so it is sent exactly as enqueued.
 *
 * @param r the raw columns
 * @returns the message
 * @throws {SyntaxError} when payload or headers are not JSON (a row not written by edge-outbox)
 * @example
 * ```ts
 * const m = claimedMessage({ seq: 1, id: "…", topic: "t", key: null, payload: "{}", headers: "{}", createdAt: 0, attempts: 1, lastError: null });
 * ```
 */
export function claimedMessage(r: RawClaimedRow): ClaimedMessage {
  const body = text(r.payload);
  const headers = text(r.headers);
  const key = textOrNull(r.key);
  const m: { -readonly [K in keyof ClaimedMessage]: ClaimedMessage[K] } = {
    id: text(r.id),
    topic: text(r.topic),
    key,
    payload: JSON.parse(body),
    body,
    headers: headers === "{}" ? {} : JSON.parse(headers),
    createdAt: num(r.createdAt),
    attempts: num(r.attempts),
    lastError: textOrNull(r.lastError),
    seq: num(r.seq),
  };
  // Assigned, not spread: an object spread per row cost more than the rest of this function (a claim builds 100s).
  if (r.prevSeq !== undefined) m.prevSeq = key === null ? null : numOrNull(r.prevSeq);
  return m;
}

/** The raw columns of a dead-letter row. */
export interface RawDeadRow extends RawMessageRow {
  /** When it died, epoch ms (null on rows from before that was recorded: `createdAt` is used). */
  readonly deadAt: unknown;
}

/**
 * Builds a dead letter.
 *
 * @param r the raw columns
 * @returns the dead letter
 * @example
 * ```ts
 * const d = deadLetter({ id: "…", topic: "t", key: null, payload: "{}", headers: "{}", createdAt: 0, deadAt: 5, attempts: 3, lastError: "400" });
 * ```
 */
export function deadLetter(r: RawDeadRow): DeadLetter {
  return {
    id: text(r.id),
    topic: text(r.topic),
    key: textOrNull(r.key),
    payload: JSON.parse(text(r.payload)),
    headers: JSON.parse(text(r.headers)),
    createdAt: num(r.createdAt),
    deadAt: numOrNull(r.deadAt) ?? num(r.createdAt),
    attempts: num(r.attempts),
    lastError: textOrNull(r.lastError),
  };
}

/** The raw values of the stats query. */
export interface RawStatsRow {
  /** Database now, epoch ms. */
  readonly now: unknown;
  /** Pending rows. */
  readonly pending: unknown;
  /** Pending rows due now. */
  readonly due: unknown;
  /** Pending rows under an unexpired lease. */
  readonly leased: unknown;
  /** Dead rows. */
  readonly dead: unknown;
  /** min(created_at) over pending rows, or null. */
  readonly oldest: unknown;
  /** min(available_at) over due pending rows, or null; absent when the adapter does not read it. */
  readonly oldestDue?: unknown;
  /** Delivered in the window. */
  readonly delivered: unknown;
  /** Retried in the window. */
  readonly retried: unknown;
  /** Dead-lettered in the window. */
  readonly deadWindow: unknown;
  /** Sum of delivery latencies in the window, ms. */
  readonly latencySum: unknown;
  /** Largest delivery latency in the window, ms, or null. */
  readonly latencyMax: unknown;
}

/**
 * Builds the contract's stats from one stats row.
 *
 * @param windowMs the window asked for
 * @param r the raw values
 * @returns the stats
 * @example
 * ```ts
 * const s = outboxStats(300_000, {
 *   now: 1_000, pending: 1, due: 1, leased: 0, dead: 0, oldest: 400, oldestDue: 900,
 *   delivered: 0, retried: 0, deadWindow: 0, latencySum: 0, latencyMax: null,
 * });
 * s.oldestDueAgeMs; // 100
 * ```
 */
export function outboxStats(windowMs: number, r: RawStatsRow): OutboxStats {
  const now = num(r.now);
  const oldest = numOrNull(r.oldest);
  const deliveredW = num(r.delivered);
  const stats: OutboxStats = {
    pending: num(r.pending),
    due: num(r.due),
    leased: num(r.leased),
    dead: num(r.dead),
    oldestPendingAgeMs: oldest === null ? null : Math.max(0, now - oldest),
    window: {
      windowMs,
      delivered: deliveredW,
      retried: num(r.retried),
      dead: num(r.deadWindow),
      avgLatencyMs: deliveredW > 0 ? num(r.latencySum) / deliveredW : null,
      maxLatencyMs: deliveredW > 0 ? numOrNull(r.latencyMax) : null,
    },
    now,
  };
  if (!("oldestDue" in r)) return stats;
  const oldestDue = numOrNull(r.oldestDue);
  return { ...stats, oldestDueAgeMs: oldestDue === null ? null : Math.max(0, now - oldestDue) };
}
