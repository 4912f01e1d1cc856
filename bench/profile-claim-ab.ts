// Profiling aid (not part of `npm run bench`): the Postgres claim functions of this version against those of schema
// version 9 (test/fixtures/postgres-claim-v9.ts), interleaved on two outboxes of the same rows, one connection each:
// a claim of 100 at a time, each continuing the keys of the claim before, which is settled after it (a drain's
// steady state over deep keys, as bench/profile-serial.ts). Prints the medians and sums of the backend's own CPU per
// claim and per settle (/proc/<pid>/schedstat).
//   node --import tsx bench/profile-claim-ab.ts [keys]
// ALTER_B="<ALTER FUNCTION actions>": also applies them to B's two claim functions (e.g. "SET plan_cache_mode =
// force_generic_plan"), to try a planner setting against the same functions on A.
import { readFileSync } from "node:fs";
import { renderSql } from "../adapters/postgres/schema.ts";
import { CLAIM_CONTINUE_FUNCTION_V9, CLAIM_FUNCTION_V9 } from "../test/fixtures/postgres-claim-v9.ts";
import { cleanupAll, connect, pgFill, pgOutbox } from "./lib.ts";

const keys = Number(process.argv[2] ?? 10), n = 20_000;
const alterB = process.env["ALTER_B"] ?? "";
try {
  /** A: version 9's functions (none with ALTER_B: both this version's); B: this version's, ALTER_B applied. */
  const side = async (label: string, b: boolean) => {
    const o = await pgOutbox(connect({ max: 1 }), label);
    await pgFill(o, n, 10_000, keys);
    if (!b && !alterB) for (const d of [CLAIM_FUNCTION_V9, CLAIM_CONTINUE_FUNCTION_V9]) await o.sql.unsafe(renderSql(d, { schema: o.schema, table: "outbox" }));
    if (b && alterB) {
      for (const sig of ["uuid, bigint, integer", "uuid, bigint, integer, bigint[], uuid[]"]) {
        await o.sql.unsafe(`ALTER FUNCTION "${o.schema}"."outbox_claim"(${sig}) ${alterB}`);
      }
    }
    const pid = Number(((await o.sql`SELECT pg_backend_pid() AS pid`) as unknown as [{ pid: number }])[0].pid);
    const cpu = (): number => Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
    return { o, cpu, held: undefined as { token: string; ids: string[]; last: Map<string, number> } | undefined, claims: [] as number[], settles: [] as number[], done: false };
  };
  const a = await side("abv9", false), b = await side("abv10", true);
  const step = async (x: typeof a): Promise<void> => {
    if (x.done) return;
    const after = x.held && x.held.last.size > 0 ? { after: [...x.held.last.values()], tokens: [x.held.token] } : undefined;
    const c0 = x.cpu();
    const c = await x.o.storage.claim({ limit: 100, leaseMs: 30_000, ...(after ? { continue: after } : {}) });
    x.claims.push(x.cpu() - c0);
    if (x.held) {
      const c1 = x.cpu();
      await x.o.storage.settle(x.held.token, x.held.ids.map((id) => ({ id, outcome: "delivered" as const })));
      x.settles.push(x.cpu() - c1);
    }
    if (c.messages.length === 0 && !x.held) {
      x.done = true;
      return;
    }
    const last = new Map<string, number>();
    for (const m of c.messages) if (m.key !== null) last.set(m.key, m.seq);
    x.held = c.messages.length > 0 ? { token: c.token, ids: c.messages.map((m) => m.id), last } : undefined;
  };
  while (!a.done || !b.done) {
    await step(a);
    await step(b);
  }
  const median = (xs: number[]): string => [...xs].sort((p, q) => p - q)[xs.length >> 1]!.toFixed(2);
  const sum = (xs: number[]): string => xs.reduce((p, q) => p + q, 0).toFixed(0);
  for (const [name, x] of [[alterB ? "A (this version)" : "A (schema v9)", a], [alterB ? `B (ALTER_B)` : "B (this version)", b]] as const) {
    console.log(`${name}, ${keys} keys: backend CPU per claim median ${median(x.claims)} ms (sum ${sum(x.claims)}), per settle median ${median(x.settles)} ms (sum ${sum(x.settles)})`);
  }
} finally {
  await cleanupAll();
}
