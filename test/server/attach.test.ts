/**
 * Attach tokens, at the wire level: real negotiations from Connect, then raw
 * TCP connections to the data port speaking the preamble of wire.ts (wrong,
 * replayed, expired, wrong-transport tokens, garbage, short preambles, bad
 * versions), the same for the grpc `Data` stream, and unit tests of
 * server/attach.ts's AttachRegistry.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { credentials, Metadata, status, type ClientDuplexStream } from '@grpc/grpc-js';
import {
  SocketGatewayServiceClient,
  SocketState,
  type ConnectResponse,
  type DataRequest,
  type DataResponse,
} from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind, type Accepted } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachRegistry, AttachTokenError, ATTACH_TOKEN_BYTES } from '../../server/attach.js';
import { AttachFailedError } from '../../proto/errors.js';
import { AttachStatus, encodePreamble, PREAMBLE_MAGIC, REPLY_BYTES } from '../../proto/wire.js';
import { echoServer, startChildGateway, startGateway, within, type TestGateway } from '../helpers/harness.js';
import { dataConnect, eventually, rpc, type DataConn } from '../helpers/rpc.js';

/** Preamble timeout of transport-tcp.ts (PREAMBLE_TIMEOUT_MS), which the slowloris test waits out. */
const PREAMBLE_TIMEOUT_MS = 5_000;

type Echo = Awaited<ReturnType<typeof echoServer>>;

function control(target: string): SocketGatewayServiceClient {
  return new SocketGatewayServiceClient(target, credentials.createInsecure());
}

/** Connect through a raw control client, offering exactly `kind`; returns the response with its accepted offer. */
async function negotiated(client: SocketGatewayServiceClient, uri: string, kind: TransportKind): Promise<ConnectResponse & { accepted: Accepted }> {
  const res = await rpc(client, client.connect, { uri, offers: [{ kind, version: 1, params: undefined }], timeoutMs: 0, options: [] });
  const accepted = res.negotiation?.accepted;
  if (!accepted) throw new Error(`no transport accepted: ${JSON.stringify(res.negotiation?.fallbacks)}`);
  return { ...res, accepted };
}

function dataAddr(a: Accepted): { host: string; port: number } {
  if (a.params?.$case !== 'tcp') throw new Error(`accepted ${a.params?.$case}, not tcp`);
  return { host: a.params.tcp.host, port: a.params.tcp.port };
}

/** A preamble with arbitrary header fields. */
function preamble(token: Uint8Array, over: { magic?: Buffer; version?: number; tokLen?: number } = {}): Buffer {
  const b = encodePreamble(token);
  if (over.magic) over.magic.copy(b, 0);
  if (over.version !== undefined) b.writeUInt8(over.version, 4);
  if (over.tokLen !== undefined) b.writeUInt16BE(over.tokLen, 8);
  return b;
}

/** Wait for the 8-byte reply and the close that must follow a refusal. */
async function expectRefused(t: { is: (a: unknown, b: unknown, m?: string) => void; true: (v: boolean, m?: string) => void }, conn: DataConn, want: AttachStatus, what: string): Promise<void> {
  await within(conn.waitBytes(REPLY_BYTES, 3_000), 3_000, `${what}: reply`);
  const st = conn.replyStatus();
  t.is(st === undefined ? 'malformed' : AttachStatus[st], AttachStatus[want], `${what}: reply status`);
  t.is(conn.received().length, REPLY_BYTES, `${what}: nothing but the reply`);
  const closed = await within(conn.closed, 3_000, `${what}: the gateway closes the connection`);
  t.true(closed.ended || closed.error !== undefined, `${what}: connection closed by the gateway`);
}

