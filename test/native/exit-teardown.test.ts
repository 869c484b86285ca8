/**
 * A process that ends with native wraps still open (pumps with their I/O
 * thread, a vsock listener with its accept thread) exits cleanly: each wrap
 * stops its thread in an environment cleanup hook, before Node frees its
 * thread-safe function. Without that, the wrap's finalizer released a freed
 * TSFN and the process aborted (SIGABRT) at exit — seen first in an SDK process
 * whose process-wide vsock relay pump was still alive.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./exit-child.js', import.meta.url));
/** Bound on the child's whole life (it does a few loopback connects). */
const CHILD_MS = 20_000;

async function run(how: 'natural' | 'exit'): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  const child = spawn(process.execPath, [CHILD, how], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_MS);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  return { code, signal, out, err };
}

for (const how of ['natural', 'exit'] as const) {
  test(`open pumps and listeners at exit (${how}): the process exits 0, no abort`, async (t) => {
    const r = await run(how);
    t.log(r.out.trim());
    t.true(r.out.includes('idle pump open'), `the child reached its exit point: ${r.err}`);
    t.is(r.signal, null, `killed by ${r.signal}: ${r.err}`);
    t.is(r.code, 0, r.err);
  });
}
