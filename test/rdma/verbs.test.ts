/**
 * The verbs layer of the addon (native/src/rdma*.{h,cc}) on a real kernel
 * RDMA stack: meant to run INSIDE the Soft-RoCE test VM (topology (a): one VM,
 * rxe0 on eth0), where `npm run test:rdma` runs it (SOCKGATE_IN_VM=1). On the
 * host it skips with a message; inside the VM nothing skips.
 *
 * Checks: device and port enumeration; PD/CQ/QP/MR lifecycle in creation order
 * and teardown in reverse; an rdma_cm connection between two endpoints on
 * rxe0's address carrying data with RDMA writes + write-with-immediate through
 * a ring smaller than the data (wraps, consumer-cursor updates, credits, EOF),
 * SHA-256 checked, completions by completion-channel events (no busy polling),
 * with the cm event channel and completion channels serviced by the shared
 * pump's I/O thread (a PumpSource), and once on a standalone worker loop.
 */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../helpers/test-addon.js';
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Pump, rdma } from '../../native/index.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const DEV = process.env['SOCKGATE_VM_RDMA_DEV'] || 'rxe0';
/** rdma_cm port for the loopback tests: fixed per test so two never collide. */
const PORT_BASE = 18515;
/** Generous: TCG runs rxe in an emulated CPU (about 50 MB/s at 64 KiB). */
const TRANSFER_TIMEOUT_MS = 90_000;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

