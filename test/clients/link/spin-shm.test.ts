/**
 * One spin setting governs both ends: the gateway's transports.shm.spin_us
 * reaches the SDK's client pump through the shm attach (ShmAttach.spin_us),
 * and a linked transfer over it stays byte-exact.
 */
import test from 'ava';
import type { Socket } from 'node:net';
import { clientPumpStats } from '../../../clients/sdk/attach-shm.js';
import { hashUntilEnd, sendRandom, startGateway, tcpServer, within } from '../../helpers/harness.js';
import { appPair } from './helpers.js';

const SPIN_US = 37;

test('the gateway spin setting reaches the client pump; a linked transfer stays exact', async (t) => {
  const gw = await startGateway({ transports: { shm: { spin_us: SPIN_US } } });
  try {
    let targetSock: Socket | undefined;
    const target = await tcpServer((c) => (targetSock = c));
    const { app, accepted } = await appPair();
    const link = await gw.sdk.link(accepted, target.uri, { transports: ['shm'] });
    t.is(link.transport, 'shm');
    t.true(link.native, `native link (relay reason: ${link.relayReason})`);
    t.is(clientPumpStats()?.spinUs, SPIN_US, 'the client pump spins as the gateway says');
    const gwPump = (gw.gateway as unknown as { pumpHub?: { pump: { stats(): { spinUs: number } } } }).pumpHub?.pump;
    t.is(gwPump?.stats().spinUs, SPIN_US, 'and so does the gateway');
    await within((async () => { while (!targetSock) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'target connection');
    const ts = targetSock!;
    const atTarget = hashUntilEnd(ts);
    const atApp = hashUntilEnd(app);
    const [up, down] = await within(Promise.all([sendRandom(app, 4 << 20), sendRandom(ts, 4 << 20)]), 30_000, 'sends');
    const [gotUp, gotDown] = await within(Promise.all([atTarget, atApp]), 30_000, 'receives');
    t.is(gotUp.sha256, up);
    t.is(gotDown.sha256, down);
    await within(link.ended, 10_000, 'link end');
    app.destroy();
    await target.close();
  } finally {
    await gw.stop();
  }
});
