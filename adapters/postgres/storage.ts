/**
 * The Postgres storage implementation behind {@link postgresStorage} (in `mod.ts`). Internal: `createPostgresStorage`
 * takes already-rendered statements, which lets tests swap a statement to show what the design prevents.
 *
 * @module
 */
import * as v from "valibot";
import { OutboxError, toOutboxError } from "../../src/errors.ts";
import { parseOptions } from "../../src/options.ts";
import type { NewMessage } from "../../src/message.ts";
import type { Claim, ClaimOptions, DeadLetterPage, OutboxStats, OutboxStorage, SettleResult, Settlement, StorageCapabilities } from "../../src/storage.ts";
import { claimArgs, listDeadArgs, purgeArgs, settleToken, statsWindow } from "../../src/sql/args.ts";
import { hasMethod, num, text } from "../../src/sql/coerce.ts";
import { missingTableError, sqlErrors } from "../../src/sql/errors.ts";
import { busyRetrier } from "../../src/sql/retry.ts";
import { claimedMessage, deadLetter, outboxStats, type RawClaimedRow, type RawDeadRow } from "../../src/sql/rows.ts";
import { partitionSettlements, settleResult } from "../../src/sql/settle.ts";
import {
  isBusyError,
  isMissingTableError,
  isRetryableError,
  type PostgresClient,
  type PostgresExecutor,
  type PostgresParameter,
  type PostgresRow,
} from "./client.ts";
import { CREATE_SCHEMA_DDL, MIGRATIONS_TABLE_DDL, postgresNames, recordVersionSql, renderSql, SCHEMA_VERSIONS } from "./schema.ts";
import { claimSql, type PostgresSql } from "./sql.ts";

/** Options of {@link postgresStorage}. */
export interface PostgresStorageOptions {
  /**
   * Outbox table name (also the prefix of `<table>_counters`, `<table>_migrations` and the index names); a plain
   * identifier of at most 52 characters. @default "outbox"
   */
  table?: string | undefined;
  /** Schema of the outbox's tables; `migrate()` creates it when missing. @default "public" */
  schema?: string | undefined;
  /**
   * Keep delivered rows this long (ms) as status "delivered" instead of deleting them; remove them with
   * `purge({ status: "delivered", … })`. 0 deletes at once. @default 0
   */
  retainDeliveredMs?: number | undefined;
  /**
   * How long relay-side calls (`claim`, `settle`, `migrate`, …) retry a transient conflict (40001 serialization
   * failure, 40P01 deadlock, 55P03 lock not available) with an asynchronous backoff before throwing. Connection
   * errors are never retried here (they are thrown at once as retryable STORAGE errors). 0 disables. @default 2000
   */
  busyRetryMs?: number | undefined;
  /**
   * Accept the pool itself (`outbox.enqueue(sql, …)`) as an enqueue handle: the rows are inserted on their own, in a
   * short transaction of their own with a 5 s `lock_timeout`, outside any transaction of yours. Off by default: the
   * pool is refused with CONFIG, since the rows would escape your business transaction (and, if that transaction
   * holds the same key, wait on it). @default false
   */
  standaloneEnqueue?: boolean | undefined;
  /**
   * Whether every enqueue and replay calls `pg_notify` on {@link PostgresStorage.channel}, so that a long-running
   * `relay.run()` (through `subscribe`) wakes within milliseconds of the commit. Turn it off when nothing listens
   * (drains triggered by cron, a QStash schedule or the nudge): PostgreSQL serialises the commits of all
   * transactions that notified, across the whole cluster, with a lock held until each one's commit is flushed
   * (`PreCommit_Notify` in `src/backend/commands/async.c`), so on a server with many concurrent writers and a slow
   * commit flush every enqueue's transaction waits its turn (measured, `npm run bench` section 3: 8 writers at once,
   * 0.72x and 0.77x the enqueue transactions per second without it, in two runs). Off, nothing else changes: rows are claimed as
   * before, and a `relay.run()` finds them at its next poll (`pollIntervalMs`). @default true
   */
  notify?: boolean | undefined;
}

