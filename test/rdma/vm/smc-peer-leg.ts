/**
 * The peer leg of the SMC-R lab (smc-gw-node.ts runs it beside its own
 * streams): gateway-to-gateway through a `peers` route, where the data
 * connection between the two gateways is the SDK's tcp-plane connection.
 *
 * - `b` runs a peer-facing gateway whose data port is an SMC listener
 *   (smc.data_port) and a plain TCP server at PEER_DEST_PORT that hashes what
 *   arrives. On the first bytes of each stream it reports GetInfo's
 *   data_connection of the socket a's gateway opened there, and what smc_diag
 *   says of the active SMC sockets on its data port (by port, not by inode:
 *   a reading independent of the gateway's).
 * - `a` runs two dialing gateways with the same `peers` route to b: one with
 *   smc.peer_dial: prefer (its data connection to b is SMC), one without
 *   (plain TCP to the same listener, on the same link). Its SDK streams MIB MiB
 *   through each; it reports GetInfo's host_socket (for a socket through a
 *   peer: its data connection), smc_diag's active sockets toward b's data
 *   port, the SHA-256 check and the throughput. Once, its SDK (smc: prefer)
 *   also links a local socket straight to b's gateway (Gateway#link): the
 *   link must take the JS relay, because an SMC data connection is never
 *   spliced, and carry every byte.
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import { once } from 'node:events';
import { loadConfig, mergeConfig } from '../../../server/config.js';
import { Gateway } from '../../../server/gateway.js';
import { Gateway as SdkGateway } from '../../../clients/sdk/index.js';
import { smcDiagByInode } from '../../../native/smc.js';

export const PEER_CONTROL_PORT = 7490;
export const PEER_DATA_PORT = 7491;
/** b's plain TCP server the peer streams end at. */
export const PEER_DEST_PORT = 7483;
/** a's dialing gateways: SMC (peer_dial prefer) and plain TCP. */
const A_SMC = { control: '127.0.0.1:7477', data: '127.0.0.1:7478' };
const A_TCP = { control: '127.0.0.1:7475', data: '127.0.0.1:7476' };
/** SMC_ACTIVE in net/smc/smc.h: an established connection (closing ones linger in other states). */
const SMC_ACTIVE = 1;
/** Connect attempts while the far gateway comes up, RETRY_MS apart. */
const ATTEMPTS = 120;
const RETRY_MS = 500;

type Say = (o: Record<string, unknown>) => void;
const SMC_KERNEL = { ueids: ['SOCKGATE-LAB'], pnets: [{ id: 'SGNET', eth: 'eth0', ib: 'rxe0', ib_port: 1 }] };
const transports = () => ({ enabled: ['tcp', 'grpc'], tcp_native: process.env['SOCKGATE_SMC_TCP_NATIVE'] !== '0' });

type SdkSocket = Socket & { socketId: string };