/** Send `payload` over an attached raw connection (after its OK reply), read the echo to the end. */
async function echoOver(conn: DataConn, payload: Buffer): Promise<Buffer> {
  for (let o = 0; o < payload.length; o += 65536) conn.sock.write(payload.subarray(o, o + 65536));
  conn.sock.end();
  await within(conn.closed, 15_000, 'echo over the data connection');
  return conn.received().subarray(REPLY_BYTES);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Ctx {
  gw: TestGateway;
  echo: Echo;
  client: SocketGatewayServiceClient;
}

async function setup(t: { teardown(fn: () => unknown): void }, overrides: unknown = {}): Promise<Ctx> {
  const gw = await startGateway(overrides);
  const echo = await echoServer();
  const client = control(gw.target);
  t.teardown(async () => {
    client.close();
    await echo.close();
    await gw.stop();
  });
  return { gw, echo, client };
}

// ---------------------------------------------------------------------------
// tcp data plane

test('tcp plane: the right token attaches; bytes flow both ways (SHA-256) and GetInfo counts them', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  t.is(res.accepted.attachToken.length, ATTACH_TOKEN_BYTES);
  t.true(res.accepted.tokenExpiresAtMs > Date.now());
  const pending = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(pending.info?.state, SocketState.SOCKET_STATE_PENDING_ATTACH);

  const conn = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(conn.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(conn.replyStatus(), AttachStatus.OK);
  const payload = randomBytes(1 << 20);
  for (let o = 0; o < payload.length; o += 65536) conn.sock.write(payload.subarray(o, o + 65536));
  await within(conn.waitBytes(REPLY_BYTES + payload.length, 10_000), 10_000, 'echo of 1 MiB');
  t.is(sha(conn.received().subarray(REPLY_BYTES)), sha(payload));
  const open = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(open.info?.state, SocketState.SOCKET_STATE_OPEN);
  t.is(open.info?.transport, TransportKind.TRANSPORT_KIND_TCP);
  t.is(open.info?.bytesOut, payload.length);
  t.is(open.info?.bytesIn, payload.length);
  conn.sock.end();
  await within(conn.closed, 5_000, 'close after half-close');
});

test('tcp plane: preamble and payload in one segment, and a preamble dribbled one byte at a time, both attach', async (t) => {
  const { echo, client } = await setup(t);
  // Payload right behind the token, in the same write.
  const a = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const payload = randomBytes(100_000);
  const c1 = await dataConnect(dataAddr(a.accepted), Buffer.concat([encodePreamble(a.accepted.attachToken), payload]));
  c1.sock.end();
  await within(c1.closed, 10_000, 'echo with payload in the preamble segment');
  t.is(c1.replyStatus(), AttachStatus.OK);
  t.is(sha(c1.received().subarray(REPLY_BYTES)), sha(payload));

  // One byte per write, with pauses, still within the preamble timeout.
  const b = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const c2 = await dataConnect(dataAddr(b.accepted));
  c2.sock.setNoDelay(true);
  for (const byte of encodePreamble(b.accepted.attachToken)) {
    c2.sock.write(Buffer.from([byte]));
    await new Promise((r) => setTimeout(r, 2));
  }
  await within(c2.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply to a dribbled preamble');
  t.is(c2.replyStatus(), AttachStatus.OK);
  const echoed = await echoOver(c2, Buffer.from('dribbled'));
  t.is(echoed.toString(), 'dribbled');
});

test('tcp plane: a wrong token gets WRONG_TOKEN and is closed; the real token still works afterwards', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const wrong = await dataConnect(dataAddr(res.accepted), encodePreamble(randomBytes(ATTACH_TOKEN_BYTES)));
  await expectRefused(t, wrong, AttachStatus.WRONG_TOKEN, 'random token');
  // A token one bit off the real one is just as wrong.
  const flipped = Buffer.from(res.accepted.attachToken);
  flipped[0] ^= 1;
  const off = await dataConnect(dataAddr(res.accepted), encodePreamble(flipped));
  await expectRefused(t, off, AttachStatus.WRONG_TOKEN, 'token with one bit flipped');
  // A prefix of the real token (shorter tok_len) is not the token.
  const prefix = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken.subarray(0, 16)));
  await expectRefused(t, prefix, AttachStatus.WRONG_TOKEN, 'prefix of the token');

  const right = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(right.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(right.replyStatus(), AttachStatus.OK, 'failed guesses do not burn the token');
  t.is((await echoOver(right, Buffer.from('still mine'))).toString(), 'still mine');
});

test('tcp plane: a token works once; replaying it gets REPLAYED and is closed, the first connection is unaffected', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const first = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(first.waitBytes(REPLY_BYTES, 3_000), 3_000, 'first reply');
  t.is(first.replyStatus(), AttachStatus.OK);

  const replay = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await expectRefused(t, replay, AttachStatus.REPLAYED, 'replay while the first is attached');

  const payload = randomBytes(300_000);
  t.is(sha(await echoOver(first, payload)), sha(payload), 'the first attach still carries the socket');

  // After the socket is gone, the token is still refused (as a replay), not accepted.
  const again = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(again.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply after close');
  t.not(again.replyStatus(), AttachStatus.OK);
  await within(again.closed, 3_000, 'closed');
});

