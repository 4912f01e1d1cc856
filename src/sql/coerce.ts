/**
 * Coercions of driver values, shared by the SQL storages (internal, not exported). Drivers return integers as
 * number, bigint or string (int8, numeric, `intMode: "bigint"`) and text as string or bytes; these read them.
 *
 * @module
 */

/**
 * Reads a number the driver may return as number, string (int8, numeric) or bigint.
 *
 * @param x the column value
 * @returns a number (0 for null or undefined)
 * @throws {TypeError} for any other type
 * @example
 * ```ts
 * num("42"); // 42
 * ```
 */
export function num(x: unknown): number {
  if (typeof x === "number") return x;
  if (typeof x === "bigint" || typeof x === "string") return Number(x);
  if (x === null || x === undefined) return 0;
  throw new TypeError(`expected a number, got ${typeof x}`);
}

/**
 * Like {@link num}, keeping null (and undefined) as null.
 *
 * @param x the column value
 * @returns a number or null
 * @example
 * ```ts
 * numOrNull(null); // null
 * ```
 */
export function numOrNull(x: unknown): number | null {
  return x === null || x === undefined ? null : num(x);
}

const decoder = new TextDecoder();

/**
 * Reads a text column: a string as it is, bytes (an `ArrayBuffer`) as UTF-8, anything else through `String`.
 *
 * @param x the column value
 * @returns the text
 * @example
 * ```ts
 * text(new TextEncoder().encode("hi").buffer); // "hi"
 * ```
 */
export function text(x: unknown): string {
  if (typeof x === "string") return x;
  if (x instanceof ArrayBuffer) return decoder.decode(x);
  return String(x);
}

/**
 * Like {@link text}, keeping null (and undefined) as null.
 *
 * @param x the column value
 * @returns the text or null
 * @example
 * ```ts
 * textOrNull(null); // null
 * ```
 */
export function textOrNull(x: unknown): string | null {
  return x === null || x === undefined ? null : text(x);
}

/**
 * Tells whether `n` is a safe integer ≥ 1.
 *
 * @param n anything
 * @returns true for 1, 2, 3, …
 * @example
 * ```ts
 * isPositiveInt(0); // false
 * ```
 */
export function isPositiveInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 1;
}

/**
 * Tells whether `n` is a safe integer ≥ 0.
 *
 * @param n anything
 * @returns true for 0, 1, 2, …
 * @example
 * ```ts
 * isNonNegativeInt(0); // true
 * ```
 */
export function isNonNegativeInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/**
 * Tells whether `x` has a method `name` (postgres.js clients are functions with methods, so functions count).
 *
 * @param x anything
 * @param name the method name
 * @returns true when `x[name]` is a function
 * @example
 * ```ts
 * hasMethod({ execute() {} }, "execute"); // true
 * ```
 */
export function hasMethod(x: unknown, name: string): boolean {
  return (typeof x === "object" || typeof x === "function") && x !== null &&
    typeof (x as Record<string, unknown>)[name] === "function";
}
