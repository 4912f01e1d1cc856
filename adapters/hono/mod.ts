/**
 * `edge-outbox/hono`: the relay as a Hono app — `POST /drain` for cron platforms, QStash schedules and nudges,
 * `GET /health`, `GET /stats`, `GET /metrics` (Prometheus) and the dead-letter routes — each route group behind its
 * own credential. Mount it
 * under a prefix in your own app (`app.route("/outbox", relayApp)`) or serve it alone. It imports no QStash code:
 * to accept QStash signatures, pass your own `Receiver` (or a verify function).
 *
 * Routes (paths relative to where the app is mounted), by scope:
 * - drain — `POST /drain` (and `GET /drain`, which Vercel Cron uses): one budgeted drain; answers the drain report as JSON. When the report says `more` and a
 *   `followUp` function is configured, it triggers one follow-up drain call, with a deduplication id derived from
 *   the incoming call (its `Upstash-Message-Id`, else its `Idempotency-Key`), so a retried call never fans out.
 *   `?linger=<ms>` asks the drain to stay that long and drain what commits meanwhile (`relay.drain({ lingerMs })`;
 *   `qstashNudge({ linger: true })` sends it), up to `maxLingerMs` (default 0: refused with 400 `VALIDATION`).
 * - metrics — `GET /metrics`: the same database counters in the Prometheus text format (`edge_outbox_pending`, `_due`,
 *   `_leased`, `_dead`, `_oldest_pending_age_seconds`, `_oldest_due_age_seconds`, and per `window_seconds`
 *   (`metricsWindowsMs`) `_window_delivered`, `_window_retried`, `_window_dead`, `_window_delivery_latency_avg_seconds`,
 *   `_window_delivery_latency_max_seconds`): no counter lives in the process, so any instance answers right.
 *   A metrics secret scrapes only this; read and admin secrets scrape it too.
 * - read — `GET /health`: 200 `{ status: "healthy" | "degraded" }` or 503 `{ status: "unhealthy" }`, from thresholds
 *   (see `evaluateHealth`); `GET /stats?windowMs=`: counts, windowed counters, delivery latency and retry rate from
 *   `outbox.stats()` (database counters: right when every call runs in a new serverless process);
 *   `GET /dead-letters?limit=&cursor=`.
 * - admin — `POST /dead-letters/:id/replay` (404 when not found), `DELETE /dead-letters?olderThan=&limit=` (bounded purge).
 * - dashboard (opt-in, `dashboard: relayDashboard()`, with read) — `GET /` and `/assets/…`: a page with the health
 *   status, the counts, charts (uPlot, served by the app) of pending/due/dead and delivery latency sampled while it is
 *   open, and the dead letters with a replay button. The page holds no data and needs no secret; it asks for a read or
 *   admin secret, keeps it in `sessionStorage` and sends it as `Authorization: Bearer` to the JSON routes (replay
 *   needs the admin secret).
 *
 * Credentials (`auth`): bearer secrets per scope (`drain`, `metrics`, `read`, `admin`; an admin secret also reads), each at least
 * 16 characters, compared in constant time; and QStash signatures, valid for the drain scope unless
 * `auth.qstash.scopes` says more. A route group whose scope no credential grants is not served (404), and
 * `routes: { admin: false }` turns a group off outright. Requests are checked in this order, all before the body is
 * read: route and method; `Authorization: Bearer` (401 unknown, 403 valid for another scope); the
 * `Upstash-Signature` header's shape and claims (a JWT for this URL, not expired); the declared body size (413 over
 * `maxBodyBytes`). Only then is the body read — at most `maxBodyBytes` of it, also without a `Content-Length` — and
 * the signature verified against it.
 *
 * Errors answer `{ error, message, retryable }` with a code (`VALIDATION` 400, `STORAGE`/`LOCK` 503 with
 * `Retry-After`, `INTERNAL` 500) and a generic message: driver messages never reach the response; they go to
 * `onError`.
 *
 * @example
 * ```ts
 * import { Hono } from "hono";
 * import { Client, Receiver } from "@upstash/qstash";
 * import { createRelayApp } from "edge-outbox/hono";
 * import { qstashFollowUp } from "edge-outbox/qstash";
 *
 * const qstash = new Client({ token: env.QSTASH_TOKEN, retry: false });
 * const app = new Hono();
 * app.route("/outbox", createRelayApp({
 *   relay,
 *   outbox,
 *   auth: {
 *     drain: env.CRON_SECRET,  // Vercel Cron sends it as Authorization: Bearer
 *     read: env.OUTBOX_READ_SECRET,
 *     admin: env.OUTBOX_ADMIN_SECRET,
 *     qstash: { verifier: new Receiver({ currentSigningKey: env.QSTASH_CURRENT_SIGNING_KEY, nextSigningKey: env.QSTASH_NEXT_SIGNING_KEY }) },
 *   },
 *   publicUrl: "https://app.example/outbox",
 *   budgetMs: 8_000,
 *   followUp: qstashFollowUp(qstash, { url: "https://app.example/outbox/drain" }),
 *   thresholds: { pending: { degraded: 1_000, unhealthy: 10_000 }, dead: { degraded: 0, unhealthy: 100 } },
 * }));
 * export default app;
 * ```
 *
 * @module
 */
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import * as v from "valibot";
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import { uuidv7 } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type { Outbox } from "../../src/outbox.ts";
import type { DrainReport, Relay } from "../../src/relay.ts";
import { evaluateHealth, type HealthReport, type HealthThresholds, parseHealthThresholds, retryRate } from "../../src/stats.ts";
import type { OutboxStats } from "../../src/storage.ts";
import type { RelayDashboard } from "./dashboard.ts";
import { PROMETHEUS_CONTENT_TYPE, renderMetrics } from "./metrics.ts";
import { authSchema, credentials, type RelayAppAuth, type RelayAppScope, sha256 } from "./auth.ts";

