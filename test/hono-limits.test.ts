// The relay app under hostile input: request bodies are capped and refused before they are read, so an
// unauthenticated caller cannot make the server buffer a large body. Measured on a real server process
// (@hono/node-server in a child process) by its peak resident set size (/proc/<pid>/status VmHWM).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "..");
const MIB = 1024 * 1024;

/** The server: a relay app accepting QStash signatures (so a signature header is a credential it must consider). */
function serverSource(): string {
  const pkg = (name: string): string => JSON.stringify(pathToFileURL(createRequire(import.meta.url).resolve(name)).href);
  const mod = (p: string): string => pathToFileURL(join(ROOT, p)).href;
  return `
import { serve } from ${pkg("@hono/node-server")};
import { createOutbox, createRelay } from ${JSON.stringify(mod("mod.ts"))};
import { memoryStorage, recordingTransport } from ${JSON.stringify(mod("adapters/memory/mod.ts"))};
import { createRelayApp } from ${JSON.stringify(mod("adapters/hono/mod.ts"))};
import { Receiver } from ${pkg("@upstash/qstash")};
const storage = memoryStorage();
const outbox = createOutbox({ storage, topics: [] });
const relay = createRelay({ outbox, transport: recordingTransport() });
const receiver = new Receiver({ currentSigningKey: "sig_current_limits", nextSigningKey: "sig_next_limits", devMode: false });
const app = createRelayApp({
  relay,
  outbox,
  auth: { drain: "drain-secret-0123456789abcdef", qstash: { verifier: receiver } },
  publicUrl: "https://app.example",
  onError: () => {},
});
const server = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, (info) => {
  process.stdout.write("listening " + info.port + "\\n");
});
process.stdin.on("end", () => server.close(() => process.exit(0))); // stops with the test process
process.stdin.resume();
`;
}

function status(pid: number): { rss: number; hwm: number } {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text)![1]) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/** Resets the peak RSS of a process to its current RSS (Linux: writing 5 to clear_refs). */
function resetPeak(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, "5");
}

interface Sent {
  status: number;
  body: string;
  /** ms from the first byte sent to the response headers. */
  answeredMs: number;
  /** bytes of the body written before the response arrived. */
  sentBeforeAnswer: number;
}

/** POSTs `size` bytes (1 MiB chunks of one reused buffer, so the client's own memory stays flat). */
function post(port: number, path: string, size: number, headers: Record<string, string>, chunked: boolean): Promise<Sent> {
  const chunk = Buffer.alloc(MIB, 0x61);
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    let written = 0;
    let answered = false;
    const req = request({
      host: "127.0.0.1",
      port,
      path,
      method: "POST",
      headers: { ...headers, "content-type": "application/octet-stream", ...(chunked ? {} : { "content-length": String(size) }) },
    });
    req.on("response", (res) => {
      answered = true;
      const answeredMs = performance.now() - t0;
      const sentBeforeAnswer = written;
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => {
        req.destroy(); // stop uploading the rest: the server has answered
        resolvePromise({ status: res.statusCode ?? 0, body, answeredMs, sentBeforeAnswer });
      });
    });
    req.on("error", (e) => {
      if (!answered) reject(e); // EPIPE/ECONNRESET after the answer is the server refusing the rest
    });
    const pump = (): void => {
      while (!answered && written < size) {
        const n = Math.min(MIB, size - written);
        written += n;
        if (!req.write(n === MIB ? chunk : chunk.subarray(0, n))) {
          req.once("drain", pump);
          return;
        }
      }
      if (!answered) req.end();
    };
    pump();
  });
}

async function startServer(dir: string): Promise<{ child: ChildProcess; port: number }> {
  const file = join(dir, "server.ts");
  writeFileSync(file, serverSource());
  const child = spawn(process.execPath, ["--import", "tsx", file], { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });
  const port = await new Promise<number>((ok, fail) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) ok(Number(m[1]));
    });
    child.on("exit", (code) => fail(new Error(`server exited with ${code}`)));
  });
  // warm up: JIT, lazily created objects, the first requests' allocations
  for (let i = 0; i < 3; i++) await post(port, "/drain", 1_000, { "upstash-signature": "x" }, false);
  return { child, port };
}

describe("request bodies are capped and refused before they are read", () => {
  let dir = "";
  const children: ChildProcess[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "edge-outbox-hono-limits-"));
  });
  afterAll(() => {
    for (const c of children) c.stdin?.end();
    rmSync(dir, { recursive: true, force: true });
  });

  const DRAIN = "Bearer drain-secret-0123456789abcdef";
  const GARBAGE = "eyJhbGciOiJIUzI1NiJ9.garbage-that-is-no-jwt-payload.c2lnbmF0dXJl";
  const cases: Array<[string, Record<string, string>, boolean]> = [
    ["garbage Upstash-Signature, Content-Length 50 MiB", { "upstash-signature": GARBAGE }, false],
    ["garbage Upstash-Signature, chunked 50 MiB", { "upstash-signature": GARBAGE }, true],
    ["a valid drain bearer secret, Content-Length 50 MiB", { authorization: DRAIN }, false],
    ["a valid drain bearer secret, chunked 50 MiB", { authorization: DRAIN }, true],
  ];

  // One fresh server per case: a peak left by one case cannot hide or inflate the next.
  it.each(cases)("%s: refused quickly, the server's peak RSS stays flat", async (name, headers, chunked) => {
    const { child, port } = await startServer(dir);
    children.push(child);
    const pid = child.pid!;
    const before = status(pid);
    resetPeak(pid);
    const sent = await post(port, "/drain", 50 * MIB, headers, chunked);
    await new Promise((r) => setTimeout(r, 200)); // let the server finish whatever it does with the rest
    const after = status(pid);
    const peakDelta = after.hwm - before.rss;
    console.log(
      `[hono-limits] ${name}: HTTP ${sent.status} after ${Math.round(sent.answeredMs)} ms, ` +
        `${(sent.sentBeforeAnswer / MIB).toFixed(0)} MiB sent before the answer; ` +
        `server RSS ${(before.rss / MIB).toFixed(1)} MiB, peak delta ${(peakDelta / MIB).toFixed(1)} MiB`,
    );
    expect([401, 413]).toContain(sent.status);
    if (headers.authorization) expect(sent.status).toBe(413); // authenticated, but the body is over the cap
    expect(sent.answeredMs).toBeLessThan(2_000);
    expect(peakDelta).toBeLessThan(16 * MIB); // 50 MiB read into memory would be ≥ 50 MiB (≥ 100 MiB as a string)
    child.stdin!.end();
  }, 60_000);
});
