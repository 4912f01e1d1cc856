/**
 * Extracts every TypeScript code block of README.md and of the `@example` tags in the shipped sources (mod.ts, src/,
 * adapters/) and type-checks each one as a module under `strict` + `exactOptionalPropertyTypes` +
 * `noUncheckedIndexedAccess` (what TypeScript 7's `tsc --init` turns on), the way a user who copies it would.
 *
 * - `edge-outbox`, `edge-outbox/<subpath>` and `@edge-outbox/core[/<subpath>]` (also with `jsr:`) resolve to the
 *   sources named by deno.json's `exports`; `npm:pkg@range` becomes `pkg`.
 * - A snippet's free variables (a `tx`, a `client`, an `env`…) come from scripts/snippet-prelude.d.ts, a global
 *   script: whatever the snippet declares itself shadows it. An `@example` may use its own file's exports without
 *   importing them, and a README block the root entry point's (as if the README's first imports were in scope).
 * - A block fenced as ```` ```ts ignore ```` is not checked (Deno's convention for illustrative code).
 *
 * {@link checkSources} checks the shipped sources themselves under the same settings.
 *
 * Used by test/exports-snippets.test.ts; `node_modules/.bin/vitest run test/exports-snippets.test.ts` lists failures.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import ts from "typescript";

/** One extracted code block. */
export interface Snippet {
  /** Where it comes from: `README.md:120` or `src/outbox.ts:88` (the line of the opening fence). */
  readonly origin: string;
  /** The repository-relative source file. */
  readonly file: string;
  /** 1-based line of the first code line in that file. */
  readonly line: number;
  /** The code. */
  readonly code: string;
}

/** A short, line-independent identity of a snippet: its file and a hash of its code (`adapters/x.ts#1a2b3c4d`). */
export function snippetKey(s: Snippet): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.code.length; i++) h = Math.imul(h ^ s.code.charCodeAt(i), 0x01000193) >>> 0;
  return `${s.file}#${h.toString(16).padStart(8, "0")}`;
}

/** One type error in a snippet, located in the original file. */
export interface SnippetError {
  /** `file:line` of the offending line in the README or source file. */
  readonly at: string;
  /** Where the snippet starts. */
  readonly snippet: string;
  /** {@link snippetKey} of the snippet. */
  readonly key: string;
  /** TypeScript's message. */
  readonly message: string;
}

const FENCE = /^```(\w+)?(.*)$/;
const TS_LANGS = new Set(["ts", "typescript", "tsx"]);

/** Code blocks of a Markdown text (```ts only; `ignore` after the language skips one). */
export function markdownSnippets(file: string, text: string): Snippet[] {
  const out: Snippet[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]!.trim());
    if (!open || lines[i]!.trim() === "```") continue;
    const lang = open[1] ?? "";
    const start = i + 1;
    let end = start;
    while (end < lines.length && lines[end]!.trim() !== "```") end++;
    if (TS_LANGS.has(lang) && !/\bignore\b/.test(open[2] ?? "")) {
      out.push({ origin: `${file}:${i + 1}`, file, line: start + 1, code: lines.slice(start, end).join("\n") });
    }
    i = end;
  }
  return out;
}

