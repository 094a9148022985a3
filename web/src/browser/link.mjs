/**
 * A device link and the server behind it: `https://HOST:PORT/device#job=NAME&token=TOKEN` carries the job and its
 * token in the fragment (never sent to a server, kept out of logs), which the page reads and then removes from
 * the address bar; the token is checked over HTTP (`GET /jobs/NAME/auth`) before the WebSocket opens, because a
 * page cannot read why a WebSocket handshake was refused.
 */

/**
 * The job and token of a link's fragment (`#job=NAME&token=TOKEN`); missing ones are ''.
 * @param {string} hash `location.hash`
 * @returns {{job: string, token: string}}
 */
export function readLink(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ''));
  return { job: params.get('job') ?? '', token: params.get('token') ?? '' };
}

/**
 * The WebSocket URL of the server that served `location` (client.mjs appends `/jobs/NAME`).
 * @param {{protocol: string, host: string}} location
 */
export function socketUrl(location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
}

/** What to tell the user for each refusal of GET /jobs/NAME/auth (endpoints.py's reasons). */
const REFUSALS = {
  no_token: () => 'no token: open the device link you were given, or paste its token',
  invalid_token: (job) => `the server refused this token for job "${job}": it is wrong, revoked or another job's. `
    + `Ask the server's operator for a new link (mobillm token create --job ${job} --link URL)`,
  bad_job: () => 'that is not a job name: 1-64 letters, digits, "_", "." or "-", not starting with "."',
};

/**
 * Does `token` ('' for none) open job `job` on the server at `origin`? `{ok: true}` or `{ok: false, message}` with what to do.
 *
 * @param {string} origin the server's origin (the page's own)
 * @param {string} job
 * @param {string} token
 * @param {typeof fetch} [fetchImpl]
 * @returns {Promise<{ok: true} | {ok: false, message: string}>}
 */
export async function checkToken(origin, job, token, fetchImpl = globalThis.fetch) {
  if (!job) return { ok: false, message: 'no job name: open the device link you were given, or type the job\'s name' };
  let response;
  try { // no token: the server says whether it needs one (`mobillm serve --no-auth` does not)
    response = await fetchImpl(new URL(`/jobs/${encodeURIComponent(job)}/auth`, origin), {
      headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: 'no-store',
    });
  } catch (err) {
    return { ok: false, message: `could not reach the server at ${origin} (${err.message}); check the connection and try again` };
  }
  if (response.ok) return { ok: true };
  const body = await response.json().catch(() => ({}));
  const advice = REFUSALS[body.error];
  const message = advice ? advice(job) : `the server answered HTTP ${response.status}: ${body.message ?? response.statusText}`;
  return { ok: false, message };
}
