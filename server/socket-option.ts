/**
 * SetOption and Connect's options on a gateway socket: a stream's options go
 * to its host socket, or through its native link when one owns the descriptor.
 */
import type { Socket as NetSocket } from 'node:net';
import type { SocketOption } from '../proto/gen/sockgate/v1/sockgate.js';
import { InvalidArgumentError, WrongSocketKindError, fromSystemError } from '../proto/errors.js';
import type { NativeLink } from './transport.js';
import { DatagramSocket, StreamSocket, type GatewaySocket } from './socket-table.js';

export function applyOption(sock: GatewaySocket, option: SocketOption | undefined, setTcpBuffer: ((sock: NetSocket, which: 'send' | 'recv', bytes: number) => void) | undefined): void {
  const o = option?.option;
  if (!o) throw new InvalidArgumentError('option is required');
  if (sock instanceof StreamSocket) {
    // A native link owns the host descriptor (the JS socket gave its own up): options go through the link.
    const link = sock.nativeLink;
    const viaLink = (l: NativeLink): void => {
      if (!l.setHostOption) throw new WrongSocketKindError(`socket ${sock.id} rides a native link that takes no socket options`);
      l.setHostOption(o);
    };
    switch (o.$case) {
      case 'noDelay':
        if (link) return viaLink(link);
        sock.host.setNoDelay(o.noDelay);
        return;
      case 'keepAliveMs':
        if (link) return viaLink(link);
        sock.host.setKeepAlive(o.keepAliveMs > 0, o.keepAliveMs);
        return;
      case 'sendBufferBytes':
      case 'recvBufferBytes': {
        const bytes = o.$case === 'sendBufferBytes' ? o.sendBufferBytes : o.recvBufferBytes;
        if (bytes < 1024 || bytes > 64 << 20) throw new InvalidArgumentError(`${o.$case === 'sendBufferBytes' ? 'send_buffer_bytes' : 'recv_buffer_bytes'} must be 1024..67108864, got ${bytes}`);
        if (link) return viaLink(link);
        if (!setTcpBuffer) throw new WrongSocketKindError('TCP buffer sizes need the native addon, which is not loaded');
        setTcpBuffer(sock.host, o.$case === 'sendBufferBytes' ? 'send' : 'recv', bytes);
        return;
      }
    }
  } else if (sock instanceof DatagramSocket) {
    switch (o.$case) {
      case 'sendBufferBytes':
      case 'recvBufferBytes': {
        const send = o.$case === 'sendBufferBytes';
        const bytes = send ? o.sendBufferBytes : o.recvBufferBytes;
        if (bytes < 1024 || bytes > 64 << 20) throw new InvalidArgumentError(`${send ? 'send_buffer_bytes' : 'recv_buffer_bytes'} must be 1024..67108864, got ${bytes}`);
        try {
          if (send) sock.host.setSendBufferSize(bytes);
          else sock.host.setRecvBufferSize(bytes);
        } catch (err) {
          throw fromSystemError(err, `setsockopt ${send ? 'SO_SNDBUF' : 'SO_RCVBUF'} on ${sock.id}`);
        }
        return;
      }
      default:
        throw new WrongSocketKindError(`option ${o.$case} does not apply to a datagram socket`);
    }
  }
  throw new WrongSocketKindError(`option ${o.$case} does not apply to a ${sock.kind}`);
}
