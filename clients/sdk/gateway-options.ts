/**
 * What a Gateway of the SDK is opened with: its options, the transports this
 * SDK can attach with here, and the default offers for a target.
 */
import { isIP } from 'node:net';
import { shmSupport } from './attach-shm.js';
import { rdmaSupport, type RdmaClientOptions } from './attach-rdma.js';
import type { CallOpts } from './call-options.js';
import type { TransportName } from './socket.js';
import type { SmcDial } from './smc-dial.js';

/**
 * Transports this SDK can attach with here, in default preference order: shm
 * where the native addon loaded, rdma where it also found an active verbs
 * device (`rdmaSupport`), then tcp and grpc.
 */
export const SDK_TRANSPORTS: readonly TransportName[] = [
  ...(shmSupport.available ? (['shm'] as const) : []),
  ...(rdmaSupport.available ? (['rdma'] as const) : []),
  'tcp',
  'grpc',
];

/**
 * The default offers for a gateway at `target`: shm only for one on this host
 * (a Unix socket or loopback), rdma only for one elsewhere (like SMC-D vs SMC-R),
 * each only where this SDK can attach with it.
 */
export function defaultTransports(target: string): TransportName[] {
  const local = isLocalTarget(target);
  return SDK_TRANSPORTS.filter((t) => (local ? t !== 'rdma' : t !== 'shm'));
}

/** Whether a gRPC target is on this host (a Unix socket or loopback): only then is shm offered by default. */
export function isLocalTarget(target: string): boolean {
  if (target.startsWith('unix:') || target.startsWith('unix-abstract:')) return true;
  let rest = target.replace(/^(dns|ipv4|ipv6):(\/\/[^/]*\/)?/, '');
  const bracket = /^\[([^\]]+)\]/.exec(rest);
  if (bracket) rest = bracket[1]!;
  else if (isIP(rest) !== 6) rest = rest.replace(/:[0-9]+$/, '');
  const host = rest.toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || /^::ffff:127\./.test(host) || host === '0:0:0:0:0:0:0:1';
  return false;
}

export interface GatewayOptions {
  /** Bearer token identifying the caller to the gateway's policy. */
  token?: string;
  /** The caller's identity: a bearer token (same as `token`). With `tls.cert`/`tls.key`, the certificate identifies the caller. */
  identity?: { token?: string };
  /** TLS to the control port (and mTLS with cert + key). */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** Transports to offer, most preferred first. Default: every one this SDK supports. */
  transports?: readonly TransportName[];
  /** Default deadline of control calls in ms. */
  deadlineMs?: number;
  /**
   * shm: the host id to offer instead of this host's boot id (tests, unusual setups); slots to keep pre-issued per
   * session (default 16; 0: every socket BINDs its slot after its Connect, the v1 flow).
   */
  shm?: { hostId?: string; preissue?: number };
  /** rdma: receive ring bytes per socket, credits and keepalive of this client's connections. */
  rdma?: RdmaClientOptions;
  /**
   * Stream connects (Connect call through attach) in flight at once; more wait
   * their turn (connect-gate.ts). Default 128: under the gateway's default
   * pending-socket (256 per identity) and waiting data-connection (128 per
   * peer) bounds, so a burst is queued here rather than refused there.
   */
  maxConcurrentConnects?: number;
  /** Connects that may wait for a turn; one more fails at once with LimitExceededError. Default 65536. */
  maxWaitingConnects?: number;
  /** tcp plane: open the data connection alongside the Connect once the data port is known (tcp-parallel.ts). Default true. */
  parallelOpen?: boolean;
  /**
   * tcp plane: `prefer` opens each data connection as kernel SMC (AF_SMC /
   * IPPROTO_SMC through the native addon), so two SMC-capable hosts talk SMC-R
   * (the gateway's data port must accept SMC: its `smc.data_port`). The kernel
   * falls back to TCP inside the socket by itself; where the addon or the
   * kernel has no SMC, the connection is plain TCP and the reason is traced
   * (SOCKGATE_TRACE=sdk). GatewaySocket#dataConnection() tells which. Not used
   * over vsock. Default `off`.
   */
  smc?: SmcDial;
}

export interface UdpOptions extends CallOpts {
  transports?: readonly TransportName[];
  /** `connect` opens a connected socket to the URI; `bind` (default) binds it locally. */
  mode?: 'bind' | 'connect';
}
