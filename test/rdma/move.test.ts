/**
 * Live failover onto a new RDMA connection (native/RDMA.md "Moving to a new
 * RDMA connection") end to end on a real kernel RDMA stack: a gateway serving
 * rdma on rxe0 with resume_ms, and the SDK, in one process (topology (a),
 * inside the Soft-RoCE VM; on the host it skips). The SDK's first connection
 * is the test build's hostile mode 5: once its slot has posted 1 MiB, its RDMA
 * writes carry a key the gateway never issued, so the QP goes fatal mid-stream
 * (both ends suspend). Checks, with 8 MiB each way hashed (SHA-256): the
 * socket moves to a new rdma connection (transport rdma, one move rdma ->
 * rdma, the gateway's SocketInfo the same), the socket object never errors or
 * closes early; and when the new connection refuses the moved socket (its
 * RESUME BIND carries a token the gateway cannot match: hostile mode 3) or
 * cannot be made at all (it announces an old protocol version: hostile 2,
 * refused by the listener), the socket resumes on the tcp data port instead.
 */
// The test build of the addon: the fault and the refusals are its hostile modes.
import '../helpers/test-addon.js';
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import type { GatewaySocket } from '../../clients/sdk/index.js';
import { startGateway } from '../helpers/harness.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
const ADDR = process.env['SOCKGATE_VM_ADDR'] || '10.99.0.1';
const BYTES = 8 << 20;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** A host peer that sends `down` and hashes what it receives until the client's end. */
async function hostPeer(down: Buffer) {
  let got: Promise<{ data: Buffer; error?: string }> | undefined;
  const server = createServer({ allowHalfOpen: true }, (s: Socket) => {
    const chunks: Buffer[] = [];
    got = new Promise((resolve) => {
      s.on('data', (c: Buffer) => chunks.push(c));
      s.once('end', () => resolve({ data: Buffer.concat(chunks) }));
      s.once('error', (err: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), error: err.code ?? err.message }));
    });
    s.end(down);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port, received: () => got! };
}

/** The application's view: bytes, errors, an early close, and when data arrived around the move. */
function app(sock: GatewaySocket) {
  const chunks: Buffer[] = [];
  const errors: string[] = [];
  let ended = false;
  let closedEarly = false;
  let lastBefore = 0;
  let firstAfter = 0;
  sock.on('data', (c: Buffer) => {
    chunks.push(c);
    const now = Date.now();
    if (sock.moves.length === 0) lastBefore = now;
    else if (!firstAfter) firstAfter = now;
  });
  sock.on('error', (err: Error & { code?: string }) => errors.push(`${err.code ?? ''} ${err.message}`));
  const done = new Promise<void>((resolve) => {
    sock.once('end', () => ((ended = true), resolve()));
    sock.once('close', () => ((closedEarly = !ended), resolve()));
  });
  return { chunks, errors, done, closedEarly: () => closedEarly, pauseMs: () => (firstAfter && lastBefore ? firstAfter - lastBefore : -1) };
}

async function moveAcross(t: ExecutionContext, moveHostile: 2 | 3 | undefined, expect: 'rdma' | 'tcp'): Promise<void> {
  const gw = await startGateway(
    { transports: { rdma: { address: ADDR, keepalive_ms: 2000, resume_ms: 20_000 } } },
    { transports: ['rdma'], rdma: { hostile: 5, preissue: 0, ...(moveHostile ? { moveHostile } : {}) } },
  );
  const up = randomBytes(BYTES);
  const down = randomBytes(BYTES);
  const host = await hostPeer(down);
  t.teardown(async () => {
    host.server.close();
    await gw.stop();
  });
  const sock = await gw.sdk.connect(`tcp://127.0.0.1:${host.port}`);
  t.is(sock.transport, 'rdma');
  const a = app(sock);
  sock.end(up);
  await a.done;
  const h = await host.received();
  t.deepEqual(a.errors, [], 'the socket emitted no error');
  t.false(a.closedEarly(), 'the socket did not close before its end');
  t.is(h.error, undefined);
  t.is(h.data.length, up.length);
  t.is(sha(h.data), sha(up), 'application -> host intact across the move');
  const got = Buffer.concat(a.chunks);
  t.is(got.length, down.length);
  t.is(sha(got), sha(down), 'host -> application intact across the move');
  t.is(sock.transport, expect);
  t.is(sock.moves.length, 1, JSON.stringify(sock.moves));
  t.like(sock.moves[0], { from: 'rdma', to: expect });
  t.regex(sock.moves[0]!.cause, /^ERR_SOCKGATE_RDMA_/);
  const mine = (await gw.sdk.listSockets()).find((s) => s.socketId === sock.socketId);
  if (mine) {
    t.is(mine.transport, expect === 'rdma' ? TransportKind.TRANSPORT_KIND_RDMA : TransportKind.TRANSPORT_KIND_TCP);
    t.like(mine.moves[0], { from: TransportKind.TRANSPORT_KIND_RDMA, to: mine.transport });
  }
  t.log(`moved to ${expect} (cause ${sock.moves[0]!.cause}); the application's pause (last byte before the move to first byte after): ${a.pauseMs()} ms`);
}

if (!IN_VM) {
  test.skip('rdma move to a new rdma connection: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there', () => {});
} else {
  test.serial('move: a QP fatal mid-stream moves the socket to a new rdma connection: 8 MiB each way, SHA-256, no error, transport rdma, one move rdma -> rdma', async (t) => {
    t.timeout(180_000);
    await moveAcross(t, undefined, 'rdma');
  });

  test.serial('move: the new rdma connection refuses the moved socket (RESUME BIND it cannot match): it resumes on tcp, 8 MiB each way, SHA-256', async (t) => {
    t.timeout(180_000);
    await moveAcross(t, 3, 'tcp');
  });

  test.serial('move: the new rdma connection cannot be made (an old protocol version, refused by the listener): the socket resumes on tcp, SHA-256', async (t) => {
    t.timeout(180_000);
    await moveAcross(t, 2, 'tcp');
  });
}
