/**
 * A client session's close() refused with EBUSY (its pump has not yet let go
 * of the region) must stay retryable: the retry, once the pump let go, closes
 * the memfd, both doorbells and the attach connection. (It used to mark the
 * session closed before the refusal, so every retry returned at once and the
 * descriptors stayed open until the process exited: the capacity bench's
 * leak with 10 sessions.)
 */
import test from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attachClient, Eventfd, nativeCode, Pump, ShmRegion, type PumpEvent } from '../../native/index.js';
import { until } from './helpers.js';

/** How long the client pump may take to process the unwatch (it is one command on its queue). */
const RELEASE_MS = 5_000;

const isOpen = (fd: number) => existsSync(`/proc/self/fd/${fd}`);

test('ClientSession.close after EBUSY: the retry closes memfd, doorbells and connection', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-csclose-'));
  const path = join(dir, 'attach.sock');
  const held: { region: ShmRegion; gw: Eventfd; cl: Eventfd }[] = [];
  let listener: ReturnType<Pump['listen']> | undefined;
  const gwPump = new Pump((evs: PumpEvent[]) => {
    for (const e of evs) {
      if (e.type !== 'attach') continue;
      const region = ShmRegion.create({ slots: 4, maxRingSize: 1 << 16 });
      const gw = new Eventfd();
      const cl = new Eventfd();
      region.setDoorbells(gw, cl);
      held.push({ region, gw, cl });
      listener!.accept(e.conn, region, gw, cl);
    }
  });
  listener = gwPump.listen(path);
  const clientPump = new Pump(() => {});
  try {
    const cs = await attachClient(path, Buffer.from('tok'), 5_000);
    // The gateway's side lives in this process too: watch the client session's own four.
    const mine = [cs.region.fd, cs.clientDoorbell.fd, cs.gatewayDoorbell.fd, cs.conn];
    t.deepEqual(mine.map(isOpen), [true, true, true, true]);
    clientPump.watch(cs.region);
    const err = t.throws(() => cs.close());
    t.is(nativeCode(err), 'EBUSY', 'refused while the pump watches the region');
    clientPump.unwatch(cs.region);
    const end = Date.now() + RELEASE_MS;
    for (;;) {
      try {
        cs.close();
        // Checked at once, before anything else in this process can reuse the numbers.
        t.deepEqual(mine.map(isOpen), [false, false, false, false], "the session's memfd, both doorbells and its connection closed");
        break;
      } catch (e) {
        if (nativeCode(e) !== 'EBUSY' || Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 2));
      }
    }
    t.notThrows(() => cs.close(), 'close stays idempotent');
  } finally {
    clientPump.close();
    listener.close();
    await until(() => gwPump.activeLinks === 0, 5_000, 'gateway links to end');
    for (const h of held) {
      h.region.close();
      h.gw.close();
      h.cl.close();
    }
    gwPump.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
