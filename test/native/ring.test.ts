/** Rings from JS: wraparound at every offset, full/empty, larger than the ring, EOF, loans, resize, limits. */
import test from 'ava';
import { DIR_C2G, gatewayRingBytes, setGatewayRingLimit } from '../../native/index.js';
import { prng, regionPair } from './helpers.js';

test('wraparound at every offset of a 4 KiB ring, both directions', (t) => {
  const p = regionPair({ slots: 2, maxRingSize: 1 << 16 });
  try {
    p.gw.openSlot(1, 4096);
    const data = prng(7, 4096);
    const out = Buffer.alloc(4096);
    for (let off = 0; off < 4096; off++) {
      // advance both rings by one byte, then move a ring-sized and an odd-sized block across the wrap
      for (const len of [4096, 1 + (off % 1000)]) {
        t.is(p.cl.write(1, data, 0, len), len);
        t.is(p.gw.read(1, out, 0, 4096), len);
        if (!out.subarray(0, len).equals(data.subarray(0, len))) return t.fail(`c2g mismatch at offset ${off}`);
        t.is(p.gw.write(1, data, 0, len), len);
        t.is(p.cl.read(1, out, 0, 4096), len);
        if (!out.subarray(0, len).equals(data.subarray(0, len))) return t.fail(`g2c mismatch at offset ${off}`);
      }
      t.is(p.cl.write(1, data, 0, 1), 1);
      t.is(p.gw.read(1, out, 0, 1), 1);
      t.is(p.gw.write(1, data, 0, 1), 1);
      t.is(p.cl.read(1, out, 0, 1), 1);
    }
  } finally {
    p.close();
  }
});

test('full, empty, larger than the ring, end of stream', (t) => {
  const p = regionPair({ slots: 1, maxRingSize: 1 << 16 });
  try {
    p.gw.openSlot(0, 4096);
    const out = Buffer.alloc(20000);
    t.is(p.gw.read(0, out), 0, 'empty');
    const big = prng(3, 10000);
    t.is(p.cl.write(0, big), 4096, 'a write larger than the ring is short');
    t.is(p.cl.write(0, big), 0, 'full');
    t.false(p.cl.armWrite(0), 'armed: no space yet');
    t.is(p.gw.read(0, out), 4096);
    t.true(p.cl.armWrite(0), 'space now');
    let w = 4096;
    let r = 4096;
    for (let i = 0; i < 100 && r < big.length; i++) {
      w += p.cl.write(0, big, w);
      r += p.gw.read(0, out, r) ?? 0;
    }
    t.true(out.subarray(0, big.length).equals(big));
    p.cl.write(0, Buffer.from('tail'));
    p.cl.shutdown(0);
    t.throws(() => p.cl.write(0, Buffer.from('x')), { message: /after shutdown/ });
    t.is(p.gw.read(0, out), 4);
    t.is(p.gw.read(0, out), null, 'EOF after the last byte');
  } finally {
    p.close();
  }
});

test('zero-copy loans: views are detached on release and misuse throws', (t) => {
  const p = regionPair({ slots: 1, maxRingSize: 1 << 16 });
  try {
    p.gw.openSlot(0, 4096);
    t.is(p.cl.lend(0), null, 'nothing to lend');
    p.gw.write(0, Buffer.from('hello world'));
    const loan = p.cl.lend(0);
    if (!loan) return t.fail('expected a loan');
    const stale = loan.view;
    t.is(stale.toString(), 'hello world');
    t.throws(() => p.cl.read(0, Buffer.alloc(4)), { message: /in use/ }, 'slot is busy while lent');
    loan.release(6);
    t.is(stale.length, 0, 'the lent buffer is detached');
    t.throws(() => stale.at(0), { instanceOf: TypeError }, 'reading a detached view is an error');
    t.throws(() => loan.view, { message: /after release/ });
    t.throws(() => loan.release(), { message: /twice/ });
    const rest = Buffer.alloc(16);
    t.is(p.cl.read(0, rest), 5);
    t.is(rest.subarray(0, 5).toString(), 'world');
    // A loan outstanding at close is detached too.
    p.gw.write(0, Buffer.from('again'));
    const l2 = p.cl.lend(0);
    if (!l2) return t.fail('expected a loan');
    const v2 = l2.view;
    p.cl.close();
    t.is(v2.length, 0);
  } finally {
    p.close();
  }
});

test('resize: granted sizes apply when the ring is empty', (t) => {
  const p = regionPair({ slots: 1, maxRingSize: 1 << 16 });
  try {
    p.gw.openSlot(0, 4096);
    p.cl.write(0, Buffer.alloc(100));
    p.gw.requestResize(0, DIR_C2G, 65536);
    t.throws(() => p.gw.requestResize(0, DIR_C2G, 8192), { message: /busy/i }, 'one grant at a time');
    t.is(p.cl.write(0, Buffer.alloc(65536)), 4096 - 100, 'not adopted while data is in flight');
    t.is(p.gw.read(0, Buffer.alloc(65536)), 4096);
    t.is(p.cl.write(0, Buffer.alloc(65536)), 65536, 'adopted once empty');
    t.is(p.gw.read(0, Buffer.alloc(65536)), 65536);
    t.is(p.gw.slotInfo(0).inSize, 65536);
  } finally {
    p.close();
  }
});

test('byte limits per region and per gateway', (t) => {
  const p = regionPair({ slots: 8, maxRingSize: 1 << 16, byteLimit: 4 * 8192 });
  try {
    for (let s = 0; s < 4; s++) p.gw.openSlot(s, 4096);
    t.is(p.gw.grantedBytes, 4 * 8192);
    t.throws(() => p.gw.openSlot(4, 4096), { message: /No buffer space/ });
    p.gw.closeSlot(0);
    p.gw.openSlot(4, 4096);
    const before = gatewayRingBytes();
    setGatewayRingLimit(before);
    p.gw.closeSlot(1);
    p.gw.openSlot(5, 4096);
    t.throws(() => p.gw.openSlot(6, 4096), { message: /No buffer space/ }, 'gateway-wide cap');
  } finally {
    setGatewayRingLimit(Infinity);
    p.close();
  }
});
