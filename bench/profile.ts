// Profiling aid (not part of `npm run bench`): one edge-outbox drain with per-call storage timings.
//   node --expose-gc --cpu-prof --cpu-prof-dir=/tmp/prof --import tsx bench/profile.ts [pg|libsql] [batch] [messages]
import { cleanupAll, connect, libsqlFill, libsqlOutbox, pgFill, pgOutbox } from "./lib.ts";
import { edgeDrain } from "./drain.ts";

const [db = "pg", batchArg = "500", nArg = "100000"] = process.argv.slice(2);
const batch = Number(batchArg);
const n = Number(nArg);
try {
  const o = db === "pg" ? await pgOutbox(connect({ max: 4 }), "profile") : await libsqlOutbox();
  if ("sql" in o) await pgFill(o, n);
  else await libsqlFill(o, n);
  const s = o.storage as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const time: Record<string, number> = { claim: 0, settle: 0 };
  for (const m of ["claim", "settle"] as const) {
    const orig = s[m]!.bind(s);
    s[m] = async (...a: unknown[]) => {
      const t = performance.now();
      try {
        return await orig(...a);
      } finally {
        time[m]! += performance.now() - t;
      }
    };
  }
  console.log(`DRAIN_START ${process.hrtime.bigint() / 1000n}`);
  const t0 = performance.now();
  const rate = await edgeDrain(o, batch, n);
  const total = performance.now() - t0;
  console.log(`DRAIN_END ${process.hrtime.bigint() / 1000n}`);
  console.log(`${db} batch ${batch}: ${Math.round(rate)} msg/s; total ${Math.round(total)} ms, claim ${Math.round(time.claim!)} ms, settle ${Math.round(time.settle!)} ms, rest ${Math.round(total - time.claim! - time.settle!)} ms`);
} finally {
  await cleanupAll();
}
