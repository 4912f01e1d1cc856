// Section 2: the same workload (pre-inserted jobs, no-op handler) on pg-boss and graphile-worker, pointed at the
// same PostgreSQL in their own schemas, each in its fastest configuration; compared with edge-outbox's Postgres drain
// of the same run.
import { Logger, makeWorkerUtils, run, runMigrations } from "graphile-worker";
import PgBoss from "pg-boss";
import type { DrainFigures } from "./drain.ts";
import { adminSql, type BenchConfig, dropSchema, gc, payloadOf, PG_URL, type Results, schemaName, settleDisk, sleep } from "./lib.ts";

const SECTION = "2 peers";
const QUEUE = "bench";

/**
 * pg-boss through a tight fetch + complete loop (its `work()` sleeps its polling interval between batches), with
 * `priority: false` (ordering by creation only: about 1.4x faster than the default at 100,000 jobs).
 */
export async function pgBossDrain(n: number, batchSize: number, priority = false): Promise<number> {
  const schema = schemaName("pgboss");
  const boss = new PgBoss({ connectionString: PG_URL, schema, max: 4, supervise: false, schedule: false, migrate: true });
  boss.on("error", (e) => console.error("pg-boss:", e));
  try {
    await boss.start();
    await boss.createQueue(QUEUE);
    for (let i = 0; i < n; i += 10_000) {
      const jobs = Array.from({ length: Math.min(10_000, n - i) }, (_, j) => ({ name: QUEUE, data: payloadOf(i + j) }));
      await boss.insert(jobs);
    }
    await adminSql().unsafe(`VACUUM ANALYZE "${schema}".job`);
    await settleDisk();
    gc();
    let done = 0;
    const t0 = performance.now();
    for (;;) {
      const jobs = await boss.fetch(QUEUE, { batchSize, priority });
      if (jobs.length === 0) break;
      done += jobs.length; // the no-op handler
      await boss.complete(QUEUE, jobs.map((j) => j.id));
    }
    const s = (performance.now() - t0) / 1000;
    if (done !== n) throw new Error(`pg-boss completed ${done}, expected ${n}`);
    return n / s;
  } finally {
    await boss.stop({ graceful: false, wait: true, timeout: 1_000 }).catch(() => {});
    await dropSchema(schema);
  }
}

/**
 * graphile-worker: `run()` with a no-op task at concurrency 24; batched = `localQueue` of `localQueueSize` and zero
 * complete/fail batch delays, unbatched = the defaults (one job per fetch, one completion per job). The clock runs
 * from `run()` until the jobs table is empty (every completion committed).
 */
export async function graphileDrain(n: number, localQueueSize: number | null, queues = 0): Promise<number> {
  const schema = schemaName("graphile");
  try {
    await runMigrations({ connectionString: PG_URL, schema, logger: quietLogger() });
    const utils = await makeWorkerUtils({ connectionString: PG_URL, schema, logger: quietLogger() });
    try {
      for (let i = 0; i < n; i += 5_000) {
        // `queues` > 0: job i goes to the named queue q<i % queues> (graphile-worker runs a named queue's jobs one at a time, in order).
        await utils.addJobs(Array.from({ length: Math.min(5_000, n - i) }, (_, j) => ({
          identifier: QUEUE,
          payload: payloadOf(i + j),
          ...(queues > 0 ? { queueName: `q${(i + j) % queues}` } : {}),
        })));
      }
    } finally {
      await utils.release();
    }
    await adminSql().unsafe(`VACUUM ANALYZE "${schema}"._private_jobs`);
    await settleDisk();
    gc();
    let ran = 0;
    let resolveAll!: () => void;
    const all = new Promise<void>((r) => (resolveAll = r));
    const t0 = performance.now();
    const runner = await run({
      connectionString: PG_URL,
      schema,
      noHandleSignals: true,
      concurrency: 24,
      pollInterval: 1_000,
      logger: quietLogger(),
      taskList: {
        [QUEUE]: async () => {
          if (++ran === n) resolveAll();
        },
      },
      preset: {
        worker: localQueueSize === null ? {} : {
          localQueue: { size: localQueueSize },
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
        },
      },
    });
    await all;
    // The clock stops when the last completion is in the database (completions may still be in flight here).
    const deadline = performance.now() + 30_000;
    for (;;) {
      const [row] = await adminSql().unsafe(`SELECT count(*)::int AS n FROM "${schema}"._private_jobs`);
      if (Number(row!["n"]) === 0) break;
      if (performance.now() > deadline) throw new Error(`graphile-worker left ${row!["n"]} jobs`);
      await sleep(2);
    }
    const s = (performance.now() - t0) / 1000;
    await runner.stop();
    return n / s;
  } finally {
    await sleep(50);
    await dropSchema(schema);
  }
}

/** graphile-worker logs only its errors (its info lines would interleave with the table). */
function quietLogger(): Logger {
  return new Logger(() => (level, message) => {
    if (level === "error") console.error(`graphile-worker: ${message}`);
  });
}

export async function peersSection(cfg: BenchConfig, results: Results, drain: DrainFigures): Promise<void> {
  const N = cfg.drainMessages;
  if (cfg.quick) {
    results.note(
      `quick mode: the peers drain ${N.toLocaleString("en-US")} jobs; pg-boss sorts every waiting job on each fetch, so it is several times faster ` +
        `at ${N.toLocaleString("en-US")} than at 100,000 and the peer targets are judged on the full run`,
    );
  }
  for (const batch of [100, 500]) {
    const boss = await pgBossDrain(N, batch);
    const edge = drain.pgEdge.get(batch)!;
    results.compare(SECTION, `edge-outbox vs pg-boss, batch ${batch} (fetch+complete loop, priority off)`, edge, "msg/s", {
      name: "pg-boss",
      value: boss,
    }, { kind: "min", value: 5 });
  }
  const edge500 = drain.pgEdge.get(500)!;
  // localQueue sizes 250 and 500 were the fastest of 100…2,000 on the reference machine; the better one counts.
  const sizes = [250, 500];
  const batched: number[] = [];
  for (const size of sizes) batched.push(await graphileDrain(N, size));
  const best = Math.max(...batched);
  results.compare(SECTION, `edge-outbox (batch 500) vs graphile-worker batched (localQueue ${sizes[batched.indexOf(best)]}, concurrency 24)`, edge500, "msg/s", {
    name: "graphile-worker batched",
    value: best,
  }, { kind: "min", value: 2 }, `localQueue ${sizes.map((s, i) => `${s}: ${Math.round(batched[i]!).toLocaleString("en-US")}`).join(", ")} msg/s`);
  const unbatchedN = Math.min(N, cfg.quick ? 5_000 : 20_000);
  const unbatched = await graphileDrain(unbatchedN, null);
  results.compare(SECTION, `edge-outbox (batch 500) vs graphile-worker unbatched (concurrency 24, ${unbatchedN.toLocaleString("en-US")} jobs)`, edge500, "msg/s", {
    name: "graphile-worker unbatched",
    value: unbatched,
  });
}
