/**
 * The vsock bridge: how the SDK reaches a gateway over AF_VSOCK (a VM guest
 * talking to its host, CID 2).
 *
 * Node cannot own an AF_VSOCK socket (libuv wraps only INET, INET6 and Unix
 * stream descriptors) and grpc-js cannot dial one, so the native addon
 * connects the vsock socket and a splice link on a process-wide native pump
 * relays it to something Node can use — the payload never enters JS:
 *
 * - control plane: a private per-process Unix listener (in a fresh 0700 temp
 *   dir) per vsock target; each connection grpc-js makes to `unix:<path>` is
 *   relayed to vsock CID:PORT (the accepted Unix fd and the vsock fd, spliced);
 * - tcp data plane: `dialVsock()` returns a `net.Socket` over one end of a
 *   Unix socketpair at once; the other end is spliced to the vsock connection
 *   once it is up (the gateway's TcpAttach.vsock_port on the same CID).
 *
 * `forwardVsock()` is the other direction: a vsock listener whose connections
 * are relayed to a Unix socket (what a VMM does for guest connections in the
 * Firecracker form of vsock; a gateway on a vhost-vsock host can front its own
 * Unix sockets with it).
 *
 * The native addon is optional for the SDK: without it (or without AF_VSOCK
 * in the kernel or the build) `vsockSupport.available` is false and a vsock
 * target fails with VsockUnavailableError naming the reason.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer, Socket, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Pump, RawVsockListener, SpliceEnd } from '../../native/index.js';
import {
  ConnectRefusedError,
  ConnectTimeoutError,
  ConnectionResetError,
  HostUnreachableError,
  InvalidArgumentError,
  NativeError,
  SockgateError,
  VsockUnavailableError,
} from '../../proto/errors.js';
import { tracer } from '../../native/trace.js';
import { native, nativeError, type NativeModule } from './native-optional.js';

const trace = tracer('vsock');

/** How long a vsock connect may take (the kernel's own default is 2 s; TCG guests are slow). */
export const VSOCK_CONNECT_TIMEOUT_MS = 10_000;
/** The host's context id (VMADDR_CID_HOST): where a guest reaches its host. */
export const VSOCK_CID_HOST = 2;
/** This machine (VMADDR_CID_LOCAL): reachable with the vsock_loopback transport. */
export const VSOCK_CID_LOCAL = 1;
/** Largest usable port; 0xFFFFFFFF is VMADDR_PORT_ANY. */
const VSOCK_PORT_MAX = 0xfffffffe;
/** Backlog of the private Unix listener and of forwardVsock()'s vsock listener. */
const BACKLOG = 128;

/**
 * Whether this process can reach a gateway over AF_VSOCK, and why not.
 * `SOCKGATE_VSOCK=off` in the environment turns it off (read at each use):
 * for hosts whose vsock leads somewhere it must not go, and for tests.
 */
export const vsockSupport: { readonly available: boolean; readonly reason: string } = {
  get available(): boolean {
    return process.env['SOCKGATE_VSOCK'] !== 'off' && native !== undefined && native.vsock.available;
  },
  get reason(): string {
    if (process.env['SOCKGATE_VSOCK'] === 'off') return 'turned off by SOCKGATE_VSOCK=off';
    if (native === undefined) return `the native addon did not load: ${nativeError}`;
    return native.vsock.available ? '' : native.vsock.reason;
  },
};

export { VsockUnavailableError };

/** A vsock address. */
export interface VsockAddress {
  readonly cid: number;
  readonly port: number;
}

/**
 * Parse a `vsock:CID:PORT` gateway target (`vsock:PORT` means CID 2, the
 * host). Returns undefined for other targets; throws InvalidArgumentError for
 * a malformed vsock one.
 */
export function parseVsockTarget(target: string): VsockAddress | undefined {
  if (!target.startsWith('vsock:')) return undefined;
  const parts = target.slice('vsock:'.length).split(':');
  const bad = (why: string): never => {
    throw new InvalidArgumentError(`gateway target ${JSON.stringify(target)}: ${why}; expected vsock:<cid>:<port> (e.g. vsock:2:7070)`);
  };
  if (parts.length > 2 || parts.some((p) => !/^[0-9]{1,10}$/.test(p))) bad('not a vsock address');
  const cid = parts.length === 2 ? Number(parts[0]) : VSOCK_CID_HOST;
  const port = Number(parts[parts.length - 1]);
  if (cid > 0xffffffff) bad('the CID is 0..4294967295');
  if (port < 1 || port > VSOCK_PORT_MAX) bad(`the port is 1..${VSOCK_PORT_MAX}`);
  return { cid, port };
}

/** `vsock:CID:PORT`. */
export function formatVsock(a: VsockAddress): string {
  return `vsock:${a.cid}:${a.port}`;
}

function requireNative(what: string): NativeModule {
  if (!native || !vsockSupport.available) throw new VsockUnavailableError(what, vsockSupport.reason);
  return native;
}

