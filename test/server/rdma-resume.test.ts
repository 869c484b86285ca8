/**
 * RDMA live failover without verbs (the live path runs in the two-VM lab,
 * test/rdma/two/failover.test.ts): the resumable attach on the data port
 * between the gateway's ResumeBook and the SDK's resumeOnDataPort, with the
 * state a failed connection leaves (positions, unacknowledged tails) forced by
 * the test. Each side re-sends exactly what the other has not consumed, so
 * the bytes before the positions (delivered over "RDMA") plus the bytes
 * after (over tcp) hash to the whole stream, both ways; refusals (bad
 * position, unknown token, an old gateway, no resume in time) end cleanly.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, Socket, type Server } from 'node:net';
import * as native from '../../native/index.js';
import { Pump } from '../../native/index.js';
import type { Logger } from '../../native/log.js';
import { AttachStatus } from '../../proto/wire.js';
import { encodeResumeReply, encodeResumeRequest, isResumeRequest, parseResumeReply, parseResumeRequest, resumeToken, RESUME_BAD_POSITION } from '../../proto/resume-wire.js';
import { ResumeBook, type MovedLink, type Resumable } from '../../server/rdma-resume.js';
import { resumeOnDataPort, type SuspendedSlot } from '../../clients/sdk/rdma-resume.js';
import type { NativeLinkEnd } from '../../server/data-channel.js';
import { startGateway } from '../helpers/harness.js';
import { formatStatusTable } from '../../server/cli/index.js';
import { SocketKind, SocketState, type SocketInfo } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const quiet = { info() {}, warn() {}, error() {}, debug() {} } as unknown as Logger;
const KIB = 1024;

/** A connected loopback TCP pair: `near` as a descriptor (dup; the JS socket is gone), `far` as a JS socket. */
async function tcpPair(): Promise<{ nearFd: number; far: Socket; close(): void }> {
  const srv = createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const far = new Socket({ allowHalfOpen: true });
  await new Promise<void>((r) => far.connect((srv.address() as { port: number }).port, '127.0.0.1', r));
  const near = await accepted;
  const nearFd = native.dupFd((near as unknown as { _handle: { fd: number } })._handle.fd);
  near.destroy();
  srv.close();
  return { nearFd, far, close: () => far.destroy() };
}

/** Collect what a socket receives until its end (or error). */
function collect(s: Socket): Promise<{ data: Buffer; error?: string }> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => {
    s.once('end', () => resolve({ data: Buffer.concat(chunks) }));
    s.once('error', (err: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), error: err.code ?? err.message }));
  });
}

/** A data port that hands resume requests to the book, as TcpTransport does. */
async function dataPort(book: ResumeBook): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (sock) => {
    let got = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      got = Buffer.concat([got, c]);
      if (!isResumeRequest(got) && got.length >= 5) return sock.destroy();
      const r = parseResumeRequest(got);
      if (r.state === 'need-more') return;
      sock.removeListener('data', onData);
      if (r.state === 'bad') return sock.destroy();
      sock.pause();
      book.accept(sock, r);
    };
    sock.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

interface Harness {
  book: ResumeBook;
  pump: Pump;
  port: number;
  records: string[];
  close(): void;
}

