// Every README and @example code block type-checks under strict + exactOptionalPropertyTypes + noUncheckedIndexedAccess
// (TypeScript 7's `tsc --init`), as a user copying it would compile it (scripts/snippets.ts).
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { checkSnippets, checkSources, collectSnippets, exampleSnippets, markdownSnippets, type Snippet } from "../scripts/snippets.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The first line of each type error of `lines`, checked as if it were a README block (the snippet prelude applies). */
const typeErrors = (lines: readonly string[]): string[] =>
  checkSnippets(root, [{ origin: "README.md:1", file: "README.md", line: 2, code: lines.join("\n") }])
    .map((e) => `${e.at}: ${e.message.split("\n")[0]}`);

/**
 * Snippets that did not type-check when this test landed, in files other helpers own (snippetKey: file + hash of the
 * block's code, so edits elsewhere in the file keep the key). Fix the block and delete its line; an edited block gets
 * a new key and is checked again. The first error of each is noted.
 */
const KNOWN_BROKEN: ReadonlySet<string> = new Set<string>([]);

describe("documentation snippets", () => {
  it("extraction finds README blocks and @example blocks, with their lines, and skips `ignore` blocks", () => {
    const md = ["# t", "```ts", "const a = 1;", "```", "```sh", "ls", "```", "```ts ignore", "nope(", "```"].join("\n");
    expect(markdownSnippets("R.md", md)).toEqual([{ origin: "R.md:2", file: "R.md", line: 3, code: "const a = 1;" }]);
    const src = [
      "/**",
      " * Does x.",
      " * @param a the a",
      " * @example",
      " * ```ts",
      " * const b: number = 2;",
      " * ```",
      " */",
      "export function x(a: number): number { return a; }",
    ].join("\n");
    expect(exampleSnippets("f.ts", src)).toEqual([{ origin: "f.ts:5", file: "f.ts", line: 6, code: "const b: number = 2;" }]);
    const all = collectSnippets(root);
    expect(all.filter((s) => s.file === "README.md").length).toBeGreaterThan(10);
    expect(all.filter((s) => s.file !== "README.md").length).toBeGreaterThan(50);
  });

  it("a broken snippet is reported at its line in the original file", () => {
    const broken: Snippet[] = [
      { origin: "README.md:10", file: "README.md", line: 11, code: 'import { createOutbox } from "edge-outbox";\nconst n: number = "one";\ncreateOutbox({ storage: 1 });' },
      // exactOptionalPropertyTypes: passing undefined to a `?: T` field would fail; the core's fields accept it.
      { origin: "README.md:20", file: "README.md", line: 21, code: 'import { createRelay } from "edge-outbox";\ndeclare const key: string | undefined;\nconst o: { k?: string } = { k: key };\nvoid createRelay;' },
      { origin: "README.md:30", file: "README.md", line: 31, code: 'import { memoryStorage } from "edge-outbox/memory";\nconst ok = memoryStorage({ retainDeliveredMs: undefined });\nvoid ok;' },
    ];
    const errors = checkSnippets(root, broken);
    expect(errors.map((e) => e.at).sort()).toEqual(["README.md:12", "README.md:13", "README.md:23"]);
    expect(errors.find((e) => e.at === "README.md:23")!.message).toMatch(/exactOptionalPropertyTypes/);
  }, 60_000);

  it("public optional option fields of the http and upstash adapters accept undefined (exactOptionalPropertyTypes)", () => {
    const code = [
      'import { webhookTransport, type VerifyWebhookOptions } from "edge-outbox/http";',
      'import { upstashLock } from "edge-outbox/upstash";',
      "declare const maybe: number | undefined;",
      'webhookTransport({ url: "https://a.example/h", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", timeoutMs: maybe, headers: undefined, fetch: undefined, name: undefined });',
      "const verify: VerifyWebhookOptions = { toleranceMs: maybe, now: undefined };",
      "upstashLock(redis, { prefix: undefined, leaseMs: maybe, renewEveryMs: maybe, autoRenew: undefined, timeoutMs: maybe });",
      "void verify;",
    ];
    expect(typeErrors(code)).toEqual([]);
  }, 60_000);

  it("the SQL adapters' factories and DDL helpers accept undefined options, e.g. { table: process.env.X } (exactOptionalPropertyTypes)", () => {
    const code = [
      'import { libsqlInbox, libsqlInboxSchema, libsqlSchema, libsqlStorage } from "edge-outbox/libsql";',
      'import { d1Inbox, d1Schema, d1Storage } from "edge-outbox/d1";',
      'import { postgresInbox, postgresInboxSchema, postgresSchema, postgresStorage } from "edge-outbox/postgres";',
      "const table = process.env.OUTBOX_TABLE;",
      "const schema = process.env.OUTBOX_SCHEMA;",
      "libsqlStorage(client, { table }); libsqlInbox(client, { table });",
      "d1Storage(env.DB, { table }); d1Inbox(env.DB, { table });",
      "postgresStorage(sql, { table, schema }); postgresInbox(sql, { table, schema });",
      "const ddl: string[][] = [libsqlSchema({ table }), libsqlInboxSchema({ table }), d1Schema({ table }),",
      "  postgresSchema({ table, schema }), postgresInboxSchema({ table, schema })];",
      "void ddl;",
    ];
    expect(typeErrors(code)).toEqual([]);
  }, 60_000);

  it("the shipped sources type-check under the same settings (a user compiling the .ts sources with exactOptionalPropertyTypes)", () => {
    expect(checkSources(root)).toEqual([]);
  }, 120_000);

  it("every README and @example block type-checks (except the known ones listed below)", () => {
    const errors = checkSnippets(root).filter((e) => !KNOWN_BROKEN.has(e.key));
    const report = errors.map((e) => `${e.at} (block at ${e.snippet}, key ${e.key}): ${e.message.split("\n")[0]}`).join("\n");
    expect(report).toBe("");
  }, 120_000);
});
