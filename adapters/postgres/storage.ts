/**
 * The Postgres storage implementation behind {@link postgresStorage} (in `mod.ts`). Internal: `createPostgresStorage`
 * takes already-rendered statements, which lets tests swap a statement to show what the design prevents.
 *
 * @module
 */
import * as v from "valibot";
import { isOutboxError } from "../../src/errors.ts";
import { parseOptions } from "../../src/options.ts";
import type { NewMessage } from "../../src/message.ts";
import type {
  Claim,
  ClaimedMessage,
  DeadLetter,
  DeadLetterPage,
  OutboxStats,
  OutboxStorage,
  SettleResult,
  Settlement,
  StorageCapabilities,
} from "../../src/storage.ts";
import {
  hasMethod,
  invalid,
  isBusyError,
  num,
  numOrNull,
  type PostgresClient,
  type PostgresExecutor,
  type PostgresParameter,
  type PostgresRow,
  storageError,
} from "./client.ts";
import { CREATE_SCHEMA_DDL, MIGRATIONS_TABLE_DDL, postgresNames, recordVersionSql, renderSql, SCHEMA_VERSIONS } from "./schema.ts";
import type { PostgresSql } from "./sql.ts";

/** Options of {@link postgresStorage}. */
export interface PostgresStorageOptions {
  /**
   * Outbox table name (also the prefix of `<table>_counters`, `<table>_migrations` and the index names); a plain
   * identifier of at most 52 characters. @default "outbox"
   */
  table?: string;
  /** Schema of the outbox's tables; `migrate()` creates it when missing. @default "public" */
  schema?: string;
  /**
   * Keep delivered rows this long (ms) as status "delivered" instead of deleting them; remove them with
   * `purge({ status: "delivered", … })`. 0 deletes at once. @default 0
   */
  retainDeliveredMs?: number;
  /**
   * How long relay-side calls (`claim`, `settle`, `migrate`, …) retry a transient conflict (40001 serialization
   * failure, 40P01 deadlock, 55P03 lock not available) with an asynchronous backoff before throwing. Connection
   * errors are never retried here (they are thrown at once as retryable STORAGE errors). 0 disables. @default 2000
   */
  busyRetryMs?: number;
}

/** The Postgres storage: the {@link OutboxStorage} contract over a postgres.js client. No `statement()`. */
export interface PostgresStorage extends OutboxStorage<PostgresExecutor, never> {
  /** The validated table name. */
  readonly table: string;
  /** The validated schema name. */
  readonly schema: string;
  /** The delivered-row retention, ms (0: delivered rows are deleted). */
  readonly retainDeliveredMs: number;
}

const optionsSchema = v.strictObject({
  table: v.optional(v.string(), "outbox"),
  schema: v.optional(v.string(), "public"),
  retainDeliveredMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(31_536_000_000)), 0),
  busyRetryMs: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(600_000)), 2_000),
});

/** Validated storage options: names checked, defaults applied. */
export interface ResolvedPostgresStorageOptions {
  /** Schema name. */
  readonly schema: string;
  /** Table name. */
  readonly table: string;
  /** Delivered-row retention, ms. */
  readonly retainDeliveredMs: number;
  /** Busy retry budget, ms. */
  readonly busyRetryMs: number;
}

/**
 * Validates {@link PostgresStorageOptions} (CONFIG naming the field) and applies the defaults.
 *
 * @param input the caller's options
 * @returns the resolved options
 * @throws {OutboxError} CONFIG for a bad option, a table or schema that is not a plain identifier, or a table name
 *   longer than 52 characters
 * @example
 * ```ts
 * resolvePostgresStorageOptions({ table: "outbox" }); // { schema: "public", table: "outbox", retainDeliveredMs: 0, busyRetryMs: 2000 }
 * ```
 */
export function resolvePostgresStorageOptions(input: unknown): ResolvedPostgresStorageOptions {
  const o = parseOptions("postgresStorage options", optionsSchema, input ?? {});
  const names = postgresNames(o);
  return { ...names, retainDeliveredMs: o.retainDeliveredMs, busyRetryMs: o.busyRetryMs };
}

