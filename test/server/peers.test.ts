/**
 * Peer gateways (config `peers`): an SDK client of gateway A connects to a
 * destination that A's route sends through gateway B; B opens the real host
 * socket under its own policy. Two in-process gateways, real sockets. Without
 * an RDMA device here, the A->B hop falls back to tcp and says why.
 */
import test from 'ava';
import { once } from 'node:events';
import { TransportKind, DeclineReason } from '../../proto/gen/sockgate/v1/transport.js';
import { SocketState } from '../../proto/gen/sockgate/v1/sockgate.js';
import { rdmaSupport } from '../../clients/sdk/attach-rdma.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { loadConfig } from '../../server/config.js';
import { echoServer, hashUntilEnd, readAll, sendRandom, startGateway, tcpServer, within } from '../helpers/harness.js';

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('SDK -> A -> B -> echo: bytes intact both ways, half-close both ways, B holds the socket, A records the hop', async (t) => {
  const echo = await echoServer();
  const echoGrpc = await echoServer();
  // Host half-closes first: it greets, ends, and keeps reading what the guest still sends.
  let lateResolve!: (s: string) => void;
  const late = new Promise<string>((r) => (lateResolve = r));
  const greeter = await tcpServer((c) => {
    c.end('hello from the host');
    readAll(c).then((b) => lateResolve(b.toString()), () => lateResolve('(error)'));
  });
  const b = await startGateway();
  const a = await startGateway({
    peers: [
      { match: { host: '127.0.0.1', ports: String(echo.port) }, via: b.target },
      { match: { cidr: '127.0.0.0/8', ports: echoGrpc.port }, via: b.target, transports: ['grpc'] },
      { match: { host: '127.0.0.1', ports: `${greeter.port}-${greeter.port}` }, via: b.target },
    ],
  });
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await echo.close();
    await echoGrpc.close();
    await greeter.close();
  });

  // The guest's own transport to A: the default (shm here), so A hands the hop's descriptor to a native link.
  const sock = await within(a.sdk.connect(echo.uri), 15_000, 'connect through the peer');
  t.is(sock.remoteUri, echo.uri, 'the remote address is the real host socket\'s, as the peer reports it');
  const info = await a.sdk.getInfo(sock.socketId);
  t.truthy(info.peer, 'GetInfo on A shows the hop');
  t.is(info.peer!.via, b.target);
  t.is(info.peer!.transport, TransportKind.TRANSPORT_KIND_TCP);
  t.is(info.remoteUri, echo.uri);
  if (!rdmaSupport.available) {
    const rdma = info.peer!.fallbacks.find((f) => f.kind === TransportKind.TRANSPORT_KIND_RDMA);
    t.is(rdma?.reason, DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE, JSON.stringify(info.peer!.fallbacks));
  }
  // B holds the real host socket, under the id A recorded.
  const onB = (await b.sdk.listSockets()).find((s) => s.socketId === info.peer!.socketId);
  t.truthy(onB, 'B lists the socket while it is open');
  t.is(onB!.remoteUri, echo.uri);
  t.is(onB!.transport, TransportKind.TRANSPORT_KIND_TCP);

  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 16 << 20);
  const echoed = await within(got, 60_000, 'echo through both gateways');
  t.is(echoed.bytes, 16 << 20);
  t.is(echoed.sha256, sent, 'every byte, in order, after the guest half-closed');
  await until(async () => !(await b.sdk.listSockets()).some((s) => s.socketId === info.peer!.socketId), 10_000, 'B releases the socket');
  await until(() => a.gateway.table.size === 0, 10_000, 'A releases the socket');

  // A descriptor-less hop (grpc), bridged into a socketpair; the guest on tcp (A relays it on its splice link).
  const viaGrpc = await SdkGateway.connect(a.target, { transports: ['tcp'] });
  t.teardown(() => viaGrpc.close());
  const s2 = await within(viaGrpc.connect(echoGrpc.uri), 15_000, 'connect through the peer over grpc');
  const info2 = await viaGrpc.getInfo(s2.socketId);
  t.is(info2.peer?.transport, TransportKind.TRANSPORT_KIND_GRPC);
  const got2 = hashUntilEnd(s2);
  const sent2 = await sendRandom(s2, 4 << 20);
  const echoed2 = await within(got2, 60_000, 'echo over the grpc hop');
  t.is(echoed2.sha256, sent2);

  // The host half-closes first; the guest's bytes still reach it afterwards.
  const s3 = await within(a.sdk.connect(greeter.uri), 15_000, 'connect to the greeter');
  const greeting = await within(readAll(s3), 10_000, 'greeting then FIN');
  t.is(greeting.toString(), 'hello from the host');
  t.false(s3.destroyed);
  s3.end('late words');
  t.is(await within(late, 10_000, 'the host reads what came after its FIN'), 'late words');
});

