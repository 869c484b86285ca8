/**
 * The addon's rdma report on this host, whichever way it was built:
 * - without the rdma-core headers: { built: false, available: false } and a
 *   reason naming the Debian packages to install;
 * - with them: devices() lists what the kernel has; no device (or no active
 *   port) means available false with a "no RDMA device" reason;
 * and, when built with them, the rdma_cm private-data codec validates
 * everything it decodes (runs without a device).
 */
import test from 'ava';
import { rdma } from '../../native/index.js';

if (!rdma.built) {
  test('built without rdma-core: unavailable, and the reason names the packages', (t) => {
    t.false(rdma.available);
    t.regex(rdma.reason, /built without rdma-core headers/);
    t.regex(rdma.reason, /libibverbs-dev/);
    t.regex(rdma.reason, /librdmacm-dev/);
    t.regex(rdma.reason, /npm run build:native/);
    t.is(rdma.devices, undefined);
    t.is(rdma.loopback, undefined);
  });
} else {
  test('built with rdma-core: availability agrees with the device list', (t) => {
    const devs = rdma.devices!();
    t.true(Array.isArray(devs));
    const active = devs.some((d) => d.ports.some((p) => p.active));
    t.is(rdma.available, active, rdma.reason);
    if (devs.length === 0) t.regex(rdma.reason, /^no RDMA device/);
    else if (!active) t.regex(rdma.reason, /no RDMA device with an active port/);
    else t.is(rdma.reason, '');
    for (const d of devs) {
      t.regex(d.nodeGuid, /^[0-9a-f]{16}$/);
      for (const p of d.ports) t.true(p.port >= 1);
    }
  });

  test('without a device, using the verbs layer fails with an errno, not a crash', async (t) => {
    if (rdma.available) return t.pass('this host has an RDMA device');
    t.throws(() => rdma.lifecycle!('127.0.0.1'), { message: /rdma lifecycle: / });
    await t.throwsAsync(rdma.loopback!({ addr: '127.0.0.1', data: new Uint8Array(1), timeoutMs: 2000 }), { message: /rdma loopback: / });
  });

  const good = {
    version: 3, flags: 0, addr: 0x7f0012340000n, rkey: 0x1234abcd, ringLog2: 16, slots: 8, credits: 64, keepaliveMs: 2000,
    token: Uint8Array.from({ length: 16 }, (_, i) => i * 7),
  };

  test('connection parameters: 48 bytes, big-endian, round trip', (t) => {
    const b = rdma.encodeConnParams!(good);
    t.is(b.length, rdma.constants!.CONN_PARAMS_BYTES);
    t.is(b.toString('hex', 0, 4), '53475244'); // "SGRD"
    t.is(rdma.constants!.VERSION, 3);
    t.is(b.readUInt16BE(4), 3);
    t.is(b.readBigUInt64BE(8), good.addr);
    t.is(b.readUInt32BE(16), good.rkey);
    t.is(b.readUInt32BE(28), good.keepaliveMs);
    const d = rdma.decodeConnParams!(b);
    t.deepEqual({ ...d, token: [...d.token] }, { ...good, token: [...good.token] });
    // rdma_cm pads private data: trailing bytes are allowed.
    t.is(rdma.decodeConnParams!(Buffer.concat([b, Buffer.alloc(8, 0xff)])).rkey, good.rkey);
  });

  test('connection parameters: every malformed field is refused', (t) => {
    const b = rdma.encodeConnParams!(good);
    const bad = (mut: (x: Buffer) => void, code: string): void => {
      const x = Buffer.from(b);
      mut(x);
      t.throws(() => rdma.decodeConnParams!(x), { code }, `${mut.toString()} should fail with ${code}`);
    };
    t.throws(() => rdma.decodeConnParams!(b.subarray(0, 47)), { code: 'EPROTO' });
    bad((x) => x.writeUInt32BE(0x12345678, 0), 'EPROTO');         // magic
    bad((x) => x.writeUInt16BE(1, 4), 'EPROTONOSUPPORT');         // protocol 1 (control lines, cursor writes)
    bad((x) => x.writeUInt16BE(2, 4), 'EPROTONOSUPPORT');         // protocol 2 (no BOUND)
    bad((x) => x.writeUInt16BE(4, 4), 'EPROTONOSUPPORT');         // a later version
    bad((x) => x.writeUInt16BE(0x8000, 6), 'EBADMSG');            // unknown flag
    bad((x) => (x[20] = 11), 'EBADMSG');                          // ring below 4 KiB
    bad((x) => (x[20] = 31), 'EBADMSG');                          // ring above 1 GiB
    bad((x) => (x[21] = 1), 'EBADMSG');                           // reserved
    bad((x) => x.writeUInt16BE(0, 22), 'EBADMSG');                // no slots
    bad((x) => x.writeUInt16BE(4097, 22), 'EBADMSG');             // too many slots
    bad((x) => x.writeUInt16BE(1, 24), 'EBADMSG');                // fewer than 2 credits
    bad((x) => x.writeUInt16BE(1, 26), 'EBADMSG');                // reserved
    bad((x) => x.writeUInt32BE(3_600_001, 28), 'EBADMSG');        // keepalive above an hour
    bad((x) => x.writeBigUInt64BE(0xffffffffffff0000n, 8), 'EBADMSG'); // region wraps the address space
  });

  test('bursts: the receiver moves its producer cursor by byte_len (plus the tail up to the ring\'s end with WRAP) and refuses what does not fit', (t) => {
    const adv = rdma.burstAdvance!;
    const { IMM_BLOCKED: BLOCKED, IMM_WRAP: WRAP } = rdma.constants!;
    const size = 4096;
    t.is(adv(0, 0, size, 0, 64), 64);
    t.is(adv(0, 0, size, BLOCKED, size), size, 'a burst may fill the whole ring');
    t.is(adv(5000, 5000, size, 0, 3192), 3192, 'up to the ring\'s end (offset 904)');
    t.is(adv(5000, 5000, size, WRAP, 100), 3192 + 100, 'wrapped: the tail to the end, then byte_len from offset 0');
    t.is(adv(5000, 4200, size, WRAP, 104), 3192 + 104, 'wrapped into the last free bytes (800 used)');
    t.is(adv(2 ** 40 + 10, 2 ** 40 + 10, size, 0, 1), 1, 'cursors never reset');
    const refused = (args: [number, number, number, number, number], why: RegExp): void => {
      const e = t.throws(() => adv(...args), { code: 'EBADMSG' }, JSON.stringify(args));
      t.regex(e?.message ?? '', why);
    };
    refused([0, 0, size, 4, 64], /unknown immediate flags/);
    refused([0, 0, size, 0x8000, 64], /unknown immediate flags/);
    refused([0, 0, size, 0, 0], /an empty burst/);
    refused([100, 100, size, WRAP, 0], /an empty burst/);
    refused([5000, 5000, size, 0, 3193], /past the ring's end/);
    refused([4096, 4096, size, WRAP, 10], /from the ring's start/);
    refused([0, 0, size, WRAP, 10], /from the ring's start/);
    refused([5000, 4200, size, WRAP, 105], /larger than the free space/);
    refused([8192, 4097, size, 0, 2], /larger than the free space/);
    refused([4096, 0, size, 0, 1], /larger than the free space/);
    t.throws(() => adv(1, 2, size, 0, 1), { instanceOf: RangeError });
  });
}
