// Helpers of test/edge-examples.test.ts: builds the package's declarations as npm publishes them and type-checks an
// example against them through package.json "exports" (never through the sources). No test-runner imports.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
export const ROOT = resolve(import.meta.dirname, "..");
const BIN = join(ROOT, "node_modules/.bin");
/** Inside the repo (gitignored), so the declarations resolve their peer packages from the repo's node_modules. */
export const WORK = join(ROOT, "test-results/examples");
const DIST = join(WORK, "dist");

type Exports = Record<string, { types: string; default: string }>;
const packageExports = (): Exports => (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { exports: Exports }).exports;
const specifier = (sub: string): string => (sub === "." ? "edge-outbox" : `edge-outbox/${sub.slice(2)}`);

/** Bundler aliases for every published subpath, from package.json "exports", to the source module it is built from. */
export function publishedAliases(): Record<string, string> {
  const alias: Record<string, string> = {};
  for (const [sub, target] of Object.entries(packageExports())) {
    alias[specifier(sub)] = join(ROOT, target.default.replace(/^\.\/dist\//, "").replace(/\.js$/, ".ts"));
  }
  return alias;
}

/** `paths` entries for every published subpath, from package.json "exports" (types), pointing into the built dist. */
export function publishedPaths(): Record<string, string[]> {
  const paths: Record<string, string[]> = {};
  for (const [sub, target] of Object.entries(packageExports())) paths[specifier(sub)] = [join(DIST, target.types.replace(/^\.\/dist\//, ""))];
  return paths;
}

/** Builds the declarations (`tsc -p tsconfig.build.json`, declarations only) into WORK/dist. */
export async function buildDeclarations(): Promise<void> {
  rmSync(DIST, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  await run(join(BIN, "tsc"), ["-p", join(ROOT, "tsconfig.build.json"), "--outDir", DIST, "--emitDeclarationOnly"], { cwd: ROOT });
}

/** Type-checks one example folder with its own tsconfig.json, `edge-outbox` resolved to the built declarations. */
export async function typecheckExample(dir: string): Promise<{ ok: boolean; output: string }> {
  const example = join(ROOT, "examples", dir);
  const config = join(WORK, `tsconfig.${dir}.json`);
  const own = JSON.parse(stripComments(readFileSync(join(example, "tsconfig.json"), "utf8"))) as { include?: string[] };
  writeFileSync(config, JSON.stringify({
    extends: join(example, "tsconfig.json"),
    compilerOptions: { paths: publishedPaths() },
    include: (own.include ?? ["."]).map((p) => join(example, p)),
  }, null, 2));
  try {
    const { stdout, stderr } = await run(join(BIN, "tsc"), ["-p", config], { cwd: example });
    return { ok: true, output: stdout + stderr };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    return { ok: false, output: `${x.stdout ?? ""}${x.stderr ?? ""}` || x.message };
  }
}

function stripComments(json: string): string {
  return json.replace(/^\s*\/\/.*$/gm, "").replace(/\s\/\/[^"\n]*$/gm, "");
}

/**
 * A Deno config for the Deno example: its own import map, with `edge-outbox` and its subpaths mapped to the modules
 * JSR publishes (deno.json "exports" of this repo), npm packages from the repo's node_modules. Returns its path.
 */
export function denoConfig(example: string): string {
  const own = JSON.parse(readFileSync(join(ROOT, "examples", example, "deno.json"), "utf8")) as { imports: Record<string, string>; unstable?: string[] };
  const jsr = JSON.parse(readFileSync(join(ROOT, "deno.json"), "utf8")) as { exports: Record<string, string> };
  const imports: Record<string, string> = { ...own.imports };
  delete imports["edge-outbox/"];
  for (const [sub, path] of Object.entries(jsr.exports)) imports[specifier(sub)] = join(ROOT, path);
  // The library's own imports (valibot, …) resolve through the repo's map, as JSR resolves them from its deno.json.
  const repo = JSON.parse(readFileSync(join(ROOT, "deno.json"), "utf8")) as { imports: Record<string, string> };
  for (const [k, v] of Object.entries(repo.imports)) imports[k] ??= v;
  mkdirSync(WORK, { recursive: true });
  // nodeModulesDir "manual": Deno reads npm packages from node_modules next to the config.
  if (!existsSync(join(WORK, "node_modules"))) symlinkSync(join(ROOT, "node_modules"), join(WORK, "node_modules"));
  const path = join(WORK, `deno.${example}.json`);
  writeFileSync(path, JSON.stringify({ imports, nodeModulesDir: "manual", lock: false, unstable: own.unstable ?? [] }, null, 2));
  return path;
}
