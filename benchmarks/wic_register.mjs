// WIC load generator in Node (npm `ws`): REGISTER refreshes over WebSocket, one persistent
// connection per user, as a browser WIC keeps one (RFC 7118 §5, RFC 5626 outbound).
//
// Driven by benchmarks/ws_register.py; usable alone:
//   node benchmarks/wic_register.mjs --url ws://127.0.0.1:8080 --users 200 --seconds 10 [--rate 2000]
//          [--domain ims.localdomain] [--first 1] [--timeout 5] [--wait 1]
// Each user registers once (not timed), then the users refresh their registrations: closed
// loop (each WIC sends its next REGISTER when the last one got its final answer) or, with
// --rate, open loop at that many REGISTERs per second spread over idle WICs.  A 401/407 is
// answered with RFC 7616 digest (MD5/SHA-256, qop=auth) from password "secret-NNNN", as the
// users file of the benchmarks has it.  With --wait the timed phase starts on a line on stdin.  The result is one JSON line on stdout, with this
// process's own CPU seconds (process.cpuUsage) for the timed phase.
import { randomBytes } from "node:crypto";
import WebSocket from "ws";
import { digestAuthorization, openLoop } from "./_wic_common.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const url = args.url;
const users = Number(args.users ?? 200);
const seconds = Number(args.seconds ?? 10);
const rate = Number(args.rate ?? 0);
const domain = args.domain ?? "ims.localdomain";
const first = Number(args.first ?? 1);
const timeout = Number(args.timeout ?? 5) * 1000;
const hex = (n) => randomBytes(n).toString("hex");

class Wic {
  constructor(index) {
    this.user = `user${String(index).padStart(4, "0")}`;
    this.password = `secret-${String(index).padStart(4, "0")}`;
    this.host = `${hex(4)}.invalid`;
    this.instance = `<urn:uuid:${hex(4)}-0000-4000-8000-${hex(6)}>`;
    this.callId = hex(10);
    this.tag = hex(4);
    this.cseq = 0;
    this.pending = null; // {resolve, reject, timer}
  }

  register(authorization) {
    this.cseq += 1;
    const aor = `sip:${this.user}@${domain}`;
    return (
      `REGISTER sip:${domain} SIP/2.0\r\n` +
      `Via: SIP/2.0/WS ${this.host};branch=z9hG4bK${hex(8)}\r\n` +
      "Max-Forwards: 70\r\n" +
      `From: <${aor}>;tag=${this.tag}\r\n` +
      `To: <${aor}>\r\n` +
      `Call-ID: ${this.callId}\r\n` +
      `CSeq: ${this.cseq} REGISTER\r\n` +
      `Contact: <sip:${this.user}@${this.host};transport=ws;ob>;reg-id=1;+sip.instance="${this.instance}";expires=600\r\n` +
      "Supported: path, outbound, gruu\r\n" +
      (authorization ? `Authorization: ${authorization}\r\n` : "") +
      "Content-Length: 0\r\n\r\n"
    );
  }

  answer(challenge) {
    return digestAuthorization(challenge, this.user, this.password, domain);
  }


  open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(url, "sip", { perMessageDeflate: false });
      this.ws.on("open", resolve);
      this.ws.on("error", reject);
      this.ws.on("message", (data) => this.received(data.toString()));
      this.ws.on("close", () => this.settle(new Error("closed")));
    });
  }

  received(text) {
    if (!text.startsWith("SIP/2.0 ")) return; // a request from the core: not expected here
    const status = Number(text.slice(8, 11));
    if (status < 200 || !this.pending) return;
    if ((status === 401 || status === 407) && !this.pending.answered) {
      const header = text.match(/\r\n(?:WWW|Proxy)-Authenticate\s*:\s*([^\r\n]+)/i);
      if (header) {
        this.pending.answered = true;
        this.ws.send(this.register(this.answer(header[1])));
        return;
      }
    }
    this.settle(status === 200 ? null : new Error(`status ${status} ${text.slice(12, text.indexOf("\r\n")).trim()}`));
  }

  settle(error) {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve();
  }

  registerOnce() {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject, answered: false, timer: setTimeout(() => this.settle(new Error("timeout")), timeout) };
      this.ws.send(this.register());
    });
  }
}

const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);

async function main() {
  const wics = Array.from({ length: users }, (_, i) => new Wic(first + i));
  for (let i = 0; i < wics.length; i += 100) await Promise.all(wics.slice(i, i + 100).map((w) => w.open()));
  for (let i = 0; i < wics.length; i += 100) await Promise.all(wics.slice(i, i + 100).map((w) => w.registerOnce()));
  process.stdout.write(JSON.stringify({ ready: wics.length }) + "\n");
  if (args.wait !== undefined) await new Promise((go) => process.stdin.once("data", go)); // the driver's "go"

  const latencies = [];
  const errors = {};
  const failed = (error) => (errors[error.message] = (errors[error.message] ?? 0) + 1);
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const end = start + seconds * 1000;
  const one = async (wic) => {
    const t0 = performance.now();
    try {
      await wic.registerOnce();
      latencies.push(performance.now() - t0);
    } catch (error) {
      failed(error);
    }
  };
  let offered = 0;
  if (rate > 0) {
    const loop = await openLoop([...wics], rate, seconds, one);
    offered = loop.offered;
    const skipped = loop.skipped;
    if (skipped) errors["no idle WIC"] = skipped;
  } else {
    await Promise.all(
      wics.map(async (wic) => {
        while (performance.now() < end) {
          offered += 1;
          await one(wic);
        }
      }),
    );
  }
  const elapsed = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  latencies.sort((a, b) => a - b);
  process.stdout.write(
    JSON.stringify({
      offered,
      registered: latencies.length,
      seconds: elapsed,
      p50_ms: percentile(latencies, 0.5),
      p99_ms: percentile(latencies, 0.99),
      errors,
      cpu_s: (cpu.user + cpu.system) / 1e6,
    }) + "\n",
  );
  for (const wic of wics) wic.ws.terminate();
  process.exit(0); // stdin, read for the driver's "go", would keep the loop alive
}

main().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
