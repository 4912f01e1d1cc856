import { type Client, createClient } from "@libsql/client";
import { Receiver } from "@upstash/qstash";
import { Hono } from "hono";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import {
  createOutbox,
  createRelay,
  type DrainReport,
  evaluateHealth,
  type Lock,
  OutboxError,
  type OutboxStats,
  parseHealthThresholds,
  retryRate,
} from "../mod.ts";
import { libsqlStorage } from "../adapters/libsql/mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createRelayApp, type DrainResponse, type QstashVerify, type QstashVerifyRequest, type RelayAppOptions } from "../adapters/hono/mod.ts";
import { signQstashJwt } from "./fixtures/qstash-emulator.ts";
import { codeOf, event, fill, memoryOutbox } from "./helpers.ts";

const SECRET = "cron-secret-0123456789abcdef"; // the drain scope's secret (CRON_SECRET)
const READ = "read-secret-0123456789abcdef";
const ADMIN = "admin-secret-0123456789abcdef";
const KEYS = { currentSigningKey: "sig_current_hono_test", nextSigningKey: "sig_next_hono_test" };
/** The user's QStash verifier: the SDK's own Receiver, built by the user (the app never imports @upstash/qstash). */
const receiver = new Receiver({ ...KEYS, devMode: false });
const quiet = { onError: () => {} };
const PUBLIC = "https://app.example/outbox";
const bearer = (s = SECRET): Record<string, string> => ({ authorization: `Bearer ${s}` });

/** The relay app mounted under /outbox in a parent app, as a user would. */
function mounted(options: RelayAppOptions): Hono {
  const parent = new Hono();
  parent.get("/", (c) => c.text("home"));
  parent.route("/outbox", createRelayApp(options));
  return parent;
}

async function json<T = Record<string, unknown>>(res: Response): Promise<T> {
  return (await res.json()) as T;
}

describe("POST /drain: a budgeted drain per call, follow-ups drain a large backlog", () => {
  it("100,000 messages, 50 ms per send: each call answers within 2,500 ms (budget 2,000) and the follow-ups drain everything", async () => {
    const { storage, outbox } = memoryOutbox();
    const filled = performance.now();
    await fill(storage, outbox, 100_000);
    const fillMs = performance.now() - filled;
    const transport = recordingTransport({ delayMs: 50, maxBatchSize: 100 });
    const relay = createRelay({ outbox, transport, batchSize: 400, concurrency: 4, leaseMs: 10_000, sendTimeoutMs: 1_000 });
    // followUp as QStash would do it: one message per dedup id, whatever the number of calls.
    const seen = new Set<string>();
    const queue: string[] = [];
    const followUp = vi.fn(({ dedupId }: { dedupId: string }) => {
      if (seen.has(dedupId)) return;
      seen.add(dedupId);
      queue.push(dedupId);
    });
    const app = mounted({ relay, outbox, auth: { drain: SECRET }, budgetMs: 2_000, followUp });
    const call = async (messageId: string): Promise<{ body: DrainResponse; wall: number }> => {
      const t0 = performance.now();
      const res = await app.request("/outbox/drain", { method: "POST", headers: { ...bearer(), "upstash-message-id": messageId } });
      const wall = performance.now() - t0;
      expect(res.status).toBe(200);
      return { body: await json<DrainResponse>(res), wall };
    };

    const started = performance.now();
    const walls: number[] = [];
    const first = await call("msg_step_0");
    walls.push(first.wall);
    expect(first.wall).toBeLessThanOrEqual(2_500); // the stated margin: budget 2,000 + at most 500
    expect(first.body.more).toBe(true);
    expect(first.body.delivered).toBeGreaterThan(0);
    expect(first.body.delivered).toBeLessThan(100_000);
    expect(first.body.followUp).toMatchObject({ ok: true });
    expect(queue).toHaveLength(1);

    // QStash retries the same step (same Upstash-Message-Id): same follow-up dedup id, no fan-out.
    const retried = await call("msg_step_0");
    walls.push(retried.wall);
    expect(retried.wall).toBeLessThanOrEqual(2_500);
    expect(retried.body.followUp?.dedupId).toBe(first.body.followUp?.dedupId);
    expect(queue).toHaveLength(1);

    let steps = 2;
    while (queue.length > 0) {
      const id = queue.shift()!;
      const r = await call(`msg_for_${id}`); // each follow-up is a new QStash message
      walls.push(r.wall);
      expect(r.wall).toBeLessThanOrEqual(2_500);
      steps++;
      expect(steps).toBeLessThan(40);
    }
    const totalMs = performance.now() - started;
    expect(storage.count()).toEqual({ pending: 0, dead: 0, delivered: 0 });
    expect(new Set(transport.delivered.map((m) => m.id)).size).toBe(100_000);
    console.log(
      `[hono] 100k backlog: fill ${Math.round(fillMs)} ms; ${steps} drain calls in ${Math.round(totalMs)} ms; ` +
        `wall per call max ${Math.round(Math.max(...walls))} ms (budget 2000, bound 2500); ${transport.calls} sends`,
    );
  }, 120_000);

  it("answers 503 with the error code when storage or the lock fails, never a 200 with a half report", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 5);
    const broken = memoryStorage({ shareWith: storage });
    broken.claim = () => Promise.reject(new OutboxError("STORAGE", "[edge-outbox:memory] claim failed: disk on fire", { retryable: true }));
    const brokenOutbox = createOutbox({ storage: broken, topics: [event] });
    const hidden: Array<[unknown, string]> = [];
    const onError = (e: unknown, route: string): void => void hidden.push([e, route]);
    const app = mounted({ relay: createRelay({ outbox: brokenOutbox, transport: recordingTransport() }), auth: { drain: SECRET }, onError });
    const res = await app.request("/outbox/drain", { method: "POST", headers: bearer() });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    const text = await res.text();
    // a code and a generic text; the driver's message goes to onError, never into the response
    expect(JSON.parse(text)).toEqual({ error: "STORAGE", message: "the outbox storage is unavailable; retry later", retryable: true });
    expect(text).not.toMatch(/disk on fire|edge-outbox:memory/);
    expect(hidden).toHaveLength(1);
    expect(hidden[0]![1]).toBe("POST /drain");
    expect((hidden[0]![0] as Error).message).toMatch(/disk on fire/);

    const lock: Lock = { name: "failing", acquire: () => Promise.reject(new Error("redis down at 10.1.2.3:6379")) };
    const app2 = mounted({ relay: createRelay({ outbox, transport: recordingTransport(), lock }), auth: { drain: SECRET }, onError });
    const res2 = await app2.request("/outbox/drain", { method: "POST", headers: bearer() });
    expect(res2.status).toBe(503);
    const text2 = await res2.text();
    expect(JSON.parse(text2)).toMatchObject({ error: "LOCK", retryable: true });
    expect(text2).not.toMatch(/redis down|10\.1\.2\.3/);
    expect(storage.count().pending).toBe(5);

    // anything else: 500 INTERNAL with a generic text
    const app3 = mounted({ relay: { drain: () => Promise.reject(new TypeError("cannot read properties of undefined (reading 'rows')")) }, auth: { drain: SECRET }, onError });
    const res3 = await app3.request("/outbox/drain", { method: "POST", headers: bearer() });
    expect(res3.status).toBe(500);
    expect(await json(res3)).toEqual({ error: "INTERNAL", message: "internal error", retryable: false });
  });

  it("a follow-up that fails or hangs is reported, and the drain still answers 200", async () => {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 50);
    const relay = createRelay({ outbox, transport: recordingTransport({ delayMs: 30 }), batchSize: 5, concurrency: 1, leaseMs: 2_000, sendTimeoutMs: 500 });
    const hidden: unknown[] = [];
    const app = mounted({
      relay,
      auth: { drain: SECRET },
      budgetMs: 200,
      followUp: () => Promise.reject(new Error("qstash down: token qst_123 refused")),
      onError: (e) => void hidden.push(e),
    });
    const res = await app.request("/outbox/drain", { method: "POST", headers: bearer() });
    expect(res.status).toBe(200);
    const body = await json<DrainResponse>(res);
    expect(body.more).toBe(true);
    expect(body.followUp).toMatchObject({ ok: false, error: "the follow-up call failed" });
    expect((hidden[0] as Error).message).toMatch(/qstash down/);
    expect(body.followUp?.dedupId).toMatch(/^drain-/);

    const hanging = mounted({ relay, auth: { drain: SECRET }, budgetMs: 200, followUp: () => new Promise(() => {}), followUpTimeoutMs: 100, ...quiet });
    const t0 = performance.now();
    const res2 = await hanging.request("/outbox/drain", { method: "POST", headers: bearer() });
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect((await json<DrainResponse>(res2)).followUp).toMatchObject({ ok: false, error: "did not finish within 100 ms" });
  });
});

