// Profiling aid (not part of `npm run bench`): a drain's storage calls one at a time, as a streaming drain over deep
// keys makes them (each claim continues the keys of the claim before it, which is settled after it), so each call's
// cost is seen without the contention of a real drain. Prints per-call medians and sums, and on Postgres the medians
// of the backend's own CPU per call (/proc/<pid>/schedstat: the connection is the client's only one).
//   node --import tsx bench/profile-serial.ts [keys] [pg|libsql] [messages]
// PLANS=1 (Postgres): the plans of the 100th claim and the 100th settle, with their timings and buffers (auto_explain
// with nested statements, so the claim function's statements show; the server must ship auto_explain, as Debian's
// packages do) and the planner's time per statement (log_planner_stats).
import { readFileSync } from "node:fs";
import { cleanupAll, connect, libsqlFill, libsqlOutbox, pgFill, pgOutbox } from "./lib.ts";

const [keysArg = "10", db = "pg", nArg = "20000"] = process.argv.slice(2);
const keys = Number(keysArg), n = Number(nArg);
const plans = process.env["PLANS"] === "1" && db === "pg";
const notices: string[] = [];
try {
  const pg = db === "pg"
    ? await pgOutbox(connect({ max: 1, onnotice: (x) => notices.push(`${x["message"]}${x["detail"] ? ` ${x["detail"]}` : ""}`) }), "profserial")
    : undefined;
  const lib = pg ? undefined : await libsqlOutbox();
  if (pg) await pgFill(pg, n, 10_000, keys);
  else await libsqlFill(lib!, n, 10_000, keys);
  const storage = (pg ?? lib!).storage;
  /** Runs `call` with the plans of its statements logged (the 100th call of a kind) and prints them. */
  const explained = async <T>(on: boolean, call: () => Promise<T>): Promise<T> => {
    if (!on) return await call();
    await pg!.sql.unsafe(`LOAD 'auto_explain'`);
    await pg!.sql.unsafe(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on;
      SET auto_explain.log_nested_statements = on; SET log_planner_stats = on; SET client_min_messages = log`);
    notices.length = 0;
    try {
      return await call();
    } finally {
      await pg!.sql.unsafe(`SET auto_explain.log_min_duration = -1; SET log_planner_stats = off; SET client_min_messages = notice`);
      console.log(notices.join("\n=====\n"));
    }
  };
  const claims: number[] = [], settles: number[] = [], claimCpu: number[] = [], settleCpu: number[] = [];
  const backend = pg ? Number(((await pg.sql`SELECT pg_backend_pid() AS pid`) as unknown as [{ pid: number }])[0].pid) : 0;
  /** The backend's CPU time so far, ms (0 on libSQL, which runs in this process). */
  const cpu = (): number => (pg ? Number(readFileSync(`/proc/${backend}/schedstat`, "utf8").split(" ")[0]) / 1e6 : 0);
  let held: { token: string; ids: string[]; last: Map<string, number> } | undefined;
  let total = 0;
  const t0 = performance.now();
  for (;;) {
    const t = performance.now(), c0 = cpu();
    const after = held && held.last.size > 0 ? { after: [...held.last.values()], tokens: [held.token] } : undefined;
    const c = await explained(plans && claims.length === 100, () => storage.claim({ limit: 100, leaseMs: 30_000, ...(after ? { continue: after } : {}) }));
    claims.push(performance.now() - t);
    claimCpu.push(cpu() - c0);
    if (held) {
      const { token, ids } = held;
      const t1 = performance.now(), c1 = cpu();
      await explained(plans && settles.length === 100, () => storage.settle(token, ids.map((id) => ({ id, outcome: "delivered" as const }))));
      settles.push(performance.now() - t1);
      settleCpu.push(cpu() - c1);
    }
    if (c.messages.length === 0 && !held) break;
    total += c.messages.length;
    const last = new Map<string, number>();
    for (const m of c.messages) if (m.key !== null) last.set(m.key, m.seq);
    held = c.messages.length > 0 ? { token: c.token, ids: c.messages.map((m) => m.id), last } : undefined;
  }
  const wall = performance.now() - t0;
  const median = (a: number[]): string => [...a].sort((x, y) => x - y)[a.length >> 1]!.toFixed(2);
  const sum = (a: number[]): string => a.reduce((x, y) => x + y, 0).toFixed(0);
  console.log(
    `${db} ${keys} keys: ${total} rows in ${wall.toFixed(0)} ms; claims ${claims.length}, median ${median(claims)} ms, sum ${sum(claims)} ms; ` +
      `settles ${settles.length}, median ${median(settles)} ms, sum ${sum(settles)} ms` +
      (pg ? `; backend CPU median: claim ${median(claimCpu)} ms, settle ${median(settleCpu)} ms` : ""),
  );
} finally {
  await cleanupAll();
}
