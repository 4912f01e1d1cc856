/**
 * edge-outbox (JSR `@edge-outbox/core`): the runtime-agnostic core. Adapters live in the subpaths
 * `./libsql`, `./memory` and `./testing`.
 *
 * @example
 * ```ts
 * import { createOutbox, createRelay, defineTopic } from "@edge-outbox/core";
 * ```
 *
 * @module
 */
export * from "./src/mod.ts";