/** The code blocks under `@example` tags of the JSDoc comments of a TypeScript source. */
export function exampleSnippets(file: string, text: string): Snippet[] {
  const out: Snippet[] = [];
  const lines = text.split("\n");
  let inComment = false;
  let inExample = false;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    if (!inComment && /^\s*\/\*\*/.test(raw)) {
      inComment = true;
      inExample = false;
    }
    if (!inComment) continue;
    const body = raw.replace(/^\s*\/?\*+\/?\s?/, "");
    if (/@example\b/.test(body)) inExample = true;
    else if (/^@\w+/.test(body.trim())) inExample = false;
    const open = FENCE.exec(body.trim());
    if (inExample && open && body.trim() !== "```") {
      const lang = open[1] ?? "ts";
      const start = i + 1;
      let end = start;
      const code: string[] = [];
      while (end < lines.length && !/^\s*\*?\s?```\s*$/.test(lines[end]!) && !/\*\//.test(lines[end]!)) {
        code.push(lines[end]!.replace(/^\s*\* ?/, ""));
        end++;
      }
      if (TS_LANGS.has(lang) && !/\bignore\b/.test(open[2] ?? "")) {
        out.push({ origin: `${file}:${i + 1}`, file, line: start + 1, code: code.join("\n") });
      }
      i = end;
    }
    if (/\*\//.test(raw)) inComment = false;
  }
  return out;
}

/** Every .ts file under `dir` (repository-relative, "/" separators), tests excluded. */
function tsFiles(root: string, dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(root, dir))) {
    const path = join(root, dir, entry);
    if (statSync(path).isDirectory()) out.push(...tsFiles(root, relative(root, path)));
    else if (entry.endsWith(".ts") && !entry.endsWith(".test.ts") && !entry.endsWith(".d.ts")) {
      out.push(relative(root, path).split(sep).join("/"));
    }
  }
  return out.sort();
}

/** README.md's blocks and the `@example` blocks of mod.ts, src/ and adapters/. */
export function collectSnippets(root: string): Snippet[] {
  const out = markdownSnippets("README.md", readFileSync(join(root, "README.md"), "utf8"));
  for (const file of ["mod.ts", ...tsFiles(root, "src"), ...tsFiles(root, "adapters")]) {
    out.push(...exampleSnippets(file, readFileSync(join(root, file), "utf8")));
  }
  return out;
}

/** The names a module exports (declarations with `export`, and `export { … }` lists). */
function exportedNames(text: string): Set<string> {
  const sf = ts.createSourceFile("x.ts", text, ts.ScriptTarget.ES2022, false);
  const names = new Set<string>();
  for (const st of sf.statements) {
    if (ts.isExportDeclaration(st) && st.exportClause && ts.isNamedExports(st.exportClause)) {
      for (const el of st.exportClause.elements) names.add(el.name.text);
      continue;
    }
    const exported = ts.canHaveModifiers(st) && ts.getModifiers(st)?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword);
    if (!exported) continue;
    if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) if (ts.isIdentifier(d.name)) names.add(d.name.text);
    } else if ((ts.isFunctionDeclaration(st) || ts.isClassDeclaration(st) || ts.isInterfaceDeclaration(st) ||
      ts.isTypeAliasDeclaration(st)) && st.name) {
      names.add(st.name.text);
    }
  }
  return names;
}

/** The top-level names a snippet declares or imports. */
function declaredNames(code: string): Set<string> {
  const sf = ts.createSourceFile("s.ts", code, ts.ScriptTarget.ES2022, false);
  const names = new Set<string>();
  for (const st of sf.statements) {
    if (ts.isImportDeclaration(st) && st.importClause) {
      if (st.importClause.name) names.add(st.importClause.name.text);
      const b = st.importClause.namedBindings;
      if (b && ts.isNamespaceImport(b)) names.add(b.name.text);
      if (b && ts.isNamedImports(b)) for (const el of b.elements) names.add(el.name.text);
    } else if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) if (ts.isIdentifier(d.name)) names.add(d.name.text);
    } else if ((ts.isFunctionDeclaration(st) || ts.isClassDeclaration(st) || ts.isInterfaceDeclaration(st) ||
      ts.isTypeAliasDeclaration(st)) && st.name) {
      names.add(st.name.text);
    }
  }
  return names;
}

/** Rewrites registry specifiers to the names the compiler resolves (`jsr:@edge-outbox/core/x` → `edge-outbox/x`). */
function normalizeSpecifiers(code: string): string {
  return code
    .replace(/(["'])jsr:@edge-outbox\/core(\/[\w-]+)?\1/g, (_m, q: string, sub: string | undefined) => `${q}edge-outbox${sub ?? ""}${q}`)
    .replace(/(["'])@edge-outbox\/core(\/[\w-]+)?\1/g, (_m, q: string, sub: string | undefined) => `${q}edge-outbox${sub ?? ""}${q}`)
    .replace(/(["'])npm:(@?[^@"'\s]+)(@[^"'\s]*)?\1/g, (_m, q: string, name: string) => `${q}${name}${q}`);
}

/** deno.json's entry points: `edge-outbox[/<subpath>]` → absolute source path. */
function entryPoints(root: string): Record<string, string> {
  const deno = JSON.parse(readFileSync(join(root, "deno.json"), "utf8")) as { exports: Record<string, string> };
  const out: Record<string, string> = {};
  for (const [key, target] of Object.entries(deno.exports)) out[key === "." ? "edge-outbox" : `edge-outbox/${key.slice(2)}`] = join(root, target);
  return out;
}

/** What a user's `tsc --init` turns on (strict, exactOptionalPropertyTypes, noUncheckedIndexedAccess), Web APIs only. */
function snippetCompilerOptions(root: string): ts.CompilerOptions {
  const paths: Record<string, string[]> = {};
  for (const [name, file] of Object.entries(entryPoints(root))) paths[name] = [file];
  return {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    lib: ["lib.es2022.d.ts", "lib.dom.d.ts", "lib.dom.iterable.d.ts"],
    types: [],
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    allowImportingTsExtensions: true,
    skipLibCheck: true,
    noEmit: true,
    baseUrl: root,
    paths,
  };
}

/**
 * Type-checks the shipped sources themselves (everything deno.json's entry points reach) under the snippets'
 * settings: a user who compiles the `.ts` sources (JSR, a vendored copy) with `exactOptionalPropertyTypes` on must
 * not get errors inside the library.
 *
 * @param root the repository root
 * @returns one `file:line: message` per diagnostic in a repository file (node_modules excluded)
 */
export function checkSources(root: string): string[] {
  const options = snippetCompilerOptions(root);
  const program = ts.createProgram({ rootNames: Object.values(entryPoints(root)), options });
  const out: string[] = [];
  for (const sf of program.getSourceFiles()) {
    if (sf.fileName.includes("/node_modules/") || !sf.fileName.startsWith(root)) continue;
    for (const d of [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)]) {
      const line = d.start === undefined ? 0 : sf.getLineAndCharacterOfPosition(d.start).line + 1;
      out.push(`${relative(root, sf.fileName).split(sep).join("/")}:${line}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n").split("\n")[0]}`);
    }
  }
  return out;
}

