/**
 * The SDK's data-plane seam, the mirror of the gateway's `Transport`
 * (server/transport.ts): one ClientTransport per transport name, in a file of
 * its own (transport-tcp.ts, transport-grpc.ts, transport-shm.ts,
 * transport-rdma.ts) that registers itself here. A Gateway object asks each
 * for its offer, attaches the accepted one through it (a channel back), links
 * a caller's fd natively where the transport can (link.ts), and closes them.
 */
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { DataRequest, DataResponse } from '../../proto/gen/sockgate/v1/sockgate.js';
import type { Accepted, TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError } from '../../proto/errors.js';
import type { NativeModule } from './native-optional.js';
import type { CallOpts } from './call-options.js';
import type { GatewayOptions } from './gateway-options.js';
import type { FallbackInfo, TransportName } from './socket.js';
import type { GatewayLink, LinkDeps, OpenedChannel } from './link-types.js';
import type { ParallelOpen } from './tcp-parallel.js';
import type { VsockBridge } from './vsock.js';

/** What a Gateway object hands its transports. */
export interface ClientTransportContext {
  readonly options: GatewayOptions;
  /** With a `vsock:` target: tcp-plane data connections dial vsock. */
  readonly vsock: VsockBridge | undefined;
  /** The tcp plane's parallel open, told each data address seen. */
  readonly parallel: ParallelOpen;
  /** Opens a grpc-plane Data stream on the Gateway's channel. */
  readonly grpcData: () => ClientDuplexStream<DataRequest, DataResponse>;
}

/** One transport of one Gateway object. */
export interface ClientTransport {
  /** The TransportOffer params for a socket (undefined: the transport needs none). */
  offer(): TransportOffer['params'];
  /** Attach a socket's data channel as the gateway accepted it. */
  attach(accepted: Accepted, mode: 'stream' | 'datagram', opts: CallOpts, label: string): Promise<Duplex>;
  /** Let go of sessions and connections (their channels end). */
  close(): void;
}

/** A caller's fd joined natively to an attached channel (link.ts). */
export type NativeLinker = (deps: LinkDeps, n: NativeModule, caller: Socket | number, opened: OpenedChannel, prefix: readonly Buffer[]) => GatewayLink;

/** A transport as registered: how to make one, whether this process can use it, and its native link. */
export interface ClientTransportEntry {
  readonly name: TransportName;
  /** '' when this process can attach with it, else why not. */
  unsupported(): string;
  /** A local fallback to report instead of offering it (e.g. rdma: NO_RDMA_DEVICE on a host without one), if any. */
  localDecline?(): FallbackInfo | undefined;
  create(ctx: ClientTransportContext): ClientTransport;
  /** What keeps `opened` off the native link ('' if it can be linked); absent: the transport has no native client link. */
  nativeBlocker?(opened: OpenedChannel): string;
  linkNative?: NativeLinker;
}

/** The client of a session transport (ShmClient, RdmaClient): one session (or chain) per Gateway object. */
export interface SessionClient<P, O> {
  offer(): O;
  attach(params: P, token: Uint8Array, label: string, opts: { signal?: AbortSignal }): Promise<Duplex>;
  close(): unknown;
}

/** A transport whose sockets ride one client session (shm, rdma): its client made on first use; stream sockets only. */
export class SessionClientTransport<P, O, C extends SessionClient<P, O>> implements ClientTransport {
  #client: C | undefined;
  constructor(
    private readonly name: TransportName,
    private readonly make: () => C,
    /** The accepted offer's parameters for this transport, if it carries them. */
    private readonly paramsOf: (accepted: Accepted) => P | undefined,
    private readonly wrap: (offer: O) => TransportOffer['params'],
  ) {}

  /** The client, if made yet (tests read its sessions). */
  get client(): C | undefined {
    return this.#client;
  }

  #get(): C {
    this.#client ??= this.make();
    return this.#client;
  }

  offer(): TransportOffer['params'] {
    return this.wrap(this.#get().offer());
  }

  attach(accepted: Accepted, mode: 'stream' | 'datagram', opts: CallOpts, label: string): Promise<Duplex> {
    // The gateway declines datagram sockets here too; if one was accepted anyway, the next offer is used.
    if (mode !== 'stream') return Promise.reject(new AttachFailedError(`${this.name} carries stream sockets only`));
    const params = this.paramsOf(accepted);
    if (!params) return Promise.reject(new AttachFailedError(`${this.name} attach: the gateway sent no ${this.name} parameters`));
    return this.#get().attach(params, accepted.attachToken, label, opts.signal ? { signal: opts.signal } : {});
  }

  close(): void {
    void this.#client?.close();
  }
}

const registry = new Map<TransportName, ClientTransportEntry>();

export function registerClientTransport(entry: ClientTransportEntry): void {
  registry.set(entry.name, entry);
}

/** The registered transport by name, if any. */
export function clientTransportEntry(name: TransportName): ClientTransportEntry | undefined {
  return registry.get(name);
}

/** A Gateway object's transports, created on first use. */
export class ClientTransports {
  readonly #made = new Map<TransportName, ClientTransport>();
  constructor(private readonly ctx: ClientTransportContext) {}

  /** The transport `name` of this Gateway object (created now if it was not). */
  get(name: TransportName): ClientTransport {
    let t = this.#made.get(name);
    if (!t) {
      const entry = registry.get(name);
      if (!entry) throw new Error(`no client transport registered as ${name}`);
      t = entry.create(this.ctx);
      this.#made.set(name, t);
    }
    return t;
  }

  /** The transport `name` if created already. */
  peek(name: TransportName): ClientTransport | undefined {
    return this.#made.get(name);
  }

  close(): void {
    for (const t of this.#made.values()) t.close();
  }
}