describe("POST /drain?linger=<ms>: the drain stays and drains what commits meanwhile, up to maxLingerMs", () => {
  async function setup(options: Partial<RelayAppOptions> = {}) {
    const { storage, outbox } = memoryOutbox();
    const transport = recordingTransport();
    const real = createRelay({ outbox, transport });
    const drain = vi.fn((o?: Parameters<typeof real.drain>[0]) => real.drain(o));
    const app = mounted({ relay: { drain }, outbox, auth: { drain: SECRET, qstash: { verifier: receiver } }, publicUrl: PUBLIC, budgetMs: 3_000, ...options });
    return { storage, outbox, transport, drain, app };
  }
  const post = async (app: Hono, query: string, headers: Record<string, string> = bearer()): Promise<Response> =>
    await app.request(`http://10.0.0.7:8080/outbox/drain${query}`, { method: "POST", headers });

  it("a linger call delivers a row committed during it, in the one report, and answers after about the linger", async () => {
    const { storage, outbox, transport, drain, app } = await setup({ maxLingerMs: 1_000 });
    await fill(storage, outbox, 2);
    const t0 = performance.now();
    const answering = post(app, "?linger=400");
    await new Promise((r) => setTimeout(r, 150));
    await fill(storage, outbox, 1, { start: 2 });
    const res = await answering;
    const wall = performance.now() - t0;
    expect(res.status).toBe(200);
    expect(await json<DrainResponse>(res)).toMatchObject({ claimed: 3, delivered: 3, more: false });
    expect(drain).toHaveBeenCalledWith({ budgetMs: 3_000, lingerMs: 400 });
    expect(wall).toBeGreaterThanOrEqual(390);
    expect(wall).toBeLessThan(3_000);
    expect(transport.delivered.map((m) => (m.payload as { n: number }).n)).toEqual([0, 1, 2]);
    // Without the parameter nothing changes: the drain returns as soon as nothing is due.
    expect((await post(app, "")).status).toBe(200);
    expect(drain).toHaveBeenLastCalledWith({ budgetMs: 3_000 });
  });

  it("refuses a linger above maxLingerMs, or any linger while it is 0 (the default), with 400 VALIDATION, draining nothing", async () => {
    const off = await setup();
    await fill(off.storage, off.outbox, 3);
    const refused = await post(off.app, "?linger=500");
    expect(refused.status).toBe(400);
    expect(await json(refused)).toEqual({
      error: "VALIDATION",
      message: "linger is not enabled on this relay app (set createRelayApp's maxLingerMs to allow it)",
      retryable: false,
    });
    expect(off.drain).not.toHaveBeenCalled();
    expect(off.storage.count().pending).toBe(3);
    expect((await post(off.app, "?linger=0")).status).toBe(200); // asking for none is always fine

    const on = await setup({ maxLingerMs: 1_000 });
    await fill(on.storage, on.outbox, 3);
    for (const bad of ["1001", "-5", "1.5", "abc", "", "1e3"]) {
      const res = await post(on.app, `?linger=${bad}`);
      expect(res.status, bad).toBe(400);
      expect(await json(res)).toMatchObject({ error: "VALIDATION", message: "linger must be a whole number of ms between 0 and 1000 (this app's maxLingerMs)" });
    }
    expect(on.drain).not.toHaveBeenCalled();
    expect(on.storage.count().pending).toBe(3);
    // Auth comes first: an unauthenticated linger call is 401, not 400.
    expect((await post(on.app, "?linger=5000", {})).status).toBe(401);
  });

  it("QStash signs the query: a signed linger call passes, and a linger added to a call signed without one is 401", async () => {
    const { app, drain } = await setup({ maxLingerMs: 1_000 });
    const signed = (path: string): Record<string, string> => ({ "upstash-signature": signQstashJwt(KEYS.currentSigningKey, { url: `${PUBLIC}${path}`, body: "" }) });
    expect((await post(app, "?linger=100", signed("/drain?linger=100"))).status).toBe(200);
    expect(drain).toHaveBeenCalledWith({ budgetMs: 3_000, lingerMs: 100 });
    expect((await post(app, "?linger=900", signed("/drain"))).status).toBe(401);
    expect((await post(app, "?linger=900", signed("/drain?linger=100"))).status).toBe(401);
    expect(drain).toHaveBeenCalledTimes(1);
  });

  it("maxLingerMs must be a whole number of ms below budgetMs (CONFIG)", () => {
    const relay = createRelay({ outbox: memoryOutbox().outbox, transport: recordingTransport() });
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, budgetMs: 1_000, maxLingerMs: 1_000 })).toThrow(/maxLingerMs must be less than budgetMs/);
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, maxLingerMs: -1 })).toThrow(/maxLingerMs/);
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, budgetMs: 2_000, maxLingerMs: 1_000 })).not.toThrow();
  });
});