/** A native vsock error (errno code) as a sockgate error. */
export function vsockError(err: unknown, a: VsockAddress): Error {
  if (err instanceof SockgateError) return err;
  const code = (err as { code?: string })?.code;
  const what = `${formatVsock(a)}`;
  const opts = { cause: err };
  switch (code) {
    case 'ECONNREFUSED':
    case 'ECONNRESET': // vsock transports answer a connect to a closed port with a reset
      return new ConnectRefusedError(`${what}: connection refused (nothing listens on vsock port ${a.port} of CID ${a.cid})`, opts);
    case 'ETIMEDOUT':
      return new ConnectTimeoutError(`${what}: connect timed out (no answer from CID ${a.cid})`, opts);
    case 'ENODEV':
    case 'ENETUNREACH':
    case 'EHOSTUNREACH':
    case 'EADDRNOTAVAIL':
      return new HostUnreachableError(`${what}: no vsock transport reaches CID ${a.cid} (${code})`, opts);
    case 'EAFNOSUPPORT':
      return new VsockUnavailableError(what, 'the kernel has no AF_VSOCK (socket: EAFNOSUPPORT)');
    default:
      return new NativeError(`${what}: ${(err as Error)?.message ?? String(err)}`, opts);
  }
}

// ---- the process-wide pump -------------------------------------------------------

let pump: Pump | undefined;

/** One native I/O thread for every vsock relay of this process; it keeps the process alive only while relays run. */
function relayPump(n: NativeModule): Pump {
  pump ??= new n.Pump(() => {}, { unrefWhenIdle: true });
  return pump;
}

/**
 * The descriptor of a Node socket, taken over: dup()ed, then the Node socket
 * is destroyed (its fd closes; the dup keeps the connection). The socket must
 * not have read anything yet (paused before libuv started reading).
 */
function takeFd(n: NativeModule, sock: Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new NativeError('the Unix socket has no descriptor (closed)');
  const dup = n.dupFd(fd);
  sock.destroy();
  return dup;
}

/**
 * Splice two stream descriptors on the relay pump. The link owns both from
 * here: if it cannot start, both are closed and the promise rejects.
 */
function relay(n: NativeModule, unixFd: number, vsockFd: number, what: string): Promise<SpliceEnd> {
  let link;
  try {
    link = relayPump(n).splice(unixFd, vsockFd);
  } catch (err) {
    n.closeFd(unixFd);
    n.closeFd(vsockFd);
    return Promise.reject(err);
  }
  return link.ended.then((e) => {
    trace(`${what}: relay ended (${e.reason}${e.code ? ` ${e.code}` : ''}), ${e.totalToHost} bytes to vsock, ${e.totalToClient} from vsock`);
    return e;
  });
}

/** Connect AF_VSOCK off the JS thread; resolves with the fd (the caller owns it). */
async function connectFd(n: NativeModule, a: VsockAddress, timeoutMs: number): Promise<number> {
  try {
    return await n.vsock.connect(a.cid, a.port, timeoutMs);
  } catch (err) {
    throw vsockError(err, a);
  }
}

export interface DialVsockOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * A `net.Socket` relayed to vsock `a`, returned at once (like net.connect):
 * writes before the vsock connection is up wait in the socketpair; a failed
 * connect destroys the socket with the typed error; 'connect' is emitted once
 * it is up. Half-close passes through both ways; an error on the vsock side
 * destroys the socket with ConnectionResetError.
 */
export function dialVsock(a: VsockAddress, opts: DialVsockOptions = {}): Socket {
  const n = requireNative(`dial ${formatVsock(a)}`);
  const [mine, theirs] = n.socketpair();
  let sock: Socket;
  try {
    sock = new Socket({ fd: mine, readable: true, writable: true, allowHalfOpen: true });
  } catch (err) {
    n.closeFd(mine);
    n.closeFd(theirs);
    throw err;
  }
  let theirsOpen = true;
  const dropTheirs = () => {
    if (theirsOpen) n.closeFd(theirs);
    theirsOpen = false;
  };
  const onAbort = () => sock.destroy(new SockgateError(`dial ${formatVsock(a)} aborted`));
  if (opts.signal?.aborted) {
    dropTheirs();
    process.nextTick(onAbort);
    return sock;
  }
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  sock.once('close', () => {
    opts.signal?.removeEventListener('abort', onAbort);
    dropTheirs(); // before the link took it
  });
  connectFd(n, a, opts.timeoutMs ?? VSOCK_CONNECT_TIMEOUT_MS).then(
    (fd) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (!theirsOpen || sock.destroyed) {
        n.closeFd(fd);
        return;
      }
      theirsOpen = false; // the link owns it now
      relay(n, theirs, fd, `dial ${formatVsock(a)}`).then(
        (end) => {
          if (end.reason === 'error' && !sock.destroyed) sock.destroy(new ConnectionResetError(`${formatVsock(a)}: the vsock connection failed (${end.code ?? 'error'})`));
        },
        (err: Error) => sock.destroy(new NativeError(`${formatVsock(a)}: the relay did not start: ${err.message}`, { cause: err })),
      );
      trace(`dial ${formatVsock(a)}: connected`);
      sock.emit('connect');
    },
    (err: Error) => {
      trace(`dial ${formatVsock(a)}: ${err.message}`);
      sock.destroy(err);
    },
  );
  return sock;
}

