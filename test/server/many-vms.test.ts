/**
 * Many VMs through one gateway in the Firecracker / Cloud Hypervisor form of
 * vsock (issue 17): three simulated VMs at once, each identified by its VMM
 * socket alone (no token), with its own rules and quota, and a hostile one
 * that tries the others' sockets. The test plays the VMMs as Firecracker
 * does: a guest's connection to host port P is a connection to `<uds_path>_P`
 * (test/helpers/vmm-standin.ts). VM a is configured (`vsock_uds.vms`), b and c
 * come and go in the watched directory.
 */
import test from 'ava';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { LimitExceededError, PolicyDeniedError, SocketNotFoundError, UnauthenticatedError } from '../../proto/errors.js';
import { SocketGatewayServiceClient, type ConnectResponse } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachStatus, encodePreamble, parseReply, REPLY_BYTES } from '../../proto/wire.js';
import { ADMIN_IDENTITY, ADMIN_TOKEN, echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../helpers/harness.js';
import { startVmmStandin, type VmmStandin } from '../helpers/vmm-standin.js';
import { ByteReader } from '../clients/proxy/helpers.js';

const CONTROL_PORT = 7070;
const DATA_PORT = 7071;
/** A token of VM a's identity: VM c presenting it must be refused (the VM decides, a token must agree). */
const VM_A_TOKEN = 'vm-a-token-0123456789abcdef';
const STEP_MS = 20_000;

/** Wait (bounded) until `cond` holds: the gateway learns of VMM sockets from directory change events. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + STEP_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${STEP_MS} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A guest app's SDK in `vmm`'s VM: its control channel is a guest connection to host vsock port 7070. */
async function guestSdk(vmm: VmmStandin, token?: string): Promise<SdkGateway> {
  return SdkGateway.connect(`unix:${await guestControl(vmm)}`, token ? { token } : {});
}

const guestControls = new Map<VmmStandin, Promise<string>>();
/** The Unix socket a guest app in `vmm`'s VM dials for host vsock port 7070 (one per VM). */
function guestControl(vmm: VmmStandin): Promise<string> {
  let p = guestControls.get(vmm);
  if (!p) guestControls.set(vmm, (p = vmm.guestPort(CONTROL_PORT)));
  return p;
}

/** Connect (tcp plane) through the raw service over `vmm`'s control socket: the attach token, undelivered. */
function rawConnect(client: SocketGatewayServiceClient, uri: string): Promise<ConnectResponse> {
  return new Promise((resolve, reject) =>
    client.connect(
      { uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined }], timeoutMs: 0, options: [] },
      new Metadata(),
      { deadline: Date.now() + 10_000 },
      (err, r) => (err ? reject(err) : resolve(r)),
    ),
  );
}

