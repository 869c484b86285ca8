/**
 * Keeps deploy/ from rotting: the example config and the DaemonSet's ConfigMap
 * must validate against the real schema, the stop timeouts must cover the
 * drain, and the dashboard may only query metrics the gateway exports.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { loadConfig, splitListenAddress } from '../../server/config.js';
import { METRICS } from '../../server/telemetry.js';

/** A path under the repository's deploy/ folder (this file runs from dist/test/deploy/). */
function deployPath(rel: string): string {
  return fileURLToPath(new URL(`../../../deploy/${rel}`, import.meta.url));
}

type Tree = Record<string, any>;

function k8sObjects(): Tree[] {
  const docs = parseAllDocuments(readFileSync(deployPath('kubernetes/daemonset.yaml'), 'utf8'));
  return (Array.isArray(docs) ? docs : [docs]).map((d) => {
    if (d.errors.length) throw d.errors[0];
    return d.toJS() as Tree;
  }).filter(Boolean);
}

test('config.example.yaml validates against the schema', (t) => {
  const config = loadConfig({ file: deployPath('config.example.yaml') });
  t.is(config.tls, undefined, 'the tls section stays commented out');
  t.false(config.anonymous.enabled);
  t.is(config.listen.control, 'unix:/run/sockgate/control.sock');
  // Only digests in the example, never clear tokens.
  t.true(config.identities.length >= 2);
  for (const id of config.identities) {
    t.deepEqual(id.tokens, [], `identity ${id.name} has clear tokens`);
    t.true(id.tokens_sha256.length > 0 || id.uids.length > 0 || id.vsock_cids.length > 0 || id.vmm_paths.length > 0);
  }
  // First match decides: the example shows a deny before the allows.
  t.is(config.rules[0]!.action, 'deny');
  t.true(config.rules.some((r) => r.action === 'allow'));
  const firstAllow = config.rules.findIndex((r) => r.action === 'allow');
  t.true(config.rules.slice(0, firstAllow).every((r) => r.action === 'deny'));
  // Rules reference only identities the example defines.
  const names = new Set(config.identities.map((i) => i.name));
  for (const rule of config.rules) for (const who of rule.identities) t.true(who === '*' || names.has(who), `${rule.name}: ${who}`);
  // The metrics endpoint stays on loopback.
  const metrics = splitListenAddress(config.listen.metrics);
  t.true('host' in metrics && metrics.host === '127.0.0.1');
});

test('systemd TimeoutStopSec covers the drain timeout and the socket sits in the RuntimeDirectory', (t) => {
  const unit = readFileSync(deployPath('sockgate.service'), 'utf8');
  const config = loadConfig({ file: deployPath('config.example.yaml') });
  const stop = /^TimeoutStopSec=(\d+)s?$/m.exec(unit);
  t.truthy(stop);
  t.true(Number(stop![1]) * 1000 > config.shutdown.drain_timeout_ms);
  t.regex(unit, /^RuntimeDirectory=sockgate$/m);
  t.regex(unit, /^ExecStart=\S*sockgate serve --config \/etc\/sockgate\/config\.yaml$/m);
  t.true(config.listen.control.startsWith('unix:/run/sockgate/'));
});

test('the DaemonSet ConfigMap validates with the DaemonSet environment applied', (t) => {
  const objects = k8sObjects();
  const configMap = objects.find((o) => o['kind'] === 'ConfigMap')!;
  const ds = objects.find((o) => o['kind'] === 'DaemonSet')!;
  t.truthy(configMap);
  t.truthy(ds);
  const pod = ds['spec']['template'];
  const container = pod['spec']['containers'][0];

  // Kubernetes expands $(NODE_IP) from the env var defined before it.
  const nodeIp = '10.11.12.13';
  const env: NodeJS.ProcessEnv = {};
  for (const e of container['env'] as Array<{ name: string; value?: string }>) {
    if (e.value !== undefined) env[e.name] = e.value.replaceAll('$(NODE_IP)', nodeIp);
  }
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-deploy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'config.yaml');
  writeFileSync(file, configMap['data']['config.yaml']);
  const config = loadConfig({ file, env });

  t.is(config.listen.control, `${nodeIp}:7070`);
  t.is(config.listen.metrics, `${nodeIp}:9464`);
  t.true(pod['spec']['hostNetwork']);
  t.true(pod['spec']['terminationGracePeriodSeconds'] * 1000 > config.shutdown.drain_timeout_ms);
  // Probes hit the control port with gRPC health checking.
  const control = splitListenAddress(config.listen.control) as { port: number };
  for (const probe of ['livenessProbe', 'readinessProbe']) t.is(container[probe]['grpc']['port'], control.port, probe);
  // Scrape annotations point at the metrics port.
  const metrics = splitListenAddress(config.listen.metrics) as { port: number };
  t.is(pod['metadata']['annotations']['prometheus.io/port'], String(metrics.port));
  t.is(pod['metadata']['annotations']['prometheus.io/scrape'], 'true');
  // The ConfigMap is mounted where the args say.
  t.deepEqual(container['args'], ['serve', '--config', '/etc/sockgate/config.yaml']);
});

