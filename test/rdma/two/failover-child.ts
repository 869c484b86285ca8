/**
 * The SDK process of the two-VM failover tests (failover.test.ts): like
 * sdk-child.ts, a process of its own, because `rdma link delete` finishes only
 * once every process that used rdma_cm on the device has exited.
 *
 *   node failover-child.js <gateway> up|down|idle [--hostile 4|5] [--peer]
 *
 * - `up`: one socket to the lab's sink, SOURCE_BYTES of the lab stream sent,
 *   then the sink's "<bytes> <sha256>" compared with the stream's own.
 * - `down`: one socket to the lab's source, its SOURCE_BYTES received and
 *   hashed, compared with the stream's own hash.
 * - `idle`: one socket to the sink, 4 MiB sent, then nothing (the parent
 *   kills this process: a peer that never comes back).
 * - `--hostile 4|5` (the test build of the addon, SOCKGATE_NATIVE_BUILD=test):
 *   the injected QP fatal. 5: the rdma connection's writes use a wrong key
 *   once the slot posted 1 MiB (an upload's fault); 4: from its first write,
 *   which `down` makes after 8 MiB received (one byte, reported as `fault`).
 * - `--peer`: the far end of the rdma connection is a peer gateway: this
 *   process runs gateway A (failover-peer-gw.ts) whose peers rule reaches the
 *   lab through <gateway> over rdma, and the application's socket goes to A
 *   over tcp; the fault hits A's rdma connection to <gateway>.
 *
 * Reports (one JSON object a line): `connected` (transport), `progress`
 * (bytes so far, the socket's transport and moves) every 2 MiB, `status`
 * (the gateway's SocketInfo of this socket, once it moved; with --peer A's
 * hop and B's SocketInfo of the hop's socket), `finished` (hash compared,
 * errors and early closes the socket emitted, transport, moves). Exits 0
 * after `finished`.
 */
import { createHash } from 'node:crypto';
import { Gateway as SdkGateway, type GatewaySocket } from '../../../clients/sdk/index.js';
import { TransportKind } from '../../../proto/gen/sockgate/v1/transport.js';
import { startMiddleGateway, type MiddleGateway } from './failover-peer-gw.js';
import { A_ADDR, PORTS, SOURCE_BYTES, sourceBlock, sourceChunk } from './lab.js';
import { formatStatusTable } from '../../../server/cli/index.js';

const LIFETIME_MS = 240_000;
/** `--hostile 4` with `down`: received bytes before the one byte whose RDMA write faults the connection. */
const TRIGGER_AT = 8 << 20;
/** --peer: how often A's and B's views are asked for while the transfer runs (until both show the move). */
const PEER_POLL_MS = 500;

