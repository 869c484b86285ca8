/**
 * The gateway's one native pump (one epoll I/O thread for every native link:
 * shm rings today, other link kinds alongside) and the router of its batched
 * events. The pump takes a single event callback at construction; components
 * that share it subscribe here by link, region or listener id.
 *
 * Ownership: the gateway creates the hub once the addon has loaded and closes
 * it last, after every component that linked through it has let go.
 */
import type { Pump, PumpEvent, PumpOptions } from './index.js';

type NativeModule = typeof import('./index.js');

/** Events addressed to one link (by `link` id). */
export type LinkEvent = Extract<PumpEvent, { link: number }>;
/** Events addressed to one region (by `region` id). */
export type RegionEvent = Extract<PumpEvent, { region: number }>;
/** Events addressed to one attach listener (by `listener` id). */
export type ListenerEvent = Extract<PumpEvent, { listener: number }>;
/** Events addressed to one rdma listener or connection (by `rdma` id). */
export type RdmaEvent = Extract<PumpEvent, { rdma: number }>;

export class PumpHub {
  /** The native pump; link, listen and watch through it. */
  readonly pump: Pump;
  /** Handlers by link id; a link's handler is dropped after its `end` event. */
  readonly #links = new Map<number, (e: LinkEvent) => void>();
  readonly #regions = new Map<number, (e: RegionEvent) => void>();
  readonly #listeners = new Map<number, (e: ListenerEvent) => void>();
  readonly #rdma = new Map<number, (e: RdmaEvent) => void>();
  #closed = false;

  constructor(
    native: NativeModule,
    options: PumpOptions = {},
    /** Told about a subscriber that threw (the other subscribers still get their events). */
    private readonly onError: (err: unknown, event: PumpEvent) => void = () => {},
  ) {
    this.pump = new native.Pump((events) => this.#dispatch(events), options);
  }

  /** Route events of link `id` to `fn` until its `end` event (delivered, then dropped). */
  onLink(id: number, fn: (e: LinkEvent) => void): void {
    this.#links.set(id, fn);
  }
  onRegion(id: number, fn: (e: RegionEvent) => void): void {
    this.#regions.set(id, fn);
  }
  offRegion(id: number): void {
    this.#regions.delete(id);
  }
  onListener(id: number, fn: (e: ListenerEvent) => void): void {
    this.#listeners.set(id, fn);
  }
  offListener(id: number): void {
    this.#listeners.delete(id);
  }
  /** Route events of rdma listener or connection `id` to `fn` until `offRdma` (a connection's `closed`/`failed` is its last). */
  onRdma(id: number, fn: (e: RdmaEvent) => void): void {
    this.#rdma.set(id, fn);
  }
  offRdma(id: number): void {
    this.#rdma.delete(id);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Stop the I/O thread; throws (EBUSY) while links, watches or listeners remain. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.pump.close();
    this.#closed = true;
  }

  #dispatch(events: PumpEvent[]): void {
    for (const e of events) {
      try {
        if ('link' in e) {
          const fn = this.#links.get(e.link);
          if (e.type === 'end') this.#links.delete(e.link);
          fn?.(e);
        } else if ('region' in e) {
          this.#regions.get(e.region)?.(e);
        } else if ('listener' in e) {
          this.#listeners.get(e.listener)?.(e);
        } else if ('rdma' in e) {
          this.#rdma.get(e.rdma)?.(e);
        }
      } catch (err) {
        // One subscriber's bug must not starve the others of their events.
        this.onError(err, e);
      }
    }
  }
}