test('tcp plane: an expired token gets EXPIRED and is closed; the unattached socket was reaped', async (t) => {
  const { gw, echo, client } = await setup(t, { transports: { attach_token_ttl_ms: 200 } });
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  t.true(res.accepted.tokenExpiresAtMs - Date.now() <= 200);
  t.true(await eventually(() => gw.gateway.table.size === 0, 3_000), 'the never-attached socket is reaped after the token TTL');
  // The reaped socket's final state is still on record (clients confirm stream ends with it).
  const gone = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(gone.info?.state, SocketState.SOCKET_STATE_CLOSED);
  const late = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await expectRefused(t, late, AttachStatus.EXPIRED, 'expired token');
  t.is(echo.server.listening, true);
  const conns = await new Promise<number>((r) => echo.server.getConnections((_e, n) => r(n)));
  t.true(await eventually(async () => (await new Promise<number>((r) => echo.server.getConnections((_e, n) => r(n)))) === 0, 3_000), `host connection of the reaped socket closed (had ${conns})`);
});

test('tcp plane: a token issued for grpc is refused on the tcp port (WRONG_TRANSPORT) and closed', async (t) => {
  const { gw, echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_GRPC);
  t.is(res.accepted.params?.$case, 'grpc');
  const [host, port] = gw.gateway.addresses.data.split(':');
  const conn = await dataConnect({ host: host!, port: Number(port) }, encodePreamble(res.accepted.attachToken));
  await expectRefused(t, conn, AttachStatus.WRONG_TRANSPORT, 'grpc token on the tcp port');
  const info = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(info.info?.state, SocketState.SOCKET_STATE_PENDING_ATTACH, 'the socket is not attached by a wrong-transport attempt');
});

test('tcp plane: garbage instead of a preamble gets BAD_PREAMBLE and is closed', async (t) => {
  const { gw } = await setup(t);
  const cases: [string, Buffer][] = [
    ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['a TLS ClientHello start', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])],
    ['a wrong magic with a valid rest', preamble(randomBytes(32), { magic: Buffer.from('SGA2') })],
    ['lower-case magic', preamble(randomBytes(32), { magic: Buffer.from('sga1') })],
    ['a single wrong byte', Buffer.from('X')],
    ['zero bytes', Buffer.alloc(64)],
    ['token length 0', preamble(Buffer.alloc(0))],
    ['token length 65 (above MAX_TOKEN_BYTES)', preamble(randomBytes(65))],
    ['token length 0xffff', preamble(randomBytes(4), { tokLen: 0xffff })],
  ];
  for (const [what, bytes] of cases) {
    const conn = await dataConnect(gw.gateway.addresses.data, bytes);
    await expectRefused(t, conn, AttachStatus.BAD_PREAMBLE, what);
  }
});

test('tcp plane: a preamble of another version gets VERSION_MISMATCH and is closed', async (t) => {
  const { gw, echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  for (const version of [0, 2, 255]) {
    const conn = await dataConnect(dataAddr(res.accepted), preamble(res.accepted.attachToken, { version }));
    await expectRefused(t, conn, AttachStatus.VERSION_MISMATCH, `version ${version}`);
  }
  // A version mismatch must not burn the token.
  const ok = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(ok.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(ok.replyStatus(), AttachStatus.OK);
  ok.sock.destroy();
  t.true(await eventually(() => gw.gateway.table.size === 0, 5_000), 'closing the data connection closes the socket');
});

test('tcp plane: a short preamble then silence is refused and closed after the preamble timeout', async (t) => {
  t.timeout(20_000);
  const { gw, echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const started = Date.now();
  // Magic and version, then nothing: the gateway must not wait forever.
  const head = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken).subarray(0, 6));
  // Header complete, token cut short.
  const half = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken).subarray(0, 20));
  // Connected, sent nothing.
  const mute = await dataConnect(gw.gateway.addresses.data);
  for (const [what, conn] of [['6 bytes', head], ['20 bytes', half], ['nothing', mute]] as const) {
    await within(conn.closed, PREAMBLE_TIMEOUT_MS + 3_000, `${what} then silence: closed`);
    const waited = Date.now() - started;
    t.true(waited >= PREAMBLE_TIMEOUT_MS - 500, `${what}: not closed before the preamble timeout (${waited} ms)`);
    const st = conn.replyStatus();
    t.true(st === undefined || st === AttachStatus.BAD_PREAMBLE, `${what}: reply is BAD_PREAMBLE if any (got ${st})`);
  }
  // The token was never presented whole, so it still works.
  const ok = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(ok.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(ok.replyStatus(), AttachStatus.OK);
  ok.sock.destroy();
});

