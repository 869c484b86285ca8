/**
 * Who is at the other end of a control-plane connection, as the kernel (not
 * the caller) tells it: the one mechanism by which a gRPC call learns its
 * connection's peer credentials.
 *
 * grpc-js handlers see no descriptor, only `call.getPeer()`, which it builds
 * from the connection's `remoteAddress`/`remotePort`. The gateway owns the
 * control listeners (control-listeners.ts) and injects each accepted
 * connection into grpc-js; before doing so it records what it learnt about
 * the peer here, under the exact string `getPeer()` will report for that
 * connection. A TCP connection is already unique by `address:port`; a Unix
 * connection has no address, so it is given a synthetic, unique one
 * (`unix:<listener>#<n>`), which no TCP peer can produce.
 * VM guests (`vmm`, `vsock`) get `vm:<listener>#<n>`: not `unix:`, so the
 * shm plane, which takes `unix:` peers as same-host, does not count them as such.
 */
import type { Socket } from 'node:net';

/** What the kernel says about a control connection's peer. */
export type PeerCredentials =
  /** A same-host process on a Unix control socket (SO_PEERCRED). */
  | { readonly kind: 'unix'; readonly uid: number; readonly gid: number; readonly pid: number }
  /** A Unix control socket whose peer credentials could not be read (no native addon). */
  | { readonly kind: 'unix-unknown' }
  /**
   * A VM guest through its VMM's vsock Unix socket (`vsock_uds`): the socket's
   * peer is the VMM process, whose uid says nothing about the guest, so it
   * never maps to a uid identity.
   */
  | { readonly kind: 'vmm'; readonly path: string }
  /** A VM guest on a native AF_VSOCK listener (vhost-vsock): the kernel's peer CID is the VM. */
  | { readonly kind: 'vsock'; readonly cid: number; readonly port: number }
  /** A TCP peer. */
  | { readonly kind: 'tcp'; readonly address: string; readonly port: number };

/** The VM a connection's guest is in (policy's VmOrigin, vm-identity.ts), from its credentials; {} for other peers. */
export function vmCredentialsOf(peer: PeerCredentials | undefined): { vm?: { readonly cid: number } | { readonly vmmPath: string } } {
  if (peer?.kind === 'vmm') return { vm: { vmmPath: peer.path } };
  if (peer?.kind === 'vsock') return { vm: { cid: peer.cid } };
  return {};
}

/** Prefix of the synthetic remote address of Unix control connections (transport-shm's isLocalPeer takes `unix:` as same-host). */
const UNIX_PEER_PREFIX = 'unix:';
/** Prefix of the synthetic remote address of VM guests' control connections. */
const VM_PEER_PREFIX = 'vm:';

/** The string grpc-js's getPeer() reports for a connection (server-interceptors.js getPeer). */
function grpcPeerString(sock: Socket): string {
  const address = sock.remoteAddress;
  if (!address) return 'unknown';
  return sock.remotePort ? `${address}:${sock.remotePort}` : address;
}

/** A connection the registry knows, by its peer string. */
export interface PeerEntry {
  readonly key: string;
  readonly credentials: PeerCredentials;
  /** Called on the first identified call of the connection (admission clears its first-call timer). */
  onIdentified?: () => void;
}

/** Live control connections by the peer string their calls report. */
export class PeerRegistry {
  private readonly byKey = new Map<string, PeerEntry>();
  private nextUnix = 1;

  /**
   * Record `sock` (just accepted, not yet handed to grpc-js) with its
   * credentials; Unix connections get their synthetic address here. Returns
   * the entry, or undefined when its calls could not be told apart (a
   * duplicate key: never expected, and then nothing is attributed to it).
   * The entry is forgotten when the socket closes.
   */
  register(sock: Socket, credentials: PeerCredentials, listenerName: string): PeerEntry | undefined {
    if (credentials.kind !== 'tcp') {
      const prefix = credentials.kind === 'vmm' || credentials.kind === 'vsock' ? VM_PEER_PREFIX : UNIX_PEER_PREFIX;
      const synthetic = `${prefix}${listenerName}#${this.nextUnix++}`;
      // Shadow the (empty) address of a Unix socket: grpc-js reads it through the session's socket proxy.
      Object.defineProperty(sock, 'remoteAddress', { value: synthetic, configurable: true });
      Object.defineProperty(sock, 'remotePort', { value: undefined, configurable: true });
    }
    const key = grpcPeerString(sock);
    if (key === 'unknown' || this.byKey.has(key)) return undefined;
    const entry: PeerEntry = { key, credentials };
    this.byKey.set(key, entry);
    sock.once('close', () => {
      if (this.byKey.get(key) === entry) this.byKey.delete(key);
    });
    return entry;
  }

  /** The credentials of the connection a call reports as `peer` (call.getPeer()), if the gateway accepted it. */
  lookup(peer: string): PeerEntry | undefined {
    return this.byKey.get(peer);
  }

  get size(): number {
    return this.byKey.size;
  }
}