/** The Postgres storage: the {@link OutboxStorage} contract over a postgres.js client. No `statement()`. */
export interface PostgresStorage extends OutboxStorage<PostgresExecutor, never> {
  /** `"postgres:<schema>.<table>"`. */
  readonly scope: string;
  /**
   * The LISTEN/NOTIFY channel every enqueue and replay notifies at commit (`subscribe` listens on it), unless
   * {@link PostgresStorage.notify} is false.
   */
  readonly channel: string;
  /** Whether enqueues and replays notify {@link PostgresStorage.channel} (option `notify`). */
  readonly notify: boolean;
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
  standaloneEnqueue: v.optional(v.boolean(), false),
  notify: v.optional(v.boolean(), true),
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
  /** Whether the pool is accepted as a standalone enqueue handle. */
  readonly standaloneEnqueue: boolean;
  /** Whether enqueues and replays call `pg_notify`. */
  readonly notify: boolean;
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
 * resolvePostgresStorageOptions({ table: "outbox" }); // { schema: "public", table: "outbox", retainDeliveredMs: 0, busyRetryMs: 2000, standaloneEnqueue: false, notify: true }
 * ```
 */
export function resolvePostgresStorageOptions(input: unknown): ResolvedPostgresStorageOptions {
  const o = parseOptions("postgresStorage options", optionsSchema, input ?? {});
  const names = postgresNames(o);
  return { ...names, retainDeliveredMs: o.retainDeliveredMs, busyRetryMs: o.busyRetryMs, standaloneEnqueue: o.standaloneEnqueue, notify: o.notify };
}

const UUID_ANY_CASE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const lower = (id: string): string => id.toLowerCase();
const isUuid = (id: string): boolean => UUID_ANY_CASE.test(id);
const SETTLE_IDS = { normalize: lower, accept: isUuid };
/** Whether `e` is PostgreSQL's undefined_column (42703) for `lease_token`: the key table of a schema before v10. */
const isMissingKeyToken = (e: unknown): boolean => {
  const err = e as { code?: unknown; message?: unknown } | null;
  return err?.code === "42703" && typeof err.message === "string" && err.message.includes("lease_token");
};

/** The structural parts of the handles postgres.js hands out, to tell them apart. */
type HandleKind = "transaction" | "pool" | "other";

/**
 * `sql.begin(tx => …)` and `tx.savepoint(…)` give a `TransactionSql`, which has `savepoint`; the pool (`sql`) has
 * `begin` and `reserve`; a reserved connection (`sql.reserve()`) has `release` only. Anything else is trusted.
 */
function handleKind(tx: unknown): HandleKind {
  if (hasMethod(tx, "savepoint")) return "transaction";
  if (hasMethod(tx, "begin") || hasMethod(tx, "reserve")) return "pool";
  return "other";
}

/**
 * The raw columns of a claim or dead-letter row (`created`, `lasterror`, …: single lowercase words), for src/sql/rows,
 * as one literal: built once per claimed row, and spreading a partial one into another cost about 1.6 µs a row.
 */
function rowColumns(r: PostgresRow): RawClaimedRow & RawDeadRow {
  return {
    id: r["id"],
    topic: r["topic"],
    key: r["key"],
    payload: r["payload"],
    headers: r["headers"],
    createdAt: r["created"],
    attempts: r["attempts"],
    lastError: r["lasterror"],
    seq: r["seq"],
    prevSeq: r["prevseq"],
    deadAt: r["died"],
  };
}

/** One statement's result of a multi-statement query, as postgres.js returns it. */
type ClaimResult = readonly PostgresRow[] & { readonly columns?: readonly { readonly name: string }[] };

/** The part of postgres.js `Sql` that `subscribe` uses (LISTEN on a dedicated connection). */
interface Listener {
  listen(channel: string, onnotify: (payload: string) => void): PromiseLike<{ unlisten(): PromiseLike<unknown> }>;
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
  const { schema, table, busyRetryMs, standaloneEnqueue } = opts;
  const retain = opts.retainDeliveredMs;
  const names = { schema, table };
  const capabilities: StorageCapabilities = {
    batchStatement: false,
    skipLocked: true,
    serialWrites: false,
    keyPrefixClaims: true,
    continueClaims: true,
  };
  const errors = sqlErrors({
    adapter: "postgres",
    table: `${schema}.${table}`,
    isRetryable: isRetryableError,
    isMissingTable: isMissingTableError,
  });
  const { invalid } = errors;
  const relaySide = busyRetrier({ budgetMs: busyRetryMs, isBusy: isBusyError, fail: errors.storage });
  /** Whether the schema has the 5-argument claim (version 6); false once a claim found it missing. */
  let continueFunction = true;

  const query = async (
    executor: PostgresExecutor,
    statement: string,
    params: PostgresParameter[] = [],
    prepare = true,
  ): Promise<readonly PostgresRow[]> => await executor.unsafe(statement, params, { prepare: prepare && params.length > 0 });

  /** Inserts on `tx`; CONFLICT (rows of this call deleted again, the transaction still usable) when an id exists. */
  async function insert(tx: PostgresExecutor, messages: readonly NewMessage[]): Promise<void> {
    const isKeyless = (m: NewMessage): boolean => m.key === null || m.key === undefined;
    const only = messages.length === 1 ? messages[0]! : undefined;
    if (only && isKeyless(only)) {
      const inserted = await query(tx, sql.enqueueOne, [only.id, only.topic, only.payload, only.headers ?? "{}", only.delayMs ?? 0]);
      if (inserted.length === 1) return; // one row when inserted, none when the id was taken
      throw conflict([only.id]);
    }
    const rows = messages.map((m) => [m.id, m.topic, m.key ?? null, m.payload, m.headers ?? "{}", m.delayMs ?? 0]);
    const keyless = messages.every(isKeyless);
    const [r] = await query(tx, keyless ? sql.enqueueKeyless : sql.enqueue, [JSON.stringify(rows)]);
    if (r?.["ids"] === null || r?.["ids"] === undefined) return;
    const inserted: string[] = JSON.parse(text(r["ids"]) || "[]") ?? [];
    if (inserted.length > 0) await query(tx, sql.enqueueUndo, [JSON.stringify(inserted)]);
    const have = new Set(inserted.map(lower));
    throw conflict(messages.map((m) => m.id).filter((id) => !have.has(lower(id))));
  }

  /** The CONFLICT of an enqueue some of whose ids (`taken`) rows already have (nothing of the call is kept). */
  function conflict(taken: readonly string[]): OutboxError {
    return new OutboxError(
      "CONFLICT",
      `${errors.prefix} message id ${taken.join(", ")} already exists in ${schema}.${table}: nothing was enqueued by this ` +
        "call (ids are unique among the rows in the table; a delivered and deleted id is accepted again)",
    );
  }

  const storage: PostgresStorage = {
    name: "postgres",
    scope: `postgres:${schema}.${table}`,
    channel: sql.channel,
    capabilities,
    table,
    schema,
    retainDeliveredMs: retain,
    notify: opts.notify,

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
        continueFunction = true;
      });
    },

    async enqueue(tx: PostgresExecutor, messages: readonly NewMessage[]): Promise<void> {
      if (!Array.isArray(messages)) throw invalid("messages must be an array");
      if (messages.length === 0) return;
      if (!hasMethod(tx, "unsafe")) {
        throw invalid("enqueue needs a postgres.js transaction (sql.begin(tx => …)) or a reserved connection inside BEGIN");
      }
      const kind = handleKind(tx);
      try {
        if (kind !== "pool") return await insert(tx, messages);
        if (!standaloneEnqueue) {
          throw new OutboxError(
            "CONFIG",
            `${errors.prefix} enqueue got the pool (sql), not a transaction: the message would not join your transaction. ` +
              "Enqueue inside it: sql.begin(async (tx) => { …; await outbox.enqueue(tx, …) }); or, to insert on its own, " +
              "create the storage with { standaloneEnqueue: true }",
          );
        }
        await (tx as unknown as PostgresClient).begin(async (own) => {
          await query(own, "SET LOCAL lock_timeout = 5000");
          await insert(own, messages);
        });
      } catch (e) {
        if (kind === "pool" && (e as { code?: unknown } | null)?.code === "55P03") {
          throw new OutboxError(
            "CONFIG",
            `${errors.prefix} standalone enqueue waited 5 s for a key lock: a transaction of yours holds that key ` +
              "(enqueue with its handle, not the pool)",
            { cause: e },
          );
        }
        throw errors.storage("enqueue", e);
      }
    },

    claim(options: ClaimOptions): Promise<Claim> {
      let args: ReturnType<typeof claimArgs>;
      try {
        args = claimArgs(options, invalid);
      } catch (e) {
        return Promise.reject(e);
      }
      const { limit, leaseMs, maxKeys = limit } = args;
      // A token that is not a UUID (every lease token is one) leases no row: left out.
      const cont = args.continue && { after: args.continue.after, tokens: args.continue.tokens.filter(isUuid).map((t) => t.toLowerCase()) };
      const continuing = cont !== undefined && cont.tokens.length > 0 && continueFunction;
      return relaySide("claim", async () => {
        const token = crypto.randomUUID();
        const claimText = (claim: string, c?: typeof cont): string => claimSql(claim, token, leaseMs, limit, c, maxKeys);
        // The function call's rows come last (the SET before it returns none); the clock is on every row, and an
        // empty claim is one row whose message columns are null.
        let results: readonly ClaimResult[];
        try {
          results = (await client.unsafe(continuing ? claimText(sql.claimContinue, cont) : claimText(sql.claim))) as unknown as readonly ClaimResult[];
        } catch (e) {
          if ((e as { code?: unknown } | null)?.code !== "42883") throw e; // undefined_function
          if (continuing) {
            // A schema before version 6 has no 5-argument claim: claim without continuing, now and from now on.
            continueFunction = false;
            results = (await client.unsafe(claimText(sql.claim))) as unknown as readonly ClaimResult[];
          } else {
            const [found] = await query(client, "SELECT to_regclass($1::text) IS NOT NULL AS present", [`"${schema}"."${table}"`], false);
            if (found?.["present"] !== true) throw missingTableError("postgres", `${schema}.${table}`, e);
            throw new OutboxError(
              "CONFIG",
              `${errors.prefix} the claim function ${schema}.${table}_claim does not exist: the schema predates version 4 ` +
                "of edge-outbox's Postgres schema; call storage.migrate() (or install the DDL from postgresSchema())",
              { cause: e },
            );
          }
        }
        const claimed = results.find((x) => x.columns?.some((c) => c.name === "lasterror")) ?? [];
        const rows = claimed.filter((r) => r["id"] !== null && r["id"] !== undefined);
        const clock = claimed[0];
        if (clock === undefined) throw new Error("the claim function returned no row");
        const messages = rows.map((r) => claimedMessage(rowColumns(r))).sort((a, b) => a.seq - b.seq);
        return { token, leaseUntil: num(clock["until"]), now: num(clock["now"]), messages };
      });
    },

    settle(token: string, settlements: readonly Settlement[]): Promise<SettleResult> {
      let part: ReturnType<typeof partitionSettlements>;
      try {
        settleToken(token, invalid);
        part = partitionSettlements(settlements, invalid, SETTLE_IDS);
      } catch (e) {
        return Promise.reject(e);
      }
      const lostAll = (): SettleResult => ({ applied: 0, lost: settlements.map((s) => s.id) });
      // Nothing that can match a row, or a token that is not a UUID (every lease token is one): all lost.
      if (part.size === 0 || !UUID_ANY_CASE.test(token)) return Promise.resolve(lostAll());
      const { delivered, retried, dead, released } = part;
      return relaySide("settle", async () => {
        const onlyDelivered = retain === 0 && retried.length + dead.length + released.length === 0;
        let rows: readonly PostgresRow[];
        if (onlyDelivered) rows = await query(client, sql.settleDelivered, [token, `{${delivered.join(",")}}`]); // validated UUIDs: a safe literal
        else {
          const params = [token, JSON.stringify(delivered), JSON.stringify(retried), JSON.stringify(dead), JSON.stringify(released)];
          try {
            rows = await query(client, retain > 0 ? sql.settleRetain : sql.settle, params);
          } catch (e) {
            // A schema before version 10 (migrate() not run yet): no key token to clear, and its claim functions do
            // not read one. The failed statement changed nothing: the same settle without the token. Not remembered,
            // so the settle clears tokens again as soon as the schema has them (its claims then rely on them).
            if (!isMissingKeyToken(e)) throw e;
            rows = await query(client, retain > 0 ? sql.settleRetainBeforeV10 : sql.settleBeforeV10, params);
          }
        }
        // The rows are the sent ids that did not apply; invalid ids were not sent, repeated ids were sent once.
        return settleResult(settlements, part, new Set(rows.map((r) => lower(text(r["id"])))), SETTLE_IDS);
      });
    },

    hasDue(): Promise<boolean> {
      return relaySide("hasDue", async () => {
        const [row] = await query(client, sql.hasDue);
        return row?.["due"] === true;
      });
    },

    stats(options?: { windowMs?: number }): Promise<OutboxStats> {
      let windowMs: number;
      try {
        windowMs = statsWindow(options, invalid);
      } catch (e) {
        return Promise.reject(e);
      }
      return relaySide("stats", async () => {
        const [r] = await query(client, sql.stats, [windowMs]);
        // A connection killed while idle can answer its next query with no row before the error arrives.
        if (r === undefined) throw toOutboxError("STORAGE", `${errors.prefix} stats failed`, new Error("no row returned"), true);
        return outboxStats(windowMs, {
          now: r!["now"],
          pending: r!["pending"],
          due: r!["due"],
          leased: r!["leased"],
          dead: r!["dead"],
          oldest: r!["oldest"],
          oldestDue: r!["oldestdue"],
          delivered: r!["delivered"],
          retried: r!["retried"],
          deadWindow: r!["deadwindow"],
          latencySum: r!["latsum"],
          latencyMax: r!["latmax"],
        });
      });
    },

    listDead(options: { limit: number; cursor?: string | null }): Promise<DeadLetterPage> {
      let args: { limit: number; after: string };
      try {
        args = listDeadArgs(options, invalid, { maxLimit: 100_000, cursorDigits: 18 });
      } catch (e) {
        return Promise.reject(e);
      }
      const { limit, after } = args;
      return relaySide("listDead", async () => {
        const rows = await query(client, sql.listDead, [after, limit + 1]);
        const page = rows.slice(0, limit);
        const items = page.map((r) =>
          deadLetter(rowColumns(r))
        );
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
      let args: { status: "dead" | "delivered"; olderThan: number; limit: number };
      try {
        args = purgeArgs(options, invalid);
      } catch (e) {
        return Promise.reject(e);
      }
      return relaySide("purge", async () => {
        const [row] = await query(client, sql.purge, [args.status, args.olderThan, args.limit]);
        return num(row?.["n"]);
      });
    },
  };
  if (hasMethod(client, "listen")) {
    const listener = client as unknown as Listener;
    (storage as { subscribe?: OutboxStorage["subscribe"] }).subscribe = async (onWake, signal): Promise<void> => {
      if (signal.aborted) return;
      let sub: { unlisten(): PromiseLike<unknown> };
      try {
        sub = await listener.listen(sql.channel, () => {
          if (!signal.aborted) onWake();
        });
      } catch (e) {
        throw errors.storage(`LISTEN ${sql.channel}`, e);
      }
      const stop = (): void => void Promise.resolve(sub.unlisten()).catch(() => {});
      if (signal.aborted) stop();
      else signal.addEventListener("abort", stop, { once: true });
    };
  }
  return storage;
}
