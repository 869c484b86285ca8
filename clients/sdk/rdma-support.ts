/**
 * Whether this process can attach with rdma (rdmaSupport), and what an rdma
 * failure means: the decline reason a failed connect reports in the SDK's
 * retry, and the error a slot or connection end code stands for.
 */
import { DeclineReason } from '../../proto/gen/sockgate/v1/transport.js';
import { AttachFailedError, ERROR_CLASSES, SockgateError, fromSystemError, type SockgateErrorOptions } from '../../proto/errors.js';
import { native, nativeError, type NativeModule } from './native-optional.js';

function unavailableReason(n: NativeModule | undefined): string {
  if (!n) return `the native addon did not load: ${nativeError}`;
  if (!n.rdma.available) return n.rdma.reason || 'no RDMA device with an active port';
  if (typeof n.rdma.connect !== 'function') return 'this build of the native addon has no rdma connections';
  return '';
}

/**
 * Whether this process can attach with rdma, and why not. `addonLoaded`
 * tells a host without RDMA (NO_RDMA_DEVICE) from an SDK without the addon.
 */
export const rdmaSupport: { readonly available: boolean; readonly reason: string; readonly addonLoaded: boolean } = {
  available: unavailableReason(native) === '',
  reason: unavailableReason(native),
  addonLoaded: native !== undefined,
};

/**
 * An attach that failed for a reason the gateway should record (the SDK's
 * retry reports `declineReason` in its Negotiate, instead of CONNECT_FAILED).
 */
export class RdmaAttachError extends AttachFailedError {
  constructor(
    message: string,
    readonly declineReason: DeclineReason,
    options?: SockgateErrorOptions,
  ) {
    super(message, options);
  }
}

/** ENODEV: rdma_cm found no RDMA device for the address (none, or one being removed). */
const ENODEV = 19;

/**
 * The decline reason of an rdma `failed` event (native/index.ts RdmaEvent):
 * by its code, except that an address or route error whose status is ENODEV
 * means this host has no device to reach the gateway with.
 */
export function declineReasonOfRdmaFailure(code: string, errno = 0): DeclineReason {
  if (Math.abs(errno) === ENODEV && (code === 'ADDR_ERROR' || code === 'ROUTE_ERROR')) return DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE;
  switch (code) {
    case 'REJECTED':
      return DeclineReason.DECLINE_REASON_PEER_DECLINED;
    case 'ADDR_ERROR':
    case 'ROUTE_ERROR':
    case 'UNREACHABLE':
      return DeclineReason.DECLINE_REASON_ROUTE_ERROR;
    case 'NO_DEVICE':
      return DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE;
    case 'RESOURCE':
      return DeclineReason.DECLINE_REASON_RESOURCE_LIMIT;
    case 'VERSION_MISMATCH':
      return DeclineReason.DECLINE_REASON_VERSION_MISMATCH;
    default:
      return DeclineReason.DECLINE_REASON_CONNECT_FAILED;
  }
}

/** The error a slot or connection end code stands for: an ERR_SOCKGATE_* class, else the errno's. */
export function rdmaEndError(code: string, errno: number, what: string): SockgateError {
  const cls = ERROR_CLASSES.get(code);
  if (cls) return new cls(`${what}: ${code}`);
  const name = code || (errno ? `errno ${errno}` : 'error');
  return fromSystemError(Object.assign(new Error(name), { code: code || undefined, errno }), what);
}