test('the Grafana dashboard queries only metrics the gateway exports', (t) => {
  const dashboard = JSON.parse(readFileSync(deployPath('grafana/sockgate-dashboard.json'), 'utf8')) as Tree;
  // Prometheus names: dots become underscores, counters gain _total, histograms expose _bucket/_sum/_count.
  const exported = new Set<string>(['target_info']);
  for (const m of Object.values(METRICS)) {
    const base = m.name.replaceAll('.', '_');
    if (m.kind === 'counter' || m.kind === 'observableCounter') exported.add(`${base}_total`);
    else if (m.kind === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(base + s);
    else exported.add(base);
  }
  const exprs: string[] = [];
  for (const panel of dashboard['panels'] as Tree[]) for (const target of panel['targets'] as Tree[]) exprs.push(target['expr']);
  for (const v of dashboard['templating']['list'] as Tree[]) if (typeof v['definition'] === 'string') exprs.push(v['definition']);
  t.true(exprs.length >= 4);
  const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\b(sockgate_[a-z_]+|target_info)\b/g)].map((m) => m[1]!)));
  for (const name of used) t.true(exported.has(name), `dashboard uses ${name}, which the gateway does not export`);
  // The four panels the dashboard exists for.
  for (const name of ['sockgate_sockets_open', 'sockgate_bytes_total', 'sockgate_connects_total', 'sockgate_fallbacks_total']) {
    t.true(used.has(name), name);
  }
});

test('the shm attach socket is where clients can reach it: RuntimeDirectory under systemd, a hostPath in the DaemonSet', (t) => {
  // systemd: PrivateTmp hides the tmpdir, so the default must come from the RuntimeDirectory ($RUNTIME_DIRECTORY).
  const unit = readFileSync(deployPath('sockgate.service'), 'utf8');
  t.regex(unit, /^PrivateTmp=yes$/m);
  t.regex(unit, /^RuntimeDirectory=sockgate$/m);
  const mode = /^RuntimeDirectoryMode=(0?[0-7]{3,4})$/m.exec(unit);
  t.truthy(mode);
  t.is(Number.parseInt(mode![1]!, 8) & 0o022, 0, 'the RuntimeDirectory is not writable by group or others (the shm check would refuse it)');
  t.notRegex(unit, /^[^#\n]*(SHM__PATH|shm\.path)/m, 'the unit does not override the path the config file may set');
  t.is(loadConfig({ file: deployPath('config.example.yaml') }).transports.shm.path, '', 'the example leaves the default ($RUNTIME_DIRECTORY/shm.sock)');

  // Kubernetes: the gateway runs as a non-root uid with its own /tmp; the socket goes on the node's /run/sockgate.
  const ds = k8sObjects().find((o) => o['kind'] === 'DaemonSet')!;
  const spec = ds['spec']['template']['spec'];
  const container = spec['containers'][0];
  const env = Object.fromEntries((container['env'] as Array<{ name: string; value?: string }>).map((e) => [e.name, e.value]));
  const shmPath = env['SOCKGATE_TRANSPORTS__SHM__PATH'];
  t.is(shmPath, '/run/sockgate/shm.sock', 'the same path as a root gateway\'s default');
  const dir = shmPath!.slice(0, shmPath!.lastIndexOf('/'));
  const mount = (container['volumeMounts'] as Tree[]).find((m) => m['mountPath'] === dir);
  t.truthy(mount, `the container mounts ${dir}`);
  const volume = (spec['volumes'] as Tree[]).find((v) => v['name'] === mount!['name']);
  t.is(volume?.['hostPath']?.['path'], dir, 'a hostPath, which client pods on the node mount too');
  // The kubelet makes the hostPath root-owned: an init container gives it to the gateway's uid, unwritable by others.
  const uid = spec['securityContext']['runAsUser'];
  const init = (spec['initContainers'] as Tree[] | undefined)?.find((c) => (c['volumeMounts'] as Tree[]).some((m) => m['name'] === mount!['name']));
  t.truthy(init, 'an init container prepares the directory');
  const script = (init!['command'] as string[]).join(' ');
  t.true(script.includes(`chown ${uid}:`), script);
  t.regex(script, /chmod 0?755 /);
});
