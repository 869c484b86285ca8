/**
 * The gateway process's life, with real `sockgate serve` child processes:
 * killed (SIGKILL) mid-transfer, clients on both data planes see a precise
 * error promptly, including clients that were only reading; stopped
 * gracefully (SIGTERM), transfers in flight complete, new sockets are refused,
 * health reports NOT_SERVING and the process exits 0; and the standard gRPC
 * health and reflection services are served.
 */
// Serial: every test here kills or drains real gateway processes and asserts on how
// promptly clients notice; running them side by side on 2 cores measures the machine.
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { credentials, status } from '@grpc/grpc-js';
import { SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import type { GatewaySocket } from '../../clients/sdk/socket.js';
import { GatewayUnavailableError, ShuttingDownError, SockgateError } from '../../proto/errors.js';
import { echoServer, startChildGateway, tcpServer, within, type ChildGateway } from '../helpers/harness.js';
import {
  closedPort,
  eventually,
  healthCheck,
  protoFields,
  reflectionFileContaining,
  reflectionListServices,
  REFLECTION_V1ALPHA,
  rpc,
  rpcError,
} from '../helpers/rpc.js';

const PLANES = ['tcp', 'grpc'] as const;
/**
 * How soon after the gateway dies a client must know. The killed gateway's
 * ports refuse at once, and a writer on the tcp plane learns in milliseconds;
 * "a few seconds" leaves room for a loaded CI machine.
 */
const PROMPT_MS = 3_000;
/** Error codes that say "the gateway went away" precisely. */
const GONE_CODES = ['ERR_SOCKGATE_GATEWAY_UNAVAILABLE', 'ERR_SOCKGATE_CONNECTION_RESET'];

type Server = Awaited<ReturnType<typeof tcpServer>>;

async function child(t: ExecutionContext, args: string[] = []): Promise<ChildGateway> {
  const g = await startChildGateway('', args);
  t.teardown(() => {
    if (g.child.exitCode === null && g.child.signalCode === null) g.child.kill('SIGKILL');
  });
  return g;
}

async function sdk(t: ExecutionContext, g: ChildGateway): Promise<SdkGateway> {
  const gw = await SdkGateway.connect(g.target);
  t.teardown(() => gw.close());
  return gw;
}

function connections(s: { server: { getConnections(cb: (e: Error | null, n: number) => void): void } }): Promise<number> {
  return new Promise((r) => s.server.getConnections((_e, n) => r(n)));
}

/** A destination that streams random bytes to every client until it goes away. */
async function streamer(): Promise<Server> {
  const block = randomBytes(64 * 1024);
  return tcpServer((c: Socket) => {
    const pump = () => {
      while (!c.destroyed && c.write(block));
    };
    c.on('drain', pump);
    pump();
  });
}

/** How the socket ended: the first of 'error' or 'end', with when. */
function outcomeOf(s: GatewaySocket): Promise<{ ev: 'error' | 'end'; err?: Error; at: number }> {
  return new Promise((resolve) => {
    s.once('error', (err: Error) => resolve({ ev: 'error', err, at: Date.now() }));
    s.once('end', () => resolve({ ev: 'end', at: Date.now() }));
  });
}

/** Keep writing 64 KiB chunks (with backpressure) until the socket dies. */
function writeForever(s: GatewaySocket): void {
  const block = randomBytes(64 * 1024);
  const pump = () => {
    while (!s.destroyed && s.writable && s.write(block));
  };
  s.on('drain', pump);
  pump();
}

function describe(o: { ev: string; err?: Error }): string {
  if (o.ev !== 'error') return o.ev;
  const e = o.err as Error & { code?: string };
  const cause = e.cause as (Error & { code?: string | number }) | undefined;
  return `${e.constructor.name} ${e.code}: ${e.message}${cause ? ` (cause: ${cause.constructor.name} ${cause.code}: ${cause.message})` : ''}`;
}

// ---------------------------------------------------------------------------
// (a) SIGKILL mid-transfer

for (const plane of PLANES) {
  test.serial(`SIGKILL mid-transfer: a client streaming through the ${plane} plane gets a precise error promptly`, async (t) => {
    t.timeout(60_000);
    const echo = await echoServer();
    t.teardown(() => echo.close());
    const g = await child(t);
    const gw = await sdk(t, g);
    const s = await gw.connect(echo.uri, { transports: [plane] });
    t.is(s.transport, plane);
    let got = 0;
    s.on('data', (c: Buffer) => (got += c.length));
    const ended = outcomeOf(s);
    writeForever(s);
    t.true(await eventually(() => got >= 4 << 20, 20_000), 'bytes flow before the kill');
    const killedAt = Date.now();
    g.child.kill('SIGKILL');
    const o = await within(ended, PROMPT_MS + 5_000, `${plane} writer after SIGKILL`);
    t.is(o.ev, 'error', `the writer must see an error, not a clean end (${describe(o)})`);
    t.true(o.at - killedAt <= PROMPT_MS, `error within ${PROMPT_MS} ms (took ${o.at - killedAt} ms: ${describe(o)})`);
    t.true(o.err instanceof SockgateError, describe(o));
    t.true(GONE_CODES.includes((o.err as SockgateError).code), `a gateway-gone code, not ${describe(o)}`);
    // The destination's side is not left open either.
    t.true(await eventually(async () => (await connections(echo)) === 0, PROMPT_MS), 'the destination connection closes');
  });

  test.serial(`SIGKILL while a client only reads through the ${plane} plane: an error, never a clean end`, async (t) => {
    t.timeout(60_000);
    const dest = await streamer();
    t.teardown(() => dest.close());
    const g = await child(t);
    const gw = await sdk(t, g);
    const s = await gw.connect(dest.uri, { transports: [plane] });
    let got = 0;
    s.on('data', (c: Buffer) => (got += c.length));
    const ended = outcomeOf(s);
    t.true(await eventually(() => got >= 4 << 20, 20_000), 'the destination streams to the client');
    const killedAt = Date.now();
    g.child.kill('SIGKILL');
    const o = await within(ended, PROMPT_MS + 5_000, `${plane} reader after SIGKILL`);
    t.is(o.ev, 'error', `a reader must not mistake the gateway's death for the destination's end of stream (${describe(o)})`);
    t.true(o.at - killedAt <= PROMPT_MS, `error within ${PROMPT_MS} ms (took ${o.at - killedAt} ms: ${describe(o)})`);
    t.true(o.err instanceof SockgateError, describe(o));
    t.true(GONE_CODES.includes((o.err as SockgateError).code), `a gateway-gone code, not ${describe(o)}`);
  });

  test.serial(`SIGKILL and an immediate restart on the same address: a ${plane}-plane reader whose stream was cut still gets an error`, async (t) => {
    t.timeout(60_000);
    const dest = await streamer();
    t.teardown(() => dest.close());
    const port = await closedPort();
    const g = await child(t, ['--set', `listen.control=127.0.0.1:${port}`]);
    const gw = await sdk(t, g);
    const s = await gw.connect(dest.uri, { transports: [plane] });
    let got = 0;
    s.on('data', (c: Buffer) => (got += c.length));
    const ended = outcomeOf(s);
    t.true(await eventually(() => got >= 4 << 20, 20_000), 'the destination streams to the client');
    // A slow reader: it is busy with what it has while the gateway dies, so the end of its stream
    // is read (behind the bytes still buffered) only after the restart.
    s.pause();
    // Let the SDK's buffer and the kernel's fill, so the FIN queues behind unread bytes.
    await new Promise((r) => setTimeout(r, 500));
    g.child.kill('SIGKILL');
    await once(g.child, 'exit');
    // A supervisor (systemd Restart=always, a DaemonSet) brings a new gateway up on the same address.
    const next = await child(t, ['--set', `listen.control=127.0.0.1:${port}`]);
    t.is(next.target, `127.0.0.1:${port}`);
    // The new gateway has sockets of its own, one of which may even reuse the old id.
    const other = await sdk(t, next);
    const echo = await echoServer();
    t.teardown(() => echo.close());
    const reused = await other.connect(echo.uri, { transports: [plane] });
    // The application keeps using its gateway connection meanwhile, so its channel reconnects to the new process.
    const reconnected = await eventually(
      () =>
        gw.listSockets('', { deadlineMs: 1_000 }).then(
          () => true,
          () => false,
        ),
      15_000,
    );
    t.true(reconnected, 'the client reaches the restarted gateway');
    s.resume();
    const o = await within(ended, 15_000, `${plane} reader across a restart`);
    t.is(o.ev, 'error', `bytes were lost with the old gateway: the reader must see an error, not a clean end (socket ${s.socketId}; the new gateway's socket is ${reused.socketId})`);
    reused.destroy();
  });

  test.serial(`a real end of stream through the ${plane} plane is a clean end (confirmed while the gateway lives)`, async (t) => {
    t.timeout(30_000);
    const payload = randomBytes(3 << 20);
    const dest = await tcpServer((c) => c.end(payload));
    t.teardown(() => dest.close());
    const g = await child(t);
    const gw = await sdk(t, g);
    const s = await gw.connect(dest.uri, { transports: [plane] });
    const hash = createHash('sha256');
    let bytes = 0;
    s.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    const o = await within(outcomeOf(s), 10_000, 'end of stream');
    t.is(o.ev, 'end', describe(o));
    t.is(bytes, payload.length);
    t.is(hash.digest('hex'), createHash('sha256').update(payload).digest('hex'));
    s.end();
    t.is(g.child.exitCode, null);
  });
}

test.serial('socket ids are not reused by a restarted gateway (a stale id must not name a stranger\'s socket)', async (t) => {
  t.timeout(60_000);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const port = await closedPort();
  const first = await child(t, ['--set', `listen.control=127.0.0.1:${port}`]);
  const a = await sdk(t, first);
  const before = await Promise.all([a.connect(echo.uri), a.connect(echo.uri)]);
  for (const s of before) s.on('error', () => {});
  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  const second = await child(t, ['--set', `listen.control=127.0.0.1:${port}`]);
  const b = await sdk(t, second);
  const after = await Promise.all([b.connect(echo.uri), b.connect(echo.uri)]);
  const old = new Set(before.map((s) => s.socketId));
  const reused = after.map((s) => s.socketId).filter((id) => old.has(id));
  t.deepEqual(reused, [], `ids of the dead gateway's sockets handed out again: ${reused.join(', ')}`);
  for (const s of after) s.destroy();
});

test.serial('after SIGKILL, a Connect with a deadline fails as GATEWAY_UNAVAILABLE, not as a destination connect timeout', async (t) => {
  t.timeout(30_000);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const g = await child(t);
  const gw = await sdk(t, g);
  const s = await gw.connect(echo.uri);
  s.on('error', () => {});
  g.child.kill('SIGKILL');
  await once(g.child, 'exit');
  // Let the client's channel notice: this is about a gateway that is gone, not one dying under the call.
  await new Promise((r) => setTimeout(r, 500));
  const started = Date.now();
  const err = await gw.connect(echo.uri, { deadlineMs: 2_000 }).then(
    () => undefined,
    (e: Error) => e,
  );
  t.true(Date.now() - started < 2_000 + PROMPT_MS, `the call ends by its deadline (${Date.now() - started} ms)`);
  // ERR_SOCKGATE_CONNECT_TIMEOUT would say the destination did not answer (and `sockgate connect` would exit 5);
  // the gateway itself is what is missing (exit 11).
  t.true(err instanceof GatewayUnavailableError, `expected GatewayUnavailableError, got ${err?.constructor.name} ${(err as SockgateError | undefined)?.code}: ${err?.message}`);
});

// ---------------------------------------------------------------------------
// (b) graceful shutdown on SIGTERM

/** Write `data` in 64 KiB chunks, honouring backpressure. */
async function writeAll(s: GatewaySocket, data: Buffer): Promise<void> {
  for (let o = 0; o < data.length; o += 65536) {
    if (!s.write(data.subarray(o, o + 65536))) await once(s, 'drain');
  }
}

function hashOf(s: GatewaySocket): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (c: Buffer) => {
      bytes += c.length;
      h.update(c);
    });
    s.once('end', () => resolve({ bytes, sha256: h.digest('hex') }));
    s.once('error', reject);
  });
}

