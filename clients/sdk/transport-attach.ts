/**
 * A Gateway object's transports (client-transport.ts), with every transport
 * of the SDK registered: offers by name, the attach of an accepted offer
 * through its transport, and close. Nothing here switches on a name.
 */
import type { Duplex } from 'node:stream';
import type { Accepted, TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError } from '../../proto/errors.js';
import { ClientTransports, clientTransportEntry } from './client-transport.js';
import type { CallOpts } from './call-options.js';
import { SDK_TRANSPORTS } from './gateway-options.js';
import { TRANSPORT_KINDS, transportNameOf, type FallbackInfo, type TransportName } from './socket.js';
import type { ShmClient } from './attach-shm.js';
import { ShmTransport } from './transport-shm.js';
import './transport-tcp.js';
import './transport-grpc.js';
import { RdmaTransport } from './transport-rdma.js';
import type { RdmaClient } from './attach-rdma.js';

export type { ClientTransportContext as TransportAttacherOptions } from './client-transport.js';

export class TransportAttacher extends ClientTransports {
  /** The shm client, if created yet (tests read its sessions). */
  get shmClient(): ShmClient | undefined {
    const t = this.peek('shm');
    return t instanceof ShmTransport ? t.client : undefined;
  }

  /** The offer for transport `name`, or why this SDK reports it declined here (a local fallback). */
  offer(name: TransportName): { offer: TransportOffer } | { local: FallbackInfo } {
    const entry = clientTransportEntry(name);
    const declined = entry?.localDecline?.();
    if (declined) return { local: declined };
    if (!entry || !(SDK_TRANSPORTS as readonly string[]).includes(name)) {
      const why = entry?.unsupported();
      return { local: { transport: name, reason: 'UNSUPPORTED', detail: why ? `this SDK cannot attach with ${name}: ${why}` : `this SDK build cannot attach with ${name}` } };
    }
    return { offer: { kind: TRANSPORT_KINDS[name], version: 1, params: this.get(name).offer() } };
  }

  /** The rdma client, if created yet (tests read its sessions). */
  get rdmaClient(): RdmaClient | undefined {
    const t = this.peek('rdma');
    return t instanceof RdmaTransport ? t.client : undefined;
  }

  /**
   * `offers` with a slot pre-issued to the session named in its first shm or
   * rdma offer, if that client holds one (attach-shm.ts, attach-rdma.ts);
   * settle() with the Connect's answer or error, so an unused slot goes back
   * to the client's pool.
   */
  lease(offers: TransportOffer[]): { offers: TransportOffer[]; settle(accepted: Accepted | undefined, err?: unknown): void } {
    const none = { offers, settle: () => {} };
    const i = offers.findIndex((o) => o.params?.$case === 'shm' || o.params?.$case === 'rdma');
    const o = offers[i];
    const out = [...offers];
    if (o?.params?.$case === 'shm') {
      const named = this.shmClient?.name(o.params.shm);
      if (!named) return none;
      out[i] = { ...o, params: { $case: 'shm', shm: named.offer } };
      return { offers: out, settle: (accepted, err) => named.settle(accepted?.params?.$case === 'shm' ? accepted.params.shm : undefined, err) };
    }
    if (o?.params?.$case === 'rdma') {
      const named = this.rdmaClient?.name(o.params.rdma);
      if (!named) return none;
      out[i] = { ...o, params: { $case: 'rdma', rdma: named.offer } };
      return { offers: out, settle: (accepted, err) => named.settle(accepted?.params?.$case === 'rdma' ? accepted.params.rdma : undefined, err) };
    }
    return none;
  }

  /** Attach with the accepted transport. */
  attach(accepted: Accepted, mode: 'stream' | 'datagram', opts: CallOpts, socketId = ''): Promise<Duplex> {
    const name = transportNameOf(accepted.kind) as TransportName;
    if (!clientTransportEntry(name)) return Promise.reject(new AttachFailedError(`gateway accepted a transport this SDK cannot attach with (${name})`));
    return this.get(name).attach(accepted, mode, opts, `socket ${socketId}`);
  }
}
