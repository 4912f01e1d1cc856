// Profiling aid (not part of `npm run bench`): where section 7's Postgres drain spends its CPU. Drains of 20,000
// messages (no-op transport, batch 100, concurrency 8, one relay), keyless and over `keys` keys, alternating, each on a
// fresh table: throughput, PostgreSQL's CPU and this process's CPU per 100 rows (on 2 cores both are busy: the drain is
// CPU-bound, so the ratio of the keyed to the keyless rate follows the ratio of their CPU per row), the storage calls
// and the transport calls (a keyed call carries one head per key). Then the serial cost of one claim and one settle
// of 100 rows as the keyed drain makes them (each claim continues the keys of the one before, which is then
// settled), by the claiming backend's own CPU (/proc/<pid>/schedstat).
//   node --expose-gc --import tsx bench/profile-cpu.ts [keys] [rounds]
import { readFileSync } from "node:fs";
import { createRelay } from "../mod.ts";
import { cleanupAll, connect, gc, noopTransport, pgFill, pgOutbox, postgresCpuMs, settleDisk } from "./lib.ts";

const [keysArg = "10", roundsArg = "2"] = process.argv.slice(2);
const keys = Number(keysArg), rounds = Number(roundsArg), N = 20_000;
const median = (a: readonly number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;

/** One drain of N rows over `k` keys: rate, CPU per 100 rows on each side, calls. */
async function drain(k: number): Promise<string> {
  const sql = connect({ max: 10 });
  try {
    const o = await pgOutbox(sql, "profcpu");
    await pgFill(o, N, 10_000, k);
    await settleDisk();
    let sends = 0;
    const transport = noopTransport(() => sends++);
    const calls = { claim: 0, settle: 0 };
    const s = o.storage as unknown as Record<"claim" | "settle", (...a: unknown[]) => Promise<unknown>>;
    for (const name of ["claim", "settle"] as const) {
      const f = s[name].bind(o.storage);
      s[name] = (...a) => (calls[name]++, f(...a));
    }
    const relay = createRelay({ outbox: o.outbox, transport, batchSize: 100, concurrency: 8, leaseMs: 30_000, sendTimeoutMs: 10_000 });
    gc();
    const pg0 = postgresCpuMs(), node0 = process.cpuUsage(), t0 = performance.now();
    for (;;) if (!(await relay.drain({ budgetMs: 60_000, safetyMarginMs: 0 })).more) break;
    const ms = performance.now() - t0, node = process.cpuUsage(node0), pg = postgresCpuMs() - pg0;
    if (transport.count !== N) throw new Error(`delivered ${transport.count} of ${N}`);
    const per100 = (cpuMs: number): string => (cpuMs / N * 100).toFixed(2);
    return `${k === 0 ? "keyless" : `${k} keys`}: ${Math.round(N / (ms / 1000))} msg/s; CPU per 100 rows: PostgreSQL ${per100(pg)} ms, ` +
      `node ${per100((node.user + node.system) / 1000)} ms; ${calls.claim} claims, ${calls.settle} settles, ${sends} sends`;
  } finally {
    await sql.end();
    await cleanupAll();
  }
}

/** Serial claims and settles of 100 rows over `k` keys (0: keyless): medians of wall time and backend CPU, ms. */
async function serial(k: number): Promise<string> {
  const sql = connect({ max: 1 });
  try {
    const o = await pgOutbox(sql, "profcpuserial");
    await pgFill(o, N, 10_000, k);
    const [{ pid }] = (await sql`SELECT pg_backend_pid() AS pid`) as unknown as [{ pid: number }];
    const cpu = (): number => Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
    const times = { claimWall: [] as number[], claimCpu: [] as number[], settleWall: [] as number[], settleCpu: [] as number[] };
    const timed = async <T>(wall: number[], cpuMs: number[], f: () => Promise<T>): Promise<T> => {
      const t = performance.now(), c = cpu();
      const r = await f();
      wall.push(performance.now() - t);
      cpuMs.push(cpu() - c);
      return r;
    };
    let held: { token: string; ids: string[]; last: Map<string, number> } | undefined;
    for (;;) {
      const cont = held && held.last.size > 0 ? { continue: { after: [...held.last.values()], tokens: [held.token] } } : {};
      const c = await timed(times.claimWall, times.claimCpu, () => o.storage.claim({ limit: 100, leaseMs: 30_000, ...cont }));
      if (held) {
        const { token, ids } = held;
        await timed(times.settleWall, times.settleCpu, () => o.storage.settle(token, ids.map((id) => ({ id, outcome: "delivered" as const }))));
      }
      if (c.messages.length === 0 && !held) break;
      const last = new Map<string, number>();
      for (const m of c.messages) if (m.key !== null) last.set(m.key, m.seq);
      held = c.messages.length > 0 ? { token: c.token, ids: c.messages.map((m) => m.id), last } : undefined;
    }
    const f = (a: number[]): string => median(a).toFixed(2);
    return `${k === 0 ? "keyless" : `${k} keys`}, serial: claim ${f(times.claimWall)} ms (backend CPU ${f(times.claimCpu)} ms), ` +
      `settle ${f(times.settleWall)} ms (CPU ${f(times.settleCpu)} ms), medians of ${times.claimWall.length} / ${times.settleWall.length}`;
  } finally {
    await sql.end();
    await cleanupAll();
  }
}

for (let r = 0; r < rounds; r++) for (const k of r % 2 === 0 ? [0, keys] : [keys, 0]) console.log(await drain(k));
for (const k of [0, keys]) console.log(await serial(k));
