/**
 * The sidecar's sessions over gateway links, over shm and over tcp: 64 MiB
 * each way byte-exact (SHA-256) with a hook that fails if the payload
 * reaches a JS stream (sidecar and gateway run in this process); bytes the
 * app sent before the upstream was connected arrive first, then the rest and
 * the FIN; a reset from the backend resets the app.
 */
import test from 'ava';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { hashUntilEnd, sendRandom, startGateway, tcpServer, within, type TestGateway } from '../../helpers/harness.js';
import { baseConfig, dial, startSidecar } from '../sidecar/helpers.js';
import { payloadHook } from './helpers.js';

const MIB = 1 << 20;
const BIG = 64 * MIB;
const CONTROL_BYTES_MAX = 256 * 1024;
const T_MS = 60_000;

let gw: TestGateway;
test.before(async () => {
  gw = await startGateway();
});
test.after.always(async () => {
  await gw?.stop();
});

for (const transport of ['shm', 'tcp'] as const) {
  test.serial(`sidecar over ${transport}: 64 MiB each way, exact, payload never in JS`, async (t) => {
    const conns: Socket[] = [];
    const backend = await tcpServer((c) => conns.push(c));
    const cfg = baseConfig(gw.target, { endpoints: [backend.uri] });
    (cfg['gateway'] as { transports: string[] }).transports = [transport];
    const sc = await startSidecar(cfg);
    const hook = payloadHook();
    try {
      const app = await dial(sc.port('main'));
      hook.allow(app);
      await within((async () => { while (!conns.length) await new Promise((r) => setTimeout(r, 5)); })(), 10_000, 'backend connection');
      const be = conns[0]!;
      hook.allow(be);
      const atBe = hashUntilEnd(be);
      const atApp = hashUntilEnd(app);
      const [up, down] = await within(Promise.all([sendRandom(app, BIG, 256 * 1024), sendRandom(be, BIG, 256 * 1024)]), T_MS, 'sends');
      const [gotBe, gotApp] = await within(Promise.all([atBe, atApp]), T_MS, 'receives');
      t.is(gotApp.bytes, BIG);
      t.is(gotApp.sha256, down);
      t.is(gotBe.bytes, BIG);
      t.is(gotBe.sha256, up);
      t.true(hook.bytes() < CONTROL_BYTES_MAX, `payload reached JS: ${hook.bytes()} bytes pushed into JS streams`);
    } finally {
      hook.remove();
      await sc.stop();
      await backend.close();
    }
  });

  test.serial(`sidecar over ${transport}: the early bytes and the stream arrive in order`, async (t) => {
    const conns: Socket[] = [];
    const backend = await tcpServer((c) => conns.push(c));
    const cfg = baseConfig(gw.target, { endpoints: [backend.uri] });
    (cfg['gateway'] as { transports: string[] }).transports = [transport];
    const sc = await startSidecar(cfg);
    try {
      const app = await dial(sc.port('main'));
      app.write('HELLO\n');
      await within((async () => { while (!conns.length) await new Promise((r) => setTimeout(r, 5)); })(), 10_000, 'backend connection');
      const be = conns[0]!;
      const chunks: Buffer[] = [];
      be.on('data', (c: Buffer) => chunks.push(c));
      const ended = once(be, 'end');
      app.end('WORLD\n');
      await within(ended, 10_000, 'backend sees the FIN');
      t.is(Buffer.concat(chunks).toString(), 'HELLO\nWORLD\n');
      be.end();
    } finally {
      await sc.stop();
      await backend.close();
    }
  });

  test.serial(`sidecar over ${transport}: a backend reset resets the app`, async (t) => {
    const conns: Socket[] = [];
    const backend = await tcpServer((c) => conns.push(c));
    const cfg = baseConfig(gw.target, { endpoints: [backend.uri] });
    (cfg['gateway'] as { transports: string[] }).transports = [transport];
    const sc = await startSidecar(cfg);
    try {
      const app = await dial(sc.port('main'));
      app.removeAllListeners('error');
      app.write('x');
      await within((async () => { while (!conns.length) await new Promise((r) => setTimeout(r, 5)); })(), 10_000, 'backend connection');
      app.resume();
      const heard = new Promise<string | undefined>((res) => {
        app.once('error', (e: NodeJS.ErrnoException) => res(e.code));
        app.once('end', () => res('FIN'));
      });
      conns[0]!.resetAndDestroy();
      t.is(await within(heard, 10_000, 'app hears the reset'), 'ECONNRESET');
    } finally {
      await sc.stop();
      await backend.close();
    }
  });
}