describe("auth on every route: scoped bearer secrets and QStash signatures (body + public URL)", () => {
  async function setup(qstashScopes: Array<"drain" | "read" | "admin"> = ["drain", "admin"]) {
    const { storage, outbox } = memoryOutbox();
    await fill(storage, outbox, 6);
    // two dead letters
    const deadTransport = recordingTransport({ outcome: (m) => ((m.payload as { n: number }).n < 2 ? { status: "dead", error: "HTTP 400" } : { status: "retry", error: "later" }) });
    await createRelay({ outbox, transport: deadTransport }).drain();
    const real = createRelay({ outbox, transport: recordingTransport() });
    const drain = vi.fn((o?: Parameters<typeof real.drain>[0]) => real.drain(o));
    const verify = vi.fn((request: QstashVerifyRequest) => receiver.verify(request));
    const app = mounted({
      relay: { drain },
      outbox,
      auth: { drain: SECRET, read: READ, admin: ADMIN, qstash: { verifier: verify, scopes: qstashScopes } },
      publicUrl: PUBLIC,
    });
    const snapshot = (): string => JSON.stringify(storage.count());
    return { storage, outbox, app, drain, verify, snapshot };
  }
  // The app sees an internal URL; QStash signed the public one.
  const INTERNAL = "http://10.0.0.7:8080/outbox";
  const sign = (path: string, body = "", o: Partial<Parameters<typeof signQstashJwt>[1]> = {}, key = KEYS.currentSigningKey): string =>
    signQstashJwt(key, { url: `${PUBLIC}${path}`, body, ...o });

  const forged: Array<[string, (path: string) => Record<string, string>, string?]> = [
    ["no credentials", () => ({})],
    ["a signature made with the wrong key", (p) => ({ "upstash-signature": sign(p, "", {}, "sig_attacker_key") })],
    ["an expired signature", (p) => ({ "upstash-signature": sign(p, "", { now: Date.now() - 600_000, expiresInS: 300 }) })],
    ["a signature not valid yet", (p) => ({ "upstash-signature": sign(p, "", { notBeforeS: 600 }) })],
    ["a signature for another URL", (p) => ({ "upstash-signature": signQstashJwt(KEYS.currentSigningKey, { url: `${PUBLIC}/other${p}`, body: "" }) })],
    ["a signature for the internal URL instead of the public one", (p) => ({ "upstash-signature": signQstashJwt(KEYS.currentSigningKey, { url: `${INTERNAL}${p}`, body: "" }) })],
    ["a tampered body", (p) => ({ "upstash-signature": sign(p, "the body QStash signed") }), '{"budgetMs":1}'],
    ["a signature with another issuer", (p) => ({ "upstash-signature": sign(p, "", { issuer: "Mallory" }) })],
    ["garbage in the signature header", () => ({ "upstash-signature": "not.a.jwt" })],
    ["a wrong bearer secret", () => bearer("cron-secret-0123456789abcdeX")],
    ["a bearer secret's prefix", () => bearer(ADMIN.slice(0, 20))],
    ["basic auth", () => ({ authorization: `Basic ${btoa(`user:${ADMIN}`)}` })],
  ];

  const routes: Array<[string, string]> = [
    ["POST", "/drain"],
    ["GET", "/health"],
    ["GET", "/stats"],
    ["GET", "/dead-letters"],
    ["POST", "/dead-letters/{dead}/replay"],
    ["DELETE", `/dead-letters?olderThan=${Date.now() + 3_600_000}&limit=10`],
  ];

  it.each(forged)("%s: 401 on every route, nothing runs, nothing changes", async (_name, headers, body) => {
    const { app, drain, snapshot, outbox } = await setup();
    const deadId = (await outbox.deadLetters.list()).items[0]!.id;
    const before = snapshot();
    for (const [method, template] of routes) {
      const path = template.replace("{dead}", deadId);
      const pathOnly = path.split("?")[0]!;
      const res = await app.request(`${INTERNAL}${path}`, {
        method,
        headers: headers(path.includes("?") ? path : pathOnly),
        body: method === "GET" ? undefined : body ?? "",
      });
      expect(res.status, `${method} ${path}`).toBe(401);
      expect(await json(res)).toMatchObject({ error: "UNAUTHORIZED" });
    }
    expect(drain).not.toHaveBeenCalled();
    expect(snapshot()).toBe(before);
    expect((await outbox.deadLetters.list()).items).toHaveLength(2);
  });

  it("accepts a valid QStash signature (current or next key, with the query) and the bearer secrets", async () => {
    const { app, drain, outbox, storage } = await setup();
    const body = "";
    let res = await app.request(`${INTERNAL}/drain`, { method: "POST", headers: { "upstash-signature": sign("/drain", body) }, body });
    expect(res.status).toBe(200);
    expect(drain).toHaveBeenCalledTimes(1);
    res = await app.request(`${INTERNAL}/drain`, { method: "POST", headers: { "upstash-signature": sign("/drain", "{}", {}, KEYS.nextSigningKey) }, body: "{}" });
    expect(res.status).toBe(200);
    expect(drain).toHaveBeenCalledTimes(2);
    res = await app.request(`${INTERNAL}/drain`, { method: "POST", headers: bearer() });
    expect(res.status).toBe(200);
    expect(drain).toHaveBeenCalledTimes(3);
    res = await app.request(`${INTERNAL}/health`, { headers: { authorization: `bearer   ${READ}` } });
    expect(res.status).toBe(200);

    const deadId = (await outbox.deadLetters.list()).items[0]!.id;
    const replay = `/dead-letters/${deadId}/replay`;
    res = await app.request(`${INTERNAL}${replay}`, { method: "POST", headers: { "upstash-signature": sign(replay) } });
    expect(res.status).toBe(200);
    const purge = `/dead-letters?olderThan=${Date.now() + 60_000}&limit=5`;
    res = await app.request(`${INTERNAL}${purge}`, { method: "DELETE", headers: { "upstash-signature": sign(purge) } });
    expect(res.status).toBe(200);
    expect(await json(res)).toEqual({ purged: 1, more: false });
    expect(storage.count().dead).toBe(0);
    // the same signature with another query does not pass
    res = await app.request(`${INTERNAL}/dead-letters?olderThan=1&limit=5`, { method: "DELETE", headers: { "upstash-signature": sign(purge) } });
    expect(res.status).toBe(401);
  });

  it("scopes: drain drains only, read reads only, admin reads and acts; QStash signatures drain only by default", async () => {
    const { app, outbox, drain, storage } = await setup(["drain"]);
    const deadId = (await outbox.deadLetters.list()).items[0]!.id;
    const matrix: Array<[string, string, Record<string, number>]> = [
      // route                                   method    credential → status
      ["/drain", "POST", { drain: 200, read: 403, admin: 403, qstash: 200 }],
      ["/drain", "GET", { drain: 200, read: 403, admin: 403, qstash: 200 }], // Vercel Cron calls with GET
      ["/health", "GET", { drain: 403, read: 200, admin: 200, qstash: 401 }],
      ["/stats", "GET", { drain: 403, read: 200, admin: 200, qstash: 401 }],
      ["/dead-letters", "GET", { drain: 403, read: 200, admin: 200, qstash: 401 }],
      [`/dead-letters/0190f3a0-0000-7000-8000-000000000000/replay`, "POST", { drain: 403, read: 403, admin: 404, qstash: 401 }],
      [`/dead-letters?olderThan=1&limit=1`, "DELETE", { drain: 403, read: 403, admin: 200, qstash: 401 }],
    ];
    const creds: Record<string, (path: string) => Record<string, string>> = {
      drain: () => bearer(SECRET),
      read: () => bearer(READ),
      admin: () => bearer(ADMIN),
      qstash: (path) => ({ "upstash-signature": sign(path) }),
    };
    for (const [path, method, expected] of matrix) {
      for (const [who, status] of Object.entries(expected)) {
        const res = await app.request(`${INTERNAL}${path}`, { method, headers: creds[who]!(path) });
        expect(res.status, `${who} ${method} ${path}`).toBe(status);
        if (status === 403) expect(await json(res)).toMatchObject({ error: "FORBIDDEN" });
      }
    }
    expect(drain).toHaveBeenCalledTimes(4);
    expect(storage.count().dead).toBe(2); // no credential but admin touched the dead letters
    const replay = `/dead-letters/${deadId}/replay`;
    expect((await app.request(`${INTERNAL}${replay}`, { method: "POST", headers: { "upstash-signature": sign(replay) } })).status).toBe(401);
    expect((await app.request(`${INTERNAL}${replay}`, { method: "POST", headers: bearer(READ) })).status).toBe(403);
    expect((await app.request(`${INTERNAL}${replay}`, { method: "POST", headers: bearer(ADMIN) })).status).toBe(200);
  });

  it("route groups: served only when a credential grants them, routes.<group>: false turns one off (404)", async () => {
    const { outbox } = memoryOutbox();
    const relay = createRelay({ outbox, transport: recordingTransport() });
    const drainOnly = mounted({ relay, outbox, auth: { drain: SECRET } });
    expect((await drainOnly.request("/outbox/drain", { method: "POST", headers: bearer() })).status).toBe(200);
    for (const [method, path] of [["GET", "/stats"], ["GET", "/health"], ["GET", "/dead-letters"], ["DELETE", "/dead-letters?olderThan=1"]] as const) {
      expect((await drainOnly.request(`/outbox${path}`, { method, headers: bearer() })).status, path).toBe(404);
    }
    const noAdmin = mounted({ relay, outbox, auth: { drain: SECRET, admin: ADMIN }, routes: { admin: false } });
    expect((await noAdmin.request("/outbox/stats", { headers: bearer(ADMIN) })).status).toBe(200);
    expect((await noAdmin.request("/outbox/dead-letters?olderThan=1", { method: "DELETE", headers: bearer(ADMIN) })).status).toBe(404);
    const noDrain = mounted({ relay, outbox, auth: { drain: SECRET, read: READ }, routes: { drain: false } });
    expect((await noDrain.request("/outbox/drain", { method: "POST", headers: bearer() })).status).toBe(404);
    expect((await noDrain.request("/outbox/stats", { headers: bearer(READ) })).status).toBe(200);

    expect(() => createRelayApp({ relay, outbox, auth: { drain: SECRET }, routes: { admin: true } })).toThrow(/routes\.admin is on but no credential grants the admin scope/);
    expect(() => createRelayApp({ relay, auth: { read: READ } })).toThrow(/the (read|metrics) routes need an outbox/);
    expect(await codeOf(() => createRelayApp({ relay, auth: { read: READ } }))).toBe("CONFIG");
    expect(() => createRelayApp({ relay, auth: { read: READ }, routes: { read: false } })).toThrow(/the metrics routes need an outbox/);
    expect(() => createRelayApp({ relay, auth: { read: READ }, routes: { read: false, metrics: false } })).not.toThrow();
  });

  it("secrets: at least 16 characters, one scope each, rotation lists; unknown credential kinds are CONFIG", async () => {
    const { outbox } = memoryOutbox();
    const relay = createRelay({ outbox, transport: recordingTransport() });
    expect(() => createRelayApp({ relay, auth: { drain: "fifteen-chars.." } })).toThrow(/auth\.drain: must be at least 16 characters/);
    expect(() => createRelayApp({ relay, auth: { drain: [SECRET, "short"] } })).toThrow(/auth\.drain\.1: must be at least 16 characters/);
    expect(() => createRelayApp({ relay, auth: { drain: [] } })).toThrow(/auth\.drain/);
    expect(() => createRelayApp({ relay, outbox, auth: { drain: SECRET, admin: SECRET } })).toThrow(/one scope only/);
    expect(() => createRelayApp({ relay, auth: { bearer: SECRET } as never })).toThrow(/unknown option auth\.bearer.*auth\.bearer is now auth\.drain/);
    expect(() => createRelayApp({ relay, auth: { qstash: { verifier: "key" } } as never, publicUrl: PUBLIC })).toThrow(/auth\.qstash\.verifier: must be a Receiver/);
    expect(() => createRelayApp({ relay, auth: { qstash: { verifier: receiver, scopes: ["everything"] } } as never, publicUrl: PUBLIC })).toThrow(/auth\.qstash\.scopes/);
    expect(await codeOf(() => createRelayApp({ relay, auth: { drain: "short" } }))).toBe("CONFIG");

    const rotating = mounted({ relay, auth: { drain: [SECRET, "another-secret-for-rotation"] } });
    expect((await rotating.request("/outbox/drain", { method: "POST", headers: bearer("another-secret-for-rotation") })).status).toBe(200);
    expect((await rotating.request("/outbox/drain", { method: "POST", headers: bearer() })).status).toBe(200);
  });

  it("a bearer-only app ignores QStash signatures, a QStash-only app ignores bearer secrets", async () => {
    const { outbox } = memoryOutbox();
    const relay = createRelay({ outbox, transport: recordingTransport() });
    const bearerOnly = mounted({ relay, auth: { drain: [SECRET, "another-secret-for-rotation"] } });
    expect((await bearerOnly.request("/outbox/drain", { method: "POST", headers: { "upstash-signature": sign("/drain") } })).status).toBe(401);
    expect((await bearerOnly.request("/outbox/drain", { method: "POST", headers: bearer("another-secret-for-rotation") })).status).toBe(200);
    const qstashOnly = mounted({ relay, auth: { qstash: { verifier: receiver } }, publicUrl: `${PUBLIC}/` });
    expect((await qstashOnly.request("/outbox/drain", { method: "POST", headers: bearer() })).status).toBe(401);
    expect((await qstashOnly.request("/outbox/drain", { method: "POST", headers: { "upstash-signature": sign("/drain") } })).status).toBe(200);
    // a verify function works as well as a Receiver; its throw or false means invalid
    const fnApp = (verifier: QstashVerify) => mounted({ relay, auth: { qstash: { verifier } }, publicUrl: PUBLIC });
    const seen: QstashVerifyRequest[] = [];
    const ok = fnApp((r) => (seen.push(r), true));
    expect((await ok.request("/outbox/drain", { method: "POST", headers: { "upstash-signature": sign("/drain", "x") }, body: "x" })).status).toBe(200);
    expect(seen).toEqual([{ signature: expect.stringMatching(/^ey[\w-]+\.[\w-]+\.[\w-]+$/), body: "x", url: `${PUBLIC}/drain`, clockTolerance: 0 }]);
    const throws = fnApp(() => {
      throw new Error("bad signature");
    });
    expect((await throws.request("/outbox/drain", { method: "POST", headers: { "upstash-signature": sign("/drain") } })).status).toBe(401);
    expect((await fnApp(() => Promise.resolve(false)).request("/outbox/drain", { method: "POST", headers: { "upstash-signature": sign("/drain") } })).status).toBe(401);
  });

  it("decides on the headers before reading the body: refused requests never read it, never reach the verifier", async () => {
    const { app, verify, drain } = await setup();
    /** A body that records whether anyone read from it. */
    const tracked = (size: number): { body: ReadableStream<Uint8Array>; pulled: () => number } => {
      let pulled = 0;
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          pulled++;
          if (sent >= size) return controller.close();
          const n = Math.min(65_536, size - sent);
          sent += n;
          controller.enqueue(new Uint8Array(n));
        },
      }, { highWaterMark: 0 });
      return { body, pulled: () => pulled };
    };
    const post = async (path: string, headers: Record<string, string>, size: number) => {
      const t = tracked(size);
      const req = new Request(`${INTERNAL}${path}`, { method: "POST", headers, body: t.body, duplex: "half" } as RequestInit);
      const res = await app.request(req);
      return { status: res.status, body: await json(res), pulled: t.pulled() };
    };
    const MiB = 1024 * 1024;
    // garbage, another URL, expired, wrong issuer: refused on the header alone
    for (const signature of [
      "not.a.jwt",
      "a".repeat(5_000),
      signQstashJwt(KEYS.currentSigningKey, { url: `${PUBLIC}/other`, body: "" }),
      sign("/drain", "", { now: Date.now() - 600_000, expiresInS: 300 }),
      sign("/drain", "", { issuer: "Mallory" }),
    ]) {
      const r = await post("/drain", { "upstash-signature": signature }, 50 * MiB);
      expect(r.status, signature.slice(0, 40)).toBe(401);
      expect(r.pulled, signature.slice(0, 40)).toBe(0);
    }
    // a plausible signature on a route QStash may not call (read scope): refused without reading
    expect((await post("/dead-letters/0190f3a0-0000-7000-8000-000000000000/replay", { "upstash-signature": sign("/drain") }, MiB)).pulled).toBe(0);
    // a plausible signature with an oversize Content-Length: 413 from the header alone
    const big = await post("/drain", { "upstash-signature": sign("/drain"), "content-length": String(50 * MiB) }, 50 * MiB);
    expect(big).toMatchObject({ status: 413, pulled: 0, body: { error: "PAYLOAD_TOO_LARGE" } });
    // a plausible signature and no Content-Length: read only up to the cap (4096 bytes), then 413
    const chunked = await post("/drain", { "upstash-signature": sign("/drain") }, 50 * MiB);
    expect(chunked.status).toBe(413);
    expect(chunked.pulled).toBeLessThanOrEqual(2);
    expect(verify).not.toHaveBeenCalled();
    expect(drain).not.toHaveBeenCalled();
    // a valid drain bearer with an oversize body: 413 too, before the drain
    const bearerBig = await post("/drain", { ...bearer(), "content-length": String(10 * MiB) }, 10 * MiB);
    expect(bearerBig).toMatchObject({ status: 413, pulled: 0 });
    expect(drain).not.toHaveBeenCalled();
  });
});