export type {
  BearerSecrets,
  QstashReceiver,
  QstashVerify,
  QstashVerifyRequest,
  RelayAppAuth,
  RelayAppQstash,
  RelayAppScope,
} from "./auth.ts";
export { type DashboardAsset, type RelayDashboard, relayDashboard, type RelayDashboardOptions } from "./dashboard.ts";

/** What a follow-up function receives. */
export interface FollowUpRequest {
  /**
   * Deduplication id of this follow-up: the same for every retry of the incoming call, so passing it to QStash
   * (`deduplicationId`) makes one follow-up per step, never a fan-out.
   */
  readonly dedupId: string;
  /** The report of the drain that asked for more. */
  readonly report: DrainReport;
}

/** The outbox operations the app uses (an outbox from `createOutbox` fits). */
export type RelayAppOutbox = Pick<Outbox<unknown, unknown>, "stats" | "deadLetters">;

/** Route groups, by the scope that guards them. */
export interface RelayAppRoutes {
  /** `POST /drain`. @default on when a credential grants the drain scope */
  drain?: boolean | undefined;
  /** `GET /metrics` (Prometheus). @default on when a credential grants the metrics scope (metrics, read or admin secrets) and an outbox is given */
  metrics?: boolean | undefined;
  /** `GET /health`, `GET /stats`, `GET /dead-letters`. @default on when a credential grants read and an outbox is given */
  read?: boolean | undefined;
  /** `POST /dead-letters/:id/replay`, `DELETE /dead-letters`. @default on when a credential grants admin and an outbox is given */
  admin?: boolean | undefined;
}

