// Anthropic's sandbox-runtime (srt) as a standalone, TLS-terminating, credential-masking proxy
// for bench/peers.py. Usage: node srt_proxy.mjs <sandbox-runtime dir> <config.json> <out.json>
// The secret comes from the environment variable the config names (never argv).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dir, configPath, outPath] = process.argv.slice(2);
const srt = await import(pathToFileURL(join(dir, 'dist', 'index.js')).href);
const { SandboxManager } = srt;
const { readFileSync } = await import('node:fs');
const cfg = JSON.parse(readFileSync(configPath, 'utf8'));
await SandboxManager.initialize(cfg.runtime);
await SandboxManager.waitForNetworkInitialization();
// What a wrap does for a masked env var (credential-mask-env.js buildMaskedEnvVars): register
// a sentinel for the real value, scoped to injectHosts. The agent then sends the sentinel.
const sentinels = {};
for (const v of cfg.runtime.credentials?.envVars ?? []) {
  sentinels[v.name] = SandboxManager.getSentinelRegistry().register(
    v.name, process.env[v.name], v.injectHosts);
}
const ca = SandboxManager.getMitmCA();
writeFileSync(outPath, JSON.stringify({
  port: SandboxManager.getProxyPort(),
  token: SandboxManager.getProxyAuthToken() ?? null,
  sentinels,
  ca_cert_path: ca?.certPath ?? null,
}));
process.on('SIGTERM', async () => { await SandboxManager.reset(); process.exit(0); });
setInterval(() => {}, 1 << 30);
