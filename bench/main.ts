// `npm run bench` (full) / `npm run bench -- --quick`: every benchmark in one run, each figure as a ratio to a
// baseline of the same run. Prints a table and writes bench/results.json. See bench/README.md.
import { writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type DrainFigures, drainSection } from "./drain.ts";
import { peersSection } from "./peers.ts";
import { enqueueSection } from "./enqueue.ts";
import { latencySection } from "./latency.ts";
import { scalingSection } from "./scaling.ts";
import { keysSection, remoteSection, tailSection } from "./pipeline.ts";
import { purgeSection } from "./purge.ts";
import { claimScalingSection } from "./claim-scaling.ts";
import { bundleSizeSection } from "./bundle-size.ts";
import { benchNudgeLatency, nudgeRows } from "./nudge-latency.ts";
import { cleanupAll, connect, environment, markdownTable, parseArgs, Results, RUN_ID } from "./lib.ts";

const cfg = parseArgs(process.argv.slice(2));
const results = new Results();
const sections: Record<string, number> = {};
const want = (name: string): boolean => cfg.only.length === 0 || cfg.only.includes(name);

async function section(name: string, fn: () => Promise<unknown>): Promise<void> {
  if (!want(name)) return;
  console.log(`\n== ${name}`);
  const t0 = performance.now();
  await fn();
  sections[name] = Math.round(performance.now() - t0);
  console.log(`   (${(sections[name] / 1000).toFixed(1)} s)`);
}

let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) process.exit(130);
    stopping = true;
    console.error(`\n${sig}: cleaning up`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

const started = performance.now();
let failed: unknown = null;
let env: Record<string, string | number> = {};
try {
  console.log(`edge-outbox bench (${cfg.quick ? "quick" : "full"}), run ${RUN_ID}: node ${process.version}, ${cpus().length} cores, ` +
    `${Math.round(totalmem() / 2 ** 30)} GiB${(globalThis as { gc?: unknown }).gc ? ", --expose-gc" : ""}`);
  env = await environment();
  console.log(`environment: ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(", ")}`);
  let drain: DrainFigures | null = null;
  await section("drain", async () => {
    drain = await drainSection(cfg, results);
  });
  await section("peers", async () => {
    drain ??= await drainSection(cfg, new Results()); // the peers compare against this run's edge-outbox figures
    await peersSection(cfg, results, drain);
  });
  await section("enqueue", () => enqueueSection(cfg, results));
  await section("latency", () => latencySection(cfg, results));
  await section("scaling", () => scalingSection(cfg, results));
  await section("tail", () => tailSection(cfg, results, connect({ max: 4 })));
  await section("keys", () => keysSection(cfg, results, connect({ max: 4 })));
  await section("remote", () => remoteSection(cfg, results, connect({ max: 4 })));
  await section("claim-scaling", () => claimScalingSection(cfg, results));
  await section("purge", () => purgeSection(cfg, results));
  await section("nudge", async () => {
    // bench/nudge-latency.ts (the qstash helper's): commit → qstashNudge (leading + trailing edge, with and without
    // linger) → emulator → /drain.
    nudgeRows(results, await benchNudgeLatency({ quick: cfg.quick }));
  });
  await section("bundle", () => bundleSizeSection(cfg, results));
} catch (e) {
  failed = e;
  console.error(e);
} finally {
  await cleanupAll();
}

const totalMs = Math.round(performance.now() - started);
const table = markdownTable(results);
console.log(`\n${table}\n`);
for (const n of results.notes) console.log(`- ${n}`);
console.log(`\ntotal ${(totalMs / 1000).toFixed(1)} s${failed ? " (FAILED)" : ""}`);
const out = join(dirname(fileURLToPath(import.meta.url)), "results.json");
writeFileSync(out, JSON.stringify({
  mode: cfg.quick ? "quick" : "full",
  date: new Date().toISOString(),
  node: process.version,
  cores: cpus().length,
  environment: env,
  config: cfg,
  totalMs,
  sectionsMs: sections,
  failed: failed ? String(failed) : null,
  rows: results.rows,
  notes: results.notes,
}, null, 2) + "\n");
console.log(`wrote ${out}`);
process.exit(failed ? 1 : 0);
