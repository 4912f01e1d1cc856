// The dashboard page (GET /) in a real browser: Debian's Chromium driven by playwright-core, against the relay app
// on a real HTTP server (@hono/node-server) over a seeded database. Writes test-results/dashboard.png.
import { serve } from "@hono/node-server";
import { Hono } from "hono";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { type BrowserContext, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOutbox, createRelay } from "../mod.ts";
import { memoryStorage, recordingTransport } from "../adapters/memory/mod.ts";
import { createRelayApp, relayDashboard } from "../adapters/hono/mod.ts";
import { event, fill } from "./helpers.ts";

const ROOT = resolve(import.meta.dirname, "..");
const CHROMIUM = "/usr/bin/chromium";
const READ = "read-secret-0123456789abcdef";
const ADMIN = "admin-secret-0123456789abcdef";
const SCREENSHOT = join(ROOT, "test-results", "dashboard.png");

describe("the dashboard's embedded uPlot", () => {
  it("adapters/hono/uplot.ts is what scripts/generate-uplot-asset.mjs writes for the installed uplot", () => {
    const out = execFileSync(process.execPath, [join(ROOT, "scripts", "generate-uplot-asset.mjs"), "--check"], { encoding: "utf8" });
    expect(out).toMatch(/is up to date/);
  });

  it("the page, its script and uPlot are served by the app itself; GET / needs no secret but holds no data", async () => {
    const storage = memoryStorage();
    const outbox = createOutbox({ storage, topics: [event] });
    await fill(storage, outbox, 3);
    const parent = new Hono();
    parent.route("/outbox", createRelayApp({ relay: createRelay({ outbox, transport: recordingTransport() }), outbox, auth: { read: READ }, dashboard: relayDashboard() }));
    const page = await parent.request("/outbox");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-security-policy")).toMatch(/script-src 'self'/);
    expect(page.headers.get("cache-control")).toBe("no-store");
    const html = await page.text();
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(assets.filter((a) => a !== "data:,")).toHaveLength(4);
    for (const a of assets.filter((x) => x !== "data:,")) {
      expect(a.startsWith("./outbox/assets/"), a).toBe(true); // relative: no CDN, works behind any prefix
      const res = await parent.request(new URL(a, "http://x/outbox").pathname);
      expect(res.status, a).toBe(200);
      expect((await res.text()).length).toBeGreaterThan(500);
    }
    expect(html).not.toMatch(/<script>|\bon[a-z]+="/); // no inline script (the CSP forbids it anyway)
    expect(html).not.toMatch(/"pending":|test\.event/); // no data in the shell
    const relay = createRelay({ outbox, transport: recordingTransport() });
    expect((await createRelayApp({ relay, outbox, auth: { read: READ } }).request("/")).status).toBe(404); // opt-in
    expect(() => createRelayApp({ relay, outbox, auth: { drain: ADMIN }, dashboard: relayDashboard() })).toThrow(/dashboard needs the read routes/);
    expect(() => createRelayApp({ relay, outbox, auth: { read: READ }, dashboard: {} as never })).toThrow(/dashboard: must be made by relayDashboard/);
    expect(() => relayDashboard({ refreshMs: 10 })).toThrow(/relayDashboard options: refreshMs/);
  });
});

describe("the dashboard in headless Chromium", () => {
  let context: BrowserContext;
  let server: ReturnType<typeof serve>;
  let origin = "";
  let profile = "";
  const storage = memoryStorage();
  const outbox = createOutbox({ storage, topics: [event] });

  beforeAll(async () => {
    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)`).toBe(true);
    // Seed: 12 messages; 0..2 die with an error naming them, 3..6 retry in an hour, the rest are delivered;
    // then 5 fresh ones stay due. → pending 4 + 5 = 9, due 5, dead 3.
    await fill(storage, outbox, 12, { key: (n) => (n < 3 ? `customer-${n}` : null) });
    const transport = recordingTransport({
      outcome: (m) => {
        const n = (m.payload as { n: number }).n;
        if (n < 3) return { status: "dead", error: `HTTP 422 from consumer: order ${n} <b>rejected</b>` };
        return n < 7 ? { status: "retry", error: "HTTP 503" } : { status: "delivered" };
      },
    });
    await createRelay({ outbox, transport, backoff: { baseMs: 3_600_000, minMs: 3_600_000, maxMs: 3_600_000 } }).drain();
    await fill(storage, outbox, 5, { start: 100 });

    const parent = new Hono();
    parent.route("/outbox", createRelayApp({
      relay: createRelay({ outbox, transport: recordingTransport() }),
      outbox,
      auth: { read: READ, admin: ADMIN },
      dashboard: relayDashboard({ refreshMs: 1_000 }),
      thresholds: { dead: { degraded: 0, unhealthy: 10 } },
    }));
    server = serve({ fetch: parent.fetch, hostname: "127.0.0.1", port: 0 });
    await new Promise<void>((ok) => server.once("listening", () => ok()));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    profile = mkdtempSync(join(tmpdir(), "edge-outbox-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1280, height: 1000 },
    });
  }, 60_000);

  afterAll(async () => {
    await context?.close();
    await new Promise<void>((ok) => (server ? server.close(() => ok()) : ok()));
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  it("signs in, shows the seeded counts, charts and dead letters; a read secret cannot replay, the admin secret can", async () => {
    const page = await context.newPage();
    const problems: string[] = [];
    const requests: string[] = [];
    page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !/status of 40[13]/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on("request", (r) => requests.push(r.url()));

    await page.goto(`${origin}/outbox`);
    await page.locator("#login-form").waitFor();
    // a wrong secret is refused on the form
    await page.fill("#token", "wrong-secret-0123456789abcdef");
    await page.click("#login-form button");
    await expect.poll(() => page.textContent("#login-error")).toBe("This secret was refused.");
    expect(await page.isHidden("#main")).toBe(true);

    // the read secret: counts of the seeded database
    await page.fill("#token", READ);
    await page.click("#login-form button");
    await page.locator("#main").waitFor();
    await expect.poll(() => page.textContent("#pending")).toBe("9");
    expect(await page.textContent("#due")).toBe("5");
    expect(await page.textContent("#dead")).toBe("3");
    expect(await page.textContent("#leased")).toBe("0");
    expect(await page.textContent("#window")).toBe("5 delivered · 4 retried · 3 dead");
    expect(await page.textContent("#health")).toBe("degraded"); // 3 dead letters > degraded level 0
    expect(await page.evaluate(() => sessionStorage.getItem("edge-outbox:dashboard:token"))).toBe(READ);
    // the dead letters, their errors as text (the <b> in the error is not markup)
    const rows = page.locator("#dead-letters tbody tr");
    await expect.poll(() => rows.count()).toBe(3);
    expect(await rows.nth(0).locator("td.error-text").textContent()).toBe("HTTP 422 from consumer: order 0 <b>rejected</b>");
    expect(await page.locator("#dead-letters b").count()).toBe(0);
    expect(await rows.nth(0).locator("td").nth(2).textContent()).toBe("customer-0");
    // the charts are drawn (uPlot canvases with their legends)
    expect(await page.locator("#chart-queue canvas").count()).toBe(1);
    expect(await page.locator("#chart-latency canvas").count()).toBe(1);
    expect(await page.locator("#chart-queue .u-legend").textContent()).toMatch(/pending.*due.*dead/);
    // a few samples accumulate (refresh every second)
    await expect.poll(() => page.evaluate(() => JSON.parse(sessionStorage.getItem("edge-outbox:dashboard:series")!).t.length), { timeout: 10_000 }).toBeGreaterThanOrEqual(3);

    // replay with the read secret: refused, nothing changes
    const firstId = (await rows.nth(0).getAttribute("data-id"))!;
    await rows.nth(0).locator("button.replay").click();
    await expect.poll(() => page.textContent("#message")).toMatch(/needs the admin secret/);
    expect(storage.count().dead).toBe(3);

    // sign out, sign in with the admin secret, replay the first dead letter from the page
    await page.click("#logout");
    await page.locator("#login-form").waitFor();
    expect(await page.evaluate(() => sessionStorage.getItem("edge-outbox:dashboard:token"))).toBe(null);
    await page.fill("#token", ADMIN);
    await page.click("#login-form button");
    await expect.poll(() => rows.count()).toBe(3);
    await page.locator(`#dead-letters tr[data-id="${firstId}"] button.replay`).click();
    await expect.poll(() => page.textContent("#message")).toBe(`Replayed ${firstId}: it is pending again.`);
    // the storage: that message is pending again, the other two stay dead
    expect(storage.count()).toMatchObject({ pending: 10, dead: 2 });
    expect((await outbox.deadLetters.list()).items.map((d) => d.id)).not.toContain(firstId);
    // the page follows
    await expect.poll(() => page.textContent("#dead")).toBe("2");
    expect(await page.textContent("#pending")).toBe("10");
    await expect.poll(() => rows.count()).toBe(2);

    // survives a reload in the same tab (secret and samples are in sessionStorage)
    await page.reload();
    await expect.poll(() => page.textContent("#pending")).toBe("10");
    await page.waitForTimeout(1_500); // one more sample, so the chart lines are visible in the screenshot
    mkdirSync(join(ROOT, "test-results"), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`[dashboard] screenshot: ${SCREENSHOT}`);

    expect(problems).toEqual([]);
    const foreign = requests.filter((u) => !u.startsWith(`${origin}/`));
    expect(foreign, "every request goes to the app itself (no CDN)").toEqual([]);
    await page.close();
  }, 90_000);
});