/** Options of {@link createRelayApp}. */
export interface RelayAppOptions {
  /** The relay `POST /drain` runs (from `createRelay`). */
  relay: Pick<Relay, "drain">;
  /** The outbox behind the read and admin routes (required when they are on). @default none */
  outbox?: RelayAppOutbox | undefined;
  /**
   * Who may call, per scope: bearer secrets for `drain`, `metrics`, `read` and `admin` (each at least 16 characters,
   * each in one scope only), and a QStash verifier (drain scope by default). At least one credential.
   */
  auth: RelayAppAuth;
  /**
   * Turns route groups off (404). A group is on by default when a credential grants its scope; turning on a group
   * that no credential grants is a CONFIG error. @default all groups some credential grants
   */
  routes?: RelayAppRoutes | undefined;
  /**
   * Time budget of each drain, ms. A call answers within about `budgetMs` plus the relay's `sendTimeoutMs` (plus
   * `followUpTimeoutMs` when it triggers a follow-up), or, when the database stops answering, that plus twice the
   * relay's `storageTimeoutMs` (the call then answers 503 STORAGE): keep that under your platform's time limit.
   * @default 8000
   */
  budgetMs?: number | undefined;
  /**
   * Longest linger a drain call may ask for with `?linger=<ms>`, ms (`relay.drain({ lingerMs })`: the drain stays
   * that long after its start and drains what commits meanwhile, see `qstashNudge`'s `linger`). A call asking for
   * more, or for any linger while this is 0, is refused with 400 `VALIDATION` and drains nothing, so a caller never
   * holds a function open longer than you allowed. Must be less than `budgetMs`; a lingering call still answers
   * within about `budgetMs` plus the relay's `sendTimeoutMs`. For nudges with `linger: true`, set it to at least
   * their `windowMs`. @default 0 (lingering off)
   * @example
   * ```ts
   * import { createRelayApp } from "edge-outbox/hono";
   *
   * // qstashNudge(qstash, { url, windowMs: 1_000, linger: true }) calls POST /drain?linger=…(≤ 1000)
   * const relayApp = createRelayApp({ relay, auth: { drain: env.CRON_SECRET }, budgetMs: 8_000, maxLingerMs: 1_000 });
   * ```
   */
  maxLingerMs?: number | undefined;
  /** Health thresholds of `GET /health`. @default { oldestPendingAgeMs: { degraded: 30000, unhealthy: 300000 } } */
  thresholds?: HealthThresholds | undefined;
  /**
   * Triggers one more drain call when a drain reports `more` (e.g. `qstashFollowUp(client, { url })`
   * from `edge-outbox/qstash`). Pass `dedupId` on as the deduplication id. A failure is reported in the response
   * (`followUp.ok: false`) and passed to `onError`, not thrown. @default none (a backlog then waits for the next call)
   */
  followUp?: ((request: FollowUpRequest) => unknown) | undefined;
  /** Longest wait for `followUp`, ms; then it is reported as failed. @default 2000 */
  followUpTimeoutMs?: number | undefined;
  /**
   * The app's public base URL as QStash calls it, e.g. `https://app.example/outbox` (where the app is mounted).
   * QStash signs the URL it called; the route path and query are appended to this to verify it. Required with
   * `auth.qstash`. @default none
   */
  publicUrl?: string | undefined;
  /** Default counter window of `GET /stats`, ms. @default 300000 */
  statsWindowMs?: number | undefined;
  /**
   * Longest wait for each outbox call of the read, metrics and admin routes (`stats()`, `deadLetters.list()`,
   * `replay()`, `purge()`), ms: a database that stops answering then gets 503 `STORAGE` (retryable; `GET /health`
   * answers 503 `unhealthy`) and `onError` the timeout, instead of a call held open until the platform kills it. A
   * timed-out write may still commit later (a replay, a purge chunk): both are safe to call again. `POST /drain` is
   * bounded by the relay's own `storageTimeoutMs` (see `budgetMs`). @default 10000
   * @example
   * ```ts
   * import { createRelayApp } from "edge-outbox/hono";
   *
   * // Vercel's default function limit is 10 s (Hobby): answer a hung database's /stats within 5 s.
   * const relayApp = createRelayApp({ relay, outbox, auth: { read: env.OUTBOX_READ_SECRET }, storageTimeoutMs: 5_000 });
   * ```
   */
  storageTimeoutMs?: number | undefined;
  /**
   * The counter windows `GET /metrics` reports (`window_seconds` label), ms; one `outbox.stats()` read each.
   * @default [statsWindowMs]
   */
  metricsWindowsMs?: readonly number[] | undefined;
  /**
   * The dashboard page at `GET /` (with its assets under `/assets/`): pass `relayDashboard()`. It needs the read
   * routes. Opt-in, so an app without it carries no uPlot in its bundle. @default none (no page)
   */
  dashboard?: RelayDashboard | undefined;
  /**
   * Largest request body accepted, bytes: bigger ones get 413 before they are read (by `Content-Length`, or while
   * reading a body sent without one). No route needs a body; QStash schedules and nudges send a small one or none.
   * @default 4096
   */
  maxBodyBytes?: number | undefined;
  /**
   * Receives every failure the response hides (driver errors behind a 503 or 500, failed follow-ups), with the route.
   * @default logs with `console.error`
   */
  onError?: ((error: unknown, route: string) => void) | undefined;
}

