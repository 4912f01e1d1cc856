// Free variables of the README and @example snippets (see scripts/snippets.ts): what a snippet assumes the reader
// already has (a database client, a transaction, the outbox of the README's first section, a worker's env).
// A global script: a snippet that declares one of these names itself shadows it.

/** The README's topics (section "Topics and the outbox"). */
declare const orderCreated: import("../src/topic.ts").Topic<"order.created", { id: string; customer: string; total: number }>;
declare const orderPaid: import("../src/topic.ts").Topic<"order.paid", { id: string; amount: number }>;
/** A libSQL client and the README's outbox on it. */
declare const client: import("@libsql/client").Client;
declare const outbox: import("../src/outbox.ts").Outbox<
  import("../adapters/libsql/mod.ts").LibsqlExecutor,
  import("../adapters/libsql/mod.ts").LibsqlStatement,
  typeof orderCreated | typeof orderPaid
>;
/** A postgres.js client. */
declare const sql: import("postgres").Sql;
/** An open transaction: usable with libSQL, postgres.js and the memory storage alike. */
declare const tx: import("@libsql/client").Transaction & import("postgres").TransactionSql & import("../adapters/memory/mod.ts").MemoryTransaction;
/** A relay and a transport. */
declare const relay: import("../src/relay.ts").Relay;
declare const transport: import("../src/transport.ts").Transport;
/** Upstash clients. */
declare const redis: import("@upstash/redis").Redis;
declare const qstash: import("@upstash/qstash").Client;
/** A Hono app. */
declare const app: import("hono").Hono;
/** Odds and ends. */
declare const signal: AbortSignal;
declare const request: Request;
declare const messageId: string;
declare const id: string;
declare const token: string;
/** A Cloudflare Worker's / Vercel function's environment. */
interface Env {
  CRON_SECRET: string;
  OUTBOX_READ_SECRET: string;
  OUTBOX_ADMIN_SECRET: string;
  QSTASH_TOKEN: string;
  QSTASH_CURRENT_SIGNING_KEY: string;
  QSTASH_NEXT_SIGNING_KEY: string;
  UPSTASH_REDIS_REST_URL: string;
  UPSTASH_REDIS_REST_TOKEN: string;
  WEBHOOK_SECRET: string;
  DATABASE_URL: string;
  HYPERDRIVE: { connectionString: string };
  /** A D1 binding (typed structurally by edge-outbox/d1). */
  DB: import("../adapters/d1/mod.ts").D1Binding;
}
declare const env: Env;
/** Node's `process.env` (the snippets run on Node too; DOM libs only here). */
declare const process: { env: Record<string, string | undefined> };
/** The README's libSQL storage. */
declare const storage: import("../adapters/libsql/mod.ts").LibsqlStorage;
/** Application functions the README's examples call. */
declare function makeRelay(env: Env): import("../src/relay.ts").Relay;
declare function handleOnce(id: string, payload: unknown): Promise<void>;
declare const amount: number;
declare const accountId: number;
/** Cloudflare Workers' handler types (from @cloudflare/workers-types, which a Worker project has). */
interface ScheduledController {
  readonly scheduledTime: number;
  readonly cron: string;
}
interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
  passThroughOnException(): void;
}
/** The business write of an atomic batch, and the order it writes. */
declare const insertOrder: import("../adapters/libsql/mod.ts").LibsqlStatement;
declare const order: { id: string; customer: string; total: number };
/** A request body, work to do under a lock's signal. */
declare const body: string;
declare function work(signal: AbortSignal): Promise<void>;
