/**
 * Kernel SMC in the Soft-RoCE VM (one VM, Debian's kernel; `npm run test:rdma`
 * runs it there, SOCKGATE_IN_VM=1; on the host it skips with a message).
 * Setups whose outcome the kernel's rules fix, each asserting the exact reason
 * code (net/smc/smc_clc.h), so the check is not our code compared with itself:
 * - no RDMA device on the path: SMC to an SMC listener on 127.0.0.1 (lo has no
 *   RDMA device, no ISM here): the client falls back with 0x03030000 (no SMC
 *   device) and the server with 0x05000000 (peer declined), the peer's
 *   diagnosis 0x03030000;
 * - peer without SMC: SMC to a plain TCP listener: 0x03010000 (the peer's SYN
 *   carried no SMC option);
 * - through the gateway: a rule with `smc: prefer` opens the host socket and
 *   the host listener as SMC; GetInfo and the status table show the same codes;
 *   every byte arrives (SHA-256).
 * SMC-R itself runs on the 6.12 kernel with UEID + PNET: test/rdma/vm/smc-lab.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import test from 'ava';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import { formatStatusTable } from '../../server/cli/index.js';
import { Gateway as SdkGateway } from '../../clients/sdk/index.js';
import { inodeOfFd, smcConnect, smcDiagByInode, smcInfoOf, smcListen, smcSupport } from '../../native/smc.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const NO_SMC_DEVICE = 0x03030000;
const PEER_NO_SMC = 0x03010000;
const PEER_DECLINED = 0x05000000;
const PAYLOAD_BYTES = 2 << 20;
const T_MS = 60_000;

const fdOf = (s: Socket) => (s as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;

/** Sends `payload`, half-closes, and resolves with what the peer answered (its SHA-256 of what it got). */
async function sendAndHash(sock: Socket, payload: Buffer): Promise<string> {
  let answer = '';
  sock.on('data', (d: Buffer) => (answer += d.toString()));
  sock.resume();
  const ended = new Promise<void>((resolve, reject) => {
    sock.on('end', () => resolve());
    sock.on('error', reject);
  });
  sock.end(payload);
  await ended;
  return answer;
}