if (!IN_VM) {
  test.skip('rdma verbs: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('the addon was built with rdma-core and sees rxe0 active', (t) => {
    t.true(rdma.built, `addon built without rdma-core: ${rdma.reason}`);
    t.true(rdma.available, rdma.reason);
    const devs = rdma.devices!();
    const rxe = devs.find((d) => d.name === DEV);
    t.truthy(rxe, `devices(): ${JSON.stringify(devs)}`);
    t.is(rxe!.ports.length, 1);
    const port = rxe!.ports[0]!;
    t.is(port.port, 1);
    t.true(port.active, port.state);
    t.regex(port.state, /active/i); // ibv_port_state_str: "active" in rdma-core 44
    t.is(port.linkLayer, 'ethernet');
    t.true(port.mtu >= 1024, `mtu ${port.mtu}`);
    t.true(port.gids.length >= 1, 'a RoCE port has GIDs');
    // RoCE v2 GIDs include the IPv4-mapped address of eth0.
    const mapped = ADDR.split('.').map((x) => Number(x).toString(16).padStart(2, '0'));
    const v4 = `0000:0000:0000:0000:0000:ffff:${mapped[0]}${mapped[1]}:${mapped[2]}${mapped[3]}`;
    t.true(port.gids.includes(v4), `gids ${port.gids.join(' ')} lack ${v4}`);
    t.regex(rxe!.nodeGuid, /^[0-9a-f]{16}$/);
  });

  test.serial('resource lifecycle: created in order, torn down in reverse', (t) => {
    const trace = rdma.lifecycle!(ADDR);
    const made = trace.filter((s) => s.startsWith('+')).map((s) => s.slice(1));
    const gone = trace.filter((s) => s.startsWith('-')).map((s) => s.slice(1));
    t.deepEqual(made, ['event_channel', 'cm_id', 'pd', 'comp_channel', 'cq', 'qp', 'memory', 'mr']);
    t.deepEqual(gone, [...made].reverse());
    t.is(trace.indexOf('-mr'), made.length, 'teardown starts after the last creation');
    // Repeated lifecycles leak nothing the kernel would refuse later.
    for (let i = 0; i < 5; i++) t.is(rdma.lifecycle!(ADDR).length, 16);
  });

  test.serial('lifecycle on an address without a verbs device fails cleanly', (t) => {
    const e = t.throws(() => rdma.lifecycle!('127.0.0.1'));
    t.regex(String(e?.message), /rdma_bind_addr|no verbs device/);
  });

  test.serial('rdma_cm connection on the pump\'s I/O thread: 1 MiB through a 64 KiB ring, RDMA write + immediate, SHA-256', async (t) => {
    const data = randomBytes(1 << 20);
    const pump = new Pump();
    const r = await rdma.loopback!({ addr: ADDR, port: PORT_BASE, data, ringLog2: 16, chunk: 16384, credits: 32, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw });
    pump.close();
    t.is(r.ioThread, 'pump');
    t.log(`1 MiB: ${r.imms} immediates, ${r.writes} data writes (${r.wraps} wrapped), ${r.updates} cursor updates, ` +
      `${r.blocked} blocked, ${r.creditMsgs} credit messages, cq events ${r.clientCqEvents}/${r.serverCqEvents}`);
    t.is(r.data.length, data.length);
    t.is(sha(r.data), sha(data));
    // The rdma_cm sequence of both ends (listener sees the request).
    for (const ev of ['client:RDMA_CM_EVENT_ADDR_RESOLVED', 'client:RDMA_CM_EVENT_ROUTE_RESOLVED', 'listener:RDMA_CM_EVENT_CONNECT_REQUEST',
      'server:RDMA_CM_EVENT_ESTABLISHED', 'client:RDMA_CM_EVENT_ESTABLISHED', 'server:RDMA_CM_EVENT_DISCONNECTED', 'client:RDMA_CM_EVENT_DISCONNECTED'])
      t.true(r.cmEvents.includes(ev), `${ev} missing from ${r.cmEvents.join(' ')}`);
    // Flow control did its job: the ring wrapped, cursors came back, the writer blocked and resumed.
    t.is(r.imms, 64, 'one cursor write-with-immediate per 16 KiB burst');
    t.true(r.wraps === 0 || r.writes <= r.imms * 2, 'at most two data writes per burst');
    // Immediates that complete together share one update: the receiver reads
    // the newest cursor once, so later immediates of the batch bring nothing.
    t.true(r.updates >= 16 && r.updates <= r.imms, `consumer-cursor updates: ${r.updates}`);
    t.true(r.blocked >= 1, 'the writer filled the ring at least once');
    // Completions arrived by completion-channel events (no busy polling).
    t.true(r.clientCqEvents > 0 && r.serverCqEvents > 0, `cq events ${r.clientCqEvents}/${r.serverCqEvents}`);
    // Every resource of both endpoints released, each after the ones made from it.
    const made = r.trace.filter((s) => s.startsWith('+')).length;
    t.is(r.trace.filter((s) => s.startsWith('-')).length, made);
    t.true(r.trace.lastIndexOf('-qp') < r.trace.lastIndexOf('-cq'));
    t.true(r.trace.lastIndexOf('-cq') < r.trace.lastIndexOf('-pd'));
    t.true(r.trace.lastIndexOf('-pd') < r.trace.lastIndexOf('-cm_id'));
    t.is(r.trace.at(-1), '-event_channel');
  });

  test.serial('rdma_cm connection: odd sizes wrap mid-burst (two writes per wrap)', async (t) => {
    const data = randomBytes(300_001);
    // 3000-byte bursts and few credits: the ring rarely fills, so bursts cross its end.
    const pump = new Pump();
    const r = await rdma.loopback!({ addr: ADDR, port: PORT_BASE + 1, data, ringLog2: 16, chunk: 3000, credits: 8, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw });
    pump.close();
    t.is(r.ioThread, 'pump');
    t.log(`300001 B: ${r.imms} immediates, ${r.writes} data writes (${r.wraps} wrapped), ${r.updates} cursor updates, ` +
      `${r.blocked} blocked, ${r.creditMsgs} credit messages, cq events ${r.clientCqEvents}/${r.serverCqEvents}`);
    t.is(sha(r.data), sha(data));
    t.true(r.wraps > 0, 'some bursts wrapped');
    t.is(r.writes, r.imms + r.wraps, 'a wrapped burst is exactly two writes');
  });

  test.serial('standalone worker loop (no pump): 256 KiB, SHA-256', async (t) => {
    const data = randomBytes(256 << 10);
    const r = await rdma.loopback!({ addr: ADDR, port: PORT_BASE + 3, data, ringLog2: 14, chunk: 4096, credits: 16, timeoutMs: TRANSFER_TIMEOUT_MS });
    t.is(r.ioThread, 'worker');
    t.is(sha(r.data), sha(data));
  });

  test.serial('two transfers at once on one pump, with shm-style links untouched', async (t) => {
    const pump = new Pump();
    const a = randomBytes(200_000);
    const b = randomBytes(300_000);
    const [ra, rb] = await Promise.all([
      rdma.loopback!({ addr: ADDR, port: PORT_BASE + 4, data: a, ringLog2: 15, chunk: 8192, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw }),
      rdma.loopback!({ addr: ADDR, port: PORT_BASE + 5, data: b, ringLog2: 15, chunk: 8192, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw }),
    ]);
    t.is(sha(ra.data), sha(a));
    t.is(sha(rb.data), sha(b));
    t.is(pump.raw.activeLinks, 0);
    pump.close();
  });

  test.serial('a pump closed mid-transfer ends it with an error and releases every resource', async (t) => {
    const pump = new Pump();
    const p = rdma.loopback!({ addr: ADDR, port: PORT_BASE + 6, data: randomBytes(32 << 20), ringLog2: 16, chunk: 16384, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw });
    await new Promise((r) => setTimeout(r, 300));
    pump.close();
    const e = await t.throwsAsync(p);
    t.regex(String(e?.message), /ended early \(pump stopped\)/);
    const trace = (e as unknown as { trace: string[] }).trace;
    t.is(trace.filter((s) => s.startsWith('-')).length, trace.filter((s) => s.startsWith('+')).length, trace.join(' '));
  });

  test.serial('a hostile writer (an empty burst, an unknown flag, a bad slot) ends only its own connection', async (t) => {
    const pump = new Pump();
    const good = randomBytes(400_000);
    const cases: Array<[1 | 2 | 3, RegExp]> = [
      [1, /peer wrote a bad burst: an empty burst/],
      [2, /peer sent a bad immediate/],
      [3, /peer sent a bad immediate/],
    ];
    const ok = rdma.loopback!({ addr: ADDR, port: PORT_BASE + 7, data: good, ringLog2: 14, chunk: 4096, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw });
    const bad = cases.map(([hostile], i) =>
      rdma.loopback!({ addr: ADDR, port: PORT_BASE + 8 + i, data: randomBytes(400_000), ringLog2: 14, chunk: 4096, timeoutMs: TRANSFER_TIMEOUT_MS, pump: pump.raw, hostile }));
    for (let i = 0; i < cases.length; i++) {
      const e = await t.throwsAsync(bad[i]!);
      t.regex(String(e?.message), cases[i]![1]);
      t.is((e as unknown as { code: string }).code, 'EBADMSG');
      const trace = (e as unknown as { trace: string[] }).trace;
      t.is(trace.filter((s) => s.startsWith('-')).length, trace.filter((s) => s.startsWith('+')).length);
    }
    // The well-behaved connection on the same pump is unaffected.
    t.is(sha((await ok).data), sha(good));
    pump.close();
  });

  test.serial('an address that is not this host\'s: a clean error, nothing left behind', async (t) => {
    const e = await t.throwsAsync(rdma.loopback!({ addr: '10.99.0.254', data: new Uint8Array(10), port: PORT_BASE + 2, timeoutMs: 8000 }));
    t.regex(String(e?.message), /rdma loopback: rdma_bind_addr/);
    const trace = (e as unknown as { trace: string[] }).trace;
    t.deepEqual(trace, ['+event_channel', '+cm_id', '-cm_id', '-event_channel']);
  });
}
