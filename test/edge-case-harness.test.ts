// The runner-neutral case harness the workerd conformance worker uses (test/fixtures/workers/case-harness.ts):
// its matchers must fail where vitest's would, or the cases run inside workerd could not fail.
import { describe, expect, it } from "vitest";
import { caseHarness, deepEqual } from "./fixtures/workers/case-harness.ts";

describe("case harness", () => {
  it("matchers pass and fail like Jest's", () => {
    const h = caseHarness();
    const fails = (f: () => void): void => expect(f).toThrow(/expected/);
    h.expect(1).toBe(1);
    fails(() => h.expect(1).toBe(2));
    fails(() => h.expect({ a: 1 }).toBe({ a: 1 }));
    h.expect({ a: 1, b: undefined, c: [1, { d: "x" }] }).toEqual({ a: 1, c: [1, { d: "x" }] });
    fails(() => h.expect({ a: 1, c: [1, { d: "x" }] }).toEqual({ a: 1, c: [1, { d: "y" }] }));
    fails(() => h.expect([1, 2]).toEqual([1, 2, 3]));
    fails(() => h.expect({ a: 1 }).toEqual({ a: 1, b: 2 }));
    h.expect(3).toBeGreaterThan(2);
    fails(() => h.expect(2).toBeGreaterThan(2));
    h.expect(2).toBeGreaterThanOrEqual(2);
    h.expect(1).toBeLessThan(2);
    fails(() => h.expect(2).toBeLessThanOrEqual(1));
    fails(() => h.expect("3").toBeGreaterThan(2));
    h.expect([1, 2]).toHaveLength(2);
    fails(() => h.expect([1, 2]).toHaveLength(3));
    h.expect(["a", "b"]).toContain("b");
    h.expect("hello").toContain("ell");
    fails(() => h.expect(["a"]).toContain("b"));
    h.expect(null).toBeNull();
    fails(() => h.expect(undefined).toBeNull());
    h.expect("x").toBeTruthy();
    fails(() => h.expect(0).toBeTruthy());
    h.expect(1).not.toBe(2);
    fails(() => h.expect(1).not.toBe(1));
    fails(() => h.expect([1]).not.toEqual([1]));
    expect(deepEqual(new Date(5), new Date(5))).toBe(true);
    expect(deepEqual(new Date(5), new Date(6))).toBe(false);
  });

  it("records cases by full name and reports failures, timeouts and unknown names without throwing", async () => {
    const h = caseHarness();
    h.describe("outer", () => {
      h.describe("inner", () => {
        h.it("passes", async () => h.expect(1).toBe(1));
        h.it("fails", async () => h.expect(1).toBe(2));
      });
      h.it("hangs", () => new Promise(() => {}), 50);
    });
    expect(h.cases()).toEqual([
      { name: "outer > inner > passes", timeoutMs: 30_000 },
      { name: "outer > inner > fails", timeoutMs: 30_000 },
      { name: "outer > hangs", timeoutMs: 50 },
    ]);
    expect(await h.run("outer > inner > passes")).toMatchObject({ ok: true });
    const failed = await h.run("outer > inner > fails");
    expect(failed.ok).toBe(false);
    expect(failed.error).toContain("AssertionError: expected 1 to be 2");
    expect(await h.run("outer > hangs")).toMatchObject({ ok: false, error: expect.stringContaining("timed out after 50 ms") });
    expect(await h.run("nope")).toMatchObject({ ok: false, error: "no such case: nope" });
    h.describe("outer", () => expect(() => h.it("hangs", async () => {})).toThrow("duplicate case name: outer > hangs"));
  });
});
