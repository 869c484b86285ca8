/**
 * A soak: mixed connect / transfer / close load against one gateway process,
 * bounded in time and count. Workers loop: open a socket over a random plane,
 * echo a random amount (SHA-256 checked) or abort mid-transfer, close. The
 * gateway's RSS and descriptors are taken after a warm-up of the same load
 * and a quiet period (the baseline), and again after the soak and the same
 * quiet period. Used by the `soak` bench family and test/faults/soak.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Gateway } from '../../clients/sdk/gateway.js';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import type { TransportName } from '../../clients/sdk/socket.js';
import { fdCount, rssBytes } from './capacity-run.js';
import { createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { within } from './lib.js';

/** Workers running the loop at once. */
const WORKERS = 8;
/** Largest echo of one transfer (sizes are random up to this). */
const MAX_TRANSFER_BYTES = 2 << 20;
/** One transfer in this many is aborted mid-way instead of finished. */
const ABORT_ONE_IN = 8;
/** Bound on one iteration (a hang fails the run instead of stalling it). */
const ITERATION_TIMEOUT_MS = 30_000;
/** Bound on iterations per worker and phase, whatever the clock says. */
const MAX_ITERATIONS = 100_000;

export interface SoakResult {
  warmupMs: number;
  soakMs: number;
  transfers: number;
  aborted: number;
  hashMismatches: number;
  failures: Record<string, number>;
  rssBaseline: number;
  fdsBaseline: number;
  rssAfter: number;
  fdsAfter: number;
  /** Samples during the soak, for the report. */
  rssPeak: number;
}

export async function runSoak(o: { target: string; pid: number; warmupMs: number; soakMs: number; quietMs: number; log?: (s: string) => void }): Promise<SoakResult> {
  const planes: TransportName[] = shmSupport.available ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'];
  // A half-close-aware echo: the client's end ends the echo.
  const conns = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    conns.add(c);
    c.on('error', () => {});
    c.on('close', () => conns.delete(c));
    c.pipe(c);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const echo = { port: (server.address() as { port: number }).port };
  // One SDK connection for the whole run: its sessions exist in the baseline and after alike.
  const sdk = await Gateway.connect(o.target);
  const block = randomBytes(MAX_TRANSFER_BYTES);
  let transfers = 0;
  let aborted = 0;
  let hashMismatches = 0;
  let rssPeak = 0;
  const failures = new Map<string, number>();
  let seq = 0;

  const iteration = async (plane: TransportName) => {
    const size = 1 + Math.floor(Math.random() * MAX_TRANSFER_BYTES);
    const abort = Math.random() * ABORT_ONE_IN < 1;
    const s = await sdk.connect(`tcp://127.0.0.1:${echo.port}`, { transports: [plane] });
    const got = createHash('sha256');
    let bytes = 0;
    const done = new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => {
        bytes += c.length;
        got.update(c);
      });
      s.once('end', () => resolve());
      s.once('error', reject);
    });
    const off = Math.floor(Math.random() * (MAX_TRANSFER_BYTES - size + 1));
    const payload = block.subarray(off, off + size);
    if (abort) {
      s.write(payload.subarray(0, size >> 1));
      await new Promise((r) => setTimeout(r, Math.random() * 20));
      s.destroy();
      done.catch(() => {});
      aborted++;
      return;
    }
    for (let p = 0; p < size; p += 64 * 1024) {
      if (!s.write(payload.subarray(p, Math.min(size, p + 64 * 1024)))) await new Promise<void>((r) => s.once('drain', r));
    }
    s.end();
    await done;
    transfers++;
    if (bytes !== size || got.digest('hex') !== createHash('sha256').update(payload).digest('hex')) hashMismatches++;
    if (!s.closed) await new Promise<void>((r) => s.once('close', () => r()));
  };

  const phase = async (ms: number) => {
    const end = Date.now() + ms;
    const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, rssBytes(o.pid))), 1_000);
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        for (let i = 0; i < MAX_ITERATIONS && Date.now() < end; i++) {
          const plane = planes[seq++ % planes.length]!;
          try {
            await within(iteration(plane), ITERATION_TIMEOUT_MS, 'one soak iteration');
          } catch (err) {
            const k = `${plane}: ${(err as { code?: string }).code ?? ''}: ${(err as Error).message.slice(0, 160)}`;
            failures.set(k, (failures.get(k) ?? 0) + 1);
          }
        }
      }),
    );
    clearInterval(sampler);
  };

  try {
    o.log?.(`soak: warm-up ${o.warmupMs / 1000} s`);
    await phase(o.warmupMs);
    await new Promise((r) => setTimeout(r, o.quietMs));
    const rssBaseline = rssBytes(o.pid);
    const fdsBaseline = fdCount(o.pid);
    o.log?.(`soak: baseline RSS ${(rssBaseline / 2 ** 20).toFixed(1)} MiB, ${fdsBaseline} fds; soaking ${o.soakMs / 1000} s`);
    const warmTransfers = transfers;
    await phase(o.soakMs);
    await new Promise((r) => setTimeout(r, o.quietMs));
    const rssAfter = rssBytes(o.pid);
    const fdsAfter = fdCount(o.pid);
    o.log?.(`soak: after RSS ${(rssAfter / 2 ** 20).toFixed(1)} MiB, ${fdsAfter} fds; ${transfers - warmTransfers} transfers in the soak`);
    return {
      warmupMs: o.warmupMs,
      soakMs: o.soakMs,
      transfers,
      aborted,
      hashMismatches,
      failures: Object.fromEntries(failures),
      rssBaseline,
      fdsBaseline,
      rssAfter,
      fdsAfter,
      rssPeak,
    };
  } finally {
    sdk.close();
    for (const c of conns) c.destroy();
    server.close();
  }
}

/** The bound: RSS after the soak within 5% + 8 MiB of the baseline. */
export function rssWithinBound(r: SoakResult): boolean {
  return r.rssAfter <= r.rssBaseline * 1.05 + 8 * 2 ** 20;
}