describe("GET /health", () => {
  it("flips healthy → degraded → unhealthy (503) on pending count, oldest age and dead letters, and back", async () => {
    let now = 1_700_000_000_000;
    const storage = memoryStorage({ now: () => now });
    const outbox = createOutbox({ storage, topics: [event] });
    let fail = false;
    const transport = recordingTransport({ outcome: () => (fail ? { status: "dead", error: "HTTP 400" } : { status: "delivered" }) });
    const relay = createRelay({ outbox, transport, batchSize: 100 });
    const app = mounted({
      relay,
      outbox,
      auth: { admin: ADMIN },
      thresholds: {
        pending: { degraded: 5, unhealthy: 10 },
        oldestPendingAgeMs: { degraded: 60_000, unhealthy: 120_000 },
        dead: { degraded: 0, unhealthy: 3 },
      },
    });
    const health = async (): Promise<[number, string, Record<string, string>]> => {
      const res = await app.request("/outbox/health", { headers: bearer(ADMIN) });
      const body = await json<{ status: string; checks: Array<{ name: string; status: string }> }>(res);
      return [res.status, body.status, Object.fromEntries(body.checks.map((c) => [c.name, c.status]))];
    };

    expect(await health()).toEqual([200, "healthy", { pending: "healthy", oldestPendingAgeMs: "healthy", dead: "healthy" }]);
    await fill(storage, outbox, 7);
    expect(await health()).toEqual([200, "degraded", { pending: "degraded", oldestPendingAgeMs: "healthy", dead: "healthy" }]);
    await fill(storage, outbox, 5);
    expect((await health()).slice(0, 2)).toEqual([503, "unhealthy"]);
    await relay.drain();
    expect((await health()).slice(0, 2)).toEqual([200, "healthy"]);

    await fill(storage, outbox, 1);
    now += 90_000;
    expect(await health()).toEqual([200, "degraded", { pending: "healthy", oldestPendingAgeMs: "degraded", dead: "healthy" }]);
    now += 40_000;
    expect(await health()).toEqual([503, "unhealthy", { pending: "healthy", oldestPendingAgeMs: "unhealthy", dead: "healthy" }]);
    await relay.drain();
    expect((await health()).slice(0, 2)).toEqual([200, "healthy"]);

    fail = true;
    await fill(storage, outbox, 1);
    await relay.drain();
    expect(await health()).toEqual([200, "degraded", { pending: "healthy", oldestPendingAgeMs: "healthy", dead: "degraded" }]);
    await fill(storage, outbox, 3);
    await relay.drain();
    expect((await health()).slice(0, 2)).toEqual([503, "unhealthy"]);
    const purge = await app.request(`/outbox/dead-letters?olderThan=${now + 1}`, { method: "DELETE", headers: bearer(ADMIN) });
    expect(await json(purge)).toEqual({ purged: 4, more: false });
    expect((await health()).slice(0, 2)).toEqual([200, "healthy"]);
  });

  it("answers 503 unhealthy when the stats cannot be read, with no driver text in the body", async () => {
    const { storage, outbox } = memoryOutbox();
    storage.stats = () => Promise.reject(new OutboxError("STORAGE", "[edge-outbox:memory] stats failed: relation \"outbox\" is locked", { retryable: true }));
    const hidden: string[] = [];
    const app = mounted({ relay: createRelay({ outbox, transport: recordingTransport() }), outbox, auth: { read: READ }, onError: (_e, route) => void hidden.push(route) });
    const res = await app.request("/outbox/health", { headers: bearer(READ) });
    expect(res.status).toBe(503);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ status: "unhealthy", error: "STORAGE", retryable: true });
    expect(text).not.toMatch(/relation|locked|edge-outbox:memory/);
    const stats = await app.request("/outbox/stats", { headers: bearer(READ) });
    expect(stats.status).toBe(503);
    expect(await stats.text()).not.toMatch(/relation|locked/);
    expect(hidden).toEqual(["GET /health", "GET /stats"]);
  });

  it("evaluateHealth is pure, strict above each level, and defaults to the oldest-age check", () => {
    const stats = (o: Partial<OutboxStats>): OutboxStats => ({
      pending: 0, due: 0, leased: 0, dead: 0, oldestPendingAgeMs: null, now: 0,
      window: { windowMs: 60_000, delivered: 0, retried: 0, dead: 0, avgLatencyMs: null, maxLatencyMs: null },
      ...o,
    });
    expect(evaluateHealth(stats({ pending: 10 }), { pending: { degraded: 10, unhealthy: 20 } }).status).toBe("healthy");
    expect(evaluateHealth(stats({ pending: 11 }), { pending: { degraded: 10, unhealthy: 20 } }).status).toBe("degraded");
    expect(evaluateHealth(stats({ pending: 21 }), { pending: { degraded: 10, unhealthy: 20 } }).status).toBe("unhealthy");
    expect(evaluateHealth(stats({ pending: 21 }), { pending: { unhealthy: 20 } }).status).toBe("unhealthy");
    expect(evaluateHealth(stats({ dead: 1 }), { dead: { degraded: 0 } }).status).toBe("degraded");
    expect(evaluateHealth(stats({ pending: 1_000_000 })).status).toBe("healthy"); // pending is not checked by default
    expect(evaluateHealth(stats({ oldestPendingAgeMs: 31_000 })).checks).toEqual([
      { name: "oldestPendingAgeMs", value: 31_000, status: "degraded", degraded: 30_000, unhealthy: 300_000 },
    ]);
    expect(evaluateHealth(stats({ oldestPendingAgeMs: 301_000 })).status).toBe("unhealthy");
    expect(evaluateHealth(stats({ oldestPendingAgeMs: 10_000_000 }), { oldestPendingAgeMs: {} }).checks).toEqual([]);
    expect(retryRate(stats({ window: { windowMs: 1, delivered: 3, retried: 1, dead: 0, avgLatencyMs: 1, maxLatencyMs: 1 } }))).toBe(0.25);
    expect(retryRate(stats({}))).toBe(null);
  });

  it("bad thresholds and options are CONFIG errors naming the field", async () => {
    expect(await codeOf(() => parseHealthThresholds({ pending: { degraded: 10, unhealthy: 5 } }))).toBe("CONFIG");
    expect(() => parseHealthThresholds({ dead: { degraded: -1 } })).toThrow(/dead\.degraded/);
    expect(() => parseHealthThresholds({ pending: { degraded: 10, unhealthy: 5 } })).toThrow(/pending: degraded must not be above unhealthy/);
    const { outbox } = memoryOutbox();
    const relay = createRelay({ outbox, transport: recordingTransport() });
    expect(() => createRelayApp({ relay, auth: {} })).toThrow(/auth: configure at least one credential/);
    expect(() => createRelayApp({ relay, auth: { drain: "short" } })).toThrow(/auth\.drain/);
    expect(() => createRelayApp({ relay, auth: { qstash: { verifier: receiver } } })).toThrow(/publicUrl is required/);
    expect(() => createRelayApp({ relay, auth: { qstash: { verifier: receiver } }, publicUrl: "/outbox" })).toThrow(/publicUrl/);
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, budgetMs: 0 })).toThrow(/budgetMs/);
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, maxBodyBytes: -1 })).toThrow(/maxBodyBytes/);
    expect(() => createRelayApp({ relay, auth: { drain: SECRET }, thresholds: { pending: { degraded: 2, unhealthy: 1 } } })).toThrow(/createRelayApp options: thresholds: pending: degraded must not be above unhealthy/);
    expect(() => createRelayApp({ relay: {} as never, auth: { drain: SECRET } })).toThrow(/relay/);
    expect(await codeOf(() => createRelayApp({ relay, auth: { drain: SECRET }, followUp: "x" as never }))).toBe("CONFIG");
  });
});

