/**
 * Whether a control call comes from this host: shm is offered only to
 * same-host clients (a Unix-socket or loopback peer).
 */
import ipaddr from 'ipaddr.js';

/** Whether a control call's peer (as grpc-js reports it) is on this host: a Unix socket or loopback. */
export function isLocalPeer(peer: string): boolean {
  // grpc-js reports "unknown" for a Unix-socket peer (no remote address).
  if (peer === 'unknown' || peer.startsWith('unix:')) return true;
  // "<address>:<port>" (grpc-js appends the port unbracketed, even to IPv6), or a bare address.
  const i = peer.lastIndexOf(':');
  let host = i > 0 ? peer.slice(0, i).replace(/^\[|\]$/g, '') : '';
  if (!ipaddr.isValid(host)) host = peer;
  if (!ipaddr.isValid(host)) return false;
  return ipaddr.process(host).range() === 'loopback';
}
