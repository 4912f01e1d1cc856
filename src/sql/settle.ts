/**
 * Settlement partitioning shared by the SQL storages (internal, not exported): one pass over the relay's
 * settlements splits them by outcome (one statement per outcome kind, never one per message), and
 * {@link settleResult} turns the ids that did not apply back into the contract's `{ applied, lost }`.
 *
 * @module
 */
import type { OutboxError } from "../errors.ts";
import type { SettleResult, Settlement } from "../storage.ts";
import { isNonNegativeInt } from "./coerce.ts";

/** How an adapter reads ids. */
export interface SettleIds {
  /** Maps an id to the form the database compares (Postgres: lower-case UUIDs). @default the id itself */
  readonly normalize?: ((id: string) => string) | undefined;
  /** Whether an id can match a row at all; others are reported lost without being sent. @default every id */
  readonly accept?: ((id: string) => boolean) | undefined;
}

/** The settlements of one call, by outcome, each id once (its first settlement). */
export interface SettlementPartition {
  /** Every distinct (normalized) id, accepted or not. */
  readonly seen: ReadonlySet<string>;
  /** Ids to mark delivered. */
  readonly delivered: string[];
  /** `[id, delayMs, error]` to retry. */
  readonly retried: [string, number, string][];
  /** `[id, error]` to dead-letter. */
  readonly dead: [string, string][];
  /** Ids to release (claimed, never sent). */
  readonly released: string[];
  /** How many ids are in the four lists (what is sent to the database). */
  readonly size: number;
}

/**
 * Splits settlements by outcome. A repeated id keeps its first settlement (the later ones are reported lost by
 * {@link settleResult}); an id that `accept` refuses is skipped (reported lost).
 *
 * @param settlements the relay's settlements
 * @param invalid the adapter's VALIDATION error maker
 * @param ids how the adapter reads ids
 * @returns the partition
 * @throws {OutboxError} VALIDATION for a non-array, a settlement without a string id, a retry whose `delayMs` is not a
 *   non-negative integer, or an unknown outcome
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const invalid = (m: string): OutboxError => new OutboxError("VALIDATION", m);
 * const p = partitionSettlements([{ id: "a", outcome: "delivered" }], invalid);
 * p.delivered; // ["a"]
 * ```
 */
export function partitionSettlements(
  settlements: readonly Settlement[],
  invalid: (message: string) => OutboxError,
  ids: SettleIds = {},
): SettlementPartition {
  if (!Array.isArray(settlements)) throw invalid("settlements must be an array");
  const { normalize, accept } = ids;
  const seen = new Set<string>();
  const delivered: string[] = [];
  const retried: [string, number, string][] = [];
  const dead: [string, string][] = [];
  const released: string[] = [];
  for (const s of settlements) {
    if (typeof s?.id !== "string") throw invalid("every settlement needs a string id");
    const id = normalize ? normalize(s.id) : s.id;
    if (seen.has(id)) continue; // a repeated id is reported lost: only its first settlement can apply
    seen.add(id);
    if (accept && !accept(id)) continue; // no row has this id: reported lost
    switch (s.outcome) {
      case "delivered":
        delivered.push(id);
        break;
      case "retry":
        if (!isNonNegativeInt(s.delayMs)) throw invalid(`retry delayMs must be a non-negative integer, got ${s.delayMs}`);
        retried.push([id, s.delayMs, String(s.error ?? "")]);
        break;
      case "dead":
        dead.push([id, String(s.error ?? "")]);
        break;
      case "released":
        released.push(id);
        break;
      default:
        throw invalid(`unknown settlement outcome ${JSON.stringify((s as { outcome?: unknown }).outcome)}`);
    }
  }
  return { seen, delivered, retried, dead, released, size: delivered.length + retried.length + dead.length + released.length };
}

/**
 * The contract's result: each id applies at most once (its first settlement), and only when it was sent and its
 * row still carried the token (it is not in `notApplied`); every other settlement is lost, in input order.
 *
 * @param settlements the relay's settlements (as passed to {@link partitionSettlements})
 * @param partition their partition
 * @param notApplied the sent (normalized) ids whose row did not carry the token
 * @param ids the same id reading as for the partition
 * @returns `{ applied, lost }`
 * @example
 * ```ts
 * import { OutboxError } from "edge-outbox";
 * const settlements = [{ id: "a", outcome: "delivered" as const }, { id: "b", outcome: "delivered" as const }];
 * const partition = partitionSettlements(settlements, (m) => new OutboxError("VALIDATION", m));
 * const result = settleResult(settlements, partition, new Set(["a"])); // { applied: 1, lost: ["a"] }
 * ```
 */
export function settleResult(
  settlements: readonly Settlement[],
  partition: SettlementPartition,
  notApplied: ReadonlySet<string>,
  ids: SettleIds = {},
): SettleResult {
  if (notApplied.size === 0 && partition.size === settlements.length) return { applied: partition.size, lost: [] };
  const { normalize, accept } = ids;
  const lost: string[] = [];
  const counted = new Set<string>();
  for (const s of settlements) {
    const id = normalize ? normalize(s.id) : s.id;
    if ((!accept || accept(id)) && !notApplied.has(id) && !counted.has(id)) counted.add(id);
    else lost.push(s.id);
  }
  return { applied: counted.size, lost };
}