/** Connect through `sdk` to `uri` on the tcp plane, retrying (ATTEMPTS, RETRY_MS apart) while the far side comes up. */
export async function connectRetrying(sdk: SdkGateway, uri: string, what: string): Promise<SdkSocket> {
  let lastErr = '';
  for (let i = 0; i < ATTEMPTS; i++) {
    try {
      return (await sdk.connect(uri, { transports: ['tcp'] })) as unknown as SdkSocket;
    } catch (err) {
      lastErr = (err as Error).message;
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
  throw new Error(`${what}: ${uri} never answered (${lastErr})`);
}

/** Send `mib` MiB of random bytes and end; the far end answers with the SHA-256 (hex) of what it got. */
export async function sendHashed(sock: Socket, mib: number): Promise<{ ok: boolean; answer: string; bytes: number; seconds: number; MBps: number }> {
  const payload = randomBytes(mib << 20);
  const want = createHash('sha256').update(payload).digest('hex');
  let answer = '';
  sock.on('data', (d: Buffer) => (answer += d.toString()));
  const ended = new Promise<void>((resolve, reject) => {
    sock.on('end', () => resolve());
    sock.on('error', reject);
  });
  const t0 = process.hrtime.bigint();
  sock.end(payload);
  await ended;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ok: answer === want, answer, bytes: payload.length, seconds, MBps: payload.length / seconds / 1e6 };
}

/** smc_diag's active sockets on `port` (local or remote side): their mode and reason, as the kernel reports them. */
function diagOnPort(side: 'localPort' | 'remotePort', port: number): { mode: string; fallbackReason: number }[] {
  return [...smcDiagByInode().values()].filter((e) => e.state === SMC_ACTIVE && e[side] === port).map((e) => ({ mode: e.mode, fallbackReason: e.fallbackReason }));
}

/** b: the peer-facing gateway (SMC data port) and the hashing destination. Resolves with a stop function. */
export async function servePeerSide(self: string, say: Say): Promise<() => Promise<void>> {
  const gw = new Gateway(
    loadConfig({
      overrides: mergeConfig(
        {
          listen: { control: `${self}:${PEER_CONTROL_PORT}`, data: `${self}:${PEER_DATA_PORT}`, metrics: '' },
          telemetry: { log_level: 'warn' },
          transports: transports(),
          // Admin: b's own SDK lists the sockets a's gateways open here.
          anonymous: { enabled: true, admin: true },
          smc: { data_port: true, ...SMC_KERNEL },
        },
        { rules: [{ name: 'peer-dest', action: 'allow', directions: ['connect'], destinations: [`${self}/32`], ports: [PEER_DEST_PORT] }] },
      ),
    }),
  );
  const addrs = await gw.start();
  const sdk = await SdkGateway.connect(addrs.control);
  const dest = createServer({ allowHalfOpen: true }, (s: Socket) => {
    const h = createHash('sha256');
    let first = true;
    s.on('data', (d: Buffer) => {
      h.update(d);
      if (!first) return;
      first = false;
      // Bytes flow, so the data connection is attached: the gateway's socket is the one whose host socket is this connection.
      void sdk.listSockets().then(
        (all) => {
          const mine = all.find((i) => i.remoteUri.endsWith(`:${PEER_DEST_PORT}`) && i.localUri.endsWith(`:${s.remotePort}`));
          say({ peerLeg: true, dataConnection: mine?.dataConnection, diag: diagOnPort('localPort', PEER_DATA_PORT) });
        },
        (err: Error) => say({ peerLeg: true, error: `listSockets: ${err.message}` }),
      );
    });
    s.on('end', () => s.end(h.digest('hex')));
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => dest.listen(PEER_DEST_PORT, self, resolve));
  return async () => {
    dest.close();
    sdk.close();
    await gw.stop();
  };
}

function dialerConfig(listen: { control: string; data: string }, peer: string, peerDial: 'off' | 'prefer') {
  return loadConfig({
    overrides: mergeConfig(
      { listen: { ...listen, metrics: '' }, telemetry: { log_level: 'warn' }, transports: transports(), smc: { peer_dial: peerDial, ...SMC_KERNEL } },
      {
        rules: [{ name: 'to-peer', action: 'allow', directions: ['connect'], destinations: ['10.99.0.0/24'], ports: [PEER_DEST_PORT] }],
        peers: [{ match: { cidr: `${peer}/32`, ports: String(PEER_DEST_PORT) }, via: `${peer}:${PEER_CONTROL_PORT}`, transports: ['tcp'] }],
      },
    ),
  });
}

/** a: the two dialing gateways; `stream(kind)` sends one hashed stream through one of them to b. */
export async function startDialers(peer: string, say: Say): Promise<{ stream(kind: 'smc' | 'tcp', mib: number): Promise<void>; link(mib: number): Promise<void>; stop(): Promise<void> }> {
  // The composition root's connector (server/cli): the SDK's public entry point, with smc.peer_dial as its `smc` option.
  const peerGateways = (via: string, credentials: { token?: string }, o: { deadlineMs: number; smc?: 'prefer' }) =>
    SdkGateway.connect(via, { ...credentials, ...(o.smc ? { smc: o.smc } : {}) }, { deadlineMs: o.deadlineMs });
  const gws = { smc: new Gateway(dialerConfig(A_SMC, peer, 'prefer'), { peerGateways }), tcp: new Gateway(dialerConfig(A_TCP, peer, 'off'), { peerGateways }) };
  const sdks = { smc: await SdkGateway.connect((await gws.smc.start()).control), tcp: await SdkGateway.connect((await gws.tcp.start()).control) };
  const uri = `tcp://${peer}:${PEER_DEST_PORT}`;
  return {
    async stream(kind, mib) {
      const sdk = sdks[kind];
      const sock = await connectRetrying(sdk, uri, `peer leg ${kind}`);
      const info = await sdk.getInfo(sock.socketId);
      const diag = diagOnPort('remotePort', PEER_DATA_PORT);
      const r = await sendHashed(sock, mib);
      say({ peerLeg: kind, hostSocket: info.hostSocket, peer: info.peer?.via, diag, bytes: r.bytes, ok: r.ok, seconds: r.seconds, MBps: r.MBps });
      if (!r.ok) throw new Error(`peer leg ${kind}: SHA-256 mismatch`);
    },
    async link(mib) {
      const direct = await SdkGateway.connect(`${peer}:${PEER_CONTROL_PORT}`, { smc: 'prefer', transports: ['tcp'] });
      const local = createServer({ allowHalfOpen: true });
      try {
        local.listen(0, '127.0.0.1');
        await once(local, 'listening');
        const caller = netConnect({ port: (local.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
        const [served] = (await once(local, 'connection')) as [Socket];
        const link = await direct.link(served, uri, { transports: ['tcp'] });
        const payload = randomBytes(mib << 20);
        let answer = '';
        caller.on('data', (d: Buffer) => (answer += d.toString()));
        const ended = once(caller, 'end');
        caller.end(payload);
        await ended;
        const ok = answer === createHash('sha256').update(payload).digest('hex');
        say({ peerLeg: 'link', native: link.native, relayReason: link.relayReason, ok });
        caller.destroy();
      } finally {
        local.close();
        direct.close();
      }
    },
    async stop() {
      sdks.smc.close();
      sdks.tcp.close();
      await Promise.all([gws.smc.stop(), gws.tcp.stop()]);
    },
  };
}
