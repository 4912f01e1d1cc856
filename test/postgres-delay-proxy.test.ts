// The TCP delay proxy (test/fixtures/delay-proxy.ts) in front of the machine's PostgreSQL: every round trip costs
// twice the delay more than direct, results are intact, and the delay can change while running.
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { startDelayProxy } from "./fixtures/delay-proxy.ts";
import { PG_URL, randomSuffix, type Sql } from "./postgres-fixtures.ts";

const target = new URL(PG_URL);
const clients: Sql[] = [];
const open = (port: number): Sql => {
  const url = new URL(PG_URL);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  const c = postgres(url.toString(), { max: 1, onnotice: () => {}, connection: { application_name: `eo-test-proxy-${randomSuffix()}` } }) as unknown as Sql;
  clients.push(c);
  return c;
};
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end({ timeout: 1 }).catch(() => {})));
});

/** Median wall time of `n` sequential `select` round trips (after a warm-up one). */
async function medianRoundTrip(sql: Sql, n = 9): Promise<number> {
  await sql`select 1`;
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await sql.unsafe("select 1"); // unprepared: one round trip (Parse/Bind/Execute/Sync in one flight)
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[Math.floor(n / 2)]!;
}

describe("delay proxy", () => {
  it("adds the delay each way: a round trip costs 2 × delayMs more than direct, with the data intact", async () => {
    const proxy = await startDelayProxy({ target: { port: Number(target.port || 5432), host: "127.0.0.1" }, delayMs: 25 });
    try {
      const direct = open(Number(target.port || 5432));
      const slow = open(proxy.port);
      const base = await medianRoundTrip(direct);
      const delayed = await medianRoundTrip(slow);
      expect(delayed).toBeGreaterThanOrEqual(50); // 25 ms there, 25 ms back
      expect(delayed - base).toBeLessThan(50 + 40); // nothing more than the delay (generous: the machine is loaded)
      // Bytes arrive intact and in order: a large result through the proxy equals the direct one.
      const q = "select g, md5(g::text) as h from generate_series(1, 20000) g";
      const [a, b] = await Promise.all([direct.unsafe(q), slow.unsafe(q)]);
      expect(b.length).toBe(20_000);
      expect(JSON.stringify(b)).toBe(JSON.stringify(a));
      // The delay can change while running.
      proxy.delayMs = 0;
      expect(await medianRoundTrip(slow)).toBeLessThan(25);
      expect(proxy.connections()).toBe(1);
    } finally {
      await proxy.close();
    }
  });
});
