/**
 * The SDK's vsock bridge on the host, without any vsock traffic: target
 * parsing, the error table, and a clear typed error where AF_VSOCK is not
 * available (SOCKGATE_VSOCK=off, the same path as a missing addon or kernel
 * support). Nothing here connects over AF_VSOCK: on a machine that is itself a
 * VM, CID 2 (and even CID 1 without vsock_loopback) leads to whatever runs
 * it. Real AF_VSOCK is tested in the VM: test/rdma/vsock.test.ts.
 */
import test from 'ava';
import { Gateway } from '../../../clients/sdk/gateway.js';
import {
  dialVsock,
  forwardVsock,
  openVsockBridge,
  parseVsockTarget,
  vsockError,
  vsockSupport,
  VsockUnavailableError,
} from '../../../clients/sdk/vsock.js';
import {
  ConnectRefusedError,
  ConnectTimeoutError,
  HostUnreachableError,
  InvalidArgumentError,
  NativeError,
} from '../../../proto/errors.js';

// Every test in this file: never reach this machine's real vsock.
process.env['SOCKGATE_VSOCK'] = 'off';

test('parseVsockTarget: vsock:CID:PORT, vsock:PORT (CID 2), other targets pass through', (t) => {
  t.deepEqual(parseVsockTarget('vsock:2:7070'), { cid: 2, port: 7070 });
  t.deepEqual(parseVsockTarget('vsock:1:1'), { cid: 1, port: 1 });
  t.deepEqual(parseVsockTarget('vsock:7070'), { cid: 2, port: 7070 });
  t.deepEqual(parseVsockTarget('vsock:4294967295:4294967294'), { cid: 0xffffffff, port: 0xfffffffe });
  t.is(parseVsockTarget('127.0.0.1:7070'), undefined);
  t.is(parseVsockTarget('unix:/run/sockgate.sock'), undefined);
  t.is(parseVsockTarget('dns:///vsock:1:2'), undefined);
});

test('parseVsockTarget: malformed vsock targets are InvalidArgumentError naming the form', (t) => {
  for (const bad of ['vsock:', 'vsock:2:', 'vsock:a:7070', 'vsock:2:7070:1', 'vsock:2:0', 'vsock:2:4294967295', 'vsock:4294967296:1', 'vsock:-1:2', 'vsock:2:70 70']) {
    const err = t.throws(() => parseVsockTarget(bad), { instanceOf: InvalidArgumentError }, bad);
    t.regex(err!.message, /expected vsock:<cid>:<port>/, bad);
  }
});

test('vsockError: errno codes become the sockgate error table', (t) => {
  const a = { cid: 2, port: 7070 };
  const e = (code: string) => vsockError(Object.assign(new Error(`vsock connect: ${code}`), { code }), a);
  t.true(e('ECONNRESET') instanceof ConnectRefusedError);
  t.regex(e('ECONNRESET').message, /nothing listens on vsock port 7070 of CID 2/);
  t.true(e('ECONNREFUSED') instanceof ConnectRefusedError);
  t.true(e('ETIMEDOUT') instanceof ConnectTimeoutError);
  t.true(e('ENODEV') instanceof HostUnreachableError);
  t.regex(e('ENODEV').message, /no vsock transport reaches CID 2/);
  t.true(e('EHOSTUNREACH') instanceof HostUnreachableError);
  t.true(e('EAFNOSUPPORT') instanceof VsockUnavailableError);
  t.true(e('EPERM') instanceof NativeError);
  t.is(e('EPERM').cause instanceof Error, true);
});

test('an unavailable vsock: Gateway.connect, the bridge, dial and forward fail at once with VsockUnavailableError and the reason', async (t) => {
  t.false(vsockSupport.available);
  t.is(vsockSupport.reason, 'turned off by SOCKGATE_VSOCK=off');
  const started = Date.now();
  const err = await t.throwsAsync(Gateway.connect('vsock:2:7070', {}, { deadlineMs: 2_000 }), { instanceOf: VsockUnavailableError });
  t.is(err!.code, 'ERR_SOCKGATE_NATIVE');
  t.regex(err!.message, /gateway vsock:2:7070: AF_VSOCK is not available in this process: turned off by SOCKGATE_VSOCK=off/);
  t.true(Date.now() - started < 1_000, 'fails at once, not after the deadline');
  await t.throwsAsync(openVsockBridge({ cid: 2, port: 7070 }), { instanceOf: VsockUnavailableError });
  t.throws(() => dialVsock({ cid: 2, port: 7071 }), { instanceOf: VsockUnavailableError });
  t.throws(() => forwardVsock(7070, '/nonexistent.sock'), { instanceOf: VsockUnavailableError });
  // A malformed vsock target is an argument error before anything else.
  await t.throwsAsync(Gateway.connect('vsock:2:x'), { instanceOf: InvalidArgumentError });
});

test('native vsock surface: availability is reported with a reason; bad arguments are type/range errors', async (t) => {
  let native: typeof import('../../../native/index.js');
  try {
    native = await import('../../../native/index.js');
  } catch (err) {
    t.log(`native addon not loaded: ${(err as Error).message}`);
    t.pass();
    return;
  }
  const v = native.vsock;
  t.is(typeof v.available, 'boolean');
  t.is(typeof v.reason, 'string');
  t.is(v.available, v.reason === '', 'a reason exactly when unavailable');
  t.is(v.CID_HOST, 2);
  t.is(v.CID_LOCAL, 1);
  // Argument checks happen before any socket exists (nothing is dialed).
  t.throws(() => v.connect('2' as unknown as number, 7070), { instanceOf: TypeError });
  t.throws(() => v.connect(2, -1), { instanceOf: RangeError });
  t.throws(() => v.connect(2, 7070, 0), { instanceOf: RangeError });
  t.throws(() => new v.Listener(v.CID_ANY, v.PORT_ANY, 0, () => {}), { instanceOf: RangeError });
  t.throws(() => new v.Listener(v.CID_ANY, v.PORT_ANY, 8, undefined as unknown as () => void), { instanceOf: TypeError });
  t.throws(() => (v.Listener as unknown as () => void)(), { instanceOf: TypeError });
  if (!v.available) {
    t.log(`AF_VSOCK unavailable here: ${v.reason}`);
    return;
  }
  // A local listener (no traffic): bound port, close idempotent, wrong receiver refused.
  const l = new v.Listener(v.CID_ANY, v.PORT_ANY, 8, () => {});
  t.true(l.port > 0);
  t.false(l.closed);
  l.close();
  l.close();
  t.true(l.closed);
  t.throws(() => Object.getOwnPropertyDescriptor(Object.getPrototypeOf(l), 'port')!.get!.call({}));
});
