// GET /api/health with `Authorization: Bearer $OUTBOX_READ_SECRET`: 200 healthy/degraded, 503 unhealthy.
import { relayApp } from "../lib/outbox.ts";

export async function GET(request: Request): Promise<Response> {
  return await relayApp.fetch(new Request(new URL("/health", request.url), { headers: request.headers }));
}