/** The JSON answer of `POST /drain`: the drain report, plus the follow-up when one was triggered. */
export interface DrainResponse extends DrainReport {
  /** Present when the drain reported `more` and a follow-up function is configured. */
  followUp?: { readonly dedupId: string; readonly ok: boolean; readonly error?: string };
}

/** The JSON answer of `GET /stats`. */
export interface StatsResponse extends Omit<OutboxStats, "window"> {
  /** Windowed counters, plus the retry rate (`retried / (delivered + retried + dead)`, null when none). */
  readonly window: OutboxStats["window"] & { readonly retryRate: number | null };
}

/** The JSON answer of `GET /health`. */
export interface HealthResponse extends HealthReport {
  /** The stats the decision was made on. */
  readonly stats: OutboxStats;
}

/** The JSON body of every error answer: a code to branch on and a generic message (never a driver's). */
export interface ErrorResponse {
  /** `UNAUTHORIZED`, `FORBIDDEN`, `PAYLOAD_TOO_LARGE`, `VALIDATION`, `NOT_FOUND`, `STORAGE`, `LOCK` or `INTERNAL`. */
  readonly error: string;
  /** What happened, in words that carry no driver internals. */
  readonly message: string;
  /** Whether calling again later can succeed. */
  readonly retryable: boolean;
}

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));
const fn = (what: string) => v.custom<(...args: never[]) => unknown>((f) => typeof f === "function", `must be ${what}`);
const flag = v.optional(v.boolean());

const optionsSchema = v.pipe(
  v.strictObject({
    relay: v.custom<object>(
      (r) => typeof r === "object" && r !== null && typeof (r as { drain?: unknown }).drain === "function",
      "must be a relay made by createRelay",
    ),
    outbox: v.optional(v.custom<object>(
      (o) =>
        typeof o === "object" && o !== null && typeof (o as { stats?: unknown }).stats === "function" &&
        typeof (o as { deadLetters?: { list?: unknown } }).deadLetters?.list === "function",
      "must be an outbox made by createOutbox",
    )),
    auth: authSchema,
    routes: v.optional(v.strictObject({ drain: flag, metrics: flag, read: flag, admin: flag })),
    budgetMs: v.optional(int(100, 3_600_000), 8_000),
    maxLingerMs: v.optional(int(0, 3_600_000), 0),
    thresholds: v.optional(v.unknown()),
    followUp: v.optional(fn("a function ({ dedupId, report }) => Promise")),
    followUpTimeoutMs: v.optional(int(1, 60_000), 2_000),
    publicUrl: v.optional(v.pipe(
      v.string(),
      v.check((u) => {
        try {
          const url = new URL(u);
          return (url.protocol === "https:" || url.protocol === "http:") && url.search === "" && url.hash === "";
        } catch {
          return false;
        }
      }, "must be an absolute http(s) URL without query or fragment, e.g. https://app.example/outbox"),
    )),
    statsWindowMs: v.optional(int(1, 30 * 86_400_000), 300_000),
    storageTimeoutMs: v.optional(int(10, 3_600_000), 10_000),
    metricsWindowsMs: v.optional(v.pipe(
      v.array(int(60_000, 30 * 86_400_000)),
      v.minLength(1, "must list at least one window"),
      v.maxLength(8, "must list at most 8 windows (each is one stats read per scrape)"),
      v.check((w) => new Set(w).size === w.length, "must not list a window twice"),
    )),
    maxBodyBytes: v.optional(int(0, 1_048_576), 4_096),
    dashboard: v.optional(v.custom<RelayDashboard>(
      (d) => typeof d === "object" && d !== null && (d as { kind?: unknown }).kind === "edge-outbox:dashboard",
      "must be made by relayDashboard()",
    )),
    onError: v.optional(fn("a function (error, route) => void")),
  }),
  v.check((o) => o.auth.qstash === undefined || o.publicUrl !== undefined, "publicUrl is required with auth.qstash (QStash signs the URL it called)"),
  v.check((o) => o.maxLingerMs < o.budgetMs, "maxLingerMs must be less than budgetMs (a linger is part of the drain's budget)"),
);

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NO_STORE = { "Cache-Control": "no-store" } as const;
type Group = keyof RelayAppRoutes;
const GROUP_SCOPE: Record<Group, RelayAppScope> = { drain: "drain", metrics: "metrics", read: "read", admin: "admin" };

