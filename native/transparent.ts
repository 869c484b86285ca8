/**
 * Transparent-proxy primitives (native/src/wrap_transparent.cc): a redirected
 * connection's original destination, IP_TRANSPARENT on a listener, and the
 * transparent UDP socket that reports each datagram's original destination.
 * Node's net and dgram cannot do these getsockopt/setsockopt/recvmsg calls;
 * the addon works on the fd of a net.Socket or net.Server handle.
 */
import { binding } from './load-addon.js';
import { call } from './translate-error.js';
import type { RawTransparentUdp, SockAddr } from './binding-types.js';

/** A connection's original destination and where it came from: conntrack (redirect) or the local address (tproxy, or not redirected). */
export interface OriginalDestination extends SockAddr {
  source: 'conntrack' | 'local';
}

/** The original destination of an accepted TCP connection on `fd`. */
export function originalDestination(fd: number): OriginalDestination {
  return call(() => binding.transparent.originalDst(fd));
}

/** IP_TRANSPARENT (and IPV6_TRANSPARENT) on `fd`: nftables tproxy may then deliver to it. Needs CAP_NET_ADMIN. */
export function setTransparent(fd: number): void {
  call(() => binding.transparent.setTransparent(fd));
}

/** A UDP socket bound (transparently) to `address:port`, which need not be local: replies leave from it. The caller owns the fd. */
export function udpReplySocket(address: string, port: number): number {
  return call(() => binding.transparent.udpReplySocket(address, port));
}

/** sendto() without blocking; throws EAGAIN when the socket buffer is full (the caller drops: UDP). */
export function udpSendTo(fd: number, data: Uint8Array, address: string, port: number): number {
  return call(() => binding.transparent.udpSendTo(fd, data, address, port));
}

/** A transparent UDP socket (IP_TRANSPARENT + IP_RECVORIGDSTADDR) bound to `address:port`, read on the JS loop. */
export function transparentUdp(address: string, port: number, onMessage: (data: Buffer, from: SockAddr, to: SockAddr) => void): RawTransparentUdp {
  return call(() => new binding.transparent.TransparentUdp(address, port, onMessage));
}
