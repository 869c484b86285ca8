/**
 * The Firecracker / Cloud Hypervisor Unix-socket form of vsock, with a VMM
 * stand-in (test/helpers/vmm-standin.ts):
 * - guest → host: the gateway's `vsock_uds` serves the control plane on
 *   `<uds>_7070` and the tcp data plane on `<uds>_7071`. The SDK's control
 *   channel reaches the gateway through the stand-in (its data connection
 *   still dials host:port: the SDK has no vsock dialer yet), and a raw data
 *   connection through `<uds>_7071`, attached with the token and the advertised
 *   TcpAttach.vsock_port, carries a socket's bytes.
 * - host → guest: the proxy's vsock-uds dialer (`CONNECT <port>\n` / `OK <n>\n`)
 *   delivers a reverse forward into a guest listener.
 * - `--gateway vsock:2:7070` fails clearly where AF_VSOCK is unavailable (real
 *   AF_VSOCK is tested in the VM: test/rdma/vsock.test.ts).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { credentials, Metadata } from '@grpc/grpc-js';
import { connect as netConnect, type Socket } from 'node:net';
import { once } from 'node:events';
import { Gateway as SdkGateway } from '../../../clients/sdk/gateway.js';
import { connectGateway } from '../../../clients/proxy/link.js';
import { VsockUnavailableError } from '../../../proto/errors.js';
import { dialVsockUds } from '../../../clients/proxy/vsock-uds.js';
import { parseGatewayTarget } from '../../../clients/proxy/address.js';
import { ConnectRefusedError } from '../../../proto/errors.js';
import { SocketGatewayServiceClient, type ConnectResponse } from '../../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../../proto/gen/sockgate/v1/transport.js';
import { AttachStatus, REPLY_BYTES, encodePreamble, parseReply } from '../../../proto/wire.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../../helpers/harness.js';
import { startVmmStandin } from '../../helpers/vmm-standin.js';
import { ByteReader, startProxy } from './helpers.js';

const CONTROL_PORT = 7070;
const DATA_PORT = 7071;

test('guest → host over the VMM convention: SDK through <uds>_7070, data through <uds>_7071, SHA-256 both ways', async (t) => {
  const vmm = await startVmmStandin();
  // The guest is the identity its VM (the VMM socket) maps to: no token (issue 17; unmapped VMs are refused).
  const gw = await startGateway({ vsock_uds: { path: vmm.udsPath, control_port: CONTROL_PORT, data_port: DATA_PORT }, identities: [{ name: 'vm1', vmm_paths: [vmm.udsPath] }] });
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
    await vmm.close();
  });
  t.deepEqual(gw.gateway.addresses.vsock, { control: `${vmm.udsPath}_${CONTROL_PORT}`, data: `${vmm.udsPath}_${DATA_PORT}` });
  t.true(existsSync(`${vmm.udsPath}_${CONTROL_PORT}`) && existsSync(`${vmm.udsPath}_${DATA_PORT}`));

  // 1. The SDK as a guest app: its control channel is a guest connection to host vsock port 7070.
  const guestControl = await vmm.guestPort(CONTROL_PORT);
  const sdk = await SdkGateway.connect(`unix:${guestControl}`);
  t.teardown(() => sdk.close());
  const sock = await sdk.connect(echo.uri, { transports: ['tcp'] });
  const received = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 8 << 20);
  const got = await within(received, 30_000, 'echo through the stand-in control path');
  t.is(got.bytes, 8 << 20);
  t.is(got.sha256, sent);

  // 2. Negotiation advertises the vsock data port, and the data plane accepts on <uds>_7071.
  const client = new SocketGatewayServiceClient(`unix:${guestControl}`, credentials.createInsecure());
  t.teardown(() => client.close());
  const res = await new Promise<ConnectResponse>((resolve, reject) =>
    client.connect(
      { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined }], timeoutMs: 0, options: [] },
      new Metadata(),
      { deadline: Date.now() + 10_000 },
      (err, r) => (err ? reject(err) : resolve(r)),
    ),
  );
  const accepted = res.negotiation?.accepted;
  t.is(accepted?.params?.$case, 'tcp');
  if (accepted?.params?.$case !== 'tcp') return;
  t.is(accepted.params.tcp.vsockPort, DATA_PORT, 'TcpAttach.vsock_port tells a vsock guest where to attach');
  // The guest dials host vsock port 7071: the stand-in connects to <uds>_7071.
  const data: Socket = await vmm.guestConnect(DATA_PORT);
  const reader = new ByteReader(data);
  data.write(encodePreamble(accepted.attachToken));
  t.is(parseReply(await within(reader.read(REPLY_BYTES), 10_000, 'attach reply')), AttachStatus.OK);
  const payload = Buffer.alloc(1 << 20, 0x5a);
  data.end(payload);
  const back = await within(reader.read(payload.length), 10_000, 'echo over the vsock data socket');
  t.true(back.equals(payload));
});

test('host → guest: a reverse forward delivered through the VMM socket (CONNECT <port> / OK <n>) to a guest listener', async (t) => {
  const vmm = await startVmmStandin();
  const gw = await startGateway();
  // The guest's service on vsock port 5000: an echo.
  vmm.guestListen(5000, (s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  const proxy = await startProxy(gw.target, { remote: [`tcp://127.0.0.1:0=vsock-uds:${vmm.udsPath}:5000`] });
  t.teardown(async () => {
    await proxy.destroy();
    await gw.stop();
    await vmm.close();
  });
  const listen = proxy.addresses.remote[0]!.listen;
  const port = Number(listen.split(':').pop());
  t.regex(proxy.addresses.remote[0]!.target, /^vsock-uds:.*:5000$/);
  const host = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await once(host, 'connect');
  const received = hashUntilEnd(host);
  const sent = await sendRandom(host, 4 << 20);
  const got = await within(received, 30_000, 'echo from the guest');
  t.is(got.bytes, 4 << 20);
  t.is(got.sha256, sent);
  t.deepEqual(vmm.connects, [{ port: 5000, accepted: true }]);
});

test('vsock-uds dialer: no guest listener on the port is a refusal, and the acknowledgement gives the host port', async (t) => {
  const vmm = await startVmmStandin();
  t.teardown(() => vmm.close());
  const err = await t.throwsAsync(dialVsockUds(vmm.udsPath, 6000, { timeoutMs: 5_000 }));
  t.true(err instanceof ConnectRefusedError);
  t.regex(err!.message, /nothing in the guest listens on vsock port 6000/);
  vmm.guestListen(6001, (s) => s.end('hi from the guest'));
  const { socket, hostPort } = await dialVsockUds(vmm.udsPath, 6001);
  t.true(hostPort >= 1 << 30);
  socket.resume();
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  await once(socket, 'end');
  t.is(Buffer.concat(chunks).toString(), 'hi from the guest');
  socket.destroy();
});

test('--gateway vsock:2:7070 parses, and fails clearly where AF_VSOCK is unavailable', async (t) => {
  t.deepEqual(parseGatewayTarget('vsock:2:7070'), { kind: 'vsock', cid: 2, port: 7070 });
  t.deepEqual(parseGatewayTarget('vsock:7070'), { kind: 'vsock', cid: 2, port: 7070 });
  // Never dial this machine's real vsock: in a VM, CID 2 is whatever runs the VM.
  process.env['SOCKGATE_VSOCK'] = 'off';
  const err = await t.throwsAsync(connectGateway('vsock:2:7070'));
  t.true(err instanceof VsockUnavailableError);
  t.is((err as VsockUnavailableError).code, 'ERR_SOCKGATE_NATIVE');
  t.regex(err!.message, /AF_VSOCK is not available in this process: turned off by SOCKGATE_VSOCK=off/);
  t.regex(err!.message, /unix:\/path or host:port/);
});