// ---- the control-plane bridge ----------------------------------------------------

/** A private Unix socket whose connections are relayed to one vsock address. */
export interface VsockBridge {
  readonly vsock: VsockAddress;
  /** The Unix socket path (in a private 0700 directory); dial it as `unix:<path>`. */
  readonly path: string;
  /** The last vsock connect failure, if the latest attempt failed (for error messages). */
  readonly lastError: Error | undefined;
  /** Release one reference; the listener closes with the last. */
  close(): void;
}

interface SharedBridge {
  path: string;
  dir: string;
  server: Server;
  refs: number;
  lastError: Error | undefined;
}

/** Bridges by `vsock:CID:PORT`: one listener per target per process, shared by every Gateway object. */
const bridges = new Map<string, SharedBridge>();

/**
 * The Unix-socket bridge to vsock `a` (started on first use, shared, counted).
 * Each accepted connection is spliced natively to a new vsock connection.
 */
export async function openVsockBridge(a: VsockAddress, timeoutMs = VSOCK_CONNECT_TIMEOUT_MS): Promise<VsockBridge> {
  const key = formatVsock(a);
  const n = requireNative(`gateway ${key}`);
  let b = bridges.get(key);
  if (!b) {
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-vsock-')); // mode 0700: only this user reaches the bridge
    const path = join(dir, 'gateway.sock');
    // Paused: nothing is read in JS; the descriptor is handed to the splice link.
    const server = createServer({ pauseOnConnect: true, allowHalfOpen: true });
    const shared: SharedBridge = { path, dir, server, refs: 0, lastError: undefined };
    server.on('connection', (conn: Socket) => {
      let unixFd: number;
      try {
        unixFd = takeFd(n, conn);
      } catch (err) {
        trace(`${key}: ${(err as Error).message}`);
        conn.destroy();
        return;
      }
      connectFd(n, a, timeoutMs).then(
        (fd) => {
          shared.lastError = undefined;
          relay(n, unixFd, fd, key).catch((err: Error) => trace(`${key}: relay did not start: ${err.message}`));
        },
        (err: Error) => {
          shared.lastError = err;
          trace(`${key}: ${err.message}`);
          n.closeFd(unixFd); // grpc-js sees the connection close and retries with backoff
        },
      );
    });
    server.on('error', (err) => trace(`${key}: bridge listener error: ${err.message}`));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path, backlog: BACKLOG }, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    server.unref();
    b = shared;
    bridges.set(key, b);
    trace(`${key}: bridge listening on ${path}`);
  }
  const sb = b;
  sb.refs++;
  let closed = false;
  return {
    vsock: a,
    path: sb.path,
    get lastError() {
      return sb.lastError;
    },
    close() {
      if (closed) return;
      closed = true;
      if (--sb.refs > 0) return;
      bridges.delete(key);
      sb.server.close();
      rmSync(sb.dir, { recursive: true, force: true });
    },
  };
}

// ---- vsock -> Unix forwarding ------------------------------------------------------

/** A vsock listener whose connections are relayed to a Unix socket. */
export interface VsockForwarder {
  /** The vsock port listened on. */
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  close(): void;
}

/**
 * Listen on vsock `port` (CID `cid`, default any) and relay each connection to
 * the Unix socket `path`, natively (the paths a VMM gives guest connections
 * in the Firecracker form of vsock are exactly such sockets).
 */
export function forwardVsock(port: number, path: string, opts: { cid?: number; onError?: (err: Error) => void } = {}): VsockForwarder {
  const n = requireNative(`listen on vsock port ${port}`);
  const cid = opts.cid ?? n.vsock.CID_ANY;
  const onError = opts.onError ?? ((err: Error) => trace(`forward vsock port ${port}: ${err.message}`));
  let accepted = 0;
  let listener: RawVsockListener;
  try {
    listener = new n.vsock.Listener(cid, port, BACKLOG, (err, fd, peerCid, peerPort) => {
      if (err || fd === undefined) return onError(vsockError(err, { cid, port }));
      if (listener.closed) return n.closeFd(fd);
      accepted++;
      const what = `vsock ${peerCid}:${peerPort} -> ${port} -> unix:${path}`;
      const conn = netConnect({ path, allowHalfOpen: true });
      conn.pause(); // no reads in JS: the descriptor goes to the splice link
      let fdOpen = true;
      conn.on('error', (e: Error) => {
        if (fdOpen) n.closeFd(fd);
        fdOpen = false;
        onError(new NativeError(`${what}: ${e.message}`, { cause: e }));
      });
      conn.once('connect', () => {
        let unixFd: number;
        try {
          unixFd = takeFd(n, conn);
        } catch (e) {
          n.closeFd(fd);
          fdOpen = false;
          return onError(e as Error);
        }
        fdOpen = false; // the link owns it now
        relay(n, unixFd, fd, what).catch((e: Error) => onError(e));
      });
    });
  } catch (err) {
    throw vsockError(err, { cid, port });
  }
  return {
    port: listener.port,
    get accepted() {
      return accepted;
    },
    close() {
      listener.close();
    },
  };
}