/**
 * Type-checks snippets, each as its own module, in one TypeScript program. Returns one entry per error.
 *
 * @param root the repository root
 * @param snippets what to check (default: {@link collectSnippets})
 */
export function checkSnippets(root: string, snippets: readonly Snippet[] = collectSnippets(root)): SnippetError[] {
  const options = snippetCompilerOptions(root);
  const dir = join(root, ".snippets");
  const virtual = new Map<string, { snippet: Snippet; offset: number }>();
  const texts = new Map<string, string>();
  const exportsOf = new Map<string, Set<string>>();
  snippets.forEach((s, i) => {
    const name = join(dir, `${s.file.replace(/[/.]/g, "_")}_${s.line}_${i}.ts`);
    // Relative specifiers of an @example are relative to its file.
    const code = normalizeSpecifiers(s.code).replace(
      /(from\s+|import\s*\(\s*)(["'])(\.\.?\/[^"']+)\2/g,
      (_m, lead: string, q: string, rel: string) => `${lead}${q}${join(root, dirname(s.file), rel)}${q}`,
    );
    // An @example may use the names its own file exports without importing them (internal modules document their
    // helpers this way): import those it uses and does not declare.
    // A README block may use what the README's first blocks imported from the root entry point ("edge-outbox").
    const from = s.file === "README.md" ? "src/mod.ts" : s.file;
    let own = exportsOf.get(from);
    if (!own) exportsOf.set(from, own = exportedNames(readFileSync(join(root, from), "utf8")));
    const declared = declaredNames(code);
    const used = [...own].filter((n) => !declared.has(n) && new RegExp(`\\b${n}\\b`).test(code));
    const header = used.length > 0 ? `import { ${used.join(", ")} } from ${JSON.stringify(join(root, from))};` : "export {};";
    // The header makes it a module (top-level await, no global leaks) and takes line 1; the code starts on line 2.
    texts.set(name, `${header}\n${code}\n`);
    virtual.set(name, { snippet: s, offset: 1 });
  });
  const prelude = join(root, "scripts", "snippet-prelude.d.ts");
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
    const text = texts.get(fileName);
    if (text !== undefined) return ts.createSourceFile(fileName, text, languageVersion, true);
    return getSourceFile(fileName, languageVersion, onError, shouldCreate);
  };
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (fileName) => texts.has(fileName) || fileExists(fileName);
  const readFile = host.readFile.bind(host);
  host.readFile = (fileName) => texts.get(fileName) ?? readFile(fileName);
  const program = ts.createProgram({ rootNames: [prelude, ...texts.keys()], options, host });
  const errors: SnippetError[] = [];
  for (const [name, { snippet, offset }] of virtual) {
    const sf = program.getSourceFile(name);
    if (!sf) continue;
    const diagnostics = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
    for (const d of diagnostics) {
      const line = d.start === undefined ? 0 : sf.getLineAndCharacterOfPosition(d.start).line - offset;
      errors.push({
        at: `${snippet.file}:${snippet.line + Math.max(0, line)}`,
        snippet: snippet.origin,
        key: snippetKey(snippet),
        message: ts.flattenDiagnosticMessageText(d.messageText, "\n"),
      });
    }
  }
  // The prelude itself must be sound, or every snippet would be checked against garbage.
  const pf = program.getSourceFile(prelude);
  if (pf) {
    for (const d of program.getSemanticDiagnostics(pf)) {
      errors.push({ at: "scripts/snippet-prelude.d.ts", snippet: "prelude", key: "prelude", message: ts.flattenDiagnosticMessageText(d.messageText, "\n") });
    }
  }
  return errors;
}
