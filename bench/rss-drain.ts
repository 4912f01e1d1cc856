// Child process of the scaling section (bench/scaling.ts): one relay drains `n` messages from an existing Postgres
// outbox while process RSS is sampled every 100 ms, so the figures are those of a process doing only that. Prints one
// JSON line. Usage: node --expose-gc --import tsx bench/rss-drain.ts <schema> <n>
import { createOutbox, createRelay } from "../mod.ts";
import { postgresStorage } from "../adapters/postgres/mod.ts";
import { cleanupAll, connect, gc, MB, noopTransport, rssSampler } from "./lib.ts";

const [schema, nArg] = process.argv.slice(2);
if (!schema || !nArg) throw new Error("usage: rss-drain.ts <schema> <n>");
const n = Number(nArg);
try {
  const storage = postgresStorage(connect({ max: 4 }), { schema });
  const outbox = createOutbox({ storage });
  const stop = new AbortController();
  let firstTenthAt = Number.POSITIVE_INFINITY;
  let sampler: ReturnType<typeof rssSampler> | null = null;
  const transport = noopTransport(() => {
    if (transport.count >= n / 10 && firstTenthAt === Number.POSITIVE_INFINITY) firstTenthAt = sampler!.mark();
    if (transport.count >= n) stop.abort();
  });
  const relay = createRelay({ outbox, transport, batchSize: 100, concurrency: 8 });
  await storage.claim({ limit: 1, leaseMs: 100 }).then((c) => storage.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "released" as const }))));
  gc();
  sampler = rssSampler(100);
  const t0 = performance.now();
  for (;;) {
    const r = await relay.drain({ budgetMs: 3_600_000, signal: stop.signal });
    if (!r.more || stop.signal.aborted) break;
  }
  const seconds = (performance.now() - t0) / 1000;
  const samples = sampler.stop();
  if (process.env["RSS_TRACE"]) for (let i = 0; i < samples.length; i += Math.ceil(samples.length / 20)) console.error(`  t=${Math.round(samples[i]!.at)} ms rss=${Math.round(samples[i]!.rss / MB)} MB`);
  if (transport.count < n) throw new Error(`drained ${transport.count} of ${n}`);
  const mb = (x: number): number => Math.round((x / MB) * 10) / 10;
  const first = samples.filter((s) => s.at <= firstTenthAt);
  console.log(JSON.stringify({
    drained: transport.count,
    seconds,
    samples: samples.length,
    startMb: mb(samples[0]!.rss),
    firstTenthPeakMb: mb(Math.max(...first.map((s) => s.rss))),
    peakMb: mb(Math.max(...samples.map((s) => s.rss))),
    endMb: mb(samples[samples.length - 1]!.rss),
    heapUsedEndMb: mb(process.memoryUsage().heapUsed),
  }));
} finally {
  await cleanupAll();
}
