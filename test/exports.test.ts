/**
 * Keeps the two registries' entry points identical (package.json for npm, deno.json for JSR) and the shipped
 * sources runtime-agnostic: no `node:*` module and no driver package is ever imported by src/, adapters/ or mod.ts.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const readJson = (file: string): Record<string, unknown> =>
  JSON.parse(readFileSync(join(root, file), "utf8")) as Record<string, unknown>;

interface NpmTarget {
  types: string;
  default: string;
}

const pkg = readJson("package.json") as {
  name: string;
  version: string;
  types: string;
  files: string[];
  exports: Record<string, NpmTarget>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  scripts: Record<string, string>;
};
const deno = readJson("deno.json") as {
  name: string;
  version: string;
  exports: Record<string, string>;
  imports: Record<string, string>;
  publish?: { include?: string[]; exclude?: string[] };
};

/** Every .ts file under a folder, as a path relative to the repository root with "/" separators. */
function tsFiles(dir: string): string[] {
  const abs = join(root, dir);
  if (!existsSync(abs)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(abs)) {
    const path = join(abs, entry);
    if (statSync(path).isDirectory()) out.push(...tsFiles(relative(root, path)));
    else if (entry.endsWith(".ts")) out.push(relative(root, path).split(sep).join("/"));
  }
  return out.sort();
}

/** The shipped sources: mod.ts, src/** and adapters/** (tests excluded). */
const shipped = ["mod.ts", ...tsFiles("src"), ...tsFiles("adapters")].filter((f) => !f.endsWith(".test.ts"));

/** Every module specifier of a file: static imports, `export … from`, `import type`, `import()` and `typeof import()`. */
function specifiers(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(root, file), "utf8"), true, true);
  return info.importedFiles.map((f) => f.fileName);
}

/** The runtime dependencies the shipped code may import (drivers are typed structurally, never imported). */
const ALLOWED_BARE = new Set(["valibot"]);

/**
 * Optional peer packages one adapter folder may import besides valibot: the Hono adapter builds a Hono app (and
 * takes the user's QStash `Receiver` or verify function, so it never imports `@upstash/qstash`). Every other folder
 * (adapters/qstash included, which types the QStash client structurally) imports nothing but relative files and valibot.
 */
const PEER_IMPORTS: ReadonlyArray<{ folder: string; allowed: RegExp }> = [
  { folder: "adapters/hono/", allowed: /^hono(\/[a-z0-9/_-]+)?$/ },
  // The OpenTelemetry adapter is the one place that imports @opentelemetry/api (an optional peer).
  { folder: "adapters/otel/", allowed: /^@opentelemetry\/api$/ },
];
const peerAllowed = (file: string, spec: string): boolean =>
  PEER_IMPORTS.some((p) => file.startsWith(p.folder) && p.allowed.test(spec));

