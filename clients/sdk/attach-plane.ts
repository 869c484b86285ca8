/**
 * Attaching a socket's data channel on the two planes that need no session:
 * the tcp data port (a connection, the preamble with the attach token, a
 * one-byte-status reply; proto/wire.ts) and the grpc plane (a Data stream whose
 * first frame is the token). The tcp attach can start before the Connect
 * returns (parallel open, tcp-parallel.ts): dialing and answering are apart.
 */
import { connect as netConnect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { DataRequest, DataResponse } from '../../proto/gen/sockgate/v1/sockgate.js';
import { AbortedError, AttachFailedError, SockgateError, fromServiceError } from '../../proto/errors.js';
import { AttachStatus, DatagramFramer, encodePreamble, MessageChannel, parseReply, payloadCodec, REPLY_BYTES, type FrameCodec } from '../../proto/wire.js';
import { dialVsock } from './vsock.js';
import { dialSmc, markTcpDial, type SmcDial } from './smc-dial.js';
// How long an attach (data connection + preamble reply) may take: the one default both ends know.
import { ATTACH_TIMEOUT_MS } from '../../proto/attach-limits.js';

/** Per-direction buffering of SDK-side channels. */
export const CHANNEL_HIGH_WATERMARK = 1 << 20;

/** Client-side frame mapping of the grpc data plane. */
const CLIENT_CODEC: FrameCodec<DataResponse, DataRequest> = payloadCodec<DataResponse, DataRequest>();

export type DataAddress = { host: string; port: number } | { vsock: { cid: number; port: number } };

/** A tcp-plane data connection dialed and its preamble sent; `reply` settles on the gateway's answer. */
export interface TcpAttach {
  readonly reply: Promise<Duplex>;
  /** Give up (the connection is destroyed; `reply` rejects with `err`). */
  abort(err: Error): void;
}

/**
 * Dial the data port and send the preamble carrying `token` (an attach token,
 * or a parallel-open nonce). `smc` 'prefer' dials it as kernel SMC where this
 * host can (smc-dial.ts; not over vsock).
 */
export function startTcpAttach(addr: DataAddress, token: Uint8Array, mode: 'stream' | 'datagram', signal?: AbortSignal, smc: SmcDial = 'off'): TcpAttach {
  const where = 'vsock' in addr ? `vsock:${addr.vsock.cid}:${addr.vsock.port}` : `${addr.host}:${addr.port}`;
  const dialTcp = (a: { host: string; port: number }): Socket =>
    netConnect({ host: a.host, port: a.port, allowHalfOpen: true, noDelay: true, highWaterMark: CHANNEL_HIGH_WATERMARK } as unknown as Parameters<typeof netConnect>[0]);
  let sock: Socket | undefined;
  /** Set by fail(): a socket an SMC connect delivers afterwards is destroyed. */
  let failed = false;
  let fail!: (err: Error) => void;
  const reply = new Promise<Duplex>((resolve, reject) => {
    let got: Buffer = Buffer.alloc(0);
    fail = (err: Error) => {
      failed = true;
      cleanup();
      sock?.destroy();
      reject(err instanceof SockgateError ? err : new AttachFailedError(`tcp attach to ${where} failed: ${err.message}`, { cause: err }));
    };
    const onAbort = () => fail(new AbortedError('attach aborted'));
    const timer = setTimeout(() => fail(new AttachFailedError(`tcp attach to ${where}: no reply within ${ATTACH_TIMEOUT_MS} ms`)), ATTACH_TIMEOUT_MS);
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock?.removeListener('data', onData);
      sock?.removeListener('error', fail);
      sock?.removeListener('end', onEnd);
    };
    const onEnd = () => fail(new AttachFailedError(`tcp attach to ${where}: gateway closed the connection`));
    const onData = (chunk: Buffer) => {
      got = got.length ? Buffer.concat([got, chunk]) : chunk;
      if (got.length < REPLY_BYTES) return;
      const st = parseReply(got);
      if (st === undefined) return fail(new AttachFailedError('tcp attach: malformed reply from the gateway'));
      if (st !== AttachStatus.OK) return fail(new AttachFailedError(`tcp attach rejected by the gateway: ${AttachStatus[st] ?? st}`));
      cleanup();
      sock!.pause();
      if (got.length > REPLY_BYTES) sock!.unshift(got.subarray(REPLY_BYTES));
      resolve(mode === 'stream' ? sock! : new DatagramFramer(sock!));
    };
    const begin = (s: Socket) => {
      // Aborted or timed out while an SMC connect was under way.
      if (failed) return void s.destroy();
      sock = s;
      s.on('data', onData);
      s.on('error', fail);
      s.on('end', onEnd);
      // An SMC socket comes paused (native/smc.ts); nothing arrives before the preamble is answered.
      s.resume();
      s.write(encodePreamble(token));
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    if ('vsock' in addr) return begin(dialVsock(addr.vsock, { timeoutMs: ATTACH_TIMEOUT_MS }));
    if (smc === 'off') {
      const s = dialTcp(addr);
      markTcpDial(s, '');
      return begin(s);
    }
    dialSmc(addr.host, addr.port, ATTACH_TIMEOUT_MS, CHANNEL_HIGH_WATERMARK, () => dialTcp(addr)).then(begin, fail);
  });
  return { reply, abort: (err) => fail(err) };
}

/** The tcp attach in one step (the token came with the Connect's answer). */
export function attachTcp(addr: DataAddress, token: Uint8Array, mode: 'stream' | 'datagram', signal?: AbortSignal, smc: SmcDial = 'off'): Promise<Duplex> {
  return startTcpAttach(addr, token, mode, signal, smc).reply;
}

/** Open a Data stream (`open`), send the token, resolve with the channel on the gateway's `attached` frame. */
export function attachGrpc(open: () => ClientDuplexStream<DataRequest, DataResponse>, token: Uint8Array, mode: 'stream' | 'datagram', signal?: AbortSignal): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const call = open();
    const fail = (err: Error) => {
      cleanup();
      call.cancel();
      reject(err instanceof SockgateError ? err : fromServiceError(err));
    };
    const onAbort = () => fail(new AbortedError('attach aborted'));
    const timer = setTimeout(() => fail(new AttachFailedError(`grpc attach: no reply within ${ATTACH_TIMEOUT_MS} ms`)), ATTACH_TIMEOUT_MS);
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      call.removeListener('data', onFirst);
      call.removeListener('error', fail);
    };
    const onFirst = (msg: DataResponse) => {
      if (msg.frame?.$case !== 'attached') return fail(new AttachFailedError('grpc attach: unexpected first frame from the gateway'));
      cleanup();
      call.pause();
      // Keep an error listener: the channel re-emits through its own stream.
      call.on('error', () => {});
      resolve(new MessageChannel(call as unknown as Duplex, CLIENT_CODEC, mode, CHANNEL_HIGH_WATERMARK, () => call.cancel()));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    call.on('data', onFirst);
    call.on('error', fail);
    call.write({ frame: { $case: 'attachToken', attachToken: Buffer.from(token) } });
  });
}