test('tcp plane: a client that hangs up mid-preamble leaves no trace; the token still works', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  for (let i = 0; i < 20; i++) {
    const c = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken).subarray(0, i));
    if (i % 2) c.sock.destroy();
    else c.sock.end();
    await within(c.closed, 3_000, `hang-up after ${i} bytes`);
    const st = c.replyStatus();
    t.true(st === undefined || st === AttachStatus.BAD_PREAMBLE, `after ${i} bytes: no OK (got ${st})`);
  }
  const ok = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
  await within(ok.waitBytes(REPLY_BYTES, 3_000), 3_000, 'reply');
  t.is(ok.replyStatus(), AttachStatus.OK);
  t.is((await echoOver(ok, Buffer.from('after hang-ups'))).toString(), 'after hang-ups');
});

// ---------------------------------------------------------------------------
// A token whose socket was closed before it was attached. Run against child
// processes: an unhandled error in the gateway kills the process, which the
// test can then report instead of dying with it.

for (const [plane, kind] of [
  ['tcp', TransportKind.TRANSPORT_KIND_TCP],
  ['grpc', TransportKind.TRANSPORT_KIND_GRPC],
] as const) {
  for (const proto of ['tcp', 'udp'] as const) {
    test(`${plane} plane: the token of a ${proto} socket closed before its attach is refused, and the gateway survives`, async (t) => {
      t.timeout(40_000);
      const echo = await echoServer();
      const child = await startChildGateway();
      const client = control(child.target);
      t.teardown(async () => {
        client.close();
        child.child.kill('SIGKILL');
        await echo.close();
      });
      const uri = proto === 'tcp' ? echo.uri : 'udp://127.0.0.1:9';
      const res = await negotiated(client, uri, kind);
      await rpc(client, client.closeSocket, { socketId: res.socketId });
      let refusal: () => void;
      if (plane === 'tcp') {
        const conn = await dataConnect(dataAddr(res.accepted), encodePreamble(res.accepted.attachToken));
        await within(conn.closed, 5_000, 'the attach attempt ends');
        const st = conn.replyStatus();
        refusal = () => t.not(st, AttachStatus.OK, `a closed socket's token must not be accepted (reply ${st === undefined ? 'none' : AttachStatus[st]})`);
      } else {
        const call = client.data(new Metadata());
        const first = grpcFirst(call);
        call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(res.accepted.attachToken) } });
        const r = await within(first, 5_000, 'the grpc attach attempt ends');
        call.cancel();
        refusal = () => {
          t.false(r.attached, 'a closed socket\'s token must not get an `attached` frame');
          t.is(r.code, status.UNAUTHENTICATED);
          t.is(r.errorCode, AttachFailedError.code);
        };
      }
      await new Promise((r) => setTimeout(r, 500));
      // The process first: a crash is the worse failure, and it explains the reply.
      t.is(child.child.exitCode, null, `the gateway process must survive; it exited with ${child.child.exitCode}:\n${child.logs().split('\n').filter((l) => !l.startsWith('{')).slice(0, 12).join('\n')}`);
      refusal();
      // And it still serves.
      const fresh = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
      const ok = await dataConnect(dataAddr(fresh.accepted), encodePreamble(fresh.accepted.attachToken));
      t.is((await echoOver(ok, Buffer.from('alive'))).toString(), 'alive');
    });
  }
}

// ---------------------------------------------------------------------------
// grpc data plane