for (const plane of PLANES) {
  test.serial(`SIGTERM: a ${plane}-plane transfer in flight completes (SHA-256), new Connects are refused, health is NOT_SERVING, exit 0`, async (t) => {
    t.timeout(60_000);
    const echo = await echoServer();
    t.teardown(() => echo.close());
    const g = await child(t, ['--set', 'shutdown.drain_timeout_ms=10000']);
    const gw = await sdk(t, g);
    t.is(await healthCheck(g.target), 'SERVING');
    const s = await gw.connect(echo.uri, { transports: [plane] });
    const data = randomBytes(16 << 20);
    const received = hashOf(s);
    await writeAll(s, data.subarray(0, 8 << 20));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((r) =>
      g.child.once('exit', (code, signal) => r({ code, signal, at: Date.now() })),
    );
    const termAt = Date.now();
    g.child.kill('SIGTERM');

    // Draining: health says NOT_SERVING, for the whole server and the services.
    t.true(await eventually(async () => (await healthCheck(g.target).catch(() => 'error')) === 'NOT_SERVING', 3_000), 'health is NOT_SERVING during the drain');
    t.is(await healthCheck(g.target, 'sockgate.v1.SocketGatewayService'), 'NOT_SERVING');
    // New sockets are refused with a precise status.
    const raw = new SocketGatewayServiceClient(g.target, credentials.createInsecure());
    t.teardown(() => raw.close());
    const e = await rpcError(rpc(raw, raw.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined }], timeoutMs: 0, options: [] }));
    t.is(e.code, status.UNAVAILABLE);
    t.is(e.errorCode, 'ERR_SOCKGATE_SHUTTING_DOWN');
    await t.throwsAsync(gw.connect(echo.uri), { instanceOf: ShuttingDownError });
    t.is(g.child.exitCode, null, 'still running while the transfer is open');

    // The transfer in flight finishes.
    await writeAll(s, data.subarray(8 << 20));
    s.end();
    const r = await within(received, 15_000, `${plane} transfer across SIGTERM`).catch((err: Error & { code?: string }) => err);
    t.false(r instanceof Error, `the transfer must complete, not fail with ${r instanceof Error ? `${r.code}: ${r.message}` : ''}`);
    if (r instanceof Error) return;
    t.is(r.bytes, data.length);
    t.is(r.sha256, createHash('sha256').update(data).digest('hex'));

    const x = await within(exited, 12_000, 'exit after the drain');
    t.is(x.code, 0);
    t.is(x.signal, null);
    t.true(x.at - termAt < 12_000);
  });
}

