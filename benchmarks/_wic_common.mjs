// Pieces shared by the Node WIC generators (wic_register.mjs, wic_calls.mjs).
import { createHash, randomBytes } from "node:crypto";

/** RFC 7616 digest (MD5 or SHA-256, qop=auth) answering one WWW-/Proxy-Authenticate challenge to
 * a REGISTER of sip:<domain>: the Authorization header value. */
export function digestAuthorization(challenge, user, password, domain) {
  const params = {};
  for (const [, key, value] of challenge.matchAll(/(\w+)="?([^",]*)"?/g)) params[key] = value;
  const algorithm = (params.algorithm ?? "MD5").toUpperCase();
  const hash = (text) => createHash(algorithm === "SHA-256" ? "sha256" : "md5").update(text).digest("hex");
  const uri = `sip:${domain}`;
  const ha1 = hash(`${user}:${params.realm}:${password}`);
  const ha2 = hash(`REGISTER:${uri}`);
  const cnonce = randomBytes(8).toString("hex");
  const response = hash(`${ha1}:${params.nonce}:00000001:${cnonce}:auth:${ha2}`);
  const opaque = params.opaque !== undefined ? `, opaque="${params.opaque}"` : "";
  return `Digest username="${user}", realm="${params.realm}", nonce="${params.nonce}", uri="${uri}", response="${response}", algorithm=${algorithm}${opaque}, qop=auth, nc=00000001, cnonce="${cnonce}"`;
}

/** Open loop: `start(wic)` at `rate` per second for `seconds`, each time on the longest-idle WIC of
 * `idle` (spread over every WIC, as real traffic is), which goes back to `idle` once its promise
 * settles.  Resolves when every operation started has settled: {offered, skipped} (skipped: due
 * while no WIC was idle). */
export async function openLoop(idle, rate, seconds, start) {
  const begin = performance.now();
  const end = begin + seconds * 1000;
  const busy = new Set();
  let offered = 0;
  let skipped = 0;
  await new Promise((done) => {
    const tick = () => {
      const now = performance.now();
      if (now >= end) return done();
      const due = Math.floor(((now - begin) / 1000) * rate) - offered;
      for (let i = 0; i < due; i++) {
        offered += 1;
        const wic = idle.shift();
        if (!wic) {
          skipped += 1;
          continue;
        }
        const operation = start(wic).finally(() => {
          busy.delete(operation);
          idle.push(wic);
        });
        busy.add(operation);
      }
      setTimeout(tick, 2);
    };
    tick();
  });
  await Promise.all(busy);
  return { offered, skipped };
}
