// Profiling aid (not part of `npm run bench`): one Postgres claim + settle of 100 rows at a time, serially, as the
// raw-SQL floor does it (claim, DELETE; keyless) and as edge-outbox does it (storage.claim / settle, and their SQL sent
// bare), on 20,000 rows over `keys` keys (0: keyless).
//   node --import tsx bench/profile-steps.ts [keys]
import { cleanupAll, connect, pgFill, pgOutbox } from "./lib.ts";
import { pgFloorSql } from "./drain.ts";
import { claimSql, postgresSql } from "../adapters/postgres/sql.ts";
const rows = 20000, claims = 100, keys = Number(process.argv[2] ?? 0);
try {
  const sql = connect({ max: 2 });
  const a = await pgOutbox(sql, "psa"); await pgFill(a, rows);
  const b = await pgOutbox(sql, "psb"); await pgFill(b, rows, 10_000, keys);
  const c = await pgOutbox(sql, "psc"); await pgFill(c, rows, 10_000, keys);
  const q = pgFloorSql(a.table);
  const cs = postgresSql({ schema: c.schema, table: "outbox" });
  const t: Record<string, number> = {};
  const tick = async <T>(name: string, f: () => Promise<T>): Promise<T> => { const s = performance.now(); try { return await f(); } finally { t[name] = (t[name] ?? 0) + performance.now() - s; } };
  for (let i = 0; i < claims; i++) {
    const token = crypto.randomUUID();
    const r = await tick("floorClaim", () => sql.unsafe(q.claim, [token, 30000, 100], { prepare: true }));
    await tick("floorDelete", () => sql.unsafe(q.remove, [`{${r.map((x) => x["seq"]).join(",")}}`, token], { prepare: true }));
    const cl = await tick("edgeClaim", () => b.storage.claim({ limit: 100, leaseMs: 30000 }));
    await tick("edgeSettle", () => b.storage.settle(cl.token, cl.messages.map((m) => ({ id: m.id, outcome: "delivered" as const }))));
    const tok2 = crypto.randomUUID();
    const res = await tick("rawClaimSql", () => sql.unsafe(claimSql(cs.claim, tok2, 30000, 100))) as unknown as any[];
    const rowsC = res.find((x) => x.columns?.some((col: any) => col.name === "lasterror"));
    await tick("rawSettleSql", () => sql.unsafe(cs.settleDelivered, [tok2, `{${rowsC.map((x: any) => x.id).join(",")}}`], { prepare: true }));
  }
  console.log(Object.entries(t).map(([k, v]) => `${k} ${(v / claims).toFixed(2)}`).join(" | "));
} finally { await cleanupAll(); }
