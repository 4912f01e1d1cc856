/**
 * The test-runner-neutral harness the conformance suite runs on: vitest, `bun test` and `deno test`
 * (through `node:test`) each supply these functions.
 *
 * @module
 */
import type { OutboxStorage } from "../storage.ts";

/** The subset of a Jest-style `expect` the conformance suite uses. */
export interface ExpectLike {
  (actual: unknown): Matchers;
}

/** Matchers used by the suite (vitest, bun:test and the `expect` package all provide them). */
export interface Matchers {
  /** Strict equality (`Object.is`). */
  toBe(expected: unknown): void;
  /** Deep equality. */
  toEqual(expected: unknown): void;
  /** `actual > n`. */
  toBeGreaterThan(n: number): void;
  /** `actual >= n`. */
  toBeGreaterThanOrEqual(n: number): void;
  /** `actual < n`. */
  toBeLessThan(n: number): void;
  /** `actual <= n`. */
  toBeLessThanOrEqual(n: number): void;
  /** `actual.length === n`. */
  toHaveLength(n: number): void;
  /** The array or string contains `item`. */
  toContain(item: unknown): void;
  /** `actual === null`. */
  toBeNull(): void;
  /** `actual` is truthy. */
  toBeTruthy(): void;
  /** Negated matchers. */
  readonly not: Matchers;
}

/** The test functions of one runner. */
export interface ConformanceHarness {
  /** Groups tests. */
  describe(name: string, fn: () => void): void;
  /** Declares one test; `timeoutMs` is that test's time limit. */
  it(name: string, fn: () => Promise<void>, timeoutMs?: number): void;
  /** Assertions. */
  expect: ExpectLike;
}

/** A transaction opened by a fixture's `begin()`. */
export interface FixtureTransaction<Tx> {
  /** The handle passed to `storage.enqueue`. */
  tx: Tx;
  /** Commits. */
  commit(): Promise<void>;
  /** Rolls back. */
  rollback(): Promise<void>;
}

/** One fresh, migrated, empty storage for one test. */
export interface ConformanceFixture<Tx, Stmt> {
  /** The storage under test, already migrated and empty. */
  storage: OutboxStorage<Tx, Stmt>;
  /** Opens a write transaction on the storage's database. */
  begin(): Promise<FixtureTransaction<Tx>>;
  /**
   * Opens another storage on the same database through a separate client or connection when the database has
   * them (file, server); for an in-process database, another storage object over the same data.
   */
  another(): Promise<OutboxStorage<Tx, Stmt>>;
  /** Runs an atomic batch made of `storage.statement(...)` results (only when `capabilities.batchStatement`). */
  runBatch?(statements: Stmt[]): Promise<void>;
  /** Releases clients, files and connections. */
  close(): Promise<void>;
}

/** What {@link storageConformance} needs to know about the adapter. */
export interface ConformanceOptions<Tx, Stmt> {
  /** Shown in test names, e.g. "libsql file". */
  name: string;
  /** Makes a fresh fixture; called once per test. */
  create(): Promise<ConformanceFixture<Tx, Stmt>>;
  /** Scales the row counts of the heavier cases (1 = the full suite). @default 1 */
  scale?: number | undefined;
  /**
   * Which revision of the shared semantics the storage implements. `2` runs the cases of the decisions of issue 9:
   * a replayed dead letter re-enters at the tail of its key, an `id` given at enqueue that a row already has is a
   * CONFLICT (nothing written, the transaction still usable), and `stats().oldestDueAgeMs` counts only due rows.
   * `1` runs the earlier cases instead (replay keeps its place, a duplicate id is STORAGE). Transitional: `2` becomes
   * the only behaviour once every adapter of this project implements it.
   * @default 1
   */
  semantics?: 1 | 2 | undefined;
  /**
   * Whether `begin()` gives a real interactive transaction that stays usable after a refused enqueue (false for a
   * batch-only database such as D1, whose fixture emulates `begin()`).
   * @default true
   */
  interactiveTransactions?: boolean | undefined;
  /**
   * Whether claims return each keyed message's delivery position (`ClaimedMessage.prevSeq`: the seq of its key's
   * last delivered message), which the transports send as `Outbox-Prev-Seq` for a consumer's strict inbox. Every
   * storage of this project does.
   * @default false
   */
  deliveryPositions?: boolean | undefined;
}