const UUID_ANY_CASE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function text(x: unknown): string {
  return typeof x === "string" ? x : String(x);
}
function textOrNull(x: unknown): string | null {
  return x === null || x === undefined ? null : text(x);
}
function isPositiveInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 1;
}
function isNonNegativeInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/**
 * Builds the storage from rendered statements. Internal (not exported by `edge-outbox/postgres`): use
 * `postgresStorage`, which validates the options and renders the statements.
 *
 * @param client the postgres.js client
 * @param opts validated names and options
 * @param sql the rendered statements
 * @returns the storage
 * @example
 * ```ts
 * import { postgresSql } from "./sql.ts";
 * const opts = resolvePostgresStorageOptions({ table: "outbox" });
 * const storage = createPostgresStorage(sql, opts, postgresSql(opts));
 * ```
 */
export function createPostgresStorage(
  client: PostgresClient,
  opts: ResolvedPostgresStorageOptions,
  sql: PostgresSql,
): PostgresStorage {
  const { schema, table, busyRetryMs } = opts;
  const retain = opts.retainDeliveredMs;
  const names = { schema, table };
  const capabilities: StorageCapabilities = {
    batchStatement: false,
    skipLocked: true,
    serialWrites: false,
    keyPrefixClaims: false,
  };

  const query = async (
    executor: PostgresExecutor,
    statement: string,
    params: PostgresParameter[] = [],
    prepare = true,
  ): Promise<readonly PostgresRow[]> => await executor.unsafe(statement, params, { prepare: prepare && params.length > 0 });

  /** Retries transient conflicts with an asynchronous, jittered, doubling backoff, then throws a typed error. */
  async function relaySide<T>(what: string, op: () => Promise<T>): Promise<T> {
    const start = Date.now();
    let delay = 5;
    for (;;) {
      try {
        return await op();
      } catch (e) {
        if (isOutboxError(e) || !isBusyError(e)) throw storageError(what, e);
        const wait = Math.round(delay * (0.5 + Math.random() * 0.5));
        if (Date.now() - start + wait > busyRetryMs) throw storageError(what, e);
        await sleep(wait);
        delay = Math.min(delay * 2, 250);
      }
    }
  }

  function toClaimed(r: PostgresRow): ClaimedMessage {
    const body = text(r["payload"]);
    const headers = text(r["headers"]);
    return {
      id: text(r["id"]),
      topic: text(r["topic"]),
      key: textOrNull(r["key"]),
      payload: JSON.parse(body),
      body,
      headers: headers === "{}" ? {} : JSON.parse(headers),
      createdAt: num(r["created"]),
      attempts: num(r["attempts"]),
      lastError: textOrNull(r["lasterror"]),
      seq: num(r["seq"]),
    };
  }

  const storage: PostgresStorage = {
    name: "postgres",
    capabilities,
    table,
    schema,
    retainDeliveredMs: retain,

    migrate(): Promise<void> {
      return relaySide("migrate", async () => {
        await client.begin(async (tx) => {
          await query(tx, "SET LOCAL client_min_messages = warning"); // no "already exists, skipping" notices
          await query(tx, sql.migrateLock);
          const [present] = await query(tx, sql.schemaExists, [schema], false);
          if (present?.["present"] !== true) await query(tx, renderSql(CREATE_SCHEMA_DDL, names));
          await query(tx, renderSql(MIGRATIONS_TABLE_DDL, names));
          const applied = new Set((await query(tx, sql.appliedVersions)).map((r) => num(r["version"])));
          for (const version of SCHEMA_VERSIONS) {
            if (applied.has(version.version)) continue;
            for (const s of version.statements) await query(tx, renderSql(s, names));
            await query(tx, renderSql(recordVersionSql(version.version), names));
          }
        });
      });
    },

    async enqueue(tx: PostgresExecutor, messages: readonly NewMessage[]): Promise<void> {
      if (!Array.isArray(messages)) throw invalid("messages must be an array");
      if (messages.length === 0) return;
      if (!hasMethod(tx, "unsafe")) {
        throw invalid("enqueue needs a postgres.js transaction (sql.begin(tx => …)), reserved connection or client");
      }
      const rows = messages.map((m) => [m.id, m.topic, m.key ?? null, m.payload, m.headers ?? "{}", m.delayMs ?? 0]);
      try {
        await query(tx, sql.enqueue, [JSON.stringify(rows)]);
      } catch (e) {
        throw storageError("enqueue", e);
      }
    },

    claim(options: { limit: number; leaseMs: number }): Promise<Claim> {
      const { limit, leaseMs } = options ?? ({} as { limit: number; leaseMs: number });
      if (!isPositiveInt(limit)) return Promise.reject(invalid(`claim limit must be a positive integer, got ${limit}`));
      if (!isPositiveInt(leaseMs)) return Promise.reject(invalid(`claim leaseMs must be a positive integer, got ${leaseMs}`));
      return relaySide("claim", async () => {
        const token = crypto.randomUUID();
        const rows = await query(client, sql.claim, [token, leaseMs, limit]);
        if (rows.length === 0) {
          const [clock] = await query(client, sql.clock, [leaseMs]);
          return { token, leaseUntil: num(clock!["until"]), now: num(clock!["now"]), messages: [] };
        }
        const leaseUntil = num(rows[0]!["until"]);
        const messages = rows.map(toClaimed).sort((a, b) => a.seq - b.seq);
        return { token, leaseUntil, now: leaseUntil - leaseMs, messages };
      });
    },

    settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      if (typeof token !== "string" || token === "") return Promise.reject(invalid("settle needs the claim's token"));
      if (!Array.isArray(settlements)) return Promise.reject(invalid("settlements must be an array"));
      const seen = new Set<string>();
      const delivered: string[] = [];
      const retried: [string, number, string][] = [];
      const dead: [string, string][] = [];
      const released: string[] = [];
      for (const s of settlements) {
        if (typeof s?.id !== "string") return Promise.reject(invalid("every settlement needs a string id"));
        const id = s.id.toLowerCase();
        if (seen.has(id)) continue; // a repeated id is reported lost: only its first settlement can apply
        seen.add(id);
        if (!UUID_ANY_CASE.test(id)) continue; // no row has this id: reported lost
        switch (s.outcome) {
          case "delivered":
            delivered.push(id);
            break;
          case "retry":
            if (!isNonNegativeInt(s.delayMs)) {
              return Promise.reject(invalid(`retry delayMs must be a non-negative integer, got ${s.delayMs}`));
            }
            retried.push([id, s.delayMs, String(s.error ?? "")]);
            break;
          case "dead":
            dead.push([id, String(s.error ?? "")]);
            break;
          case "released":
            released.push(id);
            break;
          default:
            return Promise.reject(invalid(`unknown settlement outcome ${JSON.stringify((s as { outcome?: unknown }).outcome)}`));
        }
      }
      if (delivered.length + retried.length + dead.length + released.length === 0) {
        return Promise.resolve({ applied: 0, lost: settlements.map((s) => s.id) });
      }
      // A lease token is a UUID; anything else matches no row.
      if (!UUID_ANY_CASE.test(token)) return Promise.resolve({ applied: 0, lost: settlements.map((s) => s.id) });
      return relaySide("settle", async () => {
        const onlyDelivered = retain === 0 && retried.length + dead.length + released.length === 0;
        const rows = onlyDelivered
          ? await query(client, sql.settleDelivered, [token, `{${delivered.join(",")}}`]) // validated UUIDs: a safe literal
          : await query(client, retain > 0 ? sql.settleRetain : sql.settle, [
            token,
            JSON.stringify(delivered),
            JSON.stringify(retried),
            JSON.stringify(dead),
            JSON.stringify(released),
          ]);
        // The rows are the sent ids that did not apply; invalid ids were not sent, repeated ids were sent once.
        const sent = delivered.length + retried.length + dead.length + released.length;
        if (rows.length === 0 && sent === settlements.length) return { applied: sent, lost: [] };
        const notApplied = new Set(rows.map((r) => text(r["id"]).toLowerCase()));
        const lost: string[] = [];
        const counted = new Set<string>();
        for (const s of settlements) {
          const id = s.id.toLowerCase();
          if (UUID_ANY_CASE.test(id) && !notApplied.has(id) && !counted.has(id)) counted.add(id);
          else lost.push(s.id);
        }
        return { applied: counted.size, lost };
      });
    },

    hasDue(): Promise<boolean> {
      return relaySide("hasDue", async () => {
        const [row] = await query(client, sql.hasDue);
        return row?.["due"] === true;
      });
    },

    stats(options?: { windowMs?: number }): Promise<OutboxStats> {
      const windowMs = options?.windowMs ?? 300_000;
      if (!isNonNegativeInt(windowMs)) return Promise.reject(invalid(`stats windowMs must be a non-negative integer, got ${windowMs}`));
      return relaySide("stats", async () => {
        const [r] = await query(client, sql.stats, [windowMs]);
        const now = num(r!["now"]);
        const oldest = numOrNull(r!["oldest"]);
        const deliveredW = num(r!["delivered"]);
        return {
          pending: num(r!["pending"]),
          due: num(r!["due"]),
          leased: num(r!["leased"]),
          dead: num(r!["dead"]),
          oldestPendingAgeMs: oldest === null ? null : Math.max(0, now - oldest),
          window: {
            windowMs,
            delivered: deliveredW,
            retried: num(r!["retried"]),
            dead: num(r!["deadwindow"]),
            avgLatencyMs: deliveredW > 0 ? num(r!["latsum"]) / deliveredW : null,
            maxLatencyMs: deliveredW > 0 ? numOrNull(r!["latmax"]) : null,
          },
          now,
        };
      });
    },

    listDead(options: { limit: number; cursor?: string | null }): Promise<DeadLetterPage> {
      const limit = options?.limit;
      const cursor = options?.cursor ?? null;
      if (!isPositiveInt(limit) || limit > 100_000) {
        return Promise.reject(invalid(`listDead limit must be an integer between 1 and 100000, got ${limit}`));
      }
      let after = "0";
      if (cursor !== null) {
        if (typeof cursor !== "string" || !/^\d{1,18}$/.test(cursor)) {
          return Promise.reject(invalid(`invalid dead-letter cursor ${JSON.stringify(cursor)}`));
        }
        after = cursor;
      }
      return relaySide("listDead", async () => {
        const rows = await query(client, sql.listDead, [after, limit + 1]);
        const page = rows.slice(0, limit);
        const items: DeadLetter[] = page.map((r) => ({
          id: text(r["id"]),
          topic: text(r["topic"]),
          key: textOrNull(r["key"]),
          payload: JSON.parse(text(r["payload"])),
          headers: JSON.parse(text(r["headers"])),
          createdAt: num(r["created"]),
          deadAt: numOrNull(r["died"]) ?? num(r["created"]),
          attempts: num(r["attempts"]),
          lastError: textOrNull(r["lasterror"]),
        }));
        const last = page[page.length - 1];
        return { items, cursor: rows.length > limit && last ? text(last["seq"]) : null };
      });
    },

    replayDead(id: string): Promise<boolean> {
      if (typeof id !== "string") return Promise.reject(invalid("replayDead needs a message id"));
      if (!UUID_ANY_CASE.test(id)) return Promise.resolve(false);
      return relaySide("replayDead", async () => (await query(client, sql.replayDead, [id])).length > 0);
    },

    purge(options: { status: "dead" | "delivered"; olderThan: number; limit: number }): Promise<number> {
      const { status, olderThan, limit } = options ?? ({} as { status: "dead"; olderThan: number; limit: number });
      if (status !== "dead" && status !== "delivered") {
        return Promise.reject(invalid(`purge status must be "dead" or "delivered", got ${JSON.stringify(status)}`));
      }
      if (typeof olderThan !== "number" || !Number.isFinite(olderThan)) {
        return Promise.reject(invalid(`purge olderThan must be an epoch-ms number, got ${olderThan}`));
      }
      if (!isPositiveInt(limit)) return Promise.reject(invalid(`purge limit must be a positive integer, got ${limit}`));
      return relaySide("purge", async () => {
        const [row] = await query(client, sql.purge, [status, olderThan, limit]);
        return num(row?.["n"]);
      });
    },
  };
  return storage;
}
