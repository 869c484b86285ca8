/**
 * Options of the SDK's calls. Their own file so that gateway.ts and link.ts
 * (whose LinkOptions extend ConnectOptions) both import them without a cycle.
 */
import type { TransportName } from './socket.js';

export interface CallOpts {
  /** Abort the call (and the socket being opened). */
  signal?: AbortSignal;
  /** Deadline for this call in ms. */
  deadlineMs?: number;
}

export interface ConnectOptions extends CallOpts {
  /** Override the transport preference for this socket. */
  transports?: readonly TransportName[];
  /** Host-side connect timeout in ms. */
  timeoutMs?: number;
  noDelay?: boolean;
  keepAliveMs?: number;
}