test('policy: A decides first, then B; a denial by B reaches the guest as ERR_SOCKGATE_POLICY_DENIED naming B\'s rule', async (t) => {
  const echo = await echoServer();
  const b = await startGateway({
    rules: [
      { name: 'b-no-echo', action: 'deny', destinations: ['127.0.0.1'], ports: [echo.port] },
      { name: 'b-loopback', action: 'allow', destinations: ['127.0.0.0/8'] },
    ],
  });
  const a = await startGateway({
    rules: [
      { name: 'a-no-9', action: 'deny', destinations: ['127.0.0.0/8'], ports: [9] },
      { name: 'a-loopback', action: 'allow', destinations: ['127.0.0.0/8'] },
    ],
    peers: [{ match: { cidr: '127.0.0.0/8' }, via: b.target }],
  });
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await echo.close();
  });
  const byB = await t.throwsAsync(a.sdk.connect(echo.uri));
  t.is((byB as { code?: string }).code, 'ERR_SOCKGATE_POLICY_DENIED', byB?.message);
  t.is((byB as { rule?: string }).rule, 'b-no-echo');
  t.regex(byB!.message, /peer gateway/);
  const byA = await t.throwsAsync(a.sdk.connect('tcp://127.0.0.1:9'));
  t.is((byA as { code?: string }).code, 'ERR_SOCKGATE_POLICY_DENIED');
  t.is((byA as { rule?: string }).rule, 'a-no-9', 'A\'s own policy decides before any peer is asked');
  // Refused at the destination, behind B: the same code as a direct refusal.
  const closed = await echoServer();
  const port = closed.port;
  await closed.close();
  const refused = await t.throwsAsync(a.sdk.connect(`tcp://127.0.0.1:${port}`));
  t.is((refused as { code?: string }).code, 'ERR_SOCKGATE_CONNECT_REFUSED', refused?.message);
  t.is(a.gateway.table.size, 0);
});

test('a peer gateway that is down: the guest gets HOST_UNREACHABLE within its connect timeout', async (t) => {
  const dead = await echoServer();
  const via = `127.0.0.1:${dead.port}`;
  await dead.close();
  const a = await startGateway({ peers: [{ match: { ports: '1-65535' }, via }] });
  t.teardown(() => a.stop());
  const started = Date.now();
  const err = await t.throwsAsync(a.sdk.connect('tcp://127.0.0.1:7', { timeoutMs: 500 }));
  t.is((err as { code?: string }).code, 'ERR_SOCKGATE_HOST_UNREACHABLE', err?.message);
  t.true(Date.now() - started < 12_000);
  t.is(a.gateway.table.size, 0);
});

test('peers config: validated with the key named', (t) => {
  const bad = (peers: unknown) => t.throws(() => loadConfig({ overrides: { peers } }));
  bad([{ match: {}, via: '127.0.0.1:1' }]);
  bad([{ match: { cidr: '10.0.0.0/33' }, via: '127.0.0.1:1' }]);
  bad([{ match: { ports: '99999' }, via: '127.0.0.1:1' }]);
  bad([{ match: { host: 'x' }, via: '' }]);
  bad([{ match: { host: 'x' }, via: '127.0.0.1:1', transports: ['shm'] }]);
  bad([{ match: { host: 'x' }, via: '127.0.0.1:1', tls: { cert: '/c.pem' } }]);
  const e = t.throws(() => loadConfig({ overrides: { peers: [{ match: { cidr: 'nope' }, via: '127.0.0.1:1' }] } }));
  t.regex(e!.message, /peers\.0\.match\.cidr/);
  const ok = loadConfig({ overrides: { peers: [{ match: { host: '*.internal', ports: 5432 }, via: 'gw-b:7070' }] } });
  t.deepEqual(ok.peers[0]!.transports, ['rdma', 'tcp']);
  t.deepEqual(loadConfig().peers, []);
});

test('a socket through a peer closes on both gateways when the guest aborts it (guest on grpc: A relays the hop in JS)', async (t) => {
  const echo = await echoServer();
  const b = await startGateway();
  const a = await startGateway({ peers: [{ match: { host: '127.0.0.1' }, via: b.target }] });
  const guest = await SdkGateway.connect(a.target, { transports: ['grpc'] });
  t.teardown(async () => {
    guest.close();
    await a.stop();
    await b.stop();
    await echo.close();
  });
  const sock = await within(guest.connect(echo.uri), 15_000, 'connect');
  t.is(sock.transport, 'grpc');
  sock.write('x');
  await within(once(sock, 'data'), 5_000, 'echo');
  t.is(b.gateway.table.size, 1);
  t.is(b.gateway.table.list()[0]!.state, SocketState.SOCKET_STATE_OPEN);
  sock.on('error', () => {});
  sock.destroy(new Error('guest aborts'));
  await until(() => a.gateway.table.size === 0 && b.gateway.table.size === 0, 10_000, 'both gateways release the socket');
  t.pass();
});
