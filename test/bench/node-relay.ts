/**
 * Reference relays for the benchmark (not sockgate code): a child process that
 * accepts on 127.0.0.1 and forwards every connection to one destination port,
 * so the bench can show what a user-space JavaScript relay costs on this
 * machine, next to the gateway's tcp data plane.
 *
 *   node dist/test/bench/node-relay.js <pipe|onread> <destination port>...
 *
 * - `pipe`: `a.pipe(b); b.pipe(a)` — what idiomatic Node code does, and what
 *   the gateway's tcp plane does (a fresh 64 KiB buffer per read).
 * - `onread`: net's `onread` option with one reused buffer per direction;
 *   reading pauses while a write is still queued in libuv, so the buffer is
 *   never overwritten before the kernel took it. No per-read allocation.
 *
 * Listens on one port per destination; prints `{"listen":{"<dest>":<port>,...}}`
 * once listening, then `{"client":P,"upstream":Q}` per connection (the client's
 * port and the port the destination sees). Exits when stdin closes.
 */
import { connect, createServer, Socket, type NetConnectOpts } from 'node:net';

/** Read buffer per direction in `onread` mode. */
const ONREAD_BUFFER_BYTES = 64 * 1024;

type Mode = 'pipe' | 'onread';

function relayOnread(accepted: Socket, port: number, announce: (upstreamPort: number) => void): void {
  // The accepted socket's handle moves into a Socket created with `onread`;
  // net.createServer has no onread option of its own.
  const handle = (accepted as unknown as { _handle: unknown })._handle;
  (accepted as unknown as { _handle: unknown })._handle = null;
  let up: Socket;
  let down: Socket;
  const pausedFor = new WeakMap<Socket, boolean>();
  const forward = (from: () => Socket, to: () => Socket) => (n: number, buf: Buffer) => {
    const src = from();
    const dst = to();
    dst.write(buf.subarray(0, n), () => {
      if (pausedFor.get(src)) {
        pausedFor.set(src, false);
        src.resume();
      }
    });
    // Bytes still queued in libuv point into `buf`: stop reading until the write completes.
    const queued = (dst as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0;
    if (queued > 0) {
      pausedFor.set(src, true);
      return false;
    }
    return true;
  };
  up = connect({ host: '127.0.0.1', port, noDelay: true, onread: { buffer: Buffer.allocUnsafe(ONREAD_BUFFER_BYTES), callback: forward(() => up, () => down) } } as NetConnectOpts);
  down = new Socket({ handle, onread: { buffer: Buffer.allocUnsafe(ONREAD_BUFFER_BYTES), callback: forward(() => down, () => up) } } as unknown as ConstructorParameters<typeof Socket>[0]);
  down.setNoDelay(true);
  down.on('end', () => up.end());
  up.on('end', () => down.end());
  down.on('error', () => up.destroy());
  up.on('error', () => down.destroy());
  down.on('close', () => up.destroy());
  up.on('close', () => down.destroy());
  up.once('connect', () => announce(up.localPort ?? 0));
  down.resume();
}

function relayPipe(accepted: Socket, port: number, announce: (upstreamPort: number) => void): void {
  const up = connect({ host: '127.0.0.1', port, noDelay: true });
  accepted.pipe(up);
  up.pipe(accepted);
  accepted.on('error', () => up.destroy());
  up.on('error', () => accepted.destroy());
  accepted.on('close', () => up.destroy());
  up.on('close', () => accepted.destroy());
  up.once('connect', () => announce(up.localPort ?? 0));
}

async function main(): Promise<void> {
  const mode = process.argv[2] as Mode;
  const ports = process.argv.slice(3).map(Number);
  if ((mode !== 'pipe' && mode !== 'onread') || ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p <= 0 || p > 65535)) {
    process.stderr.write('usage: node-relay.js <pipe|onread> <destination port>...\n');
    process.exit(2);
  }
  const listen: Record<string, number> = {};
  for (const port of ports) {
    const server = createServer({ noDelay: true, pauseOnConnect: mode === 'onread' } as Parameters<typeof createServer>[0], (c) => {
      c.setNoDelay(true);
      const client = c.remotePort ?? 0;
      const announce = (upstream: number) => process.stdout.write(JSON.stringify({ client, upstream }) + '\n');
      if (mode === 'pipe') relayPipe(c, port, announce);
      else relayOnread(c, port, announce);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    listen[String(port)] = (server.address() as { port: number }).port;
  }
  process.stdout.write(JSON.stringify({ listen }) + '\n');
  // The bench owns this process: exit when it goes away or says so.
  process.on('SIGTERM', () => process.exit(0));
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

void main();
