/**
 * `gateway.link(socket, uri)`: join a caller's stream socket (a connected
 * `net.Socket`, or a raw stream fd) to a new gateway socket to `uri`, so that
 * the payload moves on the native I/O thread and JS only decides: it
 * connects and negotiates as `connect()` does, then hands both descriptors
 * to the addon and keeps counters (read on demand) and the end.
 *
 * - shm: the slot's rings are pumped to the caller's fd by the SDK's client
 *   pump (the mirror of the gateway's ring link; the doorbells are
 *   suppressed while either side is awake);
 * - tcp plane: splice(2) between the caller's fd and the data connection;
 * - grpc and rdma (and no addon, or `relay: 'js'`): the JS relay, and the
 *   handle says so (`native: false`, `relayReason`, an sdk trace line, and a
 *   process warning once when the addon is missing).
 *
 * Half-close passes through (FIN after the last byte), a reset on one side
 * is a reset on the other, `close()` drains (no more bytes from the caller;
 * the other direction runs to its end), `destroy()` aborts.
 */
import { Socket } from 'node:net';
import { ConnectionResetError, SockgateError, fromSystemError } from '../../proto/errors.js';
import { clientTransportEntry } from './client-transport.js';
import type { GatewayLink, LinkDeps, LinkEnded, OpenedChannel } from './link-types.js';

export type { GatewayLink, LinkDeps, LinkEnded, OpenedChannel } from './link-types.js';
import { tracer } from '../../native/trace.js';
import { takeFd, type TakenFd } from './fd-handover.js';
import type { ConnectOptions } from './call-options.js';
import { closedCleanly, splice as jsSplice } from './js-relay.js';
import { native, nativeError, type NativeModule } from './native-optional.js';
import type { SocketMeta } from './socket.js';

const trace = tracer('sdk');

/** SOCKGATE_LINK_RELAY=js: every link of this process takes the JS relay (to compare, or to work around a native problem). */
const RELAY_ENV = 'SOCKGATE_LINK_RELAY';

export interface LinkOptions extends ConnectOptions {
  /** 'auto' (default): native where the addon and the transport allow; 'js': the JS relay. */
  relay?: 'auto' | 'js';
  /** Bytes already read from the caller (e.g. while the upstream connected): they go to the target first. */
  prefix?: readonly Buffer[];
}


let warnedNoAddon = false;

/** The caller's descriptor: taken from its socket, or the raw fd (the link's from the call on). */
export function takeCaller(n: NativeModule, caller: Socket | number): TakenFd | undefined {
  if (typeof caller === 'number') return { fd: caller, prefix: [], give: () => {}, undo: () => {} };
  return takeFd(n, caller);
}

/** What keeps a channel off the native path ('' if its transport can link it). */
function blocker(opened: OpenedChannel): string {
  const entry = clientTransportEntry(opened.meta.transport);
  if (!entry?.linkNative || !entry.nativeBlocker) return `the ${opened.meta.transport} plane has no native client link`;
  return entry.nativeBlocker(opened);
}

export function systemError(code: string | undefined, errno: number, what: string): SockgateError {
  const c = code ?? `errno ${errno}`;
  return fromSystemError(Object.assign(new Error(`${what}: ${c}`), { code: c }), what);
}

/** Join `caller` to an attached channel; natively where possible (see the file comment). */
export function linkChannel(deps: LinkDeps, caller: Socket | number, opened: OpenedChannel, opts: LinkOptions = {}): GatewayLink {
  const { meta } = opened;
  const relay = opts.relay ?? (process.env[RELAY_ENV] === 'js' ? 'js' : 'auto');
  let why = relay === 'js' ? `the JS relay was asked for${opts.relay ? '' : ` (${RELAY_ENV}=js)`}` : native ? blocker(opened) : `the native addon did not load: ${nativeError}`;
  const linkNative = clientTransportEntry(meta.transport)?.linkNative;
  if (!why && native && linkNative) {
    try {
      const l = linkNative(deps, native, caller, opened, opts.prefix ?? []);
      trace(`link ${meta.socketId}: native ${meta.transport} link`);
      return l;
    } catch (err) {
      why = `the native link did not start: ${(err as Error).message}`;
    }
  }
  if (!native && !warnedNoAddon) {
    warnedNoAddon = true;
    process.emitWarning(`sockgate: links use the JS relay (${why})`, { code: 'SOCKGATE_JS_RELAY' });
  }
  trace(`link ${meta.socketId}: JS relay over ${meta.transport} (${why})`);
  return linkJs(deps, caller, opened, why, opts.prefix ?? []);
}

/** The handle of a native link: counters read on demand, close() drains, destroy() aborts (the transport's own calls). */
export function nativeLinkHandle(
  deps: LinkDeps,
  meta: SocketMeta,
  ended: Promise<LinkEnded>,
  ops: { toTarget(): number; fromTarget(): number; drain(): void; abort(): void },
): GatewayLink {
  const handle: GatewayLink = {
    ...base(meta),
    native: true,
    relayReason: '',
    bytes: {
      get toTarget() {
        return ops.toTarget();
      },
      get fromTarget() {
        return ops.fromTarget();
      },
    },
    ended,
    close() {
      try {
        ops.drain();
      } catch {
        // ended already
      }
    },
    destroy() {
      ops.abort();
    },
  };
  deps.track({ destroy: () => handle.destroy() }, ended);
  return handle;
}

export function base(meta: SocketMeta): Pick<GatewayLink, 'socketId' | 'transport' | 'fallbacks' | 'localUri' | 'remoteUri'> {
  return { socketId: meta.socketId, transport: meta.transport, fallbacks: meta.fallbacks, localUri: meta.localUri, remoteUri: meta.remoteUri };
}

function linkJs(deps: LinkDeps, caller: Socket | number, opened: OpenedChannel, why: string, pre: readonly Buffer[]): GatewayLink {
  const { meta } = opened;
  const gs = deps.wrap(opened.inner, meta, opened.confirmEof);
  for (const b of pre) gs.write(b);
  const sock = typeof caller === 'number' ? new Socket({ fd: caller, allowHalfOpen: true, readable: true, writable: true }) : caller;
  const s = jsSplice(sock, gs);
  let aborted = false;
  let failure: Error | undefined;
  gs.on('error', (err) => (failure ??= err));
  sock.on('error', (err) => (failure ??= err));
  const ended = s.closed.then((): LinkEnded => {
    if (aborted) return { reason: 'aborted', ...(failure ? { error: failure } : {}) };
    if (closedCleanly(sock) && closedCleanly(gs) && !failure) return { reason: 'ok' };
    return { reason: 'error', error: failure ?? new ConnectionResetError(`link ${meta.socketId}: a side closed before both directions ended`) };
  });
  deps.track({ destroy: () => s.destroy() }, ended);
  return {
    ...base(meta),
    native: false,
    relayReason: why,
    bytes: {
      get toTarget() {
        return s.bytes.aToB;
      },
      get fromTarget() {
        return s.bytes.bToA;
      },
    },
    ended,
    close() {
      // No more bytes from the caller (what it sends now is dropped); the target's direction runs on.
      sock.unpipe(gs);
      gs.end();
      sock.resume();
    },
    destroy(err?: Error) {
      aborted = true;
      s.destroy(err ?? new ConnectionResetError(`link ${meta.socketId} destroyed`));
    },
  };
}
