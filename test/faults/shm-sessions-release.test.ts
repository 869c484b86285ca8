/**
 * Many shm sessions closed at once release everything: with 8 slots per
 * session, 60 sockets over one SDK Gateway spread over 8+ sessions (the
 * gateway's overflow sessions); each proven by an echo checked by SHA-256.
 * All closed, then Gateway.close(): the client's and the gateway's
 * descriptor counts return to their baselines exactly, and the client holds
 * no session memfd. (Closing many sessions at once used to leave their
 * memfds and attach connections open: a close refused with EBUSY was never
 * really retried.)
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { Gateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket } from '../../clients/sdk/socket.js';
import { echoServer, startChildGateway, within } from '../helpers/harness.js';
import { fdCount, settle } from './helpers.js';

/** Slots per session on the gateway under test: small, so a few sockets need many sessions. */
const SLOTS_PER_SESSION = 8;
/** Sockets opened: more than 7 sessions' worth of slots. */
const SOCKETS = 60;
/** Bytes echoed through each socket. */
const PROBE_BYTES = 4096;
/** Open-all/close-all rounds: the leak was a race, each round is a fresh chance to catch it. */
const ROUNDS = 3;
/** Bound on the release of everything after the close. */
const SETTLE_MS = 20_000;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Session memfds this process holds. */
function memfds(): number {
  let n = 0;
  for (const f of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${f}`).includes('sockgate-shm')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

async function echoOnce(s: GatewaySocket): Promise<void> {
  const probe = randomBytes(PROBE_BYTES);
  const back = await within(
    new Promise<Buffer>((resolve, reject) => {
      const got: Buffer[] = [];
      let len = 0;
      const onData = (c: Buffer) => {
        got.push(c);
        len += c.length;
        if (len >= PROBE_BYTES) {
          s.off('data', onData);
          s.pause();
          resolve(Buffer.concat(got));
        }
      };
      s.on('data', onData);
      s.once('error', reject);
      s.write(probe);
    }),
    10_000,
    `echo through ${s.socketId}`,
  );
  if (sha(back) !== sha(probe)) throw new Error(`socket ${s.socketId}: the echo differs from the probe`);
}

test('60 shm sockets over 8+ sessions, all closed: client and gateway fds back to baseline exactly', async (t) => {
  t.timeout(120_000);
  if (!shmSupport.available) {
    t.log(`skipped: shm unavailable (${shmSupport.reason})`);
    t.pass();
    return;
  }
  const echo = await echoServer();
  const g = await startChildGateway('', ['--set', `transports.shm.slots_per_session=${SLOTS_PER_SESSION}`]);
  t.teardown(async () => {
    g.child.kill('SIGKILL');
    await echo.close();
  });
  const gwPid = g.child.pid!;
  // Warm-up: the gateway opens its shm side lazily; one socket, closed, then the baselines.
  {
    const w = await Gateway.connect(g.target, { transports: ['shm'] });
    const s = await w.connect(echo.uri, { transports: ['shm'] });
    await echoOnce(s);
    s.destroy();
    w.close();
  }
  const gwBase = await settle(() => fdCount(gwPid), () => false, 1_000);
  const clientBase = await settle(() => fdCount(process.pid), () => false, 1_000);
  t.is(memfds(), 0, 'the warm-up session released');

  for (let round = 1; round <= ROUNDS; round++) {
    const gw = await Gateway.connect(g.target, { transports: ['shm'] });
    const socks: GatewaySocket[] = [];
    for (let i = 0; i < SOCKETS; i++) {
      const s = await gw.connect(echo.uri, { transports: ['shm'] });
      s.on('error', () => {});
      socks.push(s);
      await echoOnce(s);
    }
    const sessions = memfds();
    t.log(`round ${round}: ${SOCKETS} sockets over ${sessions} sessions`);
    t.true(sessions >= Math.ceil(SOCKETS / (SLOTS_PER_SESSION - 1)), 'the sockets spread over many sessions');

    await within(
      Promise.all(
        socks.map(
          (s) =>
            new Promise<void>((resolve) => {
              if (s.closed) return resolve();
              s.once('close', () => resolve());
              s.end();
              s.resume();
            }),
        ),
      ),
      30_000,
      'every socket closed',
    );
    gw.close();

    t.is(await settle(memfds, (n) => n === 0, SETTLE_MS), 0, `round ${round}: the client holds no session memfd`);
    t.is(await settle(() => fdCount(process.pid), (n) => n === clientBase, SETTLE_MS), clientBase, `round ${round}: the client's descriptors are back to the baseline`);
    t.is(await settle(() => fdCount(gwPid), (n) => n === gwBase, SETTLE_MS), gwBase, `round ${round}: the gateway's descriptors are back to the baseline`);
  }
});
