/**
 * The SDK's rdma side, on a host without an RDMA device: what it offers and
 * how it falls back, and the descriptor channel every rdma socket rides (an
 * EOF on its socketpair is final only once the connection said how the slot
 * ended). The RDMA path itself runs in the Soft-RoCE VM suites (test/rdma).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { Socket } from 'node:net';
import { closeFd, socketpair } from '../../../native/index.js';
import { DeclineReason } from '../../../proto/gen/sockgate/v1/transport.js';
import { Gateway, SDK_TRANSPORTS, defaultTransports } from '../../../clients/sdk/gateway.js';
import { declineReasonOfRdmaFailure, rdmaEndError, rdmaSupport } from '../../../clients/sdk/attach-rdma.js';
import { FATE_WAIT_MS, FdChannel } from '../../../clients/sdk/fd-channel.js';
import { ConnectionResetError, GatewayUnavailableError, RdmaTimeoutError } from '../../../proto/errors.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../../helpers/harness.js';
import { eventually } from '../../helpers/rpc.js';

test('rdma offered where available: a remote gateway gets rdma, tcp, grpc; a local one never rdma', (t) => {
  const remote = defaultTransports('10.20.30.40:7070');
  const named = defaultTransports('gateway.example:7070');
  t.false(remote.includes('shm'));
  t.is(remote.includes('rdma'), rdmaSupport.available, rdmaSupport.reason);
  t.deepEqual(named, remote);
  t.deepEqual(remote, rdmaSupport.available ? ['rdma', 'tcp', 'grpc'] : ['tcp', 'grpc']);
  for (const local of ['127.0.0.1:7070', 'localhost:7070', '[::1]:7070', 'unix:/run/sockgate.sock']) t.false(defaultTransports(local).includes('rdma'), local);
  t.is(SDK_TRANSPORTS.includes('rdma'), rdmaSupport.available);
});

test('explicit rdma on a host without a device: falls back to tcp, the fallback says NO_RDMA_DEVICE, bytes intact both ways', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  const sdk = await Gateway.connect(gw.target, { transports: ['rdma', 'tcp'] });
  t.teardown(async () => {
    sdk.close();
    await echo.close();
    await gw.stop();
  });
  const sock = await within(sdk.connect(echo.uri), 10_000, 'connect');
  if (rdmaSupport.available) {
    // A host with a device: the gateway decides (this test is about hosts without one).
    t.log(`rdma available here; transport ${sock.transport}, fallbacks ${JSON.stringify(sock.fallbacks)}`);
  } else {
    t.is(sock.transport, 'tcp');
    const rdma = sock.fallbacks.find((f) => f.transport === 'rdma');
    t.truthy(rdma, JSON.stringify(sock.fallbacks));
    t.is(rdma!.reason, 'NO_RDMA_DEVICE');
    t.true(rdma!.detail.length > 0);
  }
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 8 << 20);
  const { bytes, sha256 } = await within(got, 30_000, 'echo');
  t.is(bytes, 8 << 20);
  t.is(sha256, sent);
});

test('rdma connect failures map to decline reasons; end codes to error classes', (t) => {
  t.is(declineReasonOfRdmaFailure('REJECTED'), DeclineReason.DECLINE_REASON_PEER_DECLINED);
  for (const c of ['ADDR_ERROR', 'ROUTE_ERROR', 'UNREACHABLE']) t.is(declineReasonOfRdmaFailure(c), DeclineReason.DECLINE_REASON_ROUTE_ERROR);
  t.is(declineReasonOfRdmaFailure('NO_DEVICE'), DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  // rdma_cm's address resolution with no device left for the address (rdma link delete): ENODEV.
  for (const c of ['ADDR_ERROR', 'ROUTE_ERROR']) t.is(declineReasonOfRdmaFailure(c, -19), DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  t.is(declineReasonOfRdmaFailure('ADDR_ERROR', -113), DeclineReason.DECLINE_REASON_ROUTE_ERROR);
  t.is(declineReasonOfRdmaFailure('REJECTED', -19), DeclineReason.DECLINE_REASON_PEER_DECLINED);
  t.is(declineReasonOfRdmaFailure('RESOURCE'), DeclineReason.DECLINE_REASON_RESOURCE_LIMIT);
  for (const c of ['CONNECT_ERROR', 'TIMEOUT', 'PROTOCOL', 'something new']) t.is(declineReasonOfRdmaFailure(c), DeclineReason.DECLINE_REASON_CONNECT_FAILED);
  const timeout = rdmaEndError('ERR_SOCKGATE_RDMA_TIMEOUT', 0, 'slot 3');
  t.true(timeout instanceof RdmaTimeoutError);
  t.is(timeout.code, 'ERR_SOCKGATE_RDMA_TIMEOUT');
  for (const code of ['ERR_SOCKGATE_RDMA_PROTOCOL', 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED', 'ERR_SOCKGATE_RDMA_PORT_DOWN', 'ERR_SOCKGATE_RDMA_QP_FATAL', 'ERR_SOCKGATE_RDMA_DISCONNECTED']) {
    t.is(rdmaEndError(code, 0, 'x').code, code);
  }
  t.true(rdmaEndError('ECONNRESET', 104, 'x') instanceof ConnectionResetError);
});

/** An FdChannel on one end of a socketpair; the other end as a plain socket (the "mover"). */
function pair(): { ch: FdChannel; mover: Socket } {
  const [a, b] = socketpair();
  let ch: FdChannel;
  try {
    ch = new FdChannel({ fd: b, label: 'test channel' });
  } catch (err) {
    closeFd(a);
    closeFd(b);
    throw err;
  }
  const mover = new Socket({ fd: a, allowHalfOpen: true, readable: true, writable: true });
  mover.on('error', () => {});
  return { ch, mover };
}

