/**
 * SMC probe for the two-VM lab (topology b): `server` in one VM, `client` in
 * the other. Optionally sets a UEID and a PNET entry (eth0 <-> rxe0) first
 * (never on Debian's 6.1 kernel: see issue 15, the kernels deadlock), then
 * streams BYTES over an SMC socket (or plain TCP with --tcp), checks SHA-256
 * end to end and prints each side's SMC_DIAG view as one `SMC_PROBE {json}`
 * line; the raw dump goes to $SOCKGATE_VM_OUT/diag-<role>.hex (test fixtures).
 *
 *   node dist/test/rdma/vm/smc-probe.js server|client [--ueid X] [--pnet ID] [--tcp] [--mib N]
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { connect as tcpConnect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { binding } from '../../../native/load-addon.js';
import { configureSmc, inodeOfFd, smcConnect, smcDiagByInode, smcInfoOf, smcListen } from '../../../native/smc.js';

const PORT = 7471;
/** Connect attempts while the server VM comes up, RETRY_MS apart. */
const ATTEMPTS = 60;
const RETRY_MS = 500;
const CONNECT_TIMEOUT_MS = 20_000;

const argv = process.argv.slice(2);
const role = argv[0];
const opt = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const tcp = argv.includes('--tcp');
const mib = Number(opt('--mib') ?? '16');
const peer = process.env['SOCKGATE_VM_PEER_ADDR'] ?? '10.99.0.1';
const outDir = process.env['SOCKGATE_VM_OUT'];

function fdOf(sock: Socket): number {
  return (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
}

/** The socket's SMC_DIAG view (while it is open); the raw dump is kept for fixtures. */
function diagOf(fd: number): unknown {
  if (tcp || fd < 0) return null;
  const dump = binding.smc.diagDump();
  if (outDir) writeFileSync(join(outDir, `diag-${role}.hex`), dump.toString('hex'));
  return smcInfoOf(inodeOfFd(fd), smcDiagByInode());
}

function report(diag: unknown, extra: Record<string, unknown>): void {
  console.log(`SMC_PROBE ${JSON.stringify({ role, tcp, diag, ...extra })}`);
}

function setup(): void {
  const ueid = opt('--ueid');
  const pnet = opt('--pnet');
  configureSmc({ ueids: ueid ? [ueid] : [], pnets: pnet ? [{ id: pnet, eth: 'eth0', ib: 'rxe0', ib_port: 1 }] : [] });
}

async function server(): Promise<void> {
  setup();
  const srv = createServer({ allowHalfOpen: true });
  if (tcp) srv.listen({ host: '0.0.0.0', port: PORT });
  else srv.listen({ fd: smcListen(4, '0.0.0.0', PORT, 16, false).fd });
  await new Promise<void>((resolve, reject) => {
    srv.once('connection', (sock: Socket) => {
      const h = createHash('sha256');
      let n = 0;
      sock.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
      });
      sock.on('end', () => {
        const digest = h.digest('hex');
        report(diagOf(fdOf(sock)), { bytes: n, sha256: digest });
        sock.end(digest, () => srv.close(() => resolve()));
      });
      sock.on('error', reject);
    });
  });
}

async function client(): Promise<void> {
  setup();
  let sock: Socket | undefined;
  for (let i = 0; i < ATTEMPTS && !sock; i++) {
    try {
      sock = tcp
        ? await new Promise<Socket>((resolve, reject) => {
            const s = tcpConnect({ host: peer, port: PORT, allowHalfOpen: true }, () => resolve(s));
            s.once('error', reject);
          })
        : await smcConnect(4, peer, PORT, CONNECT_TIMEOUT_MS);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ECONNREFUSED') throw err;
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
  if (!sock) throw new Error('server never listened');
  const fd = fdOf(sock);
  sock.resume();
  const payload = randomBytes(mib << 20);
  const want = createHash('sha256').update(payload).digest('hex');
  let answer = '';
  let diag: unknown;
  sock.on('data', (d: Buffer) => {
    diag ??= diagOf(fd); // before the socket closes
    answer += d.toString();
  });
  const t0 = process.hrtime.bigint();
  const done = new Promise<void>((resolve, reject) => {
    sock!.on('end', () => resolve());
    sock!.on('error', reject);
  });
  sock.end(payload);
  await done;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  report(diag, { bytes: payload.length, sha256: want, echoed: answer, ok: answer === want, seconds, mbps: (payload.length * 8) / seconds / 1e6 });
  sock.destroy();
  if (answer !== want) process.exitCode = 1;
}

(role === 'server' ? server() : role === 'client' ? client() : Promise.reject(new Error('server|client')))
  .then(() => setTimeout(() => process.exit(), 100))
  .catch((err: Error) => {
    console.log(`SMC_PROBE_ERROR ${err.message}`);
    process.exit(2);
  });