/**
 * Creates the relay's Hono app. Every route requires a credential of its scope (401 without one, 403 with one of
 * another scope), checked before the body is read; bodies over `maxBodyBytes` get 413.
 *
 * @param options relay, outbox, auth, routes, budgetMs (8000), maxLingerMs (0), thresholds, followUp, followUpTimeoutMs (2000),
 *   publicUrl, statsWindowMs (300000), storageTimeoutMs (10000), metricsWindowsMs ([statsWindowMs]), dashboard,
 *   maxBodyBytes (4096), onError
 * @returns a Hono app with the route groups some credential grants: `POST /drain`; `GET /metrics`; `GET /health`,
 *   `GET /stats`, `GET /dead-letters` (and the dashboard `GET /` when given); `POST /dead-letters/:id/replay`,
 *   `DELETE /dead-letters`
 * @throws {OutboxError} CONFIG naming the bad option, e.g. `createRelayApp options: auth.drain: must be at least 16
 *   characters …`, or a route group turned on that no credential grants
 * @example
 * ```ts
 * import { createRelayApp } from "edge-outbox/hono";
 *
 * // Vercel Cron: { "crons": [{ "path": "/drain", "schedule": "* * * * *" }] } calls GET /drain with CRON_SECRET
 * const app = createRelayApp({ relay, outbox, auth: { drain: env.CRON_SECRET, read: env.OUTBOX_READ_SECRET } });
 * export default app;
 * ```
 */
