/**
 * The SDK's data-plane attach by accepted transport: the shm and rdma clients
 * (one session each per Gateway object, created with the first offer), and
 * the tcp and grpc planes.
 */
import type { Duplex } from 'node:stream';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { DataRequest, DataResponse } from '../../proto/gen/sockgate/v1/sockgate.js';
import type { Accepted } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError } from '../../proto/errors.js';
import { ShmClient } from './attach-shm.js';
import { RdmaClient, type RdmaClientOptions } from './attach-rdma.js';
import { attachGrpc, attachTcp } from './attach-plane.js';
import type { CallOpts } from './call-options.js';
import type { ParallelOpen } from './tcp-parallel.js';
import { transportNameOf } from './socket.js';
import type { VsockBridge } from './vsock.js';

export interface TransportAttacherOptions {
  shm: { hostId?: string };
  rdma: RdmaClientOptions;
  /** With a `vsock:` target: tcp-plane data connections dial vsock. */
  vsock: VsockBridge | undefined;
  /** The tcp plane's parallel open, told each data address seen. */
  parallel: ParallelOpen;
  /** Opens a grpc-plane Data stream on the Gateway's channel. */
  grpcData: () => ClientDuplexStream<DataRequest, DataResponse>;
}

export class TransportAttacher {
  #shm: ShmClient | undefined;
  #rdma: RdmaClient | undefined;

  constructor(private readonly o: TransportAttacherOptions) {}

  /** The shm client, if created yet. */
  get shmClient(): ShmClient | undefined {
    return this.#shm;
  }

  /** The shm client of this gateway object (one session for all its shm sockets). */
  shm(): ShmClient {
    this.#shm ??= new ShmClient(this.o.shm);
    return this.#shm;
  }

  /** The rdma client of this gateway object (one session, one RDMA connection, for all its rdma sockets). */
  rdma(): RdmaClient {
    this.#rdma ??= new RdmaClient(this.o.rdma);
    return this.#rdma;
  }

  /** Attach with the accepted transport. */
  attach(accepted: Accepted, mode: 'stream' | 'datagram', opts: CallOpts, socketId = ''): Promise<Duplex> {
    switch (accepted.params?.$case) {
      case 'shm':
        if (mode !== 'stream') return Promise.reject(new AttachFailedError('shm carries stream sockets only'));
        return this.shm().attach(accepted.params.shm, accepted.attachToken, `socket ${socketId}`, opts.signal ? { signal: opts.signal } : {});
      case 'rdma':
        // The gateway declines datagram sockets on rdma too; if one was accepted anyway, the next offer is used.
        if (mode !== 'stream') return Promise.reject(new AttachFailedError('rdma carries stream sockets only'));
        return this.rdma().attach(accepted.params.rdma, accepted.attachToken, `socket ${socketId}`, opts.signal ? { signal: opts.signal } : {});
      case 'tcp':
        return this.#attachTcp(accepted.params.tcp.host, accepted.params.tcp.port, accepted.attachToken, mode, opts, accepted.params.tcp.vsockPort);
      case 'grpc':
        return this.#attachGrpc(accepted.attachToken, mode, opts);
      default:
        return Promise.reject(new AttachFailedError(`gateway accepted a transport this SDK cannot attach with (${transportNameOf(accepted.kind)})`));
    }
  }

  #attachTcp(host: string, port: number, token: Uint8Array, mode: 'stream' | 'datagram', opts: CallOpts, vsockPort = 0): Promise<Duplex> {
    // A vsock client dials the advertised vsock data port on the gateway's CID (host:port is not reachable from a VM).
    const viaVsock = this.o.vsock && vsockPort ? { cid: this.o.vsock.vsock.cid, port: vsockPort } : undefined;
    if (!viaVsock && mode === 'stream') this.o.parallel.learn(host, port);
    return attachTcp(viaVsock ? { vsock: viaVsock } : { host, port }, token, mode, opts.signal);
  }

  #attachGrpc(token: Uint8Array, mode: 'stream' | 'datagram', opts: CallOpts): Promise<Duplex> {
    return attachGrpc(this.o.grpcData, token, mode, opts.signal);
  }

  /** Close the shm and rdma sessions. */
  close(): void {
    void this.#shm?.close();
    this.#rdma?.close();
  }
}
