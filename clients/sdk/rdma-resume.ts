/**
 * Live failover, the SDK's side (native/RDMA.md "Live failover"): a slot whose
 * RDMA connection failed comes back from the native side as its descriptor
 * (our end of the socket's socketpair, still open, the application's end
 * untouched), the agreed positions and the bytes the gateway has not
 * acknowledged. This dials the gateway's tcp data port with a resumable
 * attach (proto/resume-wire.ts), learns the gateway's position, and hands the
 * descriptor and the data connection to a splice link on the pump: the bytes
 * the gateway has not consumed go first, then both directions relay off the
 * JS thread. The application's socket object never sees the move.
 *
 * The unacknowledged tail passes through JS once (a Buffer from the native
 * event into the splice's prefix): at most one ring of the peer's per socket,
 * once per failover. Nothing else of the payload enters JS.
 */
import { connect, type Socket } from 'node:net';
import type { Pump, SpliceLink } from '../../native/index.js';
import type { RdmaEvent } from '../../native/pump-hub.js';
import { AttachStatus } from '../../proto/wire.js';
import { encodeResumeRequest, parseResumeReply } from '../../proto/resume-wire.js';
import { AttachFailedError } from '../../proto/errors.js';

export type SuspendedSlot = Extract<RdmaEvent, { event: 'suspended' }>;

export interface ResumeTarget {
  host: string;
  port: number;
  /** The slot's resume token (resumeToken() of the short attach token). */
  token: Buffer;
}

export interface ResumeOptions {
  pump: Pump;
  native: { dupFd(fd: number): number; closeFd(fd: number, reset?: boolean): void };
  /** The whole resume (dial, handshake) must finish within this. */
  timeoutMs: number;
  pipeBytes?: number;
  /** The gateway half-closed through the new path (a genuine EOF). */
  onPeerEof?(): void;
}

/**
 * Resume one suspended slot on the data port. Resolves with the splice link
 * that now carries the socket (it owns `s.fd` from then on); rejects, with
 * `s.fd` still the caller's, when the gateway refuses or does not answer in time.
 */
export async function resumeOnDataPort(t: ResumeTarget, s: SuspendedSlot, o: ResumeOptions): Promise<SpliceLink> {
  const sock = connect({ host: t.host, port: t.port, noDelay: true });
  let reply: Extract<ReturnType<typeof parseResumeReply>, { state: 'ok' }>;
  try {
    reply = await handshake(sock, encodeResumeRequest(t.token, s.inPos), o.timeoutMs);
  } catch (err) {
    sock.destroy();
    throw err;
  }
  const fail = (detail: string): never => {
    sock.destroy();
    throw new AttachFailedError(`rdma failover of slot ${s.slot}: ${detail}`);
  };
  if (reply.status !== AttachStatus.OK) fail(`the gateway refused the resume (${AttachStatus[reply.status] ?? reply.status})`);
  // The gateway consumed at least what it acknowledged and at most what we posted: anything else loses or doubles bytes.
  if (reply.position < s.outAcked || reply.position > s.outSent) fail(`the gateway's position ${reply.position} is outside [${s.outAcked}, ${s.outSent}]`);
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) fail('the data connection has no descriptor');
  const toApp: Buffer[] = reply.rest.length ? [Buffer.from(reply.rest)] : [];
  for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) toApp.push(b);
  const resend = s.tail.subarray(Number(reply.position - s.outAcked));
  const c = o.native.dupFd(fd!);
  sock.removeAllListeners();
  sock.on('error', () => {});
  sock.destroy();
  try {
    // "client" = the data connection to the gateway, "host" = our end of the application's socketpair.
    return o.pump.splice(c, s.fd, {
      toHostPrefix: toApp,
      toClientPrefix: [resend],
      ...(o.pipeBytes ? { pipeBytes: o.pipeBytes } : {}),
      ...(o.onPeerEof ? { onClientEof: o.onPeerEof } : {}),
    });
  } catch (err) {
    o.native.closeFd(c, true);
    throw err;
  }
}

/** Send the request, wait for the whole reply (paused after it: what follows is the gateway's stream). */
function handshake(sock: Socket, request: Buffer, timeoutMs: number): Promise<Extract<ReturnType<typeof parseResumeReply>, { state: 'ok' }>> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => done(new AttachFailedError(`rdma failover: no resume reply within ${timeoutMs} ms`)), timeoutMs);
    const done = (err: Error | undefined, r?: Extract<ReturnType<typeof parseResumeReply>, { state: 'ok' }>) => {
      clearTimeout(timer);
      sock.removeListener('data', onData);
      sock.removeListener('end', onEnd);
      sock.removeListener('error', onError);
      sock.on('error', () => {});
      if (err) reject(err);
      else resolve(r!);
    };
    const check = (ended: boolean) => {
      const p = parseResumeReply(got, ended);
      if (p.state === 'need-more') return;
      if (p.state === 'bad') return done(new AttachFailedError(`rdma failover: ${p.detail}`));
      sock.pause();
      done(undefined, p);
    };
    const onData = (b: Buffer) => {
      got = Buffer.concat([got, b]);
      check(false);
    };
    const onEnd = () => check(true);
    const onError = (err: Error) => done(new AttachFailedError(`rdma failover: the data port ${err.message}`, { cause: err }));
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('error', onError);
    sock.write(request);
  });
}
