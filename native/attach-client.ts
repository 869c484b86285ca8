/** The client side of the shm attach: present a token, receive the region and doorbells. */
import { AttachRefusedError } from '../proto/errors.js';
import { binding } from './load-addon.js';
import { closeFd } from './primitives.js';
import { translateError } from './translate-error.js';
import { Eventfd } from './eventfd.js';
import { ShmRegion } from './shm-region.js';
import type { RawAttachResult } from './binding-types.js';

/** What a client holds after attaching: the mapped region and both doorbells. */
export interface ClientSession {
  region: ShmRegion;
  /** The client waits on this one. */
  clientDoorbell: Eventfd;
  /** The client rings this one. */
  gatewayDoorbell: Eventfd;
  /** The attach connection; the gateway sees the session end when it closes. */
  conn: number;
  slotCount: number;
  peerPid: number;
  peerUid: number;
  /** Region, doorbells, then the connection. Idempotent; EBUSY while a pump still uses the region: retry once it let go. */
  close(): void;
}

/**
 * Client side: connect to the gateway's attach socket, present the token,
 * receive the memfd and doorbells (SCM_RIGHTS) and map the region. Runs off
 * the JS thread.
 */
export async function attachClient(path: string, token: Uint8Array, timeoutMs = 5000): Promise<ClientSession> {
  let r: RawAttachResult;
  try {
    r = await binding.attach(path, token, timeoutMs);
  } catch (err) {
    throw translateError(err);
  }
  if (r.status !== 0) {
    closeFd(r.conn);
    throw new AttachRefusedError(r.status);
  }
  // Not yet owned by a wrapper (the memfd is owned by ShmRegion.attach, even on failure).
  const loose = new Set([r.conn, r.clientDoorbell, r.gatewayDoorbell]);
  let region: ShmRegion | undefined;
  let cl: Eventfd | undefined;
  let gw: Eventfd | undefined;
  try {
    region = ShmRegion.attach(r.memfd);
    cl = new Eventfd(r.clientDoorbell);
    loose.delete(r.clientDoorbell);
    gw = new Eventfd(r.gatewayDoorbell);
    loose.delete(r.gatewayDoorbell);
    region.setDoorbells(cl, gw);
    const [reg, clb, gwb] = [region, cl, gw];
    let closed = false;
    return {
      region: reg,
      clientDoorbell: clb,
      gatewayDoorbell: gwb,
      conn: r.conn,
      slotCount: r.slotCount,
      peerPid: r.peerPid,
      peerUid: r.peerUid,
      close() {
        if (closed) return;
        // Reverse order: the region references the doorbells. Closed only once all
        // let go: an EBUSY (a pump not yet done with the region) leaves it retryable.
        reg.close();
        gwb.close();
        clb.close();
        closed = true;
        closeFd(r.conn);
      },
    };
  } catch (err) {
    region?.close();
    gw?.close();
    cl?.close();
    for (const fd of loose) closeFd(fd);
    throw err;
  }
}
