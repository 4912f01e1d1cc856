/**
 * `edge-outbox/hono`: the relay as a Hono app — `POST /drain` for cron platforms, QStash schedules and nudges,
 * `GET /health`, `GET /stats` and the dead-letter routes — every route behind a QStash signature or a bearer
 * secret. Mount it under a prefix in your own app (`app.route("/outbox", relayApp)`) or serve it alone.
 *
 * Routes (paths relative to where the app is mounted):
 * - `POST /drain`: one budgeted drain; answers the drain report as JSON. When the report says `more` and a
 *   `followUp` function is configured, it triggers one follow-up drain call, with a deduplication id derived from
 *   the incoming call (its `Upstash-Message-Id`, else its `Idempotency-Key`), so a retried call never fans out.
 *   Storage or lock failures answer 503 `{ error: "STORAGE" | "LOCK", message, retryable }`.
 * - `GET /health`: 200 `{ status: "healthy" | "degraded" }` or 503 `{ status: "unhealthy" }`, from thresholds on the
 *   pending count, the oldest pending age and the dead letters (see `evaluateHealth`).
 * - `GET /stats?windowMs=`: counts, windowed counters, average delivery latency and retry rate from
 *   `outbox.stats()` (database counters: right when every call runs in a new serverless process).
 * - `GET /dead-letters?limit=&cursor=`, `POST /dead-letters/:id/replay` (404 when not found),
 *   `DELETE /dead-letters?olderThan=&limit=` (bounded purge).
 *
 * Authentication, on every route: a valid `Upstash-Signature` (verified with `@upstash/qstash`'s `Receiver`
 * against the current and next signing keys, bound to the body and to the URL QStash called — `publicUrl` plus the
 * route path, since behind a prefix or a proxy the URL the app sees differs), or `Authorization: Bearer <secret>`
 * compared in constant time (Vercel Cron sends `CRON_SECRET` this way). Anything else gets 401 before any work.
 *
 * @example
 * ```ts
 * import { Hono } from "hono";
 * import { Client } from "@upstash/qstash";
 * import { createRelayApp } from "edge-outbox/hono";
 * import { qstashFollowUp } from "edge-outbox/qstash";
 *
 * const qstash = new Client({ token: env.QSTASH_TOKEN, retry: false });
 * const app = new Hono();
 * app.route("/outbox", createRelayApp({
 *   relay,
 *   outbox,
 *   auth: {
 *     qstash: { currentSigningKey: env.QSTASH_CURRENT_SIGNING_KEY, nextSigningKey: env.QSTASH_NEXT_SIGNING_KEY },
 *     bearer: env.CRON_SECRET,
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
import { Receiver } from "@upstash/qstash";
import * as v from "valibot";
import { isOutboxError, OutboxError } from "../../src/errors.ts";
import { uuidv7 } from "../../src/message.ts";
import { parseOptions } from "../../src/options.ts";
import type { Outbox } from "../../src/outbox.ts";
import type { DrainReport, Relay } from "../../src/relay.ts";
import { evaluateHealth, type HealthReport, type HealthThresholds, parseHealthThresholds, retryRate } from "../../src/stats.ts";
import type { OutboxStats } from "../../src/storage.ts";

/** QStash signing keys (from the QStash console, or `QSTASH_CURRENT_SIGNING_KEY` / `QSTASH_NEXT_SIGNING_KEY`). */
export interface QstashSigningKeys {
  /** The current signing key. */
  currentSigningKey: string;
  /** The next signing key (tried when the current one fails, so key rotation needs no downtime). */
  nextSigningKey: string;
  /** Seconds of clock difference tolerated on the signature's `nbf` and `exp`. @default 0 */
  clockToleranceSeconds?: number;
}

/** How callers authenticate. At least one of `qstash` and `bearer` is required. */
export interface RelayAppAuth {
  /** Accept requests signed by QStash (schedules, nudges, follow-ups). Needs `publicUrl`. @default none */
  qstash?: QstashSigningKeys;
  /**
   * Accept `Authorization: Bearer <secret>` for one of these secrets (at least 16 characters each), compared in
   * constant time. Vercel Cron sends `CRON_SECRET` this way. Several secrets allow rotation. @default none
   */
  bearer?: string | readonly string[];
}

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

