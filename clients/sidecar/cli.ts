/**
 * `sockgate sidecar --config <file>`: run the load-balancer sidecar in the
 * foreground. SIGHUP reloads the config (so does a change of the file unless
 * --no-watch); SIGTERM or SIGINT stop gracefully: stop accepting, let open
 * connections finish for `shutdown.drain_timeout_ms`, close the rest, exit 0.
 * A second signal exits at once with status 1.
 *
 * Wire it into a commander program with `registerSidecarCommand(program, createTelemetry)`.
 */
import type { Command } from 'commander';
import { SockgateError } from '../../proto/errors.js';
import { Sidecar, type SidecarTelemetryFactory } from './sidecar.js';
import { loadSidecarConfig } from './sidecar-config.js';

/** Exit statuses, by error code (the same numbers `sockgate connect` uses); anything else exits 1. */
export const SIDECAR_EXIT_CODES: Readonly<Record<string, number>> = {
  ERR_SOCKGATE_INVALID_ARGUMENT: 2,
  ERR_SOCKGATE_INVALID_URI: 2,
  ERR_SOCKGATE_GATEWAY_UNAVAILABLE: 11,
};

export interface SidecarCommandOptions {
  config: string;
  /** false with --no-watch. */
  watch: boolean;
  /** --check: validate the config and exit. */
  check?: boolean;
}

function fail(err: unknown): never {
  const e = err as Error & { code?: string };
  process.stderr.write(`sockgate sidecar: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(e instanceof SockgateError ? (SIDECAR_EXIT_CODES[e.code] ?? 1) : 1);
}

/** The action of `sockgate sidecar`: start, then serve until a signal. */
export async function runSidecar(opts: SidecarCommandOptions, createTelemetry: SidecarTelemetryFactory): Promise<void> {
  let sidecar: Sidecar;
  try {
    const config = loadSidecarConfig(opts.config);
    if (opts.check) {
      process.stdout.write(`${opts.config}: ok (${config.listeners.length} listeners, ${config.clusters.length} clusters)\n`);
      return;
    }
    const token = process.env['SOCKGATE_TOKEN'];
    sidecar = new Sidecar({ configPath: opts.config, config, watch: opts.watch, createTelemetry, ...(token ? { gatewayToken: token } : {}) });
    await sidecar.start();
  } catch (err) {
    fail(err);
  }
  process.on('SIGHUP', () => {
    // Logged and counted by the sidecar; the running config stays on error.
    sidecar.reload('SIGHUP').catch(() => {});
  });
  let signals = 0;
  const onStop = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      process.stderr.write(`sockgate sidecar: second ${signal}: exiting without drain\n`);
      process.exit(1);
    }
    sidecar.close().then(
      () => process.exit(0),
      (err: unknown) => fail(err),
    );
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
}

/** Add `sidecar --config <file>` to a commander program; the composition root supplies telemetry. */
export function registerSidecarCommand(program: Command, createTelemetry: SidecarTelemetryFactory): void {
  program
    .command('sidecar')
    .description('run the L4 load-balancer sidecar: local listeners balanced over clusters of endpoints reached through the gateway')
    .requiredOption('-c, --config <file>', 'sidecar YAML configuration (reloaded on SIGHUP and when the file changes)')
    .option('--no-watch', 'do not reload when the config file changes (SIGHUP still does)')
    .option('--check', 'validate the configuration and exit')
    .action((opts: SidecarCommandOptions) => runSidecar(opts, createTelemetry));
}
