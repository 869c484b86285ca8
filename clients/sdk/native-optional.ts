/**
 * The native addon as the SDK loads it: optional. The SDK works without it
 * (tcp and grpc planes); shm, rdma and vsock need it and say why they are
 * unavailable with `nativeError` when it did not load. Loaded once for all of
 * them.
 */
export type NativeModule = typeof import('../../native/index.js');

let loaded: NativeModule | undefined;
let error = '';
try {
  loaded = await import('../../native/index.js');
} catch (err) {
  error = (err as Error).message;
}

/** The addon, or undefined when it did not load. */
export const native: NativeModule | undefined = loaded;
/** Why it did not load ('' when it did). */
export const nativeError: string = error;
