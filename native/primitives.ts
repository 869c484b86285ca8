/** Descriptor primitives of the addon (dup, close, socketpair, sockopts, peer credentials) and the gateway-wide ring limit. */
import { binding, constants } from './load-addon.js';
import { call } from './translate-error.js';

/** dup() a descriptor (close-on-exec). The caller owns the result. */
export function dupFd(fd: number): number {
  return call(() => binding.dupFd(fd));
}
export function closeFd(fd: number, reset = false): void {
  call(() => binding.closeFd(fd, reset));
}
/** Set an int socket option, e.g. `setsockopt(fd, 'SO_SNDBUF', 1 << 20)`. */
export function setsockopt(fd: number, name: 'SO_SNDBUF' | 'SO_RCVBUF', value: number): void {
  call(() => binding.setsockoptInt(fd, constants.SOL_SOCKET, constants[name], value));
}
export function getsockopt(fd: number, name: 'SO_SNDBUF' | 'SO_RCVBUF'): number {
  return call(() => binding.getsockoptInt(fd, constants.SOL_SOCKET, constants[name]));
}
/** A connected AF_UNIX stream pair (blocking, close-on-exec); the caller owns both fds. */
export function socketpair(): [number, number] {
  return call(() => binding.socketpair());
}
export function peerCred(fd: number): { pid: number; uid: number; gid: number } {
  return call(() => binding.peerCred(fd));
}
/** Gateway-wide cap on granted ring bytes (all regions); `Infinity` lifts it. */
export function setGatewayRingLimit(bytes: number): void {
  call(() => binding.setGatewayRingLimit(bytes));
}
export function gatewayRingBytes(): number {
  return binding.gatewayRingBytes();
}
