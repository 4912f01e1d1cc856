// Profiling aid (not part of `npm run bench`): where a Postgres claim of 100 keyless rows spends its time. Times the
// claim as the adapter sends it (one simple query of six statements), then each statement alone inside a transaction.
//   node --import tsx bench/profile-claim.ts [pending rows] [claims]
import { postgresSql } from "../adapters/postgres/sql.ts";
import { cleanupAll, connect, pgFill, pgOutbox } from "./lib.ts";

const [rowsArg = "40000", claimsArg = "100"] = process.argv.slice(2);
const rows = Number(rowsArg), claims = Number(claimsArg);
try {
  const o = await pgOutbox(connect({ max: 2 }), "profclaim");
  await pgFill(o, rows, 10_000, 0);
  const template = postgresSql({ schema: o.schema, table: "outbox" }).claim.replaceAll("{{limit}}", "100").replaceAll("{{lease}}", "30000");
  const parts: number[] = [];
  let whole = 0;
  for (let i = 0; i < claims; i++) {
    const t0 = performance.now();
    await o.sql.unsafe(template.replace("{{token}}", crypto.randomUUID()));
    whole += performance.now() - t0;
    const statements = template.replace("{{token}}", crypto.randomUUID()).split(/;\n/);
    await o.sql.begin(async (tx) => {
      for (const [j, statement] of statements.entries()) {
        const t = performance.now();
        await tx.unsafe(statement);
        parts[j] = (parts[j] ?? 0) + performance.now() - t;
      }
    });
  }
  console.log(`claim of 100 at ${rows.toLocaleString("en-US")} pending: ${(whole / claims).toFixed(2)} ms as sent; each statement alone: ${parts.map((p) => (p / claims).toFixed(2)).join(" / ")} ms`);
} finally {
  await cleanupAll();
}
