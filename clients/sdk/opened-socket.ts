/** Gateway sockets the SDK hands out for linking or as descriptors: not yet linked, or opened as a socket. */
import type { Socket } from 'node:net';
import type { SockgateError } from '../../proto/errors.js';
import type { GatewayLink, LinkOptions } from './link.js';
import type { FallbackInfo, SocketMeta, TransportName } from './socket.js';
import type { DataConnectionInfo } from './smc-dial.js';

/** A gateway socket opened (openForLink) or accepted (listen with `channels: true`), not yet linked: link it to a local socket, or destroy it. */
export interface LinkableSocket {
  meta: SocketMeta;
  link(target: Socket | number, opts?: Pick<LinkOptions, 'relay' | 'prefix'>): GatewayLink;
  destroy(): void;
}

/** What Gateway#openStream hands back: the attached channel as a descriptor-backed socket. */
export interface OpenedStream {
  /** Paused, half-open allowed; its descriptor may be dup()ed. */
  socket: Socket;
  /** The socket's id on the gateway. */
  socketId: string;
  transport: TransportName;
  fallbacks: FallbackInfo[];
  localUri: string;
  remoteUri: string;
  /** Settles when the data plane says how the stream ended: undefined when cleanly (or unknown: tcp), else the error. */
  failure: Promise<SockgateError | undefined>;
  /** How the kernel carries the tcp-plane data connection (tcp, or smc with its mode); undefined on other planes. */
  dataConnection(): DataConnectionInfo | undefined;
  /** Destroy the local channel and close the socket on the gateway. */
  close(): Promise<void>;
}
