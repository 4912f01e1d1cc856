// The drain progress line: a bar over the backlog seen at the start, delivered / retried / dead counts and the rate.
// On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a line per update, at most one a second.

/** Running totals of a multi-drain run. */
export interface Totals {
  claimed: number;
  delivered: number;
  retried: number;
  dead: number;
  released: number;
  leaseLost: number;
  drains: number;
}

export function emptyTotals(): Totals {
  return { claimed: 0, delivered: 0, retried: 0, dead: 0, released: 0, leaseLost: 0, drains: 0 };
}

const WIDTH = 30;

/** Renders one progress line. */
export function renderProgress(t: Totals, backlog: number, elapsedMs: number): string {
  const done = t.delivered + t.dead;
  const ratio = backlog > 0 ? Math.min(1, done / backlog) : 1;
  const filled = Math.round(ratio * WIDTH);
  const bar = "█".repeat(filled) + "░".repeat(WIDTH - filled);
  const rate = elapsedMs > 0 ? Math.round((t.delivered * 1000) / elapsedMs) : 0;
  const n = (x: number) => x.toLocaleString("en-US");
  return `${bar} ${String(Math.round(ratio * 100)).padStart(3)}% ${n(done)}/${n(backlog)}  delivered ${n(t.delivered)}  ` +
    `retried ${n(t.retried)}  dead ${n(t.dead)}  ${n(rate)} msg/s`;
}

/** Writes progress lines to a stream. */
export class ProgressLine {
  private lastPlain = 0;
  private readonly tty: boolean;
  private readonly out: { write(s: string): unknown; isTTY?: boolean };
  private readonly enabled: boolean;
  constructor(out: { write(s: string): unknown; isTTY?: boolean }, enabled: boolean) {
    this.out = out;
    this.enabled = enabled;
    this.tty = Boolean(out.isTTY);
  }
  update(line: string, final = false): void {
    if (!this.enabled) return;
    if (this.tty) {
      this.out.write(`\r\x1b[2K${line}${final ? "\n" : ""}`);
      return;
    }
    const now = Date.now();
    if (final || now - this.lastPlain >= 1000) {
      this.lastPlain = now;
      this.out.write(`${line}\n`);
    }
  }
}
