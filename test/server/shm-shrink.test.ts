/**
 * Rings grown under load give their bytes back once idle: an SDK socket over
 * shm echoes 64 MiB (SHA-256), autotuning grows its rings, and after
 * transports.shm.shrink_idle_ms without traffic the gateway's ring-byte
 * accounting is back where it started; a second transfer on the same socket
 * (on the small rings) is exact too.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { echoServer, hashUntilEnd, startGateway, within } from '../helpers/harness.js';

const MiB = 1 << 20;

async function send(sock: Duplex, b: Buffer): Promise<void> {
  for (let o = 0; o < b.length; o += 256 * 1024) if (!sock.write(b.subarray(o, o + 256 * 1024))) await once(sock, 'drain');
}

test('an idle socket\'s grown rings shrink back and their bytes return to the caps', async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-shm-shrink-'));
  const gw = await startGateway({ transports: { shm: { path: join(dir, 'shm.sock'), shrink_idle_ms: 200 } } }, { transports: ['shm'] });
  const echo = await echoServer();
  try {
    const shm = (gw.gateway as unknown as { transports: Map<TransportKind, { ringBytes(): number }> }).transports.get(TransportKind.TRANSPORT_KIND_SHM)!;
    const sock = await gw.sdk.connect(echo.uri);
    t.is(sock.transport, 'shm');
    const start = shm.ringBytes();
    let echoed = 0;
    sock.on('data', (d: Buffer) => (echoed += d.length));
    const got = hashUntilEnd(sock);
    const parts = [randomBytes(64 * MiB), randomBytes(8 * MiB)];
    // A burst: the rings grow.
    let grown = start;
    const watch = setInterval(() => (grown = Math.max(grown, shm.ringBytes())), 5);
    await within(send(sock, parts[0]!), 60_000, 'first send');
    await within((async () => { while (echoed < parts[0]!.length) await new Promise((r) => setTimeout(r, 5)); })(), 60_000, 'first echo');
    clearInterval(watch);
    t.true(grown > start, `the rings grew under load (${start} -> ${grown} bytes)`);
    // Idle: back to where it started.
    await within((async () => { while (shm.ringBytes() !== start) await new Promise((r) => setTimeout(r, 20)); })(), 10_000, 'idle shrink');
    t.is(shm.ringBytes(), start);
    // The same socket again, on the small rings; the whole echoed stream is hashed.
    await within(send(sock, parts[1]!), 60_000, 'second send');
    sock.end();
    const r = await within(got, 60_000, 'second echo');
    t.is(r.bytes, 72 * MiB);
    t.is(r.sha256, createHash('sha256').update(parts[0]!).update(parts[1]!).digest('hex'));
  } finally {
    await echo.close();
    await gw.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