async function harness(t: import('ava').ExecutionContext, resumeMs = 10_000): Promise<Harness> {
  const pump = new Pump();
  const records: string[] = [];
  const book = new ResumeBook({ resumeMs, native, pump: () => pump, logger: quiet, highWatermark: 1 << 20, record: (o, c) => records.push(`${o}:${c}`) });
  const { server, port } = await dataPort(book);
  const h = {
    book,
    pump,
    port,
    records,
    close: () => {
      book.close();
      server.close();
    },
  };
  t.teardown(async () => {
    h.close();
    for (let i = 0; i < 50; i++) {
      try {
        pump.close();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  });
  return h;
}

/** A Resumable whose callbacks the test observes. */
function observed(overrides: Partial<Resumable> = {}) {
  const seen = { progressToHost: 0, progressFromHost: 0, failed: 0, moved: [] as string[], expired: [] as NativeLinkEnd[], link: undefined as MovedLink | undefined };
  let resolveMoved!: (m: MovedLink) => void;
  const movedP = new Promise<MovedLink>((r) => (resolveMoved = r));
  let resolveExpired!: (e: NativeLinkEnd) => void;
  const expiredP = new Promise<NativeLinkEnd>((r) => (resolveExpired = r));
  const r: Resumable = {
    socketId: 't-1',
    events: {
      progress: (a, b) => {
        seen.progressToHost += a;
        seen.progressFromHost += b;
      },
    },
    failConnection: () => void seen.failed++,
    moved: (m, cause) => {
      seen.moved.push(cause);
      seen.link = m;
      resolveMoved(m);
    },
    expired: (e) => {
      seen.expired.push(e);
      resolveExpired(e);
    },
    ...overrides,
  };
  return { r, seen, movedP, expiredP };
}

/**
 * The state a failed connection leaves, forced: host stream H (gateway ->
 * client) and app stream A (client -> gateway), each cut at the positions
 * given (K = KiB). Returns the client's suspended slot and the gateway's suspension.
 */
function cut(H: Buffer, A: Buffer, p: { hAcked: number; hDelivered: number; hSent: number; hRead: number; aAcked: number; aDelivered: number; aSent: number; aRead: number }, fds: { hostFd: number; appFd: number }) {
  const gw = {
    hostFd: fds.hostFd,
    inPos: BigInt(p.aDelivered),
    outAcked: BigInt(p.hAcked),
    outSent: BigInt(p.hSent),
    outPos: BigInt(p.hRead),
    tail: Buffer.from(H.subarray(p.hAcked, p.hRead)),
    cause: 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED',
  };
  const cl: SuspendedSlot = {
    type: 'rdma',
    rdma: 1,
    event: 'suspended',
    slot: 0,
    code: 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED',
    fd: fds.appFd,
    inPos: BigInt(p.hDelivered),
    outAcked: BigInt(p.aAcked),
    outSent: BigInt(p.aSent),
    outPos: BigInt(p.aRead),
    fdEof: false,
    peerEof: false,
    wrShut: false,
    tail: Buffer.from(A.subarray(p.aAcked, p.aRead)),
  };
  return { gw, cl };
}

test('wire: the resume request and reply round trip; malformed requests and an old gateway\'s 8-byte refusal are recognised', (t) => {
  const tok = resumeToken(randomBytes(16));
  t.is(tok.length, 16);
  t.notDeepEqual(tok, resumeToken(randomBytes(16)));
  const req = encodeResumeRequest(tok, 123_456_789_012n);
  t.true(isResumeRequest(req));
  t.deepEqual(parseResumeRequest(req.subarray(0, 20)), { state: 'need-more' });
  const ok = parseResumeRequest(Buffer.concat([req, Buffer.from('xy')]));
  t.like(ok, { state: 'ok', position: 123_456_789_012n });
  t.deepEqual(ok.state === 'ok' ? [ok.token, ok.rest.toString()] : [], [tok, 'xy']);
  const flagged = Buffer.from(req);
  flagged[5] = 1;
  t.like(parseResumeRequest(flagged), { state: 'bad', status: AttachStatus.BAD_PREAMBLE });
  const longTok = Buffer.from(req);
  longTok.writeUInt16BE(32, 8);
  t.like(parseResumeRequest(longTok), { state: 'bad' });
  t.like(parseResumeReply(encodeResumeReply(AttachStatus.OK, 77n), false), { state: 'ok', status: AttachStatus.OK, position: 77n });
  t.deepEqual(parseResumeReply(encodeResumeReply(AttachStatus.OK, 77n).subarray(0, 12), false), { state: 'need-more' });
  // An old gateway answers the plain 8-byte reply with VERSION_MISMATCH and closes.
  const old = Buffer.from('SGA1\x02\0\0\0', 'latin1');
  t.like(parseResumeReply(old, true), { state: 'ok', status: AttachStatus.VERSION_MISMATCH });
  t.like(parseResumeReply(Buffer.from('XXXX'), false), { state: 'bad' });
});

test('resume both ways: each side re-sends from the other\'s position; SHA-256 of every stream matches, no byte lost or doubled, clean end', async (t) => {
  const h = await harness(t);
  const H = randomBytes(3 << 20);
  const A = randomBytes(2 << 20);
  const host = await tcpPair();
  const [appFd, appJsFd] = native.socketpair();
  const app = new Socket({ fd: appJsFd, allowHalfOpen: true, readable: true, writable: true } as ConstructorParameters<typeof Socket>[0]);
  // Positions as a failure leaves them: acked <= delivered <= sent <= read, in both directions.
  const p = { hAcked: 300 * KIB, hDelivered: 400 * KIB, hSent: 500 * KIB, hRead: 600 * KIB, aAcked: 200 * KIB, aDelivered: 250 * KIB, aSent: 650 * KIB, aRead: 700 * KIB };
  const { gw, cl } = cut(H, A, p, { hostFd: host.nearFd, appFd });
  const token = resumeToken(randomBytes(16));
  const o = observed();
  h.book.track(token, o.r);
  t.true(h.book.suspend(token, gw));

  const hostGot = collect(host.far);
  const appGot = collect(app);
  const link = await resumeOnDataPort({ host: '127.0.0.1', port: h.port, token }, cl, { pump: h.pump, native, timeoutMs: 5_000 });
  const moved = await o.movedP;
  t.deepEqual(o.seen.moved, ['ERR_SOCKGATE_RDMA_DEVICE_REMOVED']);
  // The rest of each stream comes from its source after the move.
  host.far.end(H.subarray(p.hRead));
  app.end(A.subarray(p.aRead));
  const [hg, ag] = await Promise.all([hostGot, appGot]);
  t.is(hg.error, undefined);
  t.is(ag.error, undefined);
  // The host had A up to aDelivered over "RDMA"; the app had H up to hDelivered.
  t.is(sha(Buffer.concat([A.subarray(0, p.aDelivered), hg.data])), sha(A), 'client -> host intact');
  t.is(hg.data.length, A.length - p.aDelivered);
  t.is(sha(Buffer.concat([H.subarray(0, p.hDelivered), ag.data])), sha(H), 'host -> client intact');
  t.is(ag.data.length, H.length - p.hDelivered);
  t.like(await moved.ended, { reason: 'ok' });
  t.like(await link.ended, { reason: 'ok' });
  // Progress counts payload only: the host got A from aDelivered on; from the host, everything past what RDMA had posted.
  t.is(o.seen.progressToHost, A.length - p.aDelivered);
  t.is(o.seen.progressFromHost, H.length - p.hDelivered - (p.hSent - p.hDelivered));
  t.deepEqual(h.records, ['resumed:ERR_SOCKGATE_RDMA_DEVICE_REMOVED']);
  app.destroy();
  host.close();
});

test('a resume that arrives before the gateway saw the fault fails its connection, waits for the suspension, then proceeds', async (t) => {
  const h = await harness(t);
  const H = randomBytes(256 * KIB);
  const A = randomBytes(256 * KIB);
  const host = await tcpPair();
  const [appFd, appJsFd] = native.socketpair();
  const app = new Socket({ fd: appJsFd, allowHalfOpen: true, readable: true, writable: true } as ConstructorParameters<typeof Socket>[0]);
  const p = { hAcked: 0, hDelivered: 10 * KIB, hSent: 20 * KIB, hRead: 20 * KIB, aAcked: 5 * KIB, aDelivered: 5 * KIB, aSent: 5 * KIB, aRead: 30 * KIB };
  const { gw, cl } = cut(H, A, p, { hostFd: host.nearFd, appFd });
  const token = resumeToken(randomBytes(16));
  let suspend!: () => void;
  const o = observed({ failConnection: () => suspend() });
  suspend = () => setTimeout(() => h.book.suspend(token, gw), 50);
  h.book.track(token, o.r);
  const hostGot = collect(host.far);
  const appGot = collect(app);
  await resumeOnDataPort({ host: '127.0.0.1', port: h.port, token }, cl, { pump: h.pump, native, timeoutMs: 5_000 });
  await o.movedP;
  host.far.end(H.subarray(p.hRead));
  app.end(A.subarray(p.aRead));
  const [hg, ag] = await Promise.all([hostGot, appGot]);
  t.is(sha(Buffer.concat([A.subarray(0, p.aDelivered), hg.data])), sha(A));
  t.is(sha(Buffer.concat([H.subarray(0, p.hDelivered), ag.data])), sha(H));
  app.destroy();
  host.close();
});

test('refusals: a position outside what the gateway holds, an unknown token; the descriptor stays the caller\'s and the suspension waits on', async (t) => {
  const h = await harness(t);
  const H = randomBytes(64 * KIB);
  const A = randomBytes(64 * KIB);
  const host = await tcpPair();
  const [appFd, appJsFd] = native.socketpair();
  const p = { hAcked: 10 * KIB, hDelivered: 12 * KIB, hSent: 14 * KIB, hRead: 16 * KIB, aAcked: 1 * KIB, aDelivered: 2 * KIB, aSent: 3 * KIB, aRead: 4 * KIB };
  const { gw, cl } = cut(H, A, p, { hostFd: host.nearFd, appFd });
  const token = resumeToken(randomBytes(16));
  const o = observed();
  h.book.track(token, o.r);
  h.book.suspend(token, gw);
  // The client claims it consumed less than it had acknowledged: bytes would be doubled.
  const tooEarly = { ...cl, inPos: BigInt(p.hAcked - 1) };
  await t.throwsAsync(resumeOnDataPort({ host: '127.0.0.1', port: h.port, token }, tooEarly, { pump: h.pump, native, timeoutMs: 5_000 }), { message: new RegExp(`refused the resume \\(${AttachStatus[RESUME_BAD_POSITION]}\\)`) });
  await t.throwsAsync(resumeOnDataPort({ host: '127.0.0.1', port: h.port, token: resumeToken(randomBytes(16)) }, cl, { pump: h.pump, native, timeoutMs: 5_000 }), { message: /WRONG_TOKEN/ });
  t.deepEqual(o.seen.moved, []);
  t.deepEqual(h.records, ['refused:BAD_PREAMBLE', 'refused:WRONG_TOKEN']);
  // The right position still resumes afterwards (a refusal consumed nothing).
  const link = await resumeOnDataPort({ host: '127.0.0.1', port: h.port, token }, cl, { pump: h.pump, native, timeoutMs: 5_000 });
  await o.movedP;
  await link.close({ reset: true });
  native.closeFd(appJsFd);
  host.close();
});

test('a suspended socket nobody resumes ends within resume_ms with its connection\'s error; the host peer sees a reset, not a clean end', async (t) => {
  const h = await harness(t, 300);
  const host = await tcpPair();
  const token = resumeToken(randomBytes(16));
  const o = observed();
  h.book.track(token, o.r);
  const hostGot = collect(host.far);
  const started = Date.now();
  h.book.suspend(token, { hostFd: host.nearFd, inPos: 0n, outAcked: 0n, outSent: 0n, outPos: 0n, tail: Buffer.alloc(0), cause: 'ERR_SOCKGATE_RDMA_TIMEOUT' });
  const end = await o.expiredP;
  t.deepEqual(end, { reason: 'error', errno: 0, code: 'ERR_SOCKGATE_RDMA_TIMEOUT' });
  t.true(Date.now() - started < 5_000, 'ended within the bound (plus scheduling slack)');
  t.is((await hostGot).error, 'ECONNRESET');
  t.deepEqual(h.records, ['expired:ERR_SOCKGATE_RDMA_TIMEOUT']);
  // Too late now: the token is gone.
  const [appFd, appJsFd] = native.socketpair();
  const { cl } = cut(Buffer.alloc(0), Buffer.alloc(0), { hAcked: 0, hDelivered: 0, hSent: 0, hRead: 0, aAcked: 0, aDelivered: 0, aSent: 0, aRead: 0 }, { hostFd: -1, appFd });
  await t.throwsAsync(resumeOnDataPort({ host: '127.0.0.1', port: h.port, token }, cl, { pump: h.pump, native, timeoutMs: 5_000 }), { message: /WRONG_TOKEN/ });
  native.closeFd(appFd);
  native.closeFd(appJsFd);
  host.close();
});

test('gateways: without resume_ms the data port answers a resume VERSION_MISMATCH (as an old gateway does); with it, an unknown token WRONG_TOKEN', async (t) => {
  const [appFd, appJsFd] = native.socketpair();
  const { cl } = cut(Buffer.alloc(0), Buffer.alloc(0), { hAcked: 0, hDelivered: 0, hSent: 0, hRead: 0, aAcked: 0, aDelivered: 0, aSent: 0, aRead: 0 }, { hostFd: -1, appFd });
  const token = resumeToken(randomBytes(16));
  const pump = new Pump();
  t.teardown(() => {
    native.closeFd(appFd);
    native.closeFd(appJsFd);
    pump.close();
  });
  for (const [resumeMs, want] of [
    [0, /VERSION_MISMATCH/],
    [5000, /WRONG_TOKEN/],
  ] as const) {
    const gw = await startGateway({ transports: { rdma: { resume_ms: resumeMs } } });
    try {
      const port = Number(gw.gateway.addresses.data.split(':').pop());
      await t.throwsAsync(resumeOnDataPort({ host: '127.0.0.1', port, token }, cl, { pump, native, timeoutMs: 5_000 }), { message: want });
    } finally {
      await gw.stop();
    }
  }
});

test('sdk: a data port that never answers fails the resume within its bound; the descriptor stays the caller\'s', async (t) => {
  const silent = createServer((s) => s.on('data', () => {}));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const pump = new Pump();
  const [appFd, appJsFd] = native.socketpair();
  t.teardown(() => {
    silent.close();
    pump.close();
  });
  const { cl } = cut(Buffer.alloc(0), Buffer.alloc(0), { hAcked: 0, hDelivered: 0, hSent: 0, hRead: 0, aAcked: 0, aDelivered: 0, aSent: 0, aRead: 0 }, { hostFd: -1, appFd });
  const started = Date.now();
  await t.throwsAsync(resumeOnDataPort({ host: '127.0.0.1', port: (silent.address() as { port: number }).port, token: resumeToken(randomBytes(16)) }, cl, { pump, native, timeoutMs: 300 }), {
    message: /no resume reply within 300 ms/,
  });
  t.true(Date.now() - started < 5_000);
  // Still open and ours: closing it succeeds (EBADF would throw).
  t.notThrows(() => native.closeFd(appFd));
  native.closeFd(appJsFd);
});

test('status: the TRANSPORT column shows a moved socket as tcp<-rdma (causes in --json)', (t) => {
  const base = { socketId: 's1', identity: 'anon', kind: SocketKind.SOCKET_KIND_STREAM, state: SocketState.SOCKET_STATE_OPEN, localUri: 'tcp://a:1', remoteUri: 'tcp://b:2', fallbackReason: 0, fallbacks: [], fallbacksOmitted: 0, bytesIn: 0, bytesOut: 0, bufferedBytes: 0, createdAtMs: 0, peer: undefined, hostSocket: undefined };
  const moved = { ...base, transport: TransportKind.TRANSPORT_KIND_TCP, moves: [{ from: TransportKind.TRANSPORT_KIND_RDMA, to: TransportKind.TRANSPORT_KIND_TCP, cause: 'ERR_SOCKGATE_RDMA_DEVICE_REMOVED', atMs: 1 }] };
  const plain = { ...base, socketId: 's2', transport: TransportKind.TRANSPORT_KIND_RDMA, moves: [] };
  const table = formatStatusTable([moved, plain] as unknown as SocketInfo[], 0);
  t.regex(table.split('\n')[1]!, /\btcp<-rdma\b/);
  t.regex(table.split('\n')[2]!, /\brdma\b/);
  t.notRegex(table.split('\n')[2]!, /<-/);
});
