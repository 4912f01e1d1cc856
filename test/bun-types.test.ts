// The Bun code outside examples/ type-checks with bun-types (`@types/bun`, the project's named dependency for Bun
// typings): the `bun test` entry is excluded from tsconfig.test.json (bun:test needs Bun's types), so
// tsconfig.bun.json checks it, here and in scripts/test.sh's typecheck step. The Bun example: test/edge-examples.test.ts.
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, "..");
const TSC = join(ROOT, "node_modules/.bin/tsc");

async function tsc(config: string): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await run(TSC, ["-p", config], { cwd: ROOT });
    return { ok: true, output: stdout + stderr };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    return { ok: false, output: `${x.stdout ?? ""}${x.stderr ?? ""}` || x.message };
  }
}

describe("the bun test entry type-checks with bun-types", () => {
  it("tsc -p tsconfig.bun.json: test/runtimes/bun.test.ts and what it imports", async () => {
    const { ok, output } = await tsc(join(ROOT, "tsconfig.bun.json"));
    expect(output).toBe("");
    expect(ok).toBe(true);
  }, 120_000);

  it("control: without Bun's types the same check fails on bun:test", async () => {
    const dir = join(ROOT, "test-results/bun-types");
    mkdirSync(dir, { recursive: true });
    const config = join(dir, "tsconfig.no-bun-types.json");
    writeFileSync(config, JSON.stringify({
      extends: join(ROOT, "tsconfig.bun.json"),
      compilerOptions: { types: [] },
      include: [join(ROOT, "test/runtimes/bun.test.ts")],
    }));
    const { ok, output } = await tsc(config);
    expect(ok).toBe(false);
    expect(output).toContain("Cannot find module 'bun:test'");
  }, 120_000);
});