test('three VMs through one gateway: identity from the VMM socket, per-VM rules and quotas, no cross-VM access, hot add and removal', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-vms-'));
  const [echoA, echoB] = [await echoServer(), await echoServer()];
  const paths = { a: join(dir, 'a.sock'), b: join(dir, 'b.sock'), c: join(dir, 'c.sock'), d: join(dir, 'd.sock') };
  const vmmA = await startVmmStandin({ udsPath: paths.a });
  const vmmB = await startVmmStandin({ udsPath: paths.b });
  const gw = await startGateway({
    transports: { enabled: ['tcp', 'grpc'] },
    identities: [
      ADMIN_IDENTITY,
      { name: 'vm-a', tokens: [VM_A_TOKEN], max_sockets: 2 },
      { name: 'vm-b', vmm_paths: [paths.b] },
      { name: 'vm-c', vmm_paths: [paths.c] },
    ],
    rules: [
      { name: 'a-to-echo-a', action: 'allow', identities: ['vm-a'], directions: ['connect'], destinations: ['127.0.0.1'], ports: [echoA.port] },
      { name: 'b-to-echo-b', action: 'allow', identities: ['vm-b'], directions: ['connect'], destinations: ['127.0.0.1'], ports: [echoB.port] },
      { name: 'c-to-both', action: 'allow', identities: ['vm-c'], directions: ['connect'], destinations: ['127.0.0.1'], ports: [echoA.port, echoB.port] },
    ],
    vsock_uds: { vms: [{ path: paths.a, identity: 'vm-a' }], watch: { dir }, control_port: CONTROL_PORT, data_port: DATA_PORT },
  });
  const cleanups: Array<() => unknown> = [];
  t.teardown(async () => {
    for (const c of cleanups.reverse()) await c();
    await gw.stop();
    await Promise.all([vmmA.close(), vmmB.close(), echoA.close(), echoB.close()]);
    rmSync(dir, { recursive: true, force: true });
  });
  await until(() => gw.gateway.vms.length === 2, 'VMs a and b served');
  t.deepEqual(
    gw.gateway.vms.map((v) => [v.path, v.identity, v.watched]).sort(),
    [
      [paths.a, 'vm-a', false],
      [paths.b, 'vm-b', true],
    ],
  );

  // VM c appears while the gateway runs (hot add): its VMM creates its socket in the watched directory.
  const vmmC = await startVmmStandin({ udsPath: paths.c });
  await until(() => gw.gateway.vms.some((v) => v.path === paths.c), 'VM c added');
  t.true(existsSync(`${paths.c}_${CONTROL_PORT}`) && existsSync(`${paths.c}_${DATA_PORT}`), 'VM c is served without a restart');

  // Each VM is its own identity, with no token at all.
  const sdkA = await guestSdk(vmmA);
  const sdkB = await guestSdk(vmmB);
  const sdkC = await guestSdk(vmmC);
  cleanups.push(() => sdkA.close(), () => sdkB.close(), () => sdkC.close());
  // Bytes through each VM (each socket ends with its transfer).
  const transfers = [
    [sdkA, echoA.uri, 'tcp'],
    [sdkB, echoB.uri, 'tcp'],
    [sdkC, echoA.uri, 'grpc'],
  ] as const;
  for (const [sdk, uri, transport] of transfers) {
    const s = await sdk.connect(uri, { transports: [transport] });
    const got = hashUntilEnd(s);
    const sent = await sendRandom(s, 1 << 20);
    const back = await within(got, STEP_MS, `echo over ${transport}`);
    t.is(back.sha256, sent, 'the bytes come back intact');
  }
  for (const sdk of [sdkA, sdkB, sdkC]) {
    const deadline = Date.now() + STEP_MS;
    while ((await sdk.listSockets()).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }
  const a1 = await sdkA.connect(echoA.uri, { transports: ['tcp'] });
  const b1 = await sdkB.connect(echoB.uri, { transports: ['tcp'] });
  const c1 = await sdkC.connect(echoA.uri, { transports: ['grpc'] });
  // c1 dies with VM c at the end; none of them is read here.
  for (const s of [a1, b1, c1]) s.on('error', () => {});
  const admin = await SdkGateway.connect(gw.target, { token: ADMIN_TOKEN });
  cleanups.push(() => admin.close());
  const owners = Object.fromEntries((await admin.listSockets()).map((s) => [s.socketId, s.identity]));
  t.deepEqual([owners[a1.socketId], owners[b1.socketId], owners[c1.socketId]], ['vm-a', 'vm-b', 'vm-c'], 'status shows each socket under its VM');

  // Per-VM rules: a may reach echo A only, b echo B only.
  await t.throwsAsync(sdkA.connect(echoB.uri, { transports: ['tcp'] }), { instanceOf: PolicyDeniedError });
  await t.throwsAsync(sdkB.connect(echoA.uri, { transports: ['tcp'] }), { instanceOf: PolicyDeniedError });
  // Per-VM quota: vm-a holds at most 2 sockets; b is unaffected.
  const a2 = await sdkA.connect(echoA.uri, { transports: ['grpc'] });
  await t.throwsAsync(sdkA.connect(echoA.uri, { transports: ['grpc'] }), { instanceOf: LimitExceededError });
  const b2 = await sdkB.connect(echoB.uri, { transports: ['grpc'] });
  a2.destroy();
  b2.destroy();

  // The hostile VM c: the others' sockets do not exist for it, their token does not make it them.
  t.deepEqual((await sdkC.listSockets()).map((s) => s.socketId), [c1.socketId]);
  await t.throwsAsync(sdkC.getInfo(a1.socketId), { instanceOf: SocketNotFoundError });
  await t.throwsAsync(sdkC.getInfo(b1.socketId), { instanceOf: SocketNotFoundError });
  const cAsA = await guestSdk(vmmC, VM_A_TOKEN);
  cleanups.push(() => cAsA.close());
  await t.throwsAsync(cAsA.listSockets(), { instanceOf: UnauthenticatedError, message: /name identity "vm-a", but the VMM socket .*c\.sock is identity "vm-c"/ });
  // A's attach token (as if stolen) on c's data socket: refused, the socket stays a's.
  const clientA = new SocketGatewayServiceClient(`unix:${await guestControl(vmmA)}`, credentials.createInsecure());
  cleanups.push(() => clientA.close());
  const res = await rawConnect(clientA, echoA.uri);
  t.is(res.negotiation?.accepted?.params?.$case === 'tcp' ? res.negotiation.accepted.params.tcp.vsockPort : -1, DATA_PORT);
  const stolen = await vmmC.guestConnect(DATA_PORT);
  stolen.write(encodePreamble(res.negotiation!.accepted!.attachToken));
  t.is(parseReply(await within(new ByteReader(stolen).read(REPLY_BYTES), STEP_MS, 'attach reply')), AttachStatus.WRONG_TOKEN);
  t.is((await admin.getInfo(res.socketId)).identity, 'vm-a');

  // A VM mapped to no identity is refused (anonymous is not explicitly enabled).
  const vmmD = await startVmmStandin({ udsPath: paths.d });
  cleanups.push(() => vmmD.close());
  await until(() => gw.gateway.vms.some((v) => v.path === paths.d), 'VM d added');
  const sdkD = await guestSdk(vmmD);
  cleanups.push(() => sdkD.close());
  await t.throwsAsync(sdkD.listSockets(), { instanceOf: UnauthenticatedError, message: /d\.sock maps to no identity/ });

  // Hot removal: VM c's VMM goes away, and so do its sockets on the gateway.
  await vmmC.close();
  await until(() => !existsSync(`${paths.c}_${CONTROL_PORT}`), 'VM c removed');
  t.false(existsSync(`${paths.c}_${DATA_PORT}`));
  t.deepEqual(gw.gateway.vms.map((v) => v.identity ?? '(none)').sort(), ['(none)', 'vm-a', 'vm-b']);
  // The others are untouched.
  t.is((await sdkB.listSockets()).length, 1);
});