describe("GET /stats: database counters, right from another storage instance", () => {
  const dirs: string[] = [];
  const clients: Client[] = [];
  afterAll(() => {
    for (const c of clients) c.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("one libSQL client drains, a second client on the same file serves /stats with the right numbers", async () => {
    const dir = mkdtempSync(join(tmpdir(), "edge-outbox-hono-"));
    dirs.push(dir);
    const url = `file:${join(dir, "outbox.db")}`;
    const a = createClient({ url }), b = createClient({ url });
    clients.push(a, b);
    const storageA = libsqlStorage(a);
    await storageA.migrate();
    const outboxA = createOutbox({ storage: storageA, topics: [event] });
    const outboxB = createOutbox({ storage: libsqlStorage(b), topics: [event] });
    await a.batch(Array.from({ length: 20 }, (_, n) => outboxA.statement(event, { n })), "write");
    const flaky = new Set([0, 5, 10, 15]);
    const transport = recordingTransport({
      outcome: (m) => {
        const n = (m.payload as { n: number }).n;
        if (n === 7) return { status: "dead", error: "HTTP 400" };
        if (flaky.delete(n)) return { status: "retry", error: "HTTP 503" };
        return { status: "delivered" };
      },
    });
    const relay = createRelay({ outbox: outboxA, transport, backoff: { baseMs: 300, maxMs: 300, minMs: 300 } });
    const r1: DrainReport = await relay.drain();
    expect(r1).toMatchObject({ delivered: 15, retried: 4, dead: 1 });
    await new Promise((r) => setTimeout(r, 350));
    expect(await relay.drain()).toMatchObject({ delivered: 4, retried: 0 });

    const app = mounted({ relay: createRelay({ outbox: outboxB, transport: recordingTransport() }), outbox: outboxB, auth: { read: READ } });
    const res = await app.request("/outbox/stats?windowMs=600000", { headers: bearer(READ) });
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toBe("no-store");
    const stats = await json<OutboxStats & { window: { retryRate: number } }>(res);
    expect(stats).toMatchObject({ pending: 0, due: 0, leased: 0, dead: 1, oldestPendingAgeMs: null });
    expect(stats.window).toMatchObject({ windowMs: 600_000, delivered: 19, retried: 4, dead: 1 });
    expect(stats.window.retryRate).toBeCloseTo(4 / 24);
    expect(stats.window.avgLatencyMs).toBeGreaterThanOrEqual(0);
    expect(stats.window.maxLatencyMs).toBeGreaterThanOrEqual(stats.window.avgLatencyMs!);

    for (const bad of ["abc", "0", "-5", "1.5", String(31 * 86_400_000)]) {
      const r = await app.request(`/outbox/stats?windowMs=${bad}`, { headers: bearer(READ) });
      expect(r.status, bad).toBe(400);
      expect(await json(r)).toMatchObject({ error: "VALIDATION", message: expect.stringMatching(/windowMs/) });
    }
  });
});

describe("dead-letter routes", () => {
  async function withDead(count: number) {
    let now = 1_700_000_000_000;
    const storage = memoryStorage({ now: () => now });
    const outbox = createOutbox({ storage, topics: [event] });
    await fill(storage, outbox, count);
    await createRelay({ outbox, transport: recordingTransport({ outcome: () => ({ status: "dead", error: "HTTP 422" }) }) }).drain();
    const app = mounted({ relay: createRelay({ outbox, transport: recordingTransport() }), outbox, auth: { admin: ADMIN } });
    return { storage, app, advance: (ms: number) => (now += ms), now: () => now };
  }

  it("GET /dead-letters pages with limit and cursor, and validates them", async () => {
    const { app } = await withDead(5);
    const get = (q: string) => app.request(`/outbox/dead-letters${q}`, { headers: bearer(ADMIN) });
    const p1 = await json<{ items: Array<{ payload: { n: number }; lastError: string }>; cursor: string | null }>(await get("?limit=2"));
    expect(p1.items.map((i) => i.payload.n)).toEqual([0, 1]);
    expect(p1.items[0]!.lastError).toBe("HTTP 422");
    const p2 = await json<typeof p1>(await get(`?limit=2&cursor=${encodeURIComponent(p1.cursor!)}`));
    expect(p2.items.map((i) => i.payload.n)).toEqual([2, 3]);
    const p3 = await json<typeof p1>(await get(`?limit=2&cursor=${encodeURIComponent(p2.cursor!)}`));
    expect(p3).toMatchObject({ cursor: null });
    expect(p3.items.map((i) => i.payload.n)).toEqual([4]);
    expect((await json<typeof p1>(await get(""))).items).toHaveLength(5);
    for (const q of ["?limit=0", "?limit=abc", "?limit=1001", "?limit=-1", "?cursor=", "?cursor=not-a-cursor"]) {
      const r = await get(q);
      expect(r.status, q).toBe(400);
      expect(await json(r)).toMatchObject({ error: "VALIDATION" });
    }
  });

  it("POST /dead-letters/:id/replay makes it pending again; 404 when not found; 400 for a non-id", async () => {
    const { app, storage } = await withDead(2);
    const [first] = (await json<{ items: Array<{ id: string }> }>(await app.request("/outbox/dead-letters", { headers: bearer(ADMIN) }))).items;
    const replay = (id: string) => app.request(`/outbox/dead-letters/${id}/replay`, { method: "POST", headers: bearer(ADMIN) });
    const ok = await replay(first!.id);
    expect(ok.status).toBe(200);
    expect(await json(ok)).toEqual({ replayed: true, id: first!.id });
    expect(storage.count()).toMatchObject({ pending: 1, dead: 1 });
    const again = await replay(first!.id);
    expect(again.status).toBe(404);
    expect(await json(again)).toMatchObject({ error: "NOT_FOUND" });
    expect((await replay("0190f3a0-0000-7000-8000-000000000000")).status).toBe(404);
    expect((await replay("not-a-uuid")).status).toBe(400);
  });

  it("DELETE /dead-letters purges a bounded number older than olderThan; validates its query", async () => {
    const { app, storage, advance, now } = await withDead(5);
    const cut = now() + 1;
    advance(10_000);
    const del = (q: string) => app.request(`/outbox/dead-letters${q}`, { method: "DELETE", headers: bearer(ADMIN) });
    expect(await json(await del(`?olderThan=${cut}&limit=2`))).toEqual({ purged: 2, more: true });
    expect(storage.count().dead).toBe(3);
    expect(await json(await del(`?olderThan=${new Date(cut).toISOString()}&limit=2`))).toEqual({ purged: 2, more: true });
    expect(await json(await del(`?olderThan=${cut}&limit=2`))).toEqual({ purged: 1, more: false });
    expect(await json(await del(`?olderThan=${cut - 60_000}`))).toEqual({ purged: 0, more: false });
    for (const q of ["", "?olderThan=", "?olderThan=yesterday", "?olderThan=1&limit=0", "?olderThan=1&limit=10001", "?olderThan=1&limit=x"]) {
      const r = await del(q);
      expect(r.status, q).toBe(400);
      expect(await json(r)).toMatchObject({ error: "VALIDATION", message: expect.stringMatching(/olderThan|limit/) });
    }
  });
});
