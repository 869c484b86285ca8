/** A child SDK process of the two-VM lab (sdk-child.ts) and its JSON reports, for tests in VM b. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { A_ADDR, PORTS } from './lab.js';

const GW = `${A_ADDR}:${PORTS.gateway}`;
const CHILD = fileURLToPath(new URL('./sdk-child.js', import.meta.url));
/** How long a test waits for one report. */
export const WAIT_MS = 180_000;

export type Report = Record<string, unknown> & { event: string };

/** A child SDK process and its JSON reports. */
export class Child {
  readonly proc: ChildProcess;
  readonly reports: Report[] = [];
  readonly exited: Promise<number | null>;
  #waiters: Array<() => void> = [];
  stderr = '';

  /** `script`: another child of this directory (failover-child.js) against `gateway`, with `args` after the mode and `env` added. */
  constructor(mode: 'stream' | 'echo' | 'lines' | 'up' | 'down' | 'idle', opts: { script?: string; gateway?: string; args?: string[]; env?: Record<string, string> } = {}) {
    const script = opts.script ? fileURLToPath(new URL(`./${opts.script}`, import.meta.url)) : CHILD;
    this.proc = spawn(process.execPath, [script, opts.gateway ?? GW, mode, ...(opts.args ?? [])], {
      stdio: [mode === 'lines' ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...(opts.env ?? {}) },
    });
    this.proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      try {
        this.reports.push(JSON.parse(line) as Report);
      } catch {
        this.reports.push({ event: 'garbage', line });
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
    void this.exited.then(() => {
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** The first report matching `pred`; rejects when the child exits or `ms` pass without one. */
  async next(pred: (r: Report) => boolean, ms = WAIT_MS, what = 'a report'): Promise<Report> {
    const until = Date.now() + ms;
    let gone = false;
    void this.exited.then(() => (gone = true));
    for (;;) {
      const r = this.reports.find(pred);
      if (r) return r;
      if (gone) throw new Error(`child exited before ${what}; reports: ${JSON.stringify(this.reports)}; stderr: ${this.stderr.slice(-2000)}`);
      if (Date.now() > until) throw new Error(`no ${what} within ${ms} ms; reports: ${JSON.stringify(this.reports)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 500);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Reports so far that match `pred`. */
  count(pred: (r: Report) => boolean): number {
    return this.reports.filter(pred).length;
  }

  /** A line on the child's stdin (mode `lines`). */
  say(line: string): void {
    this.proc.stdin!.write(line + '\n');
  }

  kill(): void {
    if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}
