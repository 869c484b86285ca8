/**
 * A/B of pre-issued shm slots (native/SHM.md) in one run: two SDK Gateway
 * objects on one child gateway, one naming pre-issued slots in its Connects,
 * one with `shm: { preissue: 0 }` (reserve at Connect, then BIND), each
 * opening a new connection per request (connect, write 1 byte, first byte of
 * the echo, destroy), interleaved so both see the same machine load.
 * `node dist/test/bench/connect-preissue.js [--n N]` prints one JSON line:
 * p50/p90 connect-to-first-byte (µs) and BINDs sent, per side.
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { CtlType } from '../../proto/shm-wire.js';
import { echoServer } from '../helpers/harness.js';
import { percentile, startChildGateway } from './lib.js';

/** Requests per side (interleaved), after WARM_UP each. */
const N = 400;
const WARM_UP = 20;
/** One request may take at most this long. */
const REQUEST_TIMEOUT_MS = 10_000;

const { values } = parseArgs({ options: { n: { type: 'string' } } });
const n = Number(values.n ?? N);

const gw = await startChildGateway({ label: 'preissue-ab' });
const echo = await echoServer();
const sides = {
  preissued: await SdkGateway.connect(gw.target, { transports: ['shm'] }),
  bind: await SdkGateway.connect(gw.target, { transports: ['shm'], shm: { preissue: 0 } }),
};

async function one(sdk: SdkGateway): Promise<number> {
  const t0 = performance.now();
  const s = sdk.createConnection({ port: echo.port, host: '127.0.0.1' }, undefined, { transports: ['shm'], noDelay: true });
  s.write('x');
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no echo in time')), REQUEST_TIMEOUT_MS);
    s.once('data', () => resolve(clearTimeout(timer)));
    s.once('error', reject);
  });
  const us = (performance.now() - t0) * 1000;
  s.destroy();
  return us;
}

try {
  for (let i = 0; i < WARM_UP; i++) for (const sdk of Object.values(sides)) await one(sdk);
  const got = { preissued: [] as number[], bind: [] as number[] };
  for (let i = 0; i < n; i++) {
    const order = i % 2 ? (['preissued', 'bind'] as const) : (['bind', 'preissued'] as const);
    for (const k of order) got[k].push(await one(sides[k]));
  }
  const binds = (sdk: SdkGateway) =>
    [...((sdk.shmClient?.sessions.values() ?? []) as Iterable<{ sent?: Map<CtlType, number> }>)].reduce((m, s) => m + (s.sent?.get(CtlType.BIND) ?? 0), 0);
  const row = (k: keyof typeof sides) => {
    const sorted = [...got[k]].sort((a, b) => a - b);
    return { p50_us: Math.round(percentile(sorted, 50)), p90_us: Math.round(percentile(sorted, 90)), binds: binds(sides[k]) };
  };
  process.stdout.write(JSON.stringify({ n, preissued: row('preissued'), bind: row('bind') }) + '\n');
} finally {
  for (const sdk of Object.values(sides)) sdk.close();
  await echo.close();
  await gw.stop();
}
