/** Abuse of the native boundary: wrong types, wrong `this`, use after close, double close, close while in use. */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../helpers/test-addon.js';
import test from 'ava';
import { binding, Eventfd, nativeCode, Pump, ShmRegion, socketpair } from '../../native/index.js';
import { NativeError as NativeErrorCheck } from '../../proto/errors.js';

test('wrong argument types throw TypeError (or RangeError for bad numbers)', (t) => {
  const r = ShmRegion.create({ slots: 2, maxRingSize: 1 << 16 });
  try {
    r.openSlot(0, 4096);
    const raw = r.raw as unknown as Record<string, (...a: unknown[]) => unknown>;
    t.throws(() => raw.write!.call(r.raw, 'x', Buffer.alloc(1)), { instanceOf: TypeError });
    t.throws(() => raw.write!.call(r.raw, 0, 'not a buffer'), { instanceOf: TypeError });
    t.throws(() => raw.write!.call(r.raw, 0, new Uint16Array(4)), { instanceOf: TypeError });
    t.throws(() => raw.read!.call(r.raw, -1, Buffer.alloc(1)), { instanceOf: RangeError });
    t.throws(() => raw.read!.call(r.raw, 0, Buffer.alloc(4), 5), { instanceOf: RangeError }, 'offset past the end');
    t.throws(() => raw.read!.call(r.raw, 0, Buffer.alloc(4), 1, 4), { instanceOf: RangeError }, 'length past the end');
    t.throws(() => raw.openSlot!.call(r.raw, 1, 5000), { instanceOf: RangeError }, 'not a power of two');
    t.throws(() => raw.unsafePoke64!.call(r.raw, 0, 5), { instanceOf: TypeError });
    t.throws(() => raw.unsafePoke64!.call(r.raw, r.size, 5n), { instanceOf: RangeError }, 'outside the mapping');
    t.throws(() => new binding.Region({ slots: 'many', maxRingSize: 4096 } as never), { instanceOf: TypeError });
    t.throws(() => new binding.Region({ slots: 0, maxRingSize: 4096 }), { instanceOf: RangeError });
    t.throws(() => new binding.PumpLink({} as never, r.raw, 0, 1), { instanceOf: TypeError });
    t.throws(() => (binding.Region as unknown as () => void)(), { instanceOf: TypeError }, 'without new');
    t.throws(() => binding.dupFd('3' as never), { instanceOf: TypeError });
    t.throws(() => binding.setsockoptInt(0, 1, 7, 1.5), { instanceOf: RangeError });
    const e = new Eventfd();
    t.throws(() => r.raw.setDoorbells(e.raw, {} as never), { instanceOf: TypeError });
    e.close();
  } finally {
    r.close();
  }
});

test('wrong `this` is refused, never reinterpreted', (t) => {
  const r = ShmRegion.create({ slots: 1, maxRingSize: 1 << 16 });
  const e = new Eventfd();
  const proto = Object.getPrototypeOf(r.raw) as Record<string, (...a: unknown[]) => unknown>;
  t.throws(() => proto.write!.call(e.raw, 0, Buffer.alloc(1)), { instanceOf: TypeError }, 'an Eventfd as a Region');
  t.throws(() => proto.close!.call({}), undefined, 'a plain object');
  t.throws(() => proto.close!.call(undefined));
  const eproto = Object.getPrototypeOf(e.raw) as Record<string, (...a: unknown[]) => unknown>;
  t.throws(() => eproto.signal!.call(r.raw), { instanceOf: TypeError }, 'a Region as an Eventfd');
  t.false(r.closed, 'the region is untouched');
  e.close();
  r.close();
});

test('use after close is an error; double close is idempotent', (t) => {
  const r = ShmRegion.create({ slots: 1, maxRingSize: 1 << 16 });
  r.openSlot(0, 4096);
  r.close();
  r.close();
  t.true(r.closed);
  const err = t.throws(() => r.write(0, Buffer.alloc(1)));
  t.true(err instanceof NativeErrorCheck);
  t.is(nativeCode(err), 'EBADF');
  t.throws(() => r.size);
  const e = new Eventfd();
  e.close();
  e.close();
  t.throws(() => e.signal());
  const p = new Pump();
  p.close();
  p.close();
  t.throws(() => p.listen('/tmp/never-bound.sock'));
  t.throws(() => p.ref());
});

test('close while in use refuses (EBUSY) and succeeds after release', async (t) => {
  const r = ShmRegion.create({ slots: 1, maxRingSize: 1 << 16 });
  const gw = new Eventfd();
  const cl = new Eventfd();
  r.setDoorbells(gw, cl);
  t.is(nativeCode(t.throws(() => gw.close())), 'EBUSY', 'the region uses the eventfd');
  r.openSlot(0, 4096);
  const p = new Pump();
  const [a, b] = socketpair();
  const link = p.link(r, 0, a);
  t.is(nativeCode(t.throws(() => r.close())), 'EBUSY', 'a link uses the region');
  t.is(nativeCode(t.throws(() => p.close())), 'EBUSY', 'the pump has a link');
  t.is(nativeCode(t.throws(() => r.closeSlot(0))), 'EBUSY', 'the slot is pumped');
  t.is(nativeCode(t.throws(() => r.write(0, Buffer.alloc(1)))), 'EBUSY', 'JS ring ops on a pumped slot');
  t.is(nativeCode(t.throws(() => p.link(r, 0, b))), 'EBUSY', 'one link per slot');
  const end = await link.close();
  t.is(end.reason, 'aborted');
  r.closeSlot(0);
  r.close();
  gw.close();
  cl.close();
  p.close();
  binding.closeFd(b);
});

test('rdma reports unavailable with a reason naming the Debian packages', (t) => {
  // Built with rdma-core, availability depends on the devices: rdma-availability.test.ts.
  if (binding.rdma.built) return t.pass('built with rdma-core headers');
  t.false(binding.rdma.available);
  t.regex(binding.rdma.reason, /libibverbs-dev/);
  t.regex(binding.rdma.reason, /librdmacm-dev/);
});
