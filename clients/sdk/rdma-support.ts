/**
 * Whether this process can attach with rdma (rdmaSupport); what an rdma
 * failure means is mapped in proto/rdma-failures.ts (re-exported here).
 */
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

export { RdmaAttachError } from '../../proto/errors.js';

export { declineReasonOfRdmaFailure, rdmaEndError } from '../../proto/rdma-failures.js';
