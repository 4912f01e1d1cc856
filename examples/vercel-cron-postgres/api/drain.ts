// Vercel Cron calls this path with GET and `Authorization: Bearer $CRON_SECRET` (vercel.json "crons"). The relay
// app's drain route is POST /drain: forward the call to it, headers included, so its auth and budget apply.
import { relayApp } from "../lib/outbox.ts";

export async function GET(request: Request): Promise<Response> {
  return await relayApp.fetch(new Request(new URL("/drain", request.url), { method: "POST", headers: request.headers }));
}