/** Resolves with the first response frame, or the status if the call ends first. */
function grpcFirst(call: ClientDuplexStream<DataRequest, DataResponse>): Promise<{ attached: boolean; code: status; details: string; errorCode: string | undefined }> {
  return new Promise((resolve) => {
    const onData = (m: DataResponse) => {
      call.removeListener('data', onData);
      call.pause();
      resolve({ attached: m.frame?.$case === 'attached', code: status.OK, details: '', errorCode: undefined });
    };
    call.on('data', onData);
    call.on('error', () => {});
    call.once('status', (st) => {
      const ec = st.metadata?.get('sockgate-error-code')[0];
      resolve({ attached: false, code: st.code, details: st.details, errorCode: typeof ec === 'string' ? ec : undefined });
    });
  });
}

/** Attach over a raw Data call and echo `payload` in 64 KiB frames; returns what came back before eof. */
async function grpcEcho(client: SocketGatewayServiceClient, token: Uint8Array, payload: Buffer): Promise<{ attached: boolean; echoed: Buffer; sawEof: boolean }> {
  const call = client.data(new Metadata(), { deadline: Date.now() + 20_000 });
  const first = grpcFirst(call);
  call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(token) } });
  const r = await within(first, 5_000, 'attached frame');
  if (!r.attached) return { attached: false, echoed: Buffer.alloc(0), sawEof: false };
  const chunks: Buffer[] = [];
  let sawEof = false;
  const done = new Promise<void>((resolve) => {
    call.on('data', (m: DataResponse) => {
      if (m.frame?.$case === 'data') chunks.push(Buffer.from(m.frame.data));
      if (m.frame?.$case === 'eof') sawEof = true;
    });
    call.once('status', () => resolve());
  });
  call.resume();
  for (let o = 0; o < payload.length; o += 65536) call.write({ frame: { $case: 'data', data: payload.subarray(o, o + 65536) } });
  call.write({ frame: { $case: 'eof', eof: true } });
  call.end();
  await within(done, 15_000, 'grpc echo');
  return { attached: true, echoed: Buffer.concat(chunks), sawEof };
}

test('grpc plane: the right token attaches once (attached frame, echo with SHA-256); a replay is UNAUTHENTICATED ERR_SOCKGATE_ATTACH_FAILED', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_GRPC);
  const payload = randomBytes(500_000);
  const r = await grpcEcho(client, res.accepted.attachToken, payload);
  t.true(r.attached);
  t.true(r.sawEof, 'the gateway sends an eof frame when the destination ends');
  t.is(r.echoed.length, payload.length);
  t.is(sha(r.echoed), sha(payload));

  const call = client.data(new Metadata());
  const first = grpcFirst(call);
  call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(res.accepted.attachToken) } });
  const replay = await within(first, 5_000, 'replay');
  t.false(replay.attached);
  t.is(replay.code, status.UNAUTHENTICATED);
  t.is(replay.errorCode, AttachFailedError.code);
  t.regex(replay.details, /replayed/);
});

test('grpc plane: a wrong token is UNAUTHENTICATED with ERR_SOCKGATE_ATTACH_FAILED in the trailers; the real one still works', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_GRPC);
  for (const token of [randomBytes(ATTACH_TOKEN_BYTES), Buffer.alloc(0), randomBytes(1), randomBytes(4096)]) {
    const call = client.data(new Metadata());
    const first = grpcFirst(call);
    call.write({ frame: { $case: 'attachToken', attachToken: token } });
    const r = await within(first, 5_000, `wrong token of ${token.length} bytes`);
    t.false(r.attached);
    t.is(r.code, status.UNAUTHENTICATED, `token of ${token.length} bytes`);
    t.is(r.errorCode, AttachFailedError.code);
    t.regex(r.details, /wrong token/);
  }
  const ok = await grpcEcho(client, res.accepted.attachToken, Buffer.from('grpc ok'));
  t.true(ok.attached);
  t.is(ok.echoed.toString(), 'grpc ok');
});

test('grpc plane: a tcp token is refused on the Data stream and does not attach the socket', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_TCP);
  const call = client.data(new Metadata());
  const first = grpcFirst(call);
  call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(res.accepted.attachToken) } });
  const r = await within(first, 5_000, 'tcp token on grpc');
  t.false(r.attached);
  t.is(r.code, status.UNAUTHENTICATED);
  t.is(r.errorCode, AttachFailedError.code);
  t.regex(r.details, /wrong transport/);
  const info = await rpc(client, client.getInfo, { socketId: res.socketId });
  t.is(info.info?.state, SocketState.SOCKET_STATE_PENDING_ATTACH);
});

