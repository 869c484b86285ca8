/**
 * gateway.link(): a caller's socket joined natively to a gateway socket, over
 * shm and over tcp. Byte-exact (SHA-256) 64 MiB each way, with a hook that
 * fails if the payload reaches a JS stream; half-close; resets from either
 * end; the JS relay fallback says so.
 */
import test from 'ava';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { hashUntilEnd, sendRandom, startGateway, tcpServer, within, type TestGateway } from '../../helpers/harness.js';
import { appPair, payloadHook } from './helpers.js';

const MIB = 1 << 20;
/** Payload per direction for the big transfers. */
const BIG = 64 * MIB;
/** Control-plane bytes JS may see per link (gRPC frames, preambles); payload is 64 MiB. */
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
  test.serial(`${transport}: 64 MiB each way byte-exact, payload never in JS, half-close both ways`, async (t) => {
    const hook = payloadHook();
    try {
      let targetSock: Socket | undefined;
      const target = await tcpServer((c) => {
        targetSock = c;
        hook.allow(c);
      });
      const { app, accepted } = await appPair();
      hook.allow(app);
      const link = await gw.sdk.link(accepted, target.uri, { transports: [transport] });
      t.is(link.transport, transport);
      t.true(link.native, `native link (relay reason: ${link.relayReason})`);
      await within((async () => { while (!targetSock) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
      const ts = targetSock!;
      // app -> target, then app half-closes; target -> app, then target half-closes.
      const atTarget = hashUntilEnd(ts);
      const atApp = hashUntilEnd(app);
      const [sentUp, sentDown] = await within(Promise.all([sendRandom(app, BIG, 256 * 1024), sendRandom(ts, BIG, 256 * 1024)]), T_MS, 'sends');
      const [up, down] = await within(Promise.all([atTarget, atApp]), T_MS, 'receives');
      t.is(up.bytes, BIG);
      t.is(up.sha256, sentUp);
      t.is(down.bytes, BIG);
      t.is(down.sha256, sentDown);
      const end = await within(link.ended, 10_000, 'link end');
      t.is(end.reason, 'ok', String(end.error));
      t.is(link.bytes.toTarget, BIG);
      t.is(link.bytes.fromTarget, BIG);
      t.true(hook.bytes() < CONTROL_BYTES_MAX, `payload reached JS: ${hook.bytes()} bytes pushed into JS streams`);
      app.destroy();
      await target.close();
    } finally {
      hook.remove();
    }
  });

  test.serial(`${transport}: half-close one way, the other direction keeps flowing`, async (t) => {
    let targetSock: Socket | undefined;
    const target = await tcpServer((c) => (targetSock = c));
    const { app, accepted } = await appPair();
    const link = await gw.sdk.link(accepted, target.uri, { transports: [transport] });
    t.true(link.native);
    await within((async () => { while (!targetSock) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
    const ts = targetSock!;
    const gotEnd = once(ts, 'end');
    ts.resume();
    app.end('bye');
    await within(gotEnd, 5000, 'target sees FIN');
    // After the app's FIN, the target still sends 1 MiB to it.
    const atApp = hashUntilEnd(app);
    const sent = await sendRandom(ts, MIB);
    const got = await within(atApp, 10_000, 'app reads after its half-close');
    t.is(got.sha256, sent);
    t.is((await within(link.ended, 10_000, 'link end')).reason, 'ok');
    await target.close();
  });

  for (const who of ['app', 'target'] as const) {
    test.serial(`${transport}: a reset from the ${who} is a reset on the other side`, async (t) => {
      let targetSock: Socket | undefined;
      const target = await tcpServer((c) => (targetSock = c));
      const { app, accepted } = await appPair();
      const link = await gw.sdk.link(accepted, target.uri, { transports: [transport] });
      t.true(link.native);
      await within((async () => { while (!targetSock) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
      const ts = targetSock!;
      const [resetter, other] = who === 'app' ? [app, ts] : [ts, app];
      // Some traffic first, so both paths are live.
      other.resume();
      resetter.resume();
      resetter.write(Buffer.alloc(64 * 1024, 1));
      await new Promise((r) => setTimeout(r, 100));
      const err = new Promise<NodeJS.ErrnoException | undefined>((res) => {
        other.once('error', (e) => res(e));
        other.once('close', () => res(undefined));
        other.once('end', () => res(Object.assign(new Error('clean end'), { code: 'FIN' })));
      });
      resetter.resetAndDestroy();
      const e = await within(err, 10_000, 'the other side hears');
      t.is(e?.code, 'ECONNRESET', `the other side saw ${e?.code ?? 'a close without error'}`);
      const end = await within(link.ended, 10_000, 'link end');
      t.is(end.reason, 'error');
      await target.close();
    });
  }
}

test.serial('relay: js falls back to the JS relay and says so; bytes still exact', async (t) => {
  let targetSock: Socket | undefined;
  const target = await tcpServer((c) => (targetSock = c));
  const { app, accepted } = await appPair();
  const link = await gw.sdk.link(accepted, target.uri, { transports: ['shm'], relay: 'js' });
  t.false(link.native);
  t.regex(link.relayReason, /JS relay/);
  await within((async () => { while (!targetSock) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
  const atTarget = hashUntilEnd(targetSock!);
  const sent = await sendRandom(app, 4 * MIB);
  targetSock!.end();
  app.resume();
  t.is((await within(atTarget, T_MS, 'target reads')).sha256, sent);
  t.is((await within(link.ended, 10_000, 'link end')).reason, 'ok');
  t.is(link.bytes.toTarget, 4 * MIB);
  await target.close();
});
