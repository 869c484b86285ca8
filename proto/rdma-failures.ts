/**
 * How an rdma connection fails, the one vocabulary of the native addon's rdma
 * events and where it is mapped: before the connection is established a
 * `failed` event carries a setup code (RDMA_SETUP_FAILURES); after, `closed`
 * and `slotEnd` carry an ERR_SOCKGATE_RDMA_* code (an error class of
 * proto/errors.ts) or 'ok'. native/src/rdma_conn_impl.h (namespace fail)
 * emits them; test/native/rdma-vocabulary.test.ts keeps the lists equal.
 */
import { ERROR_CLASSES, fromSystemError, type SockgateError } from './errors.js';
import { DeclineReason } from './gen/sockgate/v1/transport.js';

/** Codes of a `failed` event (before established). */
export const RDMA_SETUP_FAILURES = [
  'ADDR_ERROR',
  'ROUTE_ERROR',
  'UNREACHABLE',
  'REJECTED',
  'CONNECT_ERROR',
  'TIMEOUT',
  'PROTOCOL',
  'NO_DEVICE',
  'RESOURCE',
  'VERSION_MISMATCH',
] as const;
export type RdmaSetupFailure = (typeof RDMA_SETUP_FAILURES)[number];

/** Codes of `closed` and `slotEnd` after establishment (each an error class of the one table). */
export const RDMA_CONNECTION_FAILURES = [
  'ERR_SOCKGATE_RDMA_PROTOCOL',
  'ERR_SOCKGATE_RDMA_TIMEOUT',
  'ERR_SOCKGATE_RDMA_DEVICE_REMOVED',
  'ERR_SOCKGATE_RDMA_PORT_DOWN',
  'ERR_SOCKGATE_RDMA_QP_FATAL',
  'ERR_SOCKGATE_RDMA_DISCONNECTED',
] as const;

/** ENODEV: rdma_cm found no RDMA device for the address (none, or one being removed). */
const ENODEV = 19;

const SETUP_DECLINES: Readonly<Partial<Record<RdmaSetupFailure, DeclineReason>>> = {
  REJECTED: DeclineReason.DECLINE_REASON_PEER_DECLINED,
  ADDR_ERROR: DeclineReason.DECLINE_REASON_ROUTE_ERROR,
  ROUTE_ERROR: DeclineReason.DECLINE_REASON_ROUTE_ERROR,
  UNREACHABLE: DeclineReason.DECLINE_REASON_ROUTE_ERROR,
  NO_DEVICE: DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE,
  RESOURCE: DeclineReason.DECLINE_REASON_RESOURCE_LIMIT,
  VERSION_MISMATCH: DeclineReason.DECLINE_REASON_VERSION_MISMATCH,
};

/**
 * The decline reason of a `failed` event: by its code (CONNECT_FAILED when the
 * code says no more), except that an address or route error whose status is
 * ENODEV means this host has no device to reach the gateway with.
 */
export function declineReasonOfRdmaFailure(code: string, errno = 0): DeclineReason {
  if (Math.abs(errno) === ENODEV && (code === 'ADDR_ERROR' || code === 'ROUTE_ERROR')) return DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE;
  return SETUP_DECLINES[code as RdmaSetupFailure] ?? DeclineReason.DECLINE_REASON_CONNECT_FAILED;
}

/** The error a slot or connection end code stands for: an ERR_SOCKGATE_* class, else the errno's. */
export function rdmaEndError(code: string, errno: number, what: string): SockgateError {
  const cls = ERROR_CLASSES.get(code);
  if (cls) return new cls(`${what}: ${code}`);
  const name = code || (errno ? `errno ${errno}` : 'error');
  return fromSystemError(Object.assign(new Error(name), { code: code || undefined, errno }), what);
}