describe("export maps", () => {
  it("package.json and deno.json have the same name/version pairing and the same export keys", () => {
    expect(deno.name).toBe("@edge-outbox/core");
    expect(deno.version).toBe(pkg.version);
    expect(Object.keys(deno.exports).sort()).toEqual(Object.keys(pkg.exports).sort());
  });

  it.each(Object.keys(pkg.exports))("%s points at the same module in dist/ and in the sources", (key) => {
    const npm = pkg.exports[key]!;
    const source = deno.exports[key]!;
    expect(source).toMatch(/^\.\/.+\.ts$/);
    const stem = source.slice(2, -3); // "./adapters/libsql/mod.ts" -> "adapters/libsql/mod"
    expect(npm).toEqual({ types: `./dist/${stem}.d.ts`, default: `./dist/${stem}.js` });
    expect(Object.keys(npm)[0]).toBe("types"); // "types" must come first for TypeScript's resolution
    expect(existsSync(join(root, source)), `${source} exists`).toBe(true);
    expect(shipped).toContain(source.slice(2));
  });

  it("the subpath names follow the folders (./x -> adapters/x/mod.ts, ./testing -> src/testing/mod.ts)", () => {
    for (const [key, source] of Object.entries(deno.exports)) {
      if (key === ".") expect(source).toBe("./mod.ts");
      else if (key === "./testing") expect(source).toBe("./src/testing/mod.ts");
      else expect(source).toBe(`./adapters/${key.slice(2)}/mod.ts`);
    }
  });

  it("every adapter folder with a mod.ts is exported", () => {
    const adapters = existsSync(join(root, "adapters")) ? readdirSync(join(root, "adapters")) : [];
    for (const name of adapters) {
      if (existsSync(join(root, "adapters", name, "mod.ts"))) {
        expect(Object.keys(deno.exports), `adapters/${name}/mod.ts`).toContain(`./${name}`);
      }
    }
  });

  it("the built files exist for every entry point (when dist/ has been built)", () => {
    if (!existsSync(join(root, "dist"))) return; // scripts/test.sh builds dist/ before vitest runs
    for (const target of Object.values(pkg.exports)) {
      expect(existsSync(join(root, target.types)), target.types).toBe(true);
      expect(existsSync(join(root, target.default)), target.default).toBe(true);
    }
  });

  it("package.json ships only dist/, builds it before packing, and its top-level types is the root entry's", () => {
    expect(pkg.files).toEqual(["dist"]);
    expect(pkg.types).toBe(pkg.exports["."]!.types);
    expect(pkg.scripts.prepack).toMatch(/build/);
  });

  it("deno.json publishes the sources, README and LICENSE, not tests, benchmarks or scripts", () => {
    const include = deno.publish?.include ?? [];
    const exclude = deno.publish?.exclude ?? [];
    for (const p of ["mod.ts", "README.md", "LICENSE"]) expect(include).toContain(p);
    expect(include.some((p) => p.startsWith("src"))).toBe(true);
    expect(include.some((p) => p.startsWith("adapters"))).toBe(true);
    for (const p of ["test/", "bench/", "scripts/"]) expect(exclude).toContain(p);
  });
});

describe("shipped sources are runtime-agnostic", () => {
  it("finds the sources", () => {
    expect(shipped).toContain("mod.ts");
    expect(shipped.length).toBeGreaterThan(5);
  });

  it.each(shipped)("%s imports no node:* module, no driver and nothing outside the shipped tree", (file) => {
    for (const spec of specifiers(file)) {
      expect(spec, `${file} imports a Node built-in`).not.toMatch(/^node:/);
      expect(spec, `${file} uses a registry specifier`).not.toMatch(/^(npm|jsr|https?):/);
      if (spec.startsWith(".")) {
        expect(spec, `${file}: relative imports name the .ts file`).toMatch(/\.ts$/);
        const target = relative(root, resolve(root, dirname(file), spec)).split(sep).join("/");
        expect(shipped, `${file} imports ${spec}, which is not a shipped source`).toContain(target);
      } else {
        expect(
          ALLOWED_BARE.has(spec) || peerAllowed(file, spec),
          `${file} imports the package "${spec}" (only valibot is allowed${file.startsWith("adapters/hono/") ? ", plus hono here" : file.startsWith("adapters/otel/") ? ", plus @opentelemetry/api here" : ""})`,
        ).toBe(true);
      }
    }
  });

  it("every allowed package is a runtime dependency of both registries", () => {
    for (const name of ALLOWED_BARE) {
      expect(pkg.dependencies?.[name], `package.json dependencies.${name}`).toBeTruthy();
      expect(deno.imports[name], `deno.json imports.${name}`).toMatch(new RegExp(`^npm:${name}@`));
    }
  });

  it("drivers stay optional peer dependencies and deno.json maps them through npm:", () => {
    for (const name of Object.keys(pkg.peerDependencies ?? {})) {
      expect(pkg.dependencies?.[name], `${name} must not be a hard dependency`).toBeUndefined();
      expect(deno.imports[name], `deno.json imports.${name}`).toMatch(/^npm:/);
    }
  });
});

describe("module docs", () => {
  it("mod.ts's module doc lists every subpath of deno.json's exports", () => {
    const text = readFileSync(join(root, "mod.ts"), "utf8");
    const doc = text.slice(text.indexOf("/**"), text.indexOf("@module"));
    for (const key of Object.keys(deno.exports)) {
      if (key === ".") continue;
      expect(doc, `mod.ts module doc names ${key}`).toMatch(new RegExp(`\`${key.replace(".", "\\.")}\``));
    }
  });
});
