/**
 * The proxy's local side: listening on a local endpoint (what apps connect
 * to) and dialing one (where a reverse forward delivers), for TCP, Unix
 * sockets and — dial only — a guest's vsock port through the VMM's Unix socket.
 */
import { once } from 'node:events';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { ConnectTimeoutError, InvalidArgumentError, fromSystemError } from '../../proto/errors.js';
import { removeStaleSocket } from '../../native/unix-socket-file.js';
import { formatEndpoint, joinHostPort, type LocalEndpoint } from './address.js';
import { dialVsockUds } from './vsock-uds.js';

/** Per-direction socket buffering of the proxy's local sockets (matches the SDK's data channel). */
export const LOCAL_HIGH_WATERMARK = 1 << 20;

/**
 * Listen on `ep` (TCP or Unix socket). Connections arrive paused, with
 * half-close enabled, and go to `onConnection`. A Unix socket file left by an
 * earlier run is replaced.
 */
export async function listenLocal(ep: LocalEndpoint, onConnection: (sock: Socket) => void, what: string): Promise<Server> {
  if (ep.kind === 'vsock-uds') throw new InvalidArgumentError(`${what}: cannot listen on ${formatEndpoint(ep)}: only host:port or unix:/path`);
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true, highWaterMark: LOCAL_HIGH_WATERMARK } as Parameters<typeof createServer>[0], onConnection);
  if (ep.kind === 'unix') removeStaleSocket(ep.path);
  try {
    server.listen(ep.kind === 'unix' ? { path: ep.path } : { host: ep.host, port: ep.port });
    await once(server, 'listening');
  } catch (err) {
    throw fromSystemError(err, `${what}: listen on ${formatEndpoint(ep)}`);
  }
  return server;
}

/** Where `server` listens, as `host:port` or `unix:/path`. */
export function boundAddress(server: Server): string {
  const a = server.address();
  if (a === null) return '';
  if (typeof a === 'string') return `unix:${a}`;
  return joinHostPort(a.address, a.port);
}

/**
 * Stop accepting on `server` (a Unix socket's file goes with it). Resolves at
 * once: net.Server's own 'close' waits for every connection, which the caller drains separately.
 */
export async function closeServer(server: Server): Promise<void> {
  if (server.listening) server.close();
}

/** How long dialing a local target may take. */
export const LOCAL_DIAL_TIMEOUT_MS = 10_000;

/** Dial `ep`; resolves with a connected, paused, half-close-enabled socket. */
export async function dialLocal(ep: LocalEndpoint, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Socket> {
  const timeoutMs = opts.timeoutMs ?? LOCAL_DIAL_TIMEOUT_MS;
  if (ep.kind === 'vsock-uds') {
    const { socket } = await dialVsockUds(ep.udsPath, ep.port, { timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) });
    return socket;
  }
  const what = `connect ${formatEndpoint(ep)}`;
  return new Promise((resolve, reject) => {
    const sock = netConnect({
      ...(ep.kind === 'unix' ? { path: ep.path } : { host: ep.host, port: ep.port }),
      allowHalfOpen: true,
      noDelay: true,
      highWaterMark: LOCAL_HIGH_WATERMARK,
    } as unknown as Parameters<typeof netConnect>[0]);
    const done = (err?: Error) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      sock.removeListener('error', onError);
      sock.removeListener('connect', onConnect);
      if (err) {
        sock.destroy();
        reject(err);
      } else {
        sock.pause();
        resolve(sock);
      }
    };
    const onError = (err: Error) => done(fromSystemError(err, what));
    const onConnect = () => done();
    const onAbort = () => done(new ConnectTimeoutError(`${what}: aborted`));
    const timer = setTimeout(() => done(new ConnectTimeoutError(`${what}: not connected within ${timeoutMs} ms`)), timeoutMs);
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('error', onError);
    sock.once('connect', onConnect);
  });
}
