/**
 * What a link is (link.ts joins a caller's socket to a gateway socket): its
 * handle, how it ended, and what it needs of its Gateway. Apart from link.ts
 * so the transports' native linkers (client-transport.ts) can name them.
 */
import type { Duplex } from 'node:stream';
import type { FallbackInfo, GatewaySocket, SocketMeta, TransportName } from './socket.js';

/** How a link ended. */
export interface LinkEnded {
  /** ok: both directions ended cleanly; error: a side failed (reset, gateway gone); aborted: destroy(). */
  reason: 'ok' | 'error' | 'aborted';
  error?: Error;
}

/** A linked socket. */
export interface GatewayLink {
  readonly socketId: string;
  readonly transport: TransportName;
  /** Transports passed over before this one, with reasons. */
  readonly fallbacks: FallbackInfo[];
  readonly localUri: string;
  readonly remoteUri: string;
  /** true: the payload moves on the native I/O thread and never reaches JS; false: the JS relay. */
  readonly native: boolean;
  /** Why the JS relay carries this link ('' when native). */
  readonly relayReason: string;
  /** Bytes so far, read on demand (no event per chunk). */
  readonly bytes: { readonly toTarget: number; readonly fromTarget: number };
  readonly ended: Promise<LinkEnded>;
  /** Graceful: no more bytes from the caller (the target gets FIN after those already read); the other direction drains to its end. */
  close(): void;
  /** Abort: the caller and the target see a reset, the gateway socket is closed. */
  destroy(err?: Error): void;
}

/** What a link needs of its Gateway (handed in by Gateway#link and the listeners). */
export interface LinkDeps {
  /** Wrap a channel into a GatewaySocket (the JS relay's side). */
  wrap(inner: Duplex, meta: SocketMeta, confirmEof: boolean): GatewaySocket;
  closeRemote(socketId: string): Promise<void>;
  /** The tcp plane: confirm over the control plane that a FIN was the target's. */
  confirmEnd(socketId: string): Promise<void>;
  /** Gateway#close destroys what is tracked. */
  track(s: { destroy(): void }, ended: Promise<unknown>): void;
}

/** An attached channel, not yet linked. */
export interface OpenedChannel {
  inner: Duplex;
  meta: SocketMeta;
  confirmEof: boolean;
}