test('grpc plane: an expired token is refused', async (t) => {
  const { gw, echo, client } = await setup(t, { transports: { attach_token_ttl_ms: 200 } });
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_GRPC);
  t.true(await eventually(() => gw.gateway.table.size === 0, 3_000), 'reaped after the TTL');
  const call = client.data(new Metadata());
  const first = grpcFirst(call);
  call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(res.accepted.attachToken) } });
  const r = await within(first, 5_000, 'expired token on grpc');
  t.false(r.attached);
  t.is(r.code, status.UNAUTHENTICATED);
  t.is(r.errorCode, AttachFailedError.code);
  t.regex(r.details, /expired/);
});

test('grpc plane: a first frame that is not a token, or no frame at all, is refused', async (t) => {
  const { echo, client } = await setup(t);
  const res = await negotiated(client, echo.uri, TransportKind.TRANSPORT_KIND_GRPC);
  const firsts: [string, DataRequest][] = [
    ['a data frame', { frame: { $case: 'data', data: Buffer.from('hello') } }],
    ['an eof frame', { frame: { $case: 'eof', eof: true } }],
    ['a datagram frame', { frame: { $case: 'datagram', datagram: { uri: 'udp://127.0.0.1:9', payload: Buffer.from('x') } } }],
    ['an empty frame', { frame: undefined }],
  ];
  for (const [what, msg] of firsts) {
    const call = client.data(new Metadata());
    const first = grpcFirst(call);
    call.write(msg);
    const r = await within(first, 5_000, what);
    t.false(r.attached, what);
    t.is(r.code, status.INVALID_ARGUMENT, what);
    t.is(r.errorCode, 'ERR_SOCKGATE_PROTOCOL', what);
  }
  const call = client.data(new Metadata());
  const first = grpcFirst(call);
  call.end();
  const r = await within(first, 5_000, 'half-close before the attach frame');
  t.false(r.attached);
  t.not(r.code, status.OK);
  t.is(r.errorCode, 'ERR_SOCKGATE_PROTOCOL');
  // None of that burned the token.
  const ok = await grpcEcho(client, res.accepted.attachToken, Buffer.from('after refusals'));
  t.true(ok.attached);
  t.is(ok.echoed.toString(), 'after refusals');
});

// ---------------------------------------------------------------------------
// AttachRegistry unit tests

const TCP = TransportKind.TRANSPORT_KIND_TCP;
const GRPC = TransportKind.TRANSPORT_KIND_GRPC;

function failureOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof AttachTokenError) return err.failure;
    throw err;
  }
  return 'redeemed';
}

test('AttachRegistry: issues distinct 256-bit tokens with the TTL as expiry', (t) => {
  const reg = new AttachRegistry<string>(10_000);
  t.teardown(() => reg.close());
  const seen = new Set<string>();
  const before = Date.now();
  for (let i = 0; i < 1000; i++) {
    const { token, expiresAtMs } = reg.issue(`s${i}`, TCP, () => {});
    t.is(token.length, ATTACH_TOKEN_BYTES);
    seen.add(token.toString('hex'));
    if (i === 0) t.true(expiresAtMs >= before + 10_000 && expiresAtMs <= Date.now() + 10_000);
  }
  t.is(seen.size, 1000);
  t.is(reg.size, 1000);
});

test('AttachRegistry: redeems once for the right transport; a second redeem is a replay', (t) => {
  const reg = new AttachRegistry<{ id: string }>(10_000);
  t.teardown(() => reg.close());
  const target = { id: 'a' };
  let expired = 0;
  const { token } = reg.issue(target, TCP, () => expired++);
  t.is(failureOf(() => reg.redeem(token, GRPC)), 'wrong_transport');
  t.is(reg.size, 1, 'a wrong-transport attempt does not consume the token');
  t.is(reg.redeem(token, TCP), target);
  t.is(reg.size, 0);
  t.is(failureOf(() => reg.redeem(token, TCP)), 'replayed');
  t.is(failureOf(() => reg.redeem(token, GRPC)), 'replayed');
  t.is(expired, 0, 'onExpire is not called for a redeemed token');
});