test('FdChannel: a process whose only pending work is an EOF waiting for the mover (an unref\'d pump) stays alive until the verdict', (t) => {
  // In a child: the mover writes, ends and goes away; the verdict comes 300 ms later from an unref'd timer, as an
  // rdma slotEnd comes from the SDK's unref'd pump. Were the wait itself unref'd, the loop would run empty and the
  // process exit before 'end' (ava's "promise never resolved" in the two-VM suite).
  const dir = new URL('../../../', import.meta.url).pathname;
  const script = `
    import { Socket } from 'node:net';
    import { socketpair } from '${dir}native/index.js';
    import { FdChannel } from '${dir}clients/sdk/fd-channel.js';
    const [a, b] = socketpair();
    const ch = new FdChannel({ fd: b, label: 'child channel' });
    let got = '';
    ch.on('data', (c) => (got += c));
    ch.on('end', () => process.stdout.write('end ' + got));
    const mover = new Socket({ fd: a, allowHalfOpen: true, readable: false, writable: true });
    mover.end('bytes', () => mover.destroy());
    setTimeout(() => ch.settle(), 300).unref();
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout, 'end bytes');
});

test('FdChannel: an EOF waits for the mover; a clean settle releases it after every byte', async (t) => {
  const { ch, mover } = pair();
  const chunks: Buffer[] = [];
  let ended = false;
  ch.on('data', (c: Buffer) => chunks.push(c));
  ch.on('end', () => (ended = true));
  mover.end('hello, ');
  // Wait for the bytes (bounded; a loaded machine may take longer than a fixed sleep), then check the EOF is held.
  await eventually(() => Buffer.concat(chunks).length >= 'hello, '.length, 2_000);
  t.is(Buffer.concat(chunks).toString(), 'hello, ', 'the bytes before the EOF arrive');
  t.false(ended, 'the EOF is held until the mover says how the stream ended');
  ch.settle();
  await within(once(ch, 'end'), 2_000, 'end after settle');
  // Half-close: our side still writes after its read side ended.
  const back = new Promise<string>((resolve) => {
    let s = '';
    mover.on('data', (c: Buffer) => (s += c));
    mover.on('end', () => resolve(s));
  });
  ch.end('world');
  t.is(await within(back, 2_000, 'half-close'), 'world');
});

test('FdChannel: settled first, an EOF is final at once; an error after the EOF destroys with that error', async (t) => {
  {
    const { ch, mover } = pair();
    ch.settle();
    ch.resume();
    mover.end();
    await within(once(ch, 'end'), 2_000, 'end');
    ch.destroy();
    mover.destroy();
  }
  {
    const { ch, mover } = pair();
    ch.resume();
    let ended = false;
    ch.on('end', () => (ended = true));
    mover.end();
    await new Promise((r) => setTimeout(r, 100));
    const err = new RdmaTimeoutError('slot 1: ERR_SOCKGATE_RDMA_TIMEOUT');
    const errored = once(ch, 'error');
    ch.settle(err);
    const [got] = (await within(errored, 2_000, 'error')) as [Error];
    t.is(got, err);
    t.false(ended, 'a torn-down slot never looks like a clean end');
    mover.destroy();
  }
});

test('FdChannel: a failure while open destroys it with the mover\'s error; a reset read meanwhile is replaced by it', async (t) => {
  {
    const { ch, mover } = pair();
    ch.resume();
    const errored = once(ch, 'error');
    ch.settle(new RdmaTimeoutError('keepalive'));
    const [got] = (await within(errored, 2_000, 'error')) as [Error & { code: string }];
    t.is(got.code, 'ERR_SOCKGATE_RDMA_TIMEOUT');
    mover.destroy();
  }
  {
    const { ch, mover } = pair();
    // Bytes the mover never reads: closing it then resets our side (ECONNRESET), not a clean EOF.
    ch.write(Buffer.alloc(4096));
    await new Promise((r) => setTimeout(r, 50));
    ch.resume();
    const errored = once(ch, 'error');
    mover.destroy();
    await new Promise((r) => setTimeout(r, 100));
    ch.settle(new RdmaTimeoutError('keepalive'));
    const [got] = (await within(errored, 2_000, 'error')) as [Error & { code: string }];
    t.is(got.code, 'ERR_SOCKGATE_RDMA_TIMEOUT', got.message);
  }
});

test('FdChannel: an EOF the mover never explains becomes an error, not a clean end', async (t) => {
  const { ch, mover } = pair();
  ch.resume();
  let ended = false;
  ch.on('end', () => (ended = true));
  const errored = once(ch, 'error');
  mover.end();
  const [got] = (await within(errored, FATE_WAIT_MS + 2_000, 'error')) as [Error];
  t.true(got instanceof GatewayUnavailableError, got.message);
  t.false(ended);
});