/** A server answering each connection with the SHA-256 of what it received; `accepted` gets each socket's SMC view first. */
function hashServer(onAccept: (s: Socket) => void = () => {}) {
  return (s: Socket) => {
    onAccept(s);
    const h = createHash('sha256');
    s.on('data', (d: Buffer) => h.update(d));
    s.on('end', () => s.end(h.digest('hex')));
    s.on('error', () => {});
  };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

if (!IN_VM) {
  test.skip('kernel SMC: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('the VM kernel has SMC', (t) => {
    t.true(smcSupport.available, smcSupport.reason);
  });

  test.serial('no RDMA device on the path: client 0x03030000, server 0x05000000 with the peer\'s 0x03030000', async (t) => {
    const views: ReturnType<typeof smcInfoOf>[] = [];
    const srv = createServer({ allowHalfOpen: true }, hashServer((s) => views.push(smcInfoOf(inodeOfFd(fdOf(s)), smcDiagByInode()))));
    const l = smcListen(4, '127.0.0.1', 0, 16, false);
    await new Promise<void>((r) => srv.listen({ fd: l.fd }, r));
    t.teardown(() => srv.close());
    const sock = await smcConnect(4, '127.0.0.1', l.port, T_MS);
    const client = smcInfoOf(inodeOfFd(fdOf(sock)), smcDiagByInode());
    const payload = randomBytes(PAYLOAD_BYTES);
    t.is(await sendAndHash(sock, payload), sha(payload));
    t.is(client.mode, 'fallback');
    t.is(client.fallbackReason, NO_SMC_DEVICE, client.text);
    t.is(views[0]?.mode, 'fallback');
    t.is(views[0]?.fallbackReason, PEER_DECLINED, views[0]?.text);
    t.is(views[0]?.peerDiagnosis, NO_SMC_DEVICE, views[0]?.text);
  });

  test.serial('peer without SMC (a plain TCP listener): client 0x03010000', async (t) => {
    const srv = createServer({ allowHalfOpen: true }, hashServer());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    t.teardown(() => srv.close());
    const sock = await smcConnect(4, '127.0.0.1', (srv.address() as AddressInfo).port, T_MS);
    const client = smcInfoOf(inodeOfFd(fdOf(sock)), smcDiagByInode());
    const payload = randomBytes(PAYLOAD_BYTES);
    t.is(await sendAndHash(sock, payload), sha(payload));
    t.is(client.mode, 'fallback');
    t.is(client.fallbackReason, PEER_NO_SMC, client.text);
  });

  test.serial('gateway: smc: prefer host sockets report the kernel\'s codes in GetInfo and status; bytes intact', async (t) => {
    const config = loadConfig({
      overrides: mergeConfig(
        { listen: { control: '127.0.0.1:7690', data: '127.0.0.1:7691', metrics: '' }, telemetry: { log_level: 'warn' }, transports: { enabled: ['tcp', 'grpc'] } },
        { rules: [{ name: 'smc-local', action: 'allow', destinations: ['127.0.0.0/8'], ports: ['1024-65535'], smc: 'prefer' }] },
      ),
    });
    const gw = new Gateway(config);
    const addrs = await gw.start();
    t.teardown(() => gw.stop());
    const sdk = await SdkGateway.connect(addrs.control);
    t.teardown(() => sdk.close());

    // A guest listens through the gateway: the host listener is SMC; a guest connects to it: the host socket is SMC.
    // A fixed port: a port-0 listen is judged by policy only once bound, so its rule's smc cannot apply to it.
    const server = await sdk.listen('tcp://127.0.0.1:7692', { transports: ['tcp'] });
    t.teardown(() => server.close());
    const acceptedOnce = new Promise<void>((resolve) => server.once('connection', () => resolve()));
    server.on('connection', hashServer());
    const viaGw = await sdk.connect(server.localUri, { transports: ['tcp'] });
    await acceptedOnce;
    // And to a host TCP service without SMC.
    const plain = createServer({ allowHalfOpen: true }, hashServer());
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    t.teardown(() => plain.close());
    const toPlain = await sdk.connect(`tcp://127.0.0.1:${(plain.address() as AddressInfo).port}`, { transports: ['tcp'] });

    // While all are open: GetInfo, ListSockets and the status table.
    const info = await sdk.getInfo(toPlain.socketId);
    t.like(info.hostSocket, { proto: 'smc', smcMode: 'fallback', smcFallbackReason: PEER_NO_SMC });
    t.regex(info.hostSocket!.detail, /0x03010000 peer did not indicate SMC/);
    const mine = await sdk.listSockets();
    const connected = mine.find((s) => s.socketId === viaGw.socketId);
    const accepted = mine.find((s) => s.kind === 1 && s.socketId !== viaGw.socketId && s.socketId !== toPlain.socketId);
    const listener = mine.find((s) => s.kind === 3);
    t.like(connected?.hostSocket, { proto: 'smc', smcMode: 'fallback', smcFallbackReason: NO_SMC_DEVICE }, JSON.stringify(mine));
    t.like(accepted?.hostSocket, { proto: 'smc', smcMode: 'fallback', smcFallbackReason: PEER_DECLINED, smcPeerDiagnosis: NO_SMC_DEVICE }, JSON.stringify(mine));
    t.like(listener?.hostSocket, { proto: 'smc', smcMode: 'listening' }, JSON.stringify(listener));
    const table = formatStatusTable(mine);
    t.regex(table, new RegExp(`^${toPlain.socketId} .*smc:fallback:0x03010000`, 'm'), table);
    t.regex(table, new RegExp(`^${viaGw.socketId} .*smc:fallback:0x03030000`, 'm'), table);
    t.regex(table, new RegExp(`^${accepted!.socketId} .*smc:fallback:0x05000000`, 'm'), table);

    // Every byte through both SMC host sockets (fallen back inside the kernel) and the gateway.
    const payload = randomBytes(PAYLOAD_BYTES);
    t.is(await sendAndHash(viaGw as unknown as Socket, payload), sha(payload));
    const payload2 = randomBytes(PAYLOAD_BYTES);
    t.is(await sendAndHash(toPlain as unknown as Socket, payload2), sha(payload2));
  });
}