/** Options of {@link createRelayApp}. */
export interface RelayAppOptions {
  /** The relay `POST /drain` runs (from `createRelay`). */
  relay: Pick<Relay, "drain">;
  /** The outbox behind `/health`, `/stats` and `/dead-letters`; without it those routes answer 501. @default none */
  outbox?: RelayAppOutbox;
  /** Who may call: QStash signatures and/or bearer secrets. */
  auth: RelayAppAuth;
  /**
   * Time budget of each drain, ms. A call answers within about `budgetMs` plus the relay's `sendTimeoutMs` (plus
   * `followUpTimeoutMs` when it triggers a follow-up): keep that under your platform's time limit. @default 8000
   */
  budgetMs?: number;
  /** Health thresholds of `GET /health`. @default { oldestPendingAgeMs: { degraded: 30000, unhealthy: 300000 } } */
  thresholds?: HealthThresholds;
  /**
   * Triggers one more drain call when a drain reports `more` (e.g. `qstashFollowUp(client, { url })`
   * from `edge-outbox/qstash`). Pass `dedupId` on as the deduplication id. A failure is reported in the response,
   * not thrown. @default none (a backlog then waits for the next scheduled call)
   */
  followUp?: (request: FollowUpRequest) => unknown;
  /** Longest wait for `followUp`, ms; then it is reported as failed. @default 2000 */
  followUpTimeoutMs?: number;
  /**
   * The app's public base URL as QStash calls it, e.g. `https://app.example/outbox` (where the app is mounted).
   * QStash signs the URL it called; the route path and query are appended to this to verify it. Required with
   * `auth.qstash`. @default none
   */
  publicUrl?: string;
  /** Default counter window of `GET /stats`, ms. @default 300000 */
  statsWindowMs?: number;
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

const int = (min: number, max: number) => v.pipe(v.number(), v.integer(), v.minValue(min), v.maxValue(max));
const secret = v.pipe(v.string(), v.minLength(16, "must be at least 16 characters"));
const fn = (what: string) => v.custom<(...args: never[]) => unknown>((f) => typeof f === "function", `must be ${what}`);

const optionsSchema = v.pipe(
  v.object({
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
    auth: v.pipe(
      v.strictObject({
        qstash: v.optional(v.strictObject({
          currentSigningKey: v.pipe(v.string(), v.minLength(1, "must be a non-empty signing key")),
          nextSigningKey: v.pipe(v.string(), v.minLength(1, "must be a non-empty signing key")),
          clockToleranceSeconds: v.optional(int(0, 3_600)),
        })),
        bearer: v.optional(v.union([secret, v.pipe(v.array(secret), v.minLength(1))], "must be a secret of at least 16 characters, or a non-empty list of them")),
      }),
      v.check((a) => a.qstash !== undefined || a.bearer !== undefined, "configure qstash signing keys, a bearer secret, or both"),
    ),
    budgetMs: v.optional(int(100, 3_600_000), 8_000),
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
  }),
  v.check((o) => o.auth.qstash === undefined || o.publicUrl !== undefined, "publicUrl is required with auth.qstash (QStash signs the URL it called)"),
);

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NO_STORE = { "Cache-Control": "no-store" } as const;

/**
 * Creates the relay's Hono app. Every route requires a QStash signature or a bearer secret (401 otherwise, before
 * anything runs).
 *
 * @param options relay, outbox, auth, budgetMs (8000), thresholds, followUp, followUpTimeoutMs (2000), publicUrl, statsWindowMs (300000)
 * @returns a Hono app with `POST /drain`, `GET /health`, `GET /stats`, `GET /dead-letters`,
 *   `POST /dead-letters/:id/replay` and `DELETE /dead-letters`
 * @throws {OutboxError} CONFIG naming the bad option (e.g. `auth: configure qstash signing keys, a bearer secret, or both`)
 * @example
 * ```ts
 * import { createRelayApp } from "edge-outbox/hono";
 *
 * const app = createRelayApp({ relay, outbox, auth: { bearer: env.CRON_SECRET }, budgetMs: 8_000 });
 * // Vercel Cron: { "crons": [{ "path": "/drain", "schedule": "* * * * *" }] } calls POST /drain with the secret
 * export default app;
 * ```
 */
export function createRelayApp(options: RelayAppOptions): Hono {
  const o = parseOptions("createRelayApp options", optionsSchema, options);
  const thresholds = parseHealthThresholds(options.thresholds, "createRelayApp options: thresholds");
  const relay = options.relay;
  const outbox = options.outbox;
  const followUp = options.followUp;
  const { budgetMs, followUpTimeoutMs, statsWindowMs } = o;
  const publicUrl = o.publicUrl?.replace(/\/+$/, "");
  const qstash = o.auth.qstash;
  const receiver = qstash
    ? new Receiver({ currentSigningKey: qstash.currentSigningKey, nextSigningKey: qstash.nextSigningKey, devMode: false })
    : null;
  const bearers = o.auth.bearer === undefined ? [] : typeof o.auth.bearer === "string" ? [o.auth.bearer] : [...o.auth.bearer];
  let bearerDigests: Promise<Uint8Array[]> | undefined;

  /** Verifies the caller; `segments` is the number of path segments of the route (for the signed URL). */
  async function authorized(c: Context, segments: number): Promise<boolean> {
    const header = c.req.header("authorization");
    if (bearers.length > 0 && header !== undefined) {
      const m = /^Bearer\s+(\S.*)$/i.exec(header);
      if (m) {
        bearerDigests ??= Promise.all(bearers.map(sha256));
        const [given, known] = await Promise.all([sha256(m[1]!.trim()), bearerDigests]);
        let ok = false;
        for (const k of known) ok = constantTimeEqual(given, k) || ok; // compare with every secret, no early exit
        if (ok) return true;
      }
    }
    const signature = c.req.header("upstash-signature");
    if (receiver && publicUrl && signature) {
      try {
        const body = await c.req.text();
        return await receiver.verify({
          signature,
          body,
          url: signedUrl(publicUrl, c.req.url, segments),
          clockTolerance: qstash?.clockToleranceSeconds ?? 0,
        });
      } catch {
        return false;
      }
    }
    return false;
  }

  const guard = (route: string): MiddlewareHandler => {
    const segments = route.split("/").filter(Boolean).length;
    return async (c, next) => {
      if (!(await authorized(c, segments))) {
        return c.json(
          { error: "UNAUTHORIZED", message: "a valid Upstash-Signature or Authorization: Bearer <secret> is required" },
          401,
          { ...NO_STORE, "WWW-Authenticate": "Bearer" },
        );
      }
      await next();
    };
  };

  const withOutbox = async (c: Context, run: (outbox: RelayAppOutbox) => Promise<Response>): Promise<Response> => {
    if (!outbox) return c.json({ error: "NOT_CONFIGURED", message: "createRelayApp was given no outbox" }, 501, NO_STORE);
    try {
      return await run(outbox);
    } catch (e) {
      return failure(c, e);
    }
  };

  const app = new Hono();

  app.post("/drain", guard("/drain"), async (c) => {
    let report: DrainReport;
    try {
      report = await relay.drain({ budgetMs });
    } catch (e) {
      return failure(c, e);
    }
    const body: DrainResponse = { ...report };
    if (report.more && followUp) {
      const dedupId = await followUpId(c);
      try {
        await withTimeout(Promise.resolve().then(() => followUp({ dedupId, report })), followUpTimeoutMs);
        body.followUp = { dedupId, ok: true };
      } catch (e) {
        body.followUp = { dedupId, ok: false, error: e instanceof Error ? e.message : String(e) };
      }
    }
    return c.json(body, 200, NO_STORE);
  });

  app.get("/health", guard("/health"), async (c) => {
    if (!outbox) return c.json({ error: "NOT_CONFIGURED", message: "createRelayApp was given no outbox" }, 501, NO_STORE);
    let stats: OutboxStats;
    try {
      stats = await outbox.stats({ windowMs: statsWindowMs });
    } catch (e) {
      const err = describe(e);
      return c.json({ status: "unhealthy", checks: [], ...err }, 503, NO_STORE);
    }
    const report = evaluateHealth(stats, thresholds);
    const body: HealthResponse = { ...report, stats };
    return c.json(body, report.status === "unhealthy" ? 503 : 200, NO_STORE);
  });

  app.get("/stats", guard("/stats"), (c) =>
    withOutbox(c, async (ob) => {
      const windowMs = intParam(c.req.query("windowMs"), "windowMs", 1, 30 * 86_400_000, statsWindowMs);
      if (typeof windowMs === "string") return invalid(c, windowMs);
      const stats = await ob.stats({ windowMs });
      const body: StatsResponse = { ...stats, window: { ...stats.window, retryRate: retryRate(stats) } };
      return c.json(body, 200, NO_STORE);
    }));

  app.get("/dead-letters", guard("/dead-letters"), (c) =>
    withOutbox(c, async (ob) => {
      const limit = intParam(c.req.query("limit"), "limit", 1, 1_000, 50);
      if (typeof limit === "string") return invalid(c, limit);
      const cursor = c.req.query("cursor");
      if (cursor !== undefined && (cursor === "" || cursor.length > 512)) return invalid(c, "cursor must be a cursor from a previous page");
      const page = await ob.deadLetters.list({ limit, cursor: cursor ?? null });
      return c.json(page, 200, NO_STORE);
    }));

  app.post("/dead-letters/:id/replay", guard("/dead-letters/:id/replay"), (c) =>
    withOutbox(c, async (ob) => {
      const id = c.req.param("id");
      if (!UUID_RE.test(id)) return invalid(c, "id must be a message id (a UUID)");
      const replayed = await ob.deadLetters.replay(id.toLowerCase());
      if (!replayed) return c.json({ error: "NOT_FOUND", message: `no dead letter with id ${id}` }, 404, NO_STORE);
      return c.json({ replayed: true, id: id.toLowerCase() }, 200, NO_STORE);
    }));

  app.delete("/dead-letters", guard("/dead-letters"), (c) =>
    withOutbox(c, async (ob) => {
      const raw = c.req.query("olderThan");
      if (raw === undefined || raw === "") return invalid(c, "olderThan is required: epoch milliseconds or an ISO 8601 date");
      const olderThan = /^\d{1,15}$/.test(raw) ? Number(raw) : Date.parse(raw);
      if (!Number.isFinite(olderThan)) return invalid(c, "olderThan must be epoch milliseconds or an ISO 8601 date");
      const limit = intParam(c.req.query("limit"), "limit", 1, 10_000, 1_000);
      if (typeof limit === "string") return invalid(c, limit);
      const purged = await ob.deadLetters.purge({ olderThan, limit });
      return c.json({ purged, more: purged === limit }, 200, NO_STORE);
    }));

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

async function sha256(s: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new OutboxError("ABORTED", `follow-up did not finish within ${ms} ms`)), ms);
  });
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

function invalid(c: Context, message: string): Response {
  return c.json({ error: "VALIDATION", message }, 400, NO_STORE);
}

function describe(e: unknown): { error: string; message: string; retryable: boolean } {
  if (isOutboxError(e)) return { error: e.code, message: e.message, retryable: e.retryable };
  return { error: "INTERNAL", message: e instanceof Error ? e.message : String(e), retryable: false };
}

/** Maps a failure to a response: VALIDATION 400, STORAGE/LOCK 503 (retry later), anything else 500. */
function failure(c: Context, e: unknown): Response {
  const body = describe(e);
  if (body.error === "VALIDATION") return c.json(body, 400, NO_STORE);
  if (body.error === "STORAGE" || body.error === "LOCK") return c.json(body, 503, { ...NO_STORE, "Retry-After": "1" });
  return c.json(body, 500, NO_STORE);
}
