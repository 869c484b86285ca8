/**
 * The SDK's connect gate: a burst of connects larger than the gateway's
 * pending-socket bound is queued in the SDK (GatewayOptions.maxConcurrentConnects)
 * instead of being refused by the gateway; the gate itself is bounded and
 * lets an aborted waiter go at once.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { ConnectGate } from '../../../clients/sdk/connect-gate.js';
import { Gateway as SdkGateway } from '../../../clients/sdk/gateway.js';
import { AbortedError, LimitExceededError } from '../../../proto/errors.js';
import { echoServer, startGateway, within } from '../../helpers/harness.js';

/** The burst: well above the gateway's pending bound below. */
const BURST = 120;
/** limits.max_pending_sockets_per_identity of the gateway under test. */
const PENDING_BOUND = 12;

test('ConnectGate: at most `limit` run, waiters go first come first served, an aborted waiter leaves at once, the queue is bounded', async (t) => {
  const gate = new ConnectGate(2, 3);
  const order: number[] = [];
  let peak = 0;
  const releases: (() => void)[] = [];
  const job = (i: number) => () =>
    new Promise<number>((resolve) => {
      order.push(i);
      peak = Math.max(peak, gate.running);
      releases.push(() => resolve(i));
    });
  const ac = new AbortController();
  const runs = [gate.run(job(0)), gate.run(job(1)), gate.run(job(2)), gate.run(job(3), ac.signal), gate.run(job(4))];
  await new Promise((r) => setImmediate(r));
  t.deepEqual(order, [0, 1]);
  t.is(gate.waiting, 3);
  await t.throwsAsync(gate.run(job(9)), { instanceOf: LimitExceededError }, 'a fourth waiter is refused');
  ac.abort();
  await t.throwsAsync(runs[3]!, { instanceOf: AbortedError });
  t.is(gate.waiting, 2, 'the aborted waiter left the queue at once');
  while (releases.length) {
    releases.shift()!();
    await new Promise((r) => setImmediate(r));
  }
  t.deepEqual(await Promise.all([runs[0], runs[1], runs[2], runs[4]]), [0, 1, 2, 4]);
  t.deepEqual(order, [0, 1, 2, 4], 'first come, first served; the aborted one never ran');
  t.is(peak, 2);
  t.is(gate.running, 0);
});

async function burst(t: import('ava').ExecutionContext, sdkOptions: { maxConcurrentConnects?: number }): Promise<{ ok: number; refused: string[] }> {
  const echo = await echoServer();
  const gw = await startGateway({ transports: { enabled: ['tcp'] }, limits: { max_pending_sockets_per_identity: PENDING_BOUND } });
  const sdk = await SdkGateway.connect(gw.target, { transports: ['tcp'], ...sdkOptions });
  t.teardown(async () => {
    sdk.close();
    await gw.stop();
    await echo.close();
  });
  const refused: string[] = [];
  let ok = 0;
  await Promise.all(
    Array.from({ length: BURST }, async () => {
      try {
        const s = await sdk.connect(echo.uri);
        const payload = randomBytes(4096);
        const got = createHash('sha256');
        let n = 0;
        const done = new Promise<void>((resolve, reject) => {
          s.on('data', (c: Buffer) => {
            got.update(c);
            n += c.length;
            if (n >= payload.length) resolve();
          });
          s.on('error', reject);
        });
        s.write(payload);
        await within(done, 20_000, 'echo');
        t.is(got.digest('hex'), createHash('sha256').update(payload).digest('hex'));
        s.destroy();
        ok++;
      } catch (err) {
        refused.push((err as { code?: string }).code ?? String(err));
      }
    }),
  );
  return { ok, refused };
}

test(`a burst of ${BURST} connects through a gateway that holds ${PENDING_BOUND} pending sockets per identity: the SDK queues them, every one connects (SHA-256 echoed)`, async (t) => {
  t.timeout(90_000);
  const { ok, refused } = await burst(t, { maxConcurrentConnects: PENDING_BOUND });
  t.deepEqual(refused, []);
  t.is(ok, BURST);
});

test('without the gate (as many in flight as the burst), the same burst is refused in part: the bound the gate keeps under is real', async (t) => {
  t.timeout(90_000);
  const { ok, refused } = await burst(t, { maxConcurrentConnects: BURST });
  t.true(refused.length > 0, `all ${ok} connected`);
  t.true(refused.every((c) => c === 'ERR_SOCKGATE_LIMIT_EXCEEDED'), refused.join(','));
});
