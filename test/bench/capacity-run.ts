/**
 * A capacity run: `count` sockets held open through one gateway, from a
 * client process to a destination process (each with its soft descriptor
 * limit raised), and what the gateway spends on them: descriptors and RSS
 * per held socket, against its own figures before the run. Used by the
 * `capacity` bench family and by test/faults/capacity.test.ts.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { TransportName } from '../../clients/sdk/socket.js';
import { within } from './lib.js';

const CHILD_PATH = fileURLToPath(new URL('./capacity-child.js', import.meta.url));
/** Soft descriptor limit for the helper processes (the hard limit on the CI machines is 20,000). */
export const CAPACITY_FD_LIMIT = 20_000;
/** How long the gateway may take to let go of every descriptor after the client closed all (10,000 sessions' worth of teardown on a busy machine). */
const SETTLE_MS = 60_000;
/**
 * Gateway config for capacity runs: one (anonymous) client may hold this many
 * sockets. The shm ring budget per identity (256 MiB by default: 2 x 16 KiB
 * initial rings per socket, so ~8,190 sockets) is raised to the total (1 GiB).
 */
export const CAPACITY_GATEWAY_YAML =
  'limits: { max_sockets: 30000, max_sockets_per_identity: 30000 }\ntransports: { shm: { max_ring_bytes_per_identity: 1073741824 } }\n';

export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** A helper process with its soft fd limit raised; `ask` sends a message and waits for a reply carrying `key`. */
export interface Helper {
  child: ChildProcess;
  ask<T>(msg: unknown, key: string, ms: number): Promise<T>;
  kill(): void;
}

export async function startHelper(mode: 'dest' | 'client'): Promise<Helper> {
  const child = fork(CHILD_PATH, [mode], {
    execPath: 'sh',
    execArgv: ['-c', `ulimit -n ${CAPACITY_FD_LIMIT} && exec "$0" "$@"`, process.execPath],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiters: { key: string; resolve: (m: unknown) => void }[] = [];
  const early: Record<string, unknown>[] = [];
  child.on('message', (m: Record<string, unknown>) => {
    const i = waiters.findIndex((w) => w.key in m);
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(m);
    else early.push(m);
  });
  const ask = <T>(msg: unknown, key: string, ms: number): Promise<T> => {
    const e = early.findIndex((m) => key in m);
    if (e >= 0) return Promise.resolve(early.splice(e, 1)[0] as T);
    const p = new Promise<T>((resolve) => waiters.push({ key, resolve: resolve as (m: unknown) => void }));
    if (msg !== undefined) child.send(msg as object);
    return within(p, ms, `${mode} helper: ${key}`);
  };
  return { child, ask, kill: () => void child.kill('SIGKILL') };
}

export interface CapacityResult {
  transport: TransportName;
  requested: number;
  held: number;
  errors: Record<string, number>;
  openMs: number;
  destConnections: number;
  gatewayFdsBase: number;
  gatewayFdsHeld: number;
  gatewayFdsAfter: number;
  gatewayRssBase: number;
  gatewayRssHeld: number;
  fdsPerSocket: number;
  rssPerSocketBytes: number;
  /** ms from the client's last close until the gateway's descriptors were back to the baseline (or the bound). */
  fdsSettleMs: number;
}

/** Hold `count` sockets over `transport` through the gateway (`target`, process `pid`), measure, close them all. */
export async function runCapacity(o: { target: string; pid: number; transport: TransportName; count: number; log?: (s: string) => void; settleMs?: number }): Promise<CapacityResult> {
  const dest = await startHelper('dest');
  const client = await startHelper('client');
  try {
    const { port } = await dest.ask<{ port: number }>(undefined, 'port', 15_000);
    await client.ask(undefined, 'ready', 15_000);
    const gatewayFdsBase = fdCount(o.pid);
    const gatewayRssBase = rssBytes(o.pid);
    const opened = await client.ask<{ opened: number; errors: Record<string, number>; ms: number }>(
      { cmd: 'open', target: o.target, uri: `tcp://127.0.0.1:${port}`, count: o.count, transport: o.transport },
      'opened',
      600_000,
    );
    o.log?.(`capacity ${o.transport}: ${opened.opened}/${o.count} sockets open in ${opened.ms} ms${Object.keys(opened.errors).length ? `; failures: ${JSON.stringify(opened.errors)}` : ''}`);
    const { connections } = await dest.ask<{ connections: number }>({ cmd: 'count' }, 'connections', 15_000);
    const gatewayFdsHeld = fdCount(o.pid);
    const gatewayRssHeld = rssBytes(o.pid);
    await client.ask({ cmd: 'close' }, 'closed', 300_000);
    // The gateway lets go of what it held; settle, bounded.
    const closedAt = Date.now();
    let gatewayFdsAfter = fdCount(o.pid);
    while (gatewayFdsAfter !== gatewayFdsBase && Date.now() - closedAt < (o.settleMs ?? SETTLE_MS)) {
      await new Promise((r) => setTimeout(r, 100));
      gatewayFdsAfter = fdCount(o.pid);
    }
    const fdsSettleMs = Date.now() - closedAt;
    const n = Math.max(1, opened.opened);
    return {
      transport: o.transport,
      requested: o.count,
      held: opened.opened,
      errors: opened.errors,
      openMs: opened.ms,
      destConnections: connections,
      gatewayFdsBase,
      gatewayFdsHeld,
      gatewayFdsAfter,
      gatewayRssBase,
      gatewayRssHeld,
      fdsPerSocket: (gatewayFdsHeld - gatewayFdsBase) / n,
      rssPerSocketBytes: (gatewayRssHeld - gatewayRssBase) / n,
      fdsSettleMs,
    };
  } finally {
    client.kill();
    dest.kill();
  }
}
