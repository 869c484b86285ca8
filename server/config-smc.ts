/**
 * Config schema of kernel SMC (`smc:` and a rule's `smc:`): host sockets
 * opened as SMC toward destinations a rule marks `smc: prefer`, the data port
 * accepted as SMC, the data connections to peer gateways dialed as SMC, and the UEIDs / PNET ids applied over generic netlink at
 * start (CAP_NET_ADMIN). Split from config.ts, which holds the rest.
 */
import { z } from 'zod';

/** The kernel keeps at most 4 user EIDs (SMC_MAX_UEID). */
const MAX_UEIDS = 4;
/** PNET entries applied at start; a host has a handful of interfaces. */
const MAX_PNETS = 16;

/** What smc_clc_ueid_valid accepts: up to 32 of A-Z 0-9 . - starting with a letter or digit (blank-padded on the wire). */
const ueid = z.string().regex(/^[A-Z0-9][A-Z0-9.-]{0,31}$/, 'a UEID: 1-32 characters of A-Z, 0-9, "." and "-", starting with a letter or digit');
/** A PNET id: up to 16 letters and digits (the kernel uppercases; we ask for the form it keeps). */
const pnetId = z.string().regex(/^[A-Z0-9]{1,16}$/, 'a PNET id: 1-16 characters of A-Z and 0-9');
const ifName = z.string().regex(/^[^\s/]{1,15}$/, 'an interface name (1-15 characters, no "/" or space)');

/** A rule's `smc`: `prefer` opens its host stream sockets as SMC (the kernel falls back to TCP by itself). */
export const ruleSmcSchema = z.enum(['off', 'prefer']).default('off');

export const smcSchema = z
  .strictObject({
    /** Accept the gateway's own tcp data-port connections on an SMC socket (two gateways on SMC hosts then talk SMC-R). */
    data_port: z.boolean().default(false),
    /**
     * `prefer`: the data connections this gateway opens to peer gateways (`peers`
     * routes on the tcp plane) are dialed as SMC through the SDK (its `smc` option);
     * the peer's data port must accept SMC (its smc.data_port). Falls back to TCP
     * inside the kernel, or as plain TCP where this host has no SMC (logged, not an error).
     */
    peer_dial: z.enum(['off', 'prefer']).default('off'),
    /** User EIDs to add at start (SMC-Rv2 is proposed only with a UEID on both sides). Needs CAP_NET_ADMIN. */
    ueids: z.array(ueid).max(MAX_UEIDS).default([]),
    /** PNET table entries to add at start: an Ethernet interface and its RDMA device under one id. Needs CAP_NET_ADMIN. */
    pnets: z
      .array(z.strictObject({ id: pnetId, eth: ifName.optional(), ib: ifName.optional(), ib_port: z.number().int().min(1).max(255).default(1) }))
      .max(MAX_PNETS)
      .default([]),
    /** How long one SMC_DIAG dump answers status/GetInfo for every SMC socket (one netlink dump per period at most). */
    diag_cache_ms: z.number().int().min(0).max(60_000).default(1000),
  })
  .prefault({});

export type SmcConfig = z.infer<typeof smcSchema>;