test.serial('SIGTERM: a socket that never finishes is aborted at the drain timeout, its client gets an error, and the process still exits 0', async (t) => {
  t.timeout(40_000);
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const g = await child(t, ['--set', 'shutdown.drain_timeout_ms=1500']);
  const gw = await sdk(t, g);
  const socks = await Promise.all(PLANES.map((p) => gw.connect(echo.uri, { transports: [p] })));
  const outcomes = socks.map(outcomeOf);
  // A pending (never attached) socket is dropped at once.
  const raw = new SocketGatewayServiceClient(g.target, credentials.createInsecure());
  t.teardown(() => raw.close());
  await rpc(raw, raw.connect, { uri: echo.uri, offers: [{ kind: TransportKind.TRANSPORT_KIND_GRPC, version: 1, params: undefined }], timeoutMs: 0, options: [] });
  const exited = new Promise<{ code: number | null; at: number }>((r) => g.child.once('exit', (code) => r({ code, at: Date.now() })));
  const termAt = Date.now();
  g.child.kill('SIGTERM');
  const x = await within(exited, 10_000, 'exit after the drain timeout');
  t.is(x.code, 0);
  t.true(x.at - termAt >= 1_000, `waited for the drain (${x.at - termAt} ms)`);
  for (const [i, o] of outcomes.entries()) {
    const r = await within(o, PROMPT_MS, `${PLANES[i]} socket after the drain timeout`);
    t.is(r.ev, 'error', `${PLANES[i]}: an aborted socket is an error for its client (${describe(r)})`);
  }
});

