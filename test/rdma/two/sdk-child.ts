/**
 * A separate SDK process for the tests that must not hold an rdma context in
 * the ava worker (unplug.test.ts): librdmacm keeps every device's context
 * open in a process that used rdma_cm, and rxe cannot disassociate a context,
 * so `rdma link delete` blocks until such a process exits.
 *
 *   node sdk-child.js <gateway> <mode>
 *
 * Modes (every line on stdout is one JSON object, `event` says which):
 * - `stream`: connect to the lab's sink, send random bytes (at most
 *   STREAM_MAX_BYTES) and report `progress` every 2 MiB until the socket fails
 *   (`failed`, with the error's code and class) or the sink's answer comes
 *   (`finished`, bytes and hash compared). Then open a second socket to the
 *   echo server and report how it went (`second`: transport, fallbacks, the
 *   echo's hash compared). Exits 0 once it has reported.
 * - `echo`: one socket to the echo server, 1 MiB hash-checked (`second`).
 * - `lines`: the same for every line `echo` read from stdin; exits at its end.
 *   The parent stops this process (SIGSTOP) in between, so that the gateway
 *   gives the idle session up while the SDK cannot notice.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { Gateway as SdkGateway, type GatewaySocket } from '../../../clients/sdk/index.js';
import { A_ADDR, PORTS } from './lab.js';

const SINK = `tcp://${A_ADDR}:${PORTS.sink}`;
const ECHO = `tcp://${A_ADDR}:${PORTS.echo}`;
const STREAM_MAX_BYTES = 1 << 30;
const CHUNK = 64 * 1024;
/** Everything this process does is bounded. */
const LIFETIME_MS = 240_000;

function report(o: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

function describe(err: unknown): Record<string, unknown> {
  const e = err as { code?: string; name?: string; message?: string };
  return { code: e?.code ?? '', name: e?.name ?? '', message: String(e?.message ?? err) };
}

/** Send random bytes until `max` or a failure; the sink's "<bytes> <sha256>" answer settles it. */
async function stream(sock: GatewaySocket, max: number): Promise<Record<string, unknown>> {
  const hash = createHash('sha256');
  const block = randomBytes(1 << 20);
  let sent = 0;
  let failure: unknown;
  const answer: Buffer[] = [];
  sock.on('data', (d: Buffer) => answer.push(d));
  const ended = new Promise<void>((resolve) => {
    sock.once('end', () => resolve());
    sock.once('close', () => resolve());
    sock.once('error', (err) => {
      failure ??= err;
      resolve();
    });
  });
  let nextReport = 2 << 20;
  while (sent < max && failure === undefined && !sock.destroyed) {
    const off = (sent * 7) % (block.length - CHUNK);
    const piece = block.subarray(off, off + CHUNK);
    hash.update(piece);
    sent += piece.length;
    const ok = sock.write(piece);
    if (sent >= nextReport) {
      report({ event: 'progress', sent });
      nextReport += 2 << 20;
    }
    if (!ok) await Promise.race([new Promise((r) => sock.once('drain', r)), ended]);
  }
  if (failure === undefined && !sock.destroyed) sock.end();
  await ended;
  if (failure !== undefined) return { event: 'failed', sent, ...describe(failure) };
  const [bytes, sha] = Buffer.concat(answer).toString().trim().split(' ');
  return { event: 'finished', sent, bytesMatch: Number(bytes) === sent, shaMatch: sha === hash.digest('hex') };
}

/** One socket to the echo server, 1 MiB both ways, hash compared. */
async function echoOnce(gw: SdkGateway): Promise<Record<string, unknown>> {
  try {
    const sock = await gw.connect(ECHO);
    const data = randomBytes(1 << 20);
    const back = createHash('sha256');
    let got = 0;
    const done = new Promise<void>((resolve, reject) => {
      sock.on('data', (d: Buffer) => {
        back.update(d);
        got += d.length;
      });
      sock.once('end', () => resolve());
      sock.once('error', reject);
    });
    sock.end(data);
    await done;
    const sent = createHash('sha256').update(data).digest('hex');
    return { event: 'second', transport: sock.transport, fallbacks: sock.fallbacks, bytes: got, shaMatch: back.digest('hex') === sent };
  } catch (err) {
    return { event: 'second', transport: '', error: describe(err) };
  }
}

async function main(): Promise<number> {
  const [target, mode] = process.argv.slice(2);
  if (!target || (mode !== 'stream' && mode !== 'echo' && mode !== 'lines')) {
    process.stderr.write('usage: sdk-child.js <gateway> stream|echo|lines\n');
    return 2;
  }
  setTimeout(() => {
    report({ event: 'timeout', ms: LIFETIME_MS });
    process.exit(3);
  }, LIFETIME_MS).unref();
  const gw = await SdkGateway.connect(target, { transports: ['rdma', 'tcp'] });
  try {
    if (mode === 'stream') {
      const sock = await gw.connect(SINK);
      report({ event: 'connected', transport: sock.transport });
      report(await stream(sock, STREAM_MAX_BYTES));
    }
    if (mode === 'lines') {
      for await (const line of createInterface({ input: process.stdin })) if (line.trim() === 'echo') report(await echoOnce(gw));
    } else {
      report(await echoOnce(gw));
    }
  } finally {
    await gw.close();
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    report({ event: 'crashed', ...describe(err) });
    process.exit(1);
  },
);