export function createRelayApp(options: RelayAppOptions): Hono {
  const o = parseOptions("createRelayApp options", optionsSchema, options);
  const thresholds = parseHealthThresholds(options.thresholds, "createRelayApp options: thresholds");
  const relay = options.relay;
  const outbox = options.outbox;
  const followUp = options.followUp;
  const onError = options.onError ?? ((e: unknown, route: string) => console.error(`[edge-outbox:hono] ${route}:`, e));
  const { budgetMs, maxLingerMs, followUpTimeoutMs, statsWindowMs, maxBodyBytes, storageTimeoutMs } = o;
  const metricsWindowsMs = o.metricsWindowsMs ?? [statsWindowMs];
  const publicUrl = o.publicUrl?.replace(/\/+$/, "");
  const creds = credentials(options.auth);

  const on = {} as Record<Group, boolean>;
  for (const group of ["drain", "metrics", "read", "admin"] as const) {
    const wanted = options.routes?.[group];
    const granted = creds.granted.has(GROUP_SCOPE[group]);
    const needsOutbox = group !== "drain";
    if (wanted === true && !granted) {
      throw new OutboxError("CONFIG", `createRelayApp options: routes.${group} is on but no credential grants the ${group} scope (set auth.${group})`);
    }
    if ((wanted ?? granted) && needsOutbox && !outbox) {
      throw new OutboxError("CONFIG", `createRelayApp options: the ${group} routes need an outbox (pass outbox, or set routes.${group}: false)`);
    }
    on[group] = wanted ?? granted;
  }
  const dashboard = options.dashboard;
  if (dashboard && !on.read) {
    throw new OutboxError("CONFIG", "createRelayApp options: dashboard needs the read routes (set auth.read or auth.admin, with an outbox)");
  }

  /** The signatures waiting for their body to be verified, per request context. */
  const pending = new WeakMap<Context, string>();

  /** Header checks: everything that can be decided before reading the body. */
  const guard = (scope: RelayAppScope, route: string): MiddlewareHandler => {
    const segments = route.split("/").filter(Boolean).length;
    return async (c, next) => {
      const url = publicUrl ? signedUrl(publicUrl, c.req.url, segments) : "";
      const result = await creds.check({ authorization: c.req.header("authorization"), signature: c.req.header("upstash-signature") }, scope, url);
      if (result.kind === "unauthorized") return unauthorized(c);
      if (result.kind === "forbidden") return error(c, 403, "FORBIDDEN", `this credential does not grant the ${scope} scope`);
      if (result.kind === "signature") pending.set(c, result.signature);
      await next();
    };
  };
  const limit = bodyLimit({
    maxSize: maxBodyBytes,
    onError: (c) => error(c, 413, "PAYLOAD_TOO_LARGE", `request bodies are limited to ${maxBodyBytes} bytes`),
  });
  /** Verifies a pending signature against the (size-checked) body. */
  const signed = (route: string): MiddlewareHandler => {
    const segments = route.split("/").filter(Boolean).length;
    return async (c, next) => {
      const signature = pending.get(c);
      if (signature !== undefined) {
        const url = signedUrl(publicUrl!, c.req.url, segments);
        if (!(await creds.verify(signature, await c.req.text(), url))) return unauthorized(c);
      }
      await next();
    };
  };
  const protect = (scope: RelayAppScope, route: string): [MiddlewareHandler, MiddlewareHandler, MiddlewareHandler] => [guard(scope, route), limit, signed(route)];

  const fail = (c: Context, route: string, e: unknown): Response => {
    if (isOutboxError(e, "VALIDATION")) return error(c, 400, "VALIDATION", e.message);
    onError(e, route);
    if (isOutboxError(e, "STORAGE")) return error(c, 503, "STORAGE", "the outbox storage is unavailable; retry later", true);
    if (isOutboxError(e, "LOCK")) return error(c, 503, "LOCK", "the relay lock is unavailable; retry later", true);
    return error(c, 500, "INTERNAL", "internal error");
  };
  /** `run()` bounded by storageTimeoutMs: a retryable STORAGE error naming `call` after it. */
  const bound = <T>(call: string, run: () => Promise<T>): Promise<T> =>
    withTimeout(run, storageTimeoutMs, () =>
      new OutboxError("STORAGE", `outbox ${call} did not answer within storageTimeoutMs (${storageTimeoutMs} ms)`, { retryable: true }));
  /** `outbox` with every call bounded (see {@link bound}). */
  const bounded: RelayAppOutbox | undefined = outbox && {
    stats: (opts) => bound("stats()", () => outbox.stats(opts)),
    deadLetters: {
      list: (opts) => bound("deadLetters.list()", () => outbox.deadLetters.list(opts)),
      replay: (id) => bound("deadLetters.replay()", () => outbox.deadLetters.replay(id)),
      purge: (opts) => bound("deadLetters.purge()", () => outbox.deadLetters.purge(opts)),
    },
  };
  const withOutbox = async (c: Context, route: string, run: (outbox: RelayAppOutbox) => Promise<Response>): Promise<Response> => {
    try {
      return await run(bounded!);
    } catch (e) {
      return fail(c, route, e);
    }
  };

  const app = new Hono();

  if (on.drain) {
    // POST for QStash schedules, nudges, follow-ups and most cron platforms; GET because Vercel Cron calls its path with
    // an HTTP GET (with `Authorization: Bearer $CRON_SECRET`). Same credentials, same handler.
    const drainRoute = async (c: Context): Promise<Response> => {
      const lingerMs = lingerParam(c.req.query("linger"), maxLingerMs);
      if (typeof lingerMs === "string") return invalid(c, lingerMs);
      let report: DrainReport;
      try {
        report = await relay.drain(lingerMs > 0 ? { budgetMs, lingerMs } : { budgetMs });
      } catch (e) {
        return fail(c, `${c.req.method} /drain`, e);
      }
      const body: DrainResponse = { ...report };
      if (report.more && followUp) {
        const dedupId = await followUpId(c);
        try {
          await withTimeout(() => followUp({ dedupId, report }), followUpTimeoutMs, () => new OutboxError("ABORTED", `follow-up did not finish within ${followUpTimeoutMs} ms`));
          body.followUp = { dedupId, ok: true };
        } catch (e) {
          onError(e, "POST /drain follow-up");
          const timedOut = isOutboxError(e, "ABORTED");
          body.followUp = { dedupId, ok: false, error: timedOut ? `did not finish within ${followUpTimeoutMs} ms` : "the follow-up call failed" };
        }
      }
      return c.json(body, 200, NO_STORE);
    };
    app.post("/drain", ...protect("drain", "/drain"), drainRoute);
    app.get("/drain", ...protect("drain", "/drain"), drainRoute);
  }

  if (on.metrics) {
    app.get("/metrics", ...protect("metrics", "/metrics"), (c) =>
      withOutbox(c, "GET /metrics", async (ob) => {
        const windows = await Promise.all(metricsWindowsMs.map((windowMs) => ob.stats({ windowMs })));
        return c.body(renderMetrics(windows), 200, { ...NO_STORE, "Content-Type": PROMETHEUS_CONTENT_TYPE });
      }));
  }

  if (on.read) {
    app.get("/health", ...protect("read", "/health"), async (c) => {
      let stats: OutboxStats;
      try {
        stats = await bounded!.stats({ windowMs: statsWindowMs });
      } catch (e) {
        onError(e, "GET /health");
        return c.json({ status: "unhealthy", checks: [], error: "STORAGE", message: "the outbox stats could not be read", retryable: true }, 503, NO_STORE);
      }
      const report = evaluateHealth(stats, thresholds);
      const body: HealthResponse = { ...report, stats };
      return c.json(body, report.status === "unhealthy" ? 503 : 200, NO_STORE);
    });

    app.get("/stats", ...protect("read", "/stats"), (c) =>
      withOutbox(c, "GET /stats", async (ob) => {
        const windowMs = intParam(c.req.query("windowMs"), "windowMs", 1, 30 * 86_400_000, statsWindowMs);
        if (typeof windowMs === "string") return invalid(c, windowMs);
        const stats = await ob.stats({ windowMs });
        const body: StatsResponse = { ...stats, window: { ...stats.window, retryRate: retryRate(stats) } };
        return c.json(body, 200, NO_STORE);
      }));

    app.get("/dead-letters", ...protect("read", "/dead-letters"), (c) =>
      withOutbox(c, "GET /dead-letters", async (ob) => {
        const limit = intParam(c.req.query("limit"), "limit", 1, 1_000, 50);
        if (typeof limit === "string") return invalid(c, limit);
        const cursor = c.req.query("cursor");
        if (cursor !== undefined && (cursor === "" || cursor.length > 512)) return invalid(c, "cursor must be a cursor from a previous page");
        const page = await ob.deadLetters.list({ limit, cursor: cursor ?? null });
        return c.json(page, 200, NO_STORE);
      }));
  }

  if (dashboard) {
    app.get("/", (c) => {
      // Relative asset URLs that work with and without a trailing slash: at /outbox they must start with outbox/.
      const path = new URL(c.req.url).pathname;
      const prefix = path.endsWith("/") ? "./" : `./${path.split("/").pop()}/`; // percent-encoded by URL: no quote or <
      return c.body(dashboard.page(prefix), 200, { ...dashboard.pageHeaders });
    });
    for (const [path, { body, type }] of Object.entries(dashboard.assets)) {
      app.get(path, (c) => c.body(body, 200, { "Content-Type": type, "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff" }));
    }
  }

  if (on.admin) {
    app.post("/dead-letters/:id/replay", ...protect("admin", "/dead-letters/:id/replay"), (c) =>
      withOutbox(c, "POST /dead-letters/:id/replay", async (ob) => {
        const id = c.req.param("id");
        if (!UUID_RE.test(id)) return invalid(c, "id must be a message id (a UUID)");
        const replayed = await ob.deadLetters.replay(id.toLowerCase());
        if (!replayed) return error(c, 404, "NOT_FOUND", `no dead letter with id ${id.toLowerCase()}`);
        return c.json({ replayed: true, id: id.toLowerCase() }, 200, NO_STORE);
      }));

    app.delete("/dead-letters", ...protect("admin", "/dead-letters"), (c) =>
      withOutbox(c, "DELETE /dead-letters", async (ob) => {
        const raw = c.req.query("olderThan");
        if (raw === undefined || raw === "") return invalid(c, "olderThan is required: epoch milliseconds or an ISO 8601 date");
        const olderThan = /^\d{1,15}$/.test(raw) ? Number(raw) : Date.parse(raw);
        if (!Number.isFinite(olderThan)) return invalid(c, "olderThan must be epoch milliseconds or an ISO 8601 date");
        const limit = intParam(c.req.query("limit"), "limit", 1, 10_000, 1_000);
        if (typeof limit === "string") return invalid(c, limit);
        const purged = await ob.deadLetters.purge({ olderThan, limit });
        return c.json({ purged, more: purged === limit }, 200, NO_STORE);
      }));
  }

  app.onError((e, c) => fail(c, `${c.req.method} ${c.req.path}`, e));
  return app;
}

