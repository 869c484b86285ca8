/**
 * SetOption on a host descriptor that a native link owns (shm ring links and
 * tcp splice links alike), set the way Node's net.Socket would set it
 * (libuv's keep-alive probes included).
 */
import type { HostSockopt } from '../native/index.js';
import { SocketClosedError } from '../proto/errors.js';
import type { HostOption } from './transport.js';

export interface SockoptTarget {
  setHostSockopt(name: HostSockopt, value: number): void;
}

/** Apply `o`; an error that `ended` recognises as "the link is gone" becomes SocketClosedError. */
export function applyHostOption(link: SockoptTarget, o: HostOption, ended: (err: Error) => boolean): void {
  try {
    switch (o.$case) {
      case 'noDelay':
        return link.setHostSockopt('TCP_NODELAY', o.noDelay ? 1 : 0);
      case 'keepAliveMs':
        link.setHostSockopt('SO_KEEPALIVE', o.keepAliveMs > 0 ? 1 : 0);
        if (o.keepAliveMs <= 0) return;
        link.setHostSockopt('TCP_KEEPIDLE', Math.max(1, Math.floor(o.keepAliveMs / 1000)));
        link.setHostSockopt('TCP_KEEPINTVL', 1);
        return link.setHostSockopt('TCP_KEEPCNT', 10);
      case 'sendBufferBytes':
        return link.setHostSockopt('SO_SNDBUF', o.sendBufferBytes);
      case 'recvBufferBytes':
        return link.setHostSockopt('SO_RCVBUF', o.recvBufferBytes);
    }
  } catch (err) {
    if (ended(err as Error)) throw new SocketClosedError(`the native link of this socket has ended (${(err as Error).message})`, { cause: err });
    throw err;
  }
}
