/** A shared-memory region of ring slots, and the zero-copy loans of its rings (native/SHM.md). */
import { NativeError } from '../proto/errors.js';
import { binding } from './load-addon.js';
import { call } from './translate-error.js';
import type { Eventfd } from './eventfd.js';
import type { RawRegion, RingDir, SlotInfo, RegionLayout } from './binding-types.js';

export interface RegionOptions {
  /** Socket slots in the session (each a pair of rings). */
  slots: number;
  /** Largest ring size a slot may grow to (power of two); reserves sparse address space only. */
  maxRingSize: number;
  /** Cap on granted ring bytes in this region. */
  byteLimit?: number;
}

/**
 * A zero-copy view into ring bytes, lent until `release()`. After release the
 * underlying ArrayBuffer is detached (stale Buffers have length 0) and `view`
 * throws: misuse is an error, never a read of reused ring memory.
 */
export class RingLoan {
  /** The lent ArrayBuffer; detached on release. */
  #ab: ArrayBuffer | undefined;
  /** Released loans are finished; the region is the lender. */
  readonly #region: RawRegion;
  readonly #view: Buffer;
  constructor(region: RawRegion, ab: ArrayBuffer) {
    this.#region = region;
    this.#ab = ab;
    this.#view = Buffer.from(ab);
  }
  get length(): number {
    return this.#ab ? this.#view.length : 0;
  }
  get released(): boolean {
    return this.#ab === undefined;
  }
  /** The lent bytes. Throws after release. */
  get view(): Buffer {
    if (!this.#ab) throw new NativeError('ring loan used after release');
    return this.#view;
  }
  /** Give the bytes back; `consumed` of them (default all) are freed in the ring. */
  release(consumed: number = this.length): void {
    const ab = this.#ab;
    if (!ab) throw new NativeError('ring loan released twice');
    this.#ab = undefined;
    call(() => this.#region.release(ab, consumed));
  }
}

/**
 * A shared-memory region: one sealed memfd, mapped once, with a ring pair per
 * socket slot. The gateway creates it; the client attaches the memfd it
 * received. Ring ops act on this side's rings: the gateway writes g2c and
 * reads c2g, the client the other way round.
 */
export class ShmRegion {
  readonly raw: RawRegion;
  private constructor(raw: RawRegion) {
    this.raw = raw;
  }
  static create(opts: RegionOptions): ShmRegion {
    return new ShmRegion(call(() => new binding.Region(opts)));
  }
  /** Map a memfd received from the gateway; takes ownership of it (even on failure). */
  static attach(memfd: number): ShmRegion {
    return new ShmRegion(call(() => new binding.Region(memfd)));
  }
  get id(): number {
    return call(() => this.raw.id);
  }
  get fd(): number {
    return call(() => this.raw.fd);
  }
  get size(): number {
    return call(() => this.raw.size);
  }
  get slotCount(): number {
    return call(() => this.raw.slotCount);
  }
  get maxRingSize(): number {
    return call(() => this.raw.maxRingSize);
  }
  get role(): 'gateway' | 'client' {
    return call(() => this.raw.role);
  }
  get closed(): boolean {
    return this.raw.closed;
  }
  get corrupt(): boolean {
    return call(() => this.raw.corrupt);
  }
  get grantedBytes(): number {
    return call(() => this.raw.grantedBytes);
  }
  get layout(): RegionLayout {
    return call(() => this.raw.layout);
  }
  /** `local` is the doorbell this side waits on, `peer` the one it rings. */
  setDoorbells(local: Eventfd, peer: Eventfd): void {
    call(() => this.raw.setDoorbells(local.raw, peer.raw));
  }
  openSlot(slot: number, ringSize: number): void {
    call(() => this.raw.openSlot(slot, ringSize));
  }
  /** Idempotent; gives the slot's ring pages back to the system. */
  closeSlot(slot: number): void {
    call(() => this.raw.closeSlot(slot));
  }
  /** Grant a new ring size; it takes effect when the ring is next empty. */
  requestResize(slot: number, dir: RingDir, ringSize: number): void {
    call(() => this.raw.requestResize(slot, dir, ringSize));
  }
  slotInfo(slot: number): SlotInfo {
    return call(() => this.raw.slotInfo(slot));
  }
  /** Copy once from `data` into the ring; returns bytes written (0 when full). */
  write(slot: number, data: Uint8Array, offset?: number, length?: number): number {
    return call(() => this.raw.write(slot, data, offset, length));
  }
  /** Copy into `target`; bytes read, 0 when empty, null at end of stream. */
  read(slot: number, target: Uint8Array, offset?: number, length?: number): number | null {
    const n = call(() => this.raw.read(slot, target, offset, length));
    return n < 0 ? null : n;
  }
  /** Half-close: end of stream after the bytes written so far. */
  shutdown(slot: number): void {
    call(() => this.raw.shutdown(slot));
  }
  /** Ask for a doorbell when data arrives; true if data (or EOF) is already there. */
  armRead(slot: number): boolean {
    return call(() => this.raw.armRead(slot));
  }
  /** Ask for a doorbell when space frees up; true if there is space already. */
  armWrite(slot: number): boolean {
    return call(() => this.raw.armWrite(slot));
  }
  /** Zero-copy read: a loan over readable bytes, null when empty, false at end of stream. */
  lend(slot: number): RingLoan | null | false {
    const ab = call(() => this.raw.lend(slot));
    if (ab === null || ab === false) return ab;
    return new RingLoan(this.raw, ab);
  }
  takeHints(): number[] {
    return call(() => this.raw.takeHints());
  }
  /** Idempotent; EBUSY while pump links or watches use it. Detaches outstanding loans. */
  close(): void {
    call(() => this.raw.close());
  }
}
