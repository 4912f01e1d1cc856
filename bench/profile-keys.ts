// Profiling aid (not part of `npm run bench`): a drain over few keys (0: keyless) with per-call storage timings, the
// transport calls (a keyed call carries one head per key), and the CPU per 100 rows of this process and of the
// PostgreSQL processes (on 2 cores both are busy, so a keyed drain's rate against a keyless one follows their CPU
// per row: bench/README.md, "What changed on 2026-12-03, 13:46–16:30 UTC").
//   node --import tsx bench/profile-keys.ts [keys] [messages] [batch] [pg|libsql]
import { createRelay } from "../mod.ts";
import { cleanupAll, connect, libsqlFill, libsqlOutbox, noopTransport, pgFill, pgOutbox, postgresCpuMs } from "./lib.ts";

const [keysArg = "10", nArg = "20000", batchArg = "100", db = "pg"] = process.argv.slice(2);
const keys = Number(keysArg), n = Number(nArg), batch = Number(batchArg);
try {
  const o = db === "pg" ? await pgOutbox(connect({ max: 4 }), "profkeys") : await libsqlOutbox();
  if ("sql" in o) await pgFill(o, n, 10_000, keys);
  else await libsqlFill(o, n, 10_000, keys);
  const s = o.storage as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const time: Record<string, number> = { claim: 0, settle: 0 };
  const calls: Record<string, number> = { claim: 0, settle: 0 };
  const rows: number[] = [];
  /** Per claim: "n" (no keys continued) or "c<keys continued>", and the rows it brought. */
  const kinds: string[] = [];
  for (const m of ["claim", "settle"] as const) {
    const orig = s[m]!.bind(s);
    s[m] = async (...a: unknown[]) => {
      const t = performance.now();
      calls[m]!++;
      try {
        const r = await orig(...a);
        if (m === "claim") {
          rows.push((r as { messages: unknown[] }).messages.length);
          const c = (a[0] as { continue?: { after: unknown[] } }).continue;
          kinds.push(`${c ? `c${c.after.length}` : "n"}:${(r as { messages: unknown[] }).messages.length}`);
        }
        return r;
      } finally {
        time[m]! += performance.now() - t;
      }
    };
  }
  let sends = 0;
  const transport = noopTransport(() => sends++, process.env["ORDERED"] === "1");
  const relay = createRelay({ outbox: o.outbox, transport, batchSize: batch, concurrency: 8, leaseMs: 30_000, sendTimeoutMs: 10_000 });
  // PROFILE=<file>: a CPU profile of the drain alone (not the fill), for `node /tmp/profsum.js`-style summaries.
  const profileTo = process.env["PROFILE"];
  const session = profileTo ? new (await import("node:inspector")).Session() : undefined;
  const post = (m: string) => new Promise<unknown>((res, rej) => session!.post(m, (e, r) => (e ? rej(e) : res(r))));
  if (session) {
    session.connect();
    await post("Profiler.enable");
    await post("Profiler.start");
  }
  const fs = await import("node:fs");
  const pg0 = postgresCpuMs();
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (;;) {
    const r = await relay.drain({ budgetMs: 60_000, safetyMarginMs: 0 });
    if (!r.more) break;
  }
  const total = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const pgUsed = postgresCpuMs() - pg0;
  if (session) {
    const { profile } = (await post("Profiler.stop")) as { profile: unknown };
    fs.writeFileSync(profileTo!, JSON.stringify(profile));
  }
  const rate = transport.count / (total / 1000);
  const hist = new Map<number, number>();
  for (const r of rows) hist.set(r, (hist.get(r) ?? 0) + 1);
  console.log(`${db} ${keys} keys batch ${batch}: ${Math.round(rate)} msg/s; total ${Math.round(total)} ms; claims ${calls.claim} (${Math.round(time.claim!)} ms, ${(time.claim! / calls.claim!).toFixed(2)} ms each), settles ${calls.settle} (${Math.round(time.settle!)} ms, ${(time.settle! / calls.settle!).toFixed(2)} ms each); rows/claim ${JSON.stringify([...hist].sort((a, b) => b[1] - a[1]).slice(0, 6))}`);
  const kh = new Map<string, number>();
  for (const k of kinds) kh.set(k, (kh.get(k) ?? 0) + 1);
  const per100 = (ms: number): string => (ms / transport.count * 100).toFixed(2);
  const nodeCpu = (cpu.user + cpu.system) / 1000;
  console.log(`  this process's CPU: ${Math.round(nodeCpu)} ms of ${Math.round(total)} ms wall (${per100(nodeCpu)} ms per 100 rows)` +
    `${db === "pg" ? `; postgres CPU ${pgUsed} ms (${per100(pgUsed)} ms per 100 rows)` : ""}; ${sends} transport calls`);
  console.log(`  claims by kind (n: none continued, cK: K keys continued) : rows → count ${JSON.stringify([...kh].sort((a, b) => b[1] - a[1]).slice(0, 12))}`);
} finally {
  await cleanupAll();
}
