/**
 * Attach tokens and attach timing, as both ends know them: a token is 256
 * random bits; data planes whose handshake has no room for more carry its
 * short form (rdma_cm private data and BIND hold 16 bytes).
 */

/** Token length in bytes: 256 bits, beyond guessing. */
export const ATTACH_TOKEN_BYTES = 32;
/**
 * A token's short form: its first 16 bytes (still 128 random bits), for a data
 * plane whose handshake has no room for more. The gateway redeems it only with
 * redeemShort(), and only for the transport the token was issued for.
 */
export const SHORT_TOKEN_BYTES = 16;
/** How long a client's attach (connect, or waiting for its session) may take by default. */
export const ATTACH_TIMEOUT_MS = 10_000;
