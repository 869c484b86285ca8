/**
 * Fault-suite helpers: a process's descriptors and resident memory from
 * /proc, bounded polling, and a `sockgate <subcommand>` child (proxy,
 * sidecar) whose ready line is awaited. Gateways come from
 * test/helpers/harness.ts (startChildGateway).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { CLI_PATH, within } from '../helpers/harness.js';

/** Open descriptors of `pid`. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident set of `pid` in bytes. */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Poll `value()` every 100 ms until `ok(v)` or `ms` pass; resolves with the last value. */
export async function settle<T>(value: () => T, ok: (v: T) => boolean, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  let v = value();
  while (!ok(v) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    v = value();
  }
  return v;
}

/** A loopback port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface CliChild {
  child: ChildProcess;
  output(): string;
  /** SIGKILL it (if still running) and wait for the exit. */
  kill(): Promise<void>;
}

/** Run `sockgate <args>` as a child; resolves once its output matches `ready`. */
export async function startCli(args: string[], ready: RegExp, env: NodeJS.ProcessEnv = {}): Promise<CliChild & { match: RegExpExecArray }> {
  const child = spawn(process.execPath, [CLI_PATH, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TOKEN: '', ...env } });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out = (out + s).slice(-1 << 20)));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (out = (out + s).slice(-1 << 20)));
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await within(exited, 5_000, `sockgate ${args[0]} exit`);
  };
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const m = ready.exec(out);
    if (m) return { child, output: () => out, kill, match: m };
    if (child.exitCode !== null) throw new Error(`sockgate ${args[0]} exited ${child.exitCode}: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await kill();
  throw new Error(`sockgate ${args[0]} not ready in time: ${out}`);
}

/** How a stream ended: its first error (and code), or a clean end/close. */
export interface Ending {
  error: (Error & { code?: string }) | undefined;
  ended: boolean;
}

/** Resolves when `s` closes (or errors), with how. */
export function ending(s: NodeJS.EventEmitter): Promise<Ending> {
  return new Promise((resolve) => {
    let error: Ending['error'];
    let ended = false;
    s.on('error', (e: Error) => (error ??= e));
    s.on('end', () => (ended = true));
    s.once('close', () => resolve({ error, ended }));
  });
}