/** The URL QStash signed: the public base, the last `segments` path segments of the request, and its query. */
function signedUrl(publicUrl: string, requestUrl: string, segments: number): string {
  const url = new URL(requestUrl);
  const tail = url.pathname.split("/").slice(-segments).join("/");
  return `${publicUrl}/${tail}${url.search}`;
}

/** One follow-up per incoming call: derived from its QStash message id (same on every retry) or idempotency key. */
async function followUpId(c: Context): Promise<string> {
  const source = c.req.header("upstash-message-id") ?? c.req.header("idempotency-key");
  if (!source) return `drain-${uuidv7()}`;
  const digest = await sha256(`edge-outbox:follow-up:${source}`);
  return `drain-${[...digest.slice(0, 16)].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** `run()` (called in a microtask, so a synchronous throw rejects), or `timedOut()` rejected after `ms`. */
function withTimeout<T>(run: () => T | Promise<T>, ms: number, timedOut: () => Error): Promise<Awaited<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timedOut()), ms);
  });
  const p = Promise.resolve().then(run);
  p.catch(() => {}); // a late rejection must not become unhandled
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Parses an optional integer query parameter; returns the error message on failure. */
function intParam(raw: string | undefined, name: string, min: number, max: number, fallback: number): number | string {
  if (raw === undefined) return fallback;
  const n = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) return `${name} must be an integer between ${min} and ${max}`;
  return n;
}

/** The `linger` query parameter of `/drain`, ms (0 when absent), or the error message (refused before any drain). */
function lingerParam(raw: string | undefined, maxLingerMs: number): number | string {
  if (raw === undefined) return 0;
  if (maxLingerMs === 0 && raw !== "0") return "linger is not enabled on this relay app (set createRelayApp's maxLingerMs to allow it)";
  const ms = intParam(raw, "linger", 0, maxLingerMs, 0);
  return typeof ms === "string" ? `linger must be a whole number of ms between 0 and ${maxLingerMs} (this app's maxLingerMs)` : ms;
}

function error(c: Context, status: 400 | 401 | 403 | 404 | 413 | 500 | 503, code: string, message: string, retryable = false): Response {
  const body: ErrorResponse = { error: code, message, retryable };
  const headers: Record<string, string> = { ...NO_STORE };
  if (status === 503) headers["Retry-After"] = "1";
  if (status === 401) headers["WWW-Authenticate"] = "Bearer";
  return c.json(body, status, headers);
}

function unauthorized(c: Context): Response {
  return error(c, 401, "UNAUTHORIZED", "a credential for this route is required: Authorization: Bearer <secret> or a valid Upstash-Signature");
}

function invalid(c: Context, message: string): Response {
  return error(c, 400, "VALIDATION", message);
}