test('AttachRegistry: unknown tokens are wrong_token, whatever their length', (t) => {
  const reg = new AttachRegistry<string>(10_000);
  t.teardown(() => reg.close());
  const { token } = reg.issue('a', TCP, () => {});
  for (const bad of [Buffer.alloc(0), randomBytes(1), randomBytes(ATTACH_TOKEN_BYTES), token.subarray(0, 31), Buffer.concat([token, Buffer.from([0])])]) {
    t.is(failureOf(() => reg.redeem(bad, TCP)), 'wrong_token');
  }
  t.is(reg.size, 1);
  t.is(reg.redeem(token, TCP), 'a');
  const err = t.throws(() => reg.redeem(randomBytes(32), TCP), { instanceOf: AttachTokenError });
  t.true(err instanceof AttachFailedError, 'AttachTokenError travels as AttachFailedError (UNAUTHENTICATED)');
  t.is(err?.code, 'ERR_SOCKGATE_ATTACH_FAILED');
  t.regex(err?.message ?? '', /wrong token/);
});

test('AttachRegistry: a token not redeemed in time expires: onExpire once, then redeem says expired', async (t) => {
  const reg = new AttachRegistry<string>(50);
  t.teardown(() => reg.close());
  let expired = 0;
  const { token } = reg.issue('a', TCP, () => expired++);
  const other = reg.issue('b', TCP, () => {});
  t.is(reg.redeem(other.token, TCP), 'b');
  await new Promise((r) => setTimeout(r, 150));
  t.is(expired, 1);
  t.is(reg.size, 0);
  t.is(failureOf(() => reg.redeem(token, TCP)), 'expired');
  await new Promise((r) => setTimeout(r, 100));
  t.is(expired, 1, 'onExpire runs exactly once');
});

test('AttachRegistry: a token past its expiry is refused even if its timer has not fired yet', (t) => {
  const reg = new AttachRegistry<string>(1_000);
  t.teardown(() => reg.close());
  let expired = 0;
  const { token, expiresAtMs } = reg.issue('a', TCP, () => expired++);
  const realNow = Date.now;
  // Synchronous: nothing else runs while the clock is moved.
  Date.now = () => expiresAtMs + 1;
  let failure: string;
  try {
    failure = failureOf(() => reg.redeem(token, TCP));
  } finally {
    Date.now = realNow;
  }
  t.is(failure, 'expired');
  t.is(expired, 1, 'onExpire runs so the socket is reaped');
  t.is(reg.size, 0);
  t.is(failureOf(() => reg.redeem(token, TCP)), 'expired');
});

test('AttachRegistry: revoke drops every live token of a target, and only of that target', (t) => {
  const reg = new AttachRegistry<{ id: string }>(10_000);
  t.teardown(() => reg.close());
  const a = { id: 'a' };
  const b = { id: 'b' };
  let expired = 0;
  const a1 = reg.issue(a, TCP, () => expired++);
  const a2 = reg.issue(a, GRPC, () => expired++);
  const b1 = reg.issue(b, TCP, () => expired++);
  reg.revoke(a);
  t.is(reg.size, 1);
  t.not(failureOf(() => reg.redeem(a1.token, TCP)), 'redeemed');
  t.not(failureOf(() => reg.redeem(a2.token, GRPC)), 'redeemed');
  t.is(reg.redeem(b1.token, TCP), b);
  t.is(expired, 0, 'a revoked token does not call onExpire (its socket is already being handled)');
});

test('AttachRegistry: close() forgets every token and no expiry fires afterwards', async (t) => {
  const reg = new AttachRegistry<string>(30);
  let expired = 0;
  const tokens = Array.from({ length: 10 }, (_, i) => reg.issue(`s${i}`, TCP, () => expired++).token);
  reg.close();
  t.is(reg.size, 0);
  await new Promise((r) => setTimeout(r, 100));
  t.is(expired, 0);
  for (const tok of tokens) t.not(failureOf(() => reg.redeem(tok, TCP)), 'redeemed');
});

test('AttachRegistry: the preamble magic and reply layout are what the wire comment says', (t) => {
  // Cross-check of the constants the raw tests above rely on.
  t.is(PREAMBLE_MAGIC.toString('ascii'), 'SGA1');
  const p = encodePreamble(Buffer.alloc(32, 7));
  t.is(p.length, 10 + 32);
  t.is(p.readUInt8(4), 1);
  t.is(p.readUInt16BE(8), 32);
  t.is(REPLY_BYTES, 8);
});
