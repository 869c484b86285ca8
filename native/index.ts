/**
 * The one loader of the sockgate native addon (native/build/Release/sockgate_native.node).
 *
 * It declares the types of everything the addon exposes and wraps the raw
 * classes where that adds value: native errors become `NativeError` or
 * `RingCorruptError` (type errors stay `TypeError`), pump events are routed to
 * their link, and zero-copy loans become guard objects. The addon only offers
 * primitives; every decision (policy, sizes, when to grow a ring) stays in TS.
 *
 * Ownership: each class owns one OS resource. `close()` is the rule and
 * refuses (EBUSY) while the resource is in use; the native destructor is the
 * safety net.
 */
// The raw binding's types live in binding-types.ts; each wrapper lives in a file of its own.
export type * from './binding-types.js';
export * from './load-addon.js';
export { nativeCode, translateError, type NativeErrorCause } from './translate-error.js';
export * from './primitives.js';
export * from './eventfd.js';
export * from './shm-region.js';
export * from './pump.js';
export * from './attach-client.js';
export * from './transparent.js';
// Raised by attachClient; defined with the other error classes.
export { AttachRefusedError } from '../proto/errors.js';
