// Profiling aid (not part of `npm run bench`): one Postgres claim and settle of 100 rows at a time, serially:
// keyless rows, then one deep key whose next 100 rows are claimed with `continue` while the previous 100 are still
// held, and settled after. Medians in ms.
//   node --import tsx bench/profile-continue.ts
import { cleanupAll, connect, pgFill, pgOutbox } from "./lib.ts";

const median = (a: number[]): string => a.sort((x, y) => x - y)[a.length >> 1]!.toFixed(2);
try {
  const o = await pgOutbox(connect({ max: 2 }), "pcont");
  const s = o.storage;
  const deliver = (c: { token: string; messages: readonly { id: string }[] }) =>
    s.settle(c.token, c.messages.map((m) => ({ id: m.id, outcome: "delivered" as const })));
  const time = async <T>(into: number[], f: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await f();
    } finally {
      into.push(performance.now() - t);
    }
  };
  await pgFill(o, 20_000, 10_000, 0);
  const keylessClaim: number[] = [], keylessSettle: number[] = [];
  for (let i = 0; i < 150; i++) {
    const c = await time(keylessClaim, () => s.claim({ limit: 100, leaseMs: 30_000 }));
    await time(keylessSettle, () => deliver(c));
  }
  await o.sql.unsafe(`DELETE FROM ${o.table}`);
  await pgFill(o, 20_000, 10_000, 1);
  const contClaim: number[] = [], contSettle: number[] = [];
  let held = await s.claim({ limit: 100, leaseMs: 30_000 });
  for (let i = 0; i < 150; i++) {
    const last = held.messages[held.messages.length - 1]!.seq;
    const c = await time(contClaim, () => s.claim({ limit: 100, leaseMs: 30_000, continue: { after: [last], tokens: [held.token] } }));
    if (c.messages.length === 0) throw new Error(`the continued claim ${i} took nothing`);
    await time(contSettle, () => deliver(held));
    held = c;
  }
  console.log(`keyless: claim ${median(keylessClaim)} ms, settle ${median(keylessSettle)} ms | one key continued: claim ${median(contClaim)} ms, settle ${median(contSettle)} ms`);
} finally {
  await cleanupAll();
}
