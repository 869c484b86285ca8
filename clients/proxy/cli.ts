/**
 * `sockgate proxy`: the guest proxy's command. registerProxyCommand() adds it
 * to a commander program (server/cli/index.ts wires it into `sockgate`).
 *
 * Once every listener is open it prints one JSON line to stdout,
 * `{"event":"ready","local":[...],"remote":[...],"socks":"127.0.0.1:1080"}`,
 * with the real ports (port 0 lets the kernel choose). Logs go to stderr.
 * SIGTERM or SIGINT stops listening and drains; a second signal exits at once.
 */
import { Option, type Command } from 'commander';
import { SockgateError } from '../../proto/errors.js';
import { loadProxyConfig, resolveProxySettings, type ProxyFlags } from './config.js';
import { GuestProxy } from './proxy.js';
import { registerRulesCommand } from './rules-cli.js';

/** Exit status for bad flags or config (as `sockgate connect` uses for invalid arguments). */
const EXIT_USAGE = 2;

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function fail(err: unknown): never {
  const e = err as Error & { code?: string };
  process.stderr.write(`sockgate proxy: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  const usage = e instanceof SockgateError && (e.code === 'ERR_SOCKGATE_INVALID_ARGUMENT' || e.code === 'ERR_SOCKGATE_INVALID_URI');
  process.exit(usage ? EXIT_USAGE : 1);
}

async function runProxy(flags: ProxyFlags): Promise<void> {
  let proxy: GuestProxy;
  try {
    const settings = resolveProxySettings(flags, flags.config ? loadProxyConfig(flags.config) : undefined);
    proxy = await GuestProxy.start(settings);
  } catch (err) {
    fail(err);
  }
  process.stdout.write(JSON.stringify({ event: 'ready', ...proxy.addresses }) + '\n');
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signals > 1) {
      proxy.logger.warn({ signal: sig }, 'second signal: exiting without drain');
      process.exit(1);
    }
    proxy.logger.info({ signal: sig }, 'stopping: no new connections, draining open ones');
    proxy.close().then(
      () => process.exit(0),
      (err: unknown) => {
        proxy.logger.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Add `proxy` to `program`. */
export function registerProxyCommand(program: Command): void {
  const proxy = program
    .command('proxy')
    .description('guest-side agent: local forwards (-L), reverse forwards (-R), a SOCKS5 server (--socks) and transparent mode (--transparent) through the gateway')
    .addOption(new Option('-g, --gateway <target>', 'the gateway: host:port, unix:/path, or vsock:2:<port> from a VM (AF_VSOCK through the native addon)').env('SOCKGATE_TARGET'))
    .addOption(new Option('--token <token>', 'bearer token').env('SOCKGATE_TOKEN'))
    .option('-L, --local <listen=uri>', 'local forward, e.g. 127.0.0.1:5432=tcp://db:5432 (repeatable)', collect, [])
    .option('-R, --remote <uri=target>', 'reverse forward: the gateway listens on uri, connections come to target, e.g. tcp://0.0.0.0:8080=127.0.0.1:80 (repeatable; target may be unix:/path or vsock-uds:/path/v.sock:<port>)', collect, [])
    .option('--socks <address>', 'run a SOCKS5 server here (host:port, port or unix:/path; e.g. 127.0.0.1:1080)')
    .option('--socks-user <name>', 'require RFC 1929 username/password: the username')
    .addOption(new Option('--socks-pass <password>', 'the password for --socks-user').env('SOCKGATE_SOCKS_PASS'))
    .option('--socks-udp-bind <uri>', 'gateway address UDP ASSOCIATE binds to (default udp://0.0.0.0:0)')
    .option('--transparent <address>', 'transparent mode: accept connections the kernel redirects here (nftables redirect/tproxy; see `proxy rules`) and open each to its original destination, e.g. [::]:15001')
    .option('--no-transparent-udp', 'transparent mode without the UDP (tproxy) socket')
    .option('--transport <list>', 'data transports to offer, in order, e.g. tcp,grpc')
    .option('--connect-timeout <ms>', 'gateway-side connect timeout')
    .option('-c, --config <file>', 'YAML config (gateway, token, transports, local_forwards, remote_forwards, socks, transparent, drain_timeout_ms, log_level)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']))
    .addHelpText('after', '\nPrints {"event":"ready",...} with the real listening addresses once every listener is open. SIGTERM drains, a second signal exits at once.')
    .action((opts: ProxyFlags) => runProxy(opts));
  registerRulesCommand(proxy);
}
