/**
 * One VM of the SMC-R lab (smc-lab.ts; topology b on Debian's 6.12 kernel):
 * a sockgate gateway whose config sets a UEID and a PNET entry (eth0 <-> rxe0,
 * applied by the gateway over generic netlink at start) and two rules for the
 * peer VM's address: port SMC_PORT with `smc: prefer`, TCP_PORT plain.
 *
 * - `b`: an SDK client listens through its gateway on both ports; each
 *   accepted stream answers the SHA-256 of what it got; reports GetInfo of
 *   the accepted socket while it is open.
 * - `a`: an SDK client connects through its gateway to b's two ports, ROUNDS
 *   times each, sending MIB MiB; reports GetInfo of its socket, the hash check
 *   and the throughput. Prints one `SMC_GW {json}` line per stream.
 * Gateway-to-gateway: a's host socket and b's accepted host socket are the two
 * ends of one kernel SMC connection.
 *
 * Beside that, each round also runs the peer leg (smc-peer-leg.ts): a stream
 * through a `peers` route whose data connection between the gateways is the
 * SDK's, dialed as SMC (smc.peer_dial: prefer) or as plain TCP.
 */
import { createHash } from 'node:crypto';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { loadConfig, mergeConfig } from '../../../server/config.js';
import { Gateway } from '../../../server/gateway.js';
import { Gateway as SdkGateway } from '../../../clients/sdk/index.js';
import { connectRetrying, sendHashed, servePeerSide, startDialers } from './smc-peer-leg.js';

export const SMC_PORT = 7480;
export const TCP_PORT = 7481;
/** a tells b it is finished with one plain connection here. */
const DONE_PORT = 7482;
const ROUNDS = Number(process.env['SOCKGATE_SMC_ROUNDS'] ?? '3');
const MIB = Number(process.env['SOCKGATE_SMC_MIB'] ?? '4');
/** b gives up waiting for a's "done" after this long (a's rounds take well under it). */
const B_LIFETIME_MS = 420_000;

const role = process.argv[2];
const self = process.env['SOCKGATE_VM_ADDR'] ?? '10.99.0.1';
const peer = process.env['SOCKGATE_VM_PEER_ADDR'] ?? '10.99.0.2';
const say = (o: Record<string, unknown>) => process.stdout.write(`SMC_GW ${JSON.stringify({ role, ...o })}\n`);

function gatewayConfig() {
  return loadConfig({
    overrides: mergeConfig(
      {
        listen: { control: '127.0.0.1:7470', data: '127.0.0.1:7471', metrics: '' },
        telemetry: { log_level: 'warn' },
        // SOCKGATE_SMC_TCP_NATIVE=0: the JS relay instead of splice(2) (isolates splice on SMC sockets).
        transports: { enabled: ['tcp', 'grpc'], tcp_native: process.env['SOCKGATE_SMC_TCP_NATIVE'] !== '0' },
        smc: { ueids: ['SOCKGATE-LAB'], pnets: [{ id: 'SGNET', eth: 'eth0', ib: 'rxe0', ib_port: 1 }] },
      },
      {
        rules: [
          { name: 'smc-peer', action: 'allow', destinations: ['10.99.0.0/24'], ports: [SMC_PORT], smc: 'prefer' },
          { name: 'tcp-peer', action: 'allow', destinations: ['10.99.0.0/24'], ports: [TCP_PORT] },
        ],
      },
    ),
  });
}

async function serve(sdk: SdkGateway, port: number): Promise<void> {
  const server = await sdk.listen(`tcp://${self}:${port}`, { transports: ['tcp'] });
  server.on('connection', (s: Socket & { socketId: string }) => {
    void sdk.getInfo(s.socketId).then((info) => say({ port, hostSocket: info.hostSocket }), () => {});
    const h = createHash('sha256');
    s.on('data', (d: Buffer) => h.update(d));
    s.on('end', () => s.end(h.digest('hex')));
    s.on('error', () => {});
  });
}

async function stream(sdk: SdkGateway, port: number): Promise<void> {
  const sock = await connectRetrying(sdk, `tcp://${peer}:${port}`, `port ${port}`);
  const info = await sdk.getInfo(sock.socketId);
  const r = await sendHashed(sock, MIB);
  say({ port, hostSocket: info.hostSocket, bytes: r.bytes, answer: r.answer.slice(0, 80), ok: r.ok, seconds: r.seconds, MBps: r.MBps });
  if (!r.ok) throw new Error(`port ${port}: SHA-256 mismatch`);
}

async function main(): Promise<void> {
  const gw = new Gateway(gatewayConfig());
  const addrs = await gw.start();
  const sdk = await SdkGateway.connect(addrs.control);
  if (role === 'b') {
    await serve(sdk, SMC_PORT);
    await serve(sdk, TCP_PORT);
    const stopPeer = await servePeerSide(self, say);
    const done = new Promise<void>((resolve) => {
      const d = createServer((c) => {
        c.destroy();
        d.close();
        resolve();
      }).listen(DONE_PORT, self);
    });
    say({ listening: true });
    await Promise.race([done, new Promise((r) => setTimeout(r, B_LIFETIME_MS).unref())]);
    await stopPeer();
  } else {
    const dialers = await startDialers(peer, say);
    for (let i = 0; i < ROUNDS; i++) {
      await stream(sdk, SMC_PORT);
      await stream(sdk, TCP_PORT);
      await dialers.stream('smc', MIB);
      await dialers.stream('tcp', MIB);
    }
    await dialers.link(MIB);
    await dialers.stop();
    await new Promise<void>((resolve) => netConnect(DONE_PORT, peer, () => resolve()).on('error', () => resolve()));
  }
  sdk.close();
  await gw.stop();
}

main().then(
  () => process.exit(0),
  (err: Error) => {
    say({ error: err.stack ?? err.message });
    process.exit(1);
  },
);
