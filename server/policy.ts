/**
 * Host policy: who the caller is, and where that identity may open sockets.
 * Guests are untrusted; the host's rules decide. (Being implemented.)
 */
import type { Config, TransportName } from './config.js';
import type { L4Protocol } from './uri.js';

export type IdentitySource = 'token' | 'mtls' | 'anonymous' | 'peercred';

export interface Identity {
  readonly name: string;
  readonly admin: boolean;
  /** Open-socket limit for this identity. */
  readonly maxSockets: number;
  readonly source: IdentitySource;
  /** Transports this identity may attach with. */
  readonly transports: ReadonlySet<TransportName>;
}

/** What the service edge extracted from a call. */
export interface CallerCredentials {
  /** The `authorization` metadata value, e.g. `Bearer abc...`. */
  authorization?: string;
  /** Common name of a verified TLS client certificate. */
  tlsCommonName?: string;
  /** SO_PEERCRED uid of a same-host Unix-socket client. */
  peerUid?: number;
}

export type Direction = 'connect' | 'listen' | 'bind';

export interface DestinationCheck {
  direction: Direction;
  protocol: L4Protocol;
  /** The host as the guest wrote it (name or address literal). */
  host: string;
  /** The address it resolved to, which the socket will really use. */
  address: string;
  port: number;
}

export declare class Policy {
  constructor(config: Config);
  identify(creds: CallerCredentials): Identity;
  check(identity: Identity, dest: DestinationCheck): { rule: string };
  allowsTransport(identity: Identity, transport: TransportName): boolean;
}
