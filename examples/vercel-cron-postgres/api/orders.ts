// POST /api/orders: the order and its message commit in one transaction.
import { orderCreated, outbox, sql } from "../lib/outbox.ts";

export async function POST(request: Request): Promise<Response> {
  const order = (await request.json()) as { id: string; total: number };
  await sql.begin(async (tx) => {
    await tx`INSERT INTO orders (id, total) VALUES (${order.id}, ${order.total})`;
    await outbox.enqueue(tx, orderCreated, order, { key: order.id });
  });
  return Response.json({ ok: true }, { status: 201 });
}
