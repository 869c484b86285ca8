/**
 * The SDK's shm side: the opt-in zero-copy read API (and its misuse, which
 * must throw, never read reused ring memory), destroy giving the slot back,
 * a gateway killed under a reader, and the memory cost of 10,000 idle shm
 * sockets in a gateway child process (VmRSS before and after).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway } from '../../../clients/sdk/gateway.js';
import type { GatewaySocket } from '../../../clients/sdk/socket.js';
import { InvalidArgumentError, NativeError, WrongSocketKindError } from '../../../proto/errors.js';
import { echoServer, readAll, startChildGateway, startGateway, tcpServer, within } from '../../helpers/harness.js';
import { eventually } from '../../helpers/rpc.js';

const MiB = 1 << 20;

function shmDir(t: import('ava').ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-shm-sdk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Deterministic bytes, so both ends can hash the same stream. */
function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

test.serial('zero-copy reads: loans over the ring carry every byte (SHA-256); misuse throws', async (t) => {
  const gw = await startGateway({ transports: { shm: { path: join(shmDir(t), 'shm.sock') } } }, { transports: ['shm', 'tcp'] });
  const payload = pattern(4 * MiB, 7);
  // Speaks only after the request, so the client can switch to loans first.
  const dest = await tcpServer((c) => c.once('data', () => c.end(payload)));
  t.teardown(async () => {
    await dest.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(dest.uri);
  t.is(sock.transport, 'shm');
  const loans = sock.readLoans();
  sock.write('GET');
  const hash = createHash('sha256');
  let bytes = 0;
  let kept: { view: Buffer; release(n?: number): void; released: boolean } | undefined;
  for (let step = 0; step < 100_000; step++) {
    const r = await within(loans.next(), 10_000, 'next loan');
    if (r.done) break;
    const loan = r.value;
    t.true(loan.length > 0);
    hash.update(loan.view);
    bytes += loan.length;
    if (!kept) {
      // Asking for the next loan while one is out is an error.
      await t.throwsAsync(loans.next(), { instanceOf: InvalidArgumentError });
      kept = loan;
      break;
    }
    loan.release();
  }
  t.truthy(kept);
  kept!.release();
  t.true(kept!.released);
  t.throws(() => kept!.view, { instanceOf: NativeError, message: /after release/ }, 'a released view cannot be read');
  t.throws(() => kept!.release(), { instanceOf: NativeError, message: /twice/ });
  // One zero-copy reader per socket.
  t.throws(() => sock.readLoans(), { instanceOf: InvalidArgumentError, message: /already in progress/ });
  t.pass(`read ${bytes} bytes zero-copy before the misuse checks`);
  sock.destroy();
});

test.serial('zero-copy reads from start to end of stream, SHA-256 checked; not on tcp, not after stream reads', async (t) => {
  const gw = await startGateway({ transports: { shm: { path: join(shmDir(t), 'shm.sock') } } }, { transports: ['shm', 'tcp'] });
  const payload = pattern(8 * MiB + 123, 11);
  const dest = await tcpServer((c) => c.once('data', () => c.end(payload)));
  t.teardown(async () => {
    await dest.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(dest.uri);
  const loans = sock.readLoans();
  sock.end('GET');
  const hash = createHash('sha256');
  let bytes = 0;
  let count = 0;
  for await (const loan of loans) {
    hash.update(loan.view);
    bytes += loan.length;
    count++;
    loan.release();
  }
  t.is(bytes, payload.length);
  t.is(hash.digest('hex'), createHash('sha256').update(payload).digest('hex'));
  t.log(`${count} loans for ${bytes} bytes`);
  await within(once(sock, 'close'), 10_000, 'socket closes after both ends');
  // On tcp there is no ring to lend from.
  const tcp = await gw.sdk.connect(dest.uri, { transports: ['tcp'] });
  t.throws(() => tcp.readLoans(), { instanceOf: WrongSocketKindError });
  tcp.destroy();
  // After bytes went through the stream, loans would skip them: refused.
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const s2 = await gw.sdk.connect(echo.uri);
  s2.write('x');
  await once(s2, 'data');
  t.throws(() => s2.readLoans(), { instanceOf: WrongSocketKindError });
  s2.destroy();
});

test.serial('destroy gives the slot back: the gateway socket closes and its ring bytes are released', async (t) => {
  const gw = await startGateway({ transports: { shm: { path: join(shmDir(t), 'shm.sock') } } }, { transports: ['shm'] });
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const shm = (gw.gateway as unknown as { shm: { ringBytes(): number } }).shm;
  const first = await gw.sdk.connect(echo.uri);
  const base = shm.ringBytes();
  const socks = await Promise.all(Array.from({ length: 8 }, () => gw.sdk.connect(echo.uri)));
  t.true(shm.ringBytes() > base);
  for (const s of socks) s.destroy();
  t.true(await eventually(() => gw.gateway.table.size === 1, 10_000), 'the destroyed sockets left the gateway');
  t.true(await eventually(() => shm.ringBytes() === base, 10_000), `ring bytes back to ${base} (now ${shm.ringBytes()})`);
  const got = readAll(first);
  first.end('still here');
  t.is((await within(got, 10_000, 'echo')).toString(), 'still here');
});

test.serial('a gateway killed under an shm reader: the reader gets an error, never a clean end', async (t) => {
  const dir = shmDir(t);
  const g = await startChildGateway(`transports: { shm: { path: "${join(dir, 'shm.sock')}" } }\n`);
  const silent = await tcpServer(() => {});
  const sdk = await Gateway.connect(g.target, { transports: ['shm'] });
  t.teardown(async () => {
    sdk.close();
    if (g.child.exitCode === null) g.child.kill('SIGKILL');
    await silent.close();
  });
  const sock = await sdk.connect(silent.uri);
  t.is(sock.transport, 'shm');
  const outcome = new Promise<string>((resolve) => {
    sock.on('data', () => {});
    sock.once('end', () => resolve('clean end'));
    sock.once('error', (e: Error & { code?: string }) => resolve(e.code ?? e.message));
  });
  g.child.kill('SIGKILL');
  t.is(await within(outcome, 5_000, 'reader outcome'), 'ERR_SOCKGATE_GATEWAY_UNAVAILABLE');
});

function vmRssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

test.serial('10,000 idle shm sockets: gateway RSS per socket (child gateway, VmRSS before/after)', async (t) => {
  const N = 10_000;
  const CONCURRENCY = 128;
  t.timeout(240_000);
  const dir = shmDir(t);
  const g = await startChildGateway(
    [
      'telemetry: { log_level: warn, traces: none }',
      `transports: { shm: { path: "${join(dir, 'shm.sock')}", max_ring_bytes_per_identity: 1073741824 } }`,
      'limits: { max_sockets: 65536, max_sockets_per_identity: 65536 }',
      '',
    ].join('\n'),
  );
  const echo = await echoServer();
  const sdk = await Gateway.connect(g.target, { transports: ['shm'] });
  const socks: GatewaySocket[] = [];
  t.teardown(async () => {
    for (const s of socks) s.destroy();
    sdk.close();
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const pid = g.child.pid!;
  // One round trip first, so the session, pump and code paths exist before "before".
  const warm = await sdk.connect(echo.uri);
  warm.write('w');
  await once(warm, 'data');
  await new Promise((r) => setTimeout(r, 500));
  const before = vmRssKiB(pid);
  const started = Date.now();
  let next = 0;
  const worker = async () => {
    while (next < N && Date.now() - started < 180_000) {
      next++;
      const s = await sdk.connect(echo.uri);
      socks.push(s);
      // 16 bytes each way: both rings of the slot have been touched.
      s.write('0123456789abcdef');
      await once(s, 'data');
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const connectMs = Date.now() - started;
  t.is(socks.length, N, `connected ${socks.length} in ${connectMs} ms`);
  t.true(socks.every((s) => s.transport === 'shm'));
  await new Promise((r) => setTimeout(r, 1000));
  const after = vmRssKiB(pid);
  const perSocket = ((after - before) * 1024) / N;
  const sessions = (sdk as unknown as { shmClient: { sessions: Map<string, unknown> } }).shmClient.sessions.size;
  t.log(`gateway VmRSS ${before} KiB -> ${after} KiB for ${N} idle shm sockets (${sessions} sessions): ${(perSocket / 1024).toFixed(1)} KiB per socket; connect+echo of all took ${connectMs} ms`);
  t.true(perSocket <= 64 * 1024, `${(perSocket / 1024).toFixed(1)} KiB per socket exceeds 64 KiB`);
});