function report(o: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

/** Everything the socket emits that the application would see as trouble. */
function watch(sock: GatewaySocket): { errors: string[]; closedBeforeEnd: boolean } {
  const w = { errors: [] as string[], closedBeforeEnd: false };
  let ended = false;
  sock.on('error', (err: Error & { code?: string }) => w.errors.push(`${err.code ?? ''} ${err.message}`));
  sock.on('end', () => (ended = true));
  sock.on('close', () => (w.closedBeforeEnd = !ended));
  return w;
}

async function statusOnce(gw: SdkGateway, sock: GatewaySocket, done: { v: boolean }): Promise<void> {
  if (done.v || sock.moves.length === 0) return;
  done.v = true;
  try {
    const mine = (await gw.listSockets()).find((s) => s.socketId === sock.socketId);
    report({ event: 'status', transport: mine?.transport, moves: mine?.moves ?? [] });
  } catch (err) {
    report({ event: 'status', error: (err as Error).message });
  }
}

/** --peer: A's view of the hop (SocketInfo.peer) and B's SocketInfo of the hop's socket, polled until both show the move. */
class PeerStatus {
  hopBefore: TransportKind | undefined;
  hopNow: TransportKind | undefined;
  /** Moves A recorded for the hop (SocketInfo.peer.moves). */
  hopMoves = 0;
  /** A's `sockgate status` row of the application's socket (its HOP column shows the hop's move). */
  table: string | undefined;
  b: { transport?: TransportKind; moves?: unknown[] } | undefined;
  #busy = false;
  constructor(
    private readonly a: SdkGateway,
    private readonly far: SdkGateway,
  ) {}
  get done(): boolean {
    return this.hopMoves > 0 && (this.b?.moves?.length ?? 0) > 0;
  }
  async poll(socketId: string): Promise<void> {
    if (this.#busy || this.done) return;
    this.#busy = true;
    try {
      const info = await this.a.getInfo(socketId);
      const hop = info.peer;
      this.table = formatStatusTable([info]);
      this.hopBefore ??= hop?.transport;
      this.hopNow = hop?.transport;
      this.hopMoves = hop?.moves.length ?? 0;
      const mine = hop ? (await this.far.listSockets()).find((s) => s.socketId === hop.socketId) : undefined;
      if (mine) this.b = { transport: mine.transport, moves: mine.moves };
    } catch {
      // the socket may be gone at its end: the last answer stands
    } finally {
      this.#busy = false;
    }
  }
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const [target, mode] = argv;
  const hi = argv.indexOf('--hostile');
  const hostile = hi >= 0 ? Number(argv[hi + 1]) : undefined;
  const viaPeer = argv.includes('--peer');
  if (!target || (mode !== 'up' && mode !== 'down' && mode !== 'idle') || (hostile !== undefined && hostile !== 4 && hostile !== 5)) {
    process.stderr.write('usage: failover-child.js <gateway> up|down|idle [--hostile 4|5] [--peer]\n');
    return 2;
  }
  setTimeout(() => {
    report({ event: 'timeout', ms: LIFETIME_MS });
    process.exit(3);
  }, LIFETIME_MS).unref();
  const block = sourceBlock();
  const want = createHash('sha256');
  for (let n = 0; n < SOURCE_BYTES; n += sourceChunk(block, n).length) want.update(sourceChunk(block, n));
  const wantSha = want.digest('hex');
  let middle: MiddleGateway | undefined;
  let far: SdkGateway | undefined;
  let gw: SdkGateway;
  if (viaPeer) {
    middle = await startMiddleGateway(target, hostile as 4 | 5 | undefined);
    gw = await SdkGateway.connect(middle.control, { transports: ['tcp'] });
    far = await SdkGateway.connect(target, { transports: ['tcp'] });
  } else {
    gw = await SdkGateway.connect(target, { transports: ['rdma', 'tcp'], ...(hostile ? { rdma: { hostile: hostile as 4 | 5 } } : {}) });
  }
  const peer = far ? new PeerStatus(gw, far) : undefined;
  const asked = { v: false };
  try {
    const sock = await gw.connect(`tcp://${A_ADDR}:${mode === 'down' ? PORTS.source : PORTS.sink}`);
    const w = watch(sock);
    await peer?.poll(sock.socketId);
    report({ event: 'connected', transport: sock.transport, ...(peer ? { hop: peer.hopBefore } : {}) });
    // --peer: B may record the move after the last progress report (an upload's bytes are all written by then).
    const polling = peer ? setInterval(() => void peer.poll(sock.socketId), PEER_POLL_MS) : undefined;
    let triggered = false;
    const got = createHash('sha256');
    let received = 0;
    const answer: Buffer[] = [];
    let nextReport = 2 << 20;
    const ended = new Promise<void>((resolve) => {
      sock.on('data', (d: Buffer) => {
        if (mode !== 'down') return void answer.push(d);
        got.update(d);
        received += d.length;
        if (hostile === 4 && !triggered && received >= TRIGGER_AT) {
          triggered = true;
          sock.write('!');
          report({ event: 'fault', atMs: Date.now(), received });
        }
        if (received >= nextReport) {
          report({ event: 'progress', received, transport: sock.transport, moves: sock.moves });
          nextReport += 2 << 20;
          void (peer ? peer.poll(sock.socketId) : statusOnce(gw, sock, asked));
        }
      });
      sock.once('end', () => resolve());
      sock.once('close', () => resolve());
    });
    if (mode !== 'down') {
      const max = mode === 'idle' ? 4 << 20 : SOURCE_BYTES;
      for (let sent = 0; sent < max && !sock.destroyed; ) {
        const piece = sourceChunk(block, sent);
        sent += piece.length;
        const ok = sock.write(piece);
        if (sent >= nextReport) {
          report({ event: 'progress', sent, transport: sock.transport, moves: sock.moves });
          nextReport += 2 << 20;
          void (peer ? peer.poll(sock.socketId) : statusOnce(gw, sock, asked));
        }
        if (!ok) await Promise.race([new Promise((r) => sock.once('drain', r)), ended]);
      }
      if (mode === 'idle') {
        report({ event: 'idle' });
        await new Promise(() => {}); // the parent kills us
      }
      sock.end();
    }
    await ended;
    clearInterval(polling);
    if (peer) {
      await peer.poll(sock.socketId);
      report({ event: 'status', hopBefore: peer.hopBefore, hop: peer.hopNow, table: peer.table, far: peer.b ?? null });
    } else await statusOnce(gw, sock, asked);
    let shaMatch: boolean;
    let bytes: number;
    if (mode === 'down') {
      shaMatch = got.digest('hex') === wantSha;
      bytes = received;
    } else {
      const [n, sha] = Buffer.concat(answer).toString().trim().split(' ');
      shaMatch = sha === wantSha;
      bytes = Number(n);
    }
    report({ event: 'finished', bytes, bytesMatch: bytes === SOURCE_BYTES, shaMatch, errors: w.errors, closedBeforeEnd: w.closedBeforeEnd, transport: sock.transport, moves: sock.moves });
  } finally {
    gw.close();
    far?.close();
    await middle?.stop();
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    report({ event: 'crashed', message: String((err as Error)?.message ?? err), code: (err as { code?: string })?.code ?? '' });
    process.exit(1);
  },
);
