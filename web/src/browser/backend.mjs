/**
 * Which ONNX Runtime Web backend the page runs the bundle on, and why: WASM on several threads needs a secure
 * context (HTTPS or localhost) that is cross-origin isolated (the server's COOP/COEP headers), which is what
 * gives a page SharedArrayBuffer; otherwise one thread. WebGPU is reported, not used: the page runs ONNX Runtime's
 * WASM build (bundle/runtime.mjs opens every session on the `wasm` execution provider).
 */

/** The most WASM threads the page asks for (ONNX Runtime Web's own default cap). */
export const MAX_THREADS = 4;

/**
 * What the browser grants this page.
 * @param {object} [scope] the page's global object
 * @returns {{secure: boolean, isolated: boolean, sharedMemory: boolean, webgpu: boolean, cores: number,
 *   origin: string, storage: boolean}}
 */
export function browserCapabilities(scope = globalThis) {
  return {
    secure: scope.isSecureContext === true,
    isolated: scope.crossOriginIsolated === true,
    sharedMemory: typeof scope.SharedArrayBuffer === 'function',
    webgpu: scope.navigator?.gpu !== undefined,
    cores: scope.navigator?.hardwareConcurrency ?? 1,
    origin: scope.location?.origin ?? '',
    storage: scope.caches !== undefined,
  };
}

/** What the page says outside a secure context, and what to do about it. */
export function insecureMessage(origin) {
  return `${origin} is plain HTTP from an address that is not localhost, which browsers do not treat as a secure `
    + 'context: they withhold threads, WebGPU and the storage that keeps the model for offline use. The job still '
    + 'runs, on one thread, downloading the model on every visit. To fix it, serve over TLS '
    + '(mobillm serve --web MODEL --certfile CERT.pem --keyfile KEY.pem; see the README, "Fine-tune from a phone") '
    + 'and open the https:// link.';
}

/**
 * The backend for `caps` (browserCapabilities'): `threads` for Bundle.load, a `label` to show, the `reasons` it
 * was chosen and the `warnings` the user should act on.
 *
 * @param {ReturnType<typeof browserCapabilities>} caps
 * @returns {{kind: 'wasm-threads' | 'wasm', label: string, threads: number, reasons: string[], warnings: string[]}}
 */
export function chooseBackend(caps) {
  const reasons = [];
  const warnings = caps.secure ? [] : [insecureMessage(caps.origin)];
  const threads = Math.min(MAX_THREADS, Math.ceil(caps.cores / 2));
  if (!caps.secure) reasons.push('not a secure context: no cross-origin isolation, so no WASM threads');
  else if (!caps.isolated) reasons.push('crossOriginIsolated is false (the server sent no COOP/COEP headers): no WASM threads');
  else if (!caps.sharedMemory) reasons.push('this browser has no SharedArrayBuffer: no WASM threads');
  else if (threads < 2) reasons.push(`${caps.cores} CPU core(s): one WASM thread`);
  else reasons.push(`cross-origin isolated: ${threads} WASM threads on ${caps.cores} cores`);
  if (caps.webgpu) reasons.push('the browser offers WebGPU, but this page runs ONNX Runtime\'s WASM build (on the CPU)');
  else reasons.push(caps.secure ? 'no WebGPU in this browser' : 'no WebGPU outside a secure context');
  if (caps.secure && !caps.storage) reasons.push('no Cache Storage: the model is downloaded on every visit');
  const parallel = caps.secure && caps.isolated && caps.sharedMemory && threads >= 2;
  return parallel
    ? { kind: 'wasm-threads', label: `WASM, ${threads} threads`, threads, reasons, warnings }
    : { kind: 'wasm', label: 'WASM, single thread', threads: 1, reasons, warnings };
}