// ---------------------------------------------------------------------------
// (c) health checking and reflection

test.serial('gRPC health checking is served: SERVING for the server and each service, NOT_FOUND for unknown services', async (t) => {
  const g = await child(t);
  t.is(await healthCheck(g.target, ''), 'SERVING');
  t.is(await healthCheck(g.target, 'sockgate.v1.SocketGatewayService'), 'SERVING');
  t.is(await healthCheck(g.target, 'sockgate.v1.AdminService'), 'SERVING');
  const e = await healthCheck(g.target, 'no.such.Service').then(
    () => undefined,
    (err: { code: status }) => err,
  );
  t.is(e?.code, status.NOT_FOUND);
});

test.serial('gRPC reflection is served: list_services names both services, file_containing_symbol returns their descriptors', async (t) => {
  const g = await child(t);
  const names = await reflectionListServices(g.target);
  t.true(names.includes('sockgate.v1.SocketGatewayService'), names.join(', '));
  t.true(names.includes('sockgate.v1.AdminService'), names.join(', '));
  // grpcurl and older tools still speak v1alpha.
  const alpha = await reflectionListServices(g.target, REFLECTION_V1ALPHA);
  t.true(alpha.includes('sockgate.v1.SocketGatewayService'), alpha.join(', '));
  const files = await reflectionFileContaining(g.target, 'sockgate.v1.SocketGatewayService');
  t.true(files.length >= 1);
  const all = Buffer.concat(files).toString('latin1');
  t.true(all.includes('sockgate/v1/sockgate.proto'));
  t.true(all.includes('SocketGatewayService'));
  t.true(all.includes('Connect'));
  // A message from the imported transport.proto resolves to a file that defines it.
  const msg = await reflectionFileContaining(g.target, 'sockgate.v1.TransportOffer');
  t.true(msg.some((fd) => messageNames(fd).includes('TransportOffer')), 'some returned file defines TransportOffer');
});

/** Top-level message names of a serialized FileDescriptorProto (field 4, DescriptorProto.name = 1). */
function messageNames(fd: Buffer): string[] {
  const names: string[] = [];
  for (const f of protoFields(fd)) {
    if (f.field !== 4 || !(f.value instanceof Buffer)) continue;
    for (const m of protoFields(f.value)) if (m.field === 1 && m.value instanceof Buffer) names.push(m.value.toString('utf8'));
  }
  return names;
}
