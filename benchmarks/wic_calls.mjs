// WIC calls generator in Node (npm `ws`): whole calls with full ICE, as benchmarks/calls.py's
// Python generator places them, for a fraction of its CPU.
//
// Driven by benchmarks/calls.py (--generator node); usable alone:
//   node benchmarks/wic_calls.mjs --url ws://127.0.0.1:8080 --target sip:uas@ims.localdomain
//        [--wics 60] [--first 1] [--rate 100] [--seconds 10] [--hold 0] [--ice full|lite]
//        [--domain ims.localdomain] [--timeout 10] [--warmup-rate 20] [--warmup-seconds 1] [--wait 1]
//
// Per WIC: one WebSocket (`sip` subprotocol, RFC 7118) and one UDP socket, its ICE host candidate.
// Each WIC registers once (RFC 5626 outbound Contact; a 401/407 is answered with RFC 7616 digest
// from password "secret-NNNN", as the users file of the benchmarks has it).  Then calls start
// open loop at --rate on the longest-idle WIC:
//   1. INVITE with a Chrome-like WebRTC offer → 100/180/200 → ACK (a non-2xx final is ACKed as
//      RFC 3261 §17.1.1.3 says and counted as a failure);
//   2. ICE as a controlling full agent with aggressive nomination (RFC 8445 §7.2.2): Binding
//      requests with USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY keyed
//      with the eP-CSCF's ice-pwd and FINGERPRINT, resent with the RFC 8445 §14.3 RTO of a single
//      pair (50 ms, doubled up to 500 ms; a late success to an earlier check counts); the
//      eP-CSCF's own checks are answered (XOR-MAPPED-ADDRESS, integrity keyed with our pwd).
//      The call's setup ends when our nominating check succeeded and, with --ice full, the
//      eP-CSCF's check was answered;
//   3. --hold seconds, then BYE → 200.
// Requests from the edge (a BYE from the core side, OPTIONS, …) are answered 200; a BYE ends the
// call it belongs to as a failure.  DTLS is not run: the eP-CSCF's ClientHello is ignored.
//
// Output, one JSON line each: {"ready": n} once every WIC registered and the warm-up ran (with
// --wait the timed phase then starts on a line on stdin), then the result: offered, completed,
// failures by step, setup and INVITE→200 p50/p99 in ms, and this process's own CPU seconds
// (process.cpuUsage) for the timed phase.
import { createHmac, randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { monitorEventLoopDelay } from "node:perf_hooks";
import zlib from "node:zlib";
import WebSocket from "ws";
import { digestAuthorization, openLoop } from "./_wic_common.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const url = args.url;
const target = args.target;
const wicCount = Number(args.wics ?? 60);
const first = Number(args.first ?? 1);
const rate = Number(args.rate ?? 100);
const seconds = Number(args.seconds ?? 10);
const hold = Number(args.hold ?? 0) * 1000;
const fullIce = (args.ice ?? "full") === "full";
const domain = args.domain ?? "ims.localdomain";
const stepTimeout = Number(args.timeout ?? 10) * 1000;
const warmupRate = Number(args["warmup-rate"] ?? 20);
const warmupSeconds = Number(args["warmup-seconds"] ?? 1);
const hex = (n) => randomBytes(n).toString("hex");
// Per-call identifiers (Call-ID, tags, branches, STUN transaction ids) need to be unique, not
// secret: a random prefix per process and a counter, rather than the CSPRNG for each (which
// was a tenth of this generator's CPU).
const ID_PREFIX = hex(6);
const STUN_PREFIX = randomBytes(8);
let idCounter = 0;
const uid = () => ID_PREFIX + (++idCounter).toString(16).padStart(8, "0");
const stunTransactionId = () => {
  const id = Buffer.allocUnsafe(12);
  STUN_PREFIX.copy(id, 0);
  id.writeUInt32BE(++idCounter >>> 0, 8);
  return id;
};
const FINGERPRINT = "sha-256 " + [...randomBytes(32)].map((b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");

class CallFailed extends Error {}

// What this generator sent and received beyond one of each per call (printed with the result): the
// retransmitted 2xx it ACKed again, its ICE checks (first and resent), the edge's checks it answered.
const tally = { retransmitted_2xx: 0, checks_sent: 0, checks_resent: 0, check_responses: 0, edge_checks_answered: 0, dtls_ignored: 0 };

// --- STUN (RFC 8489) for ICE (RFC 8445 §7.1.1, §7.1.2) -------------------------------------------

export const MAGIC_COOKIE = 0x2112a442;
const BINDING_REQUEST = 0x0001;
const BINDING_SUCCESS = 0x0101;
const BINDING_ERROR = 0x0111;
const ATTR = { USERNAME: 0x0006, MESSAGE_INTEGRITY: 0x0008, XOR_MAPPED_ADDRESS: 0x0020, PRIORITY: 0x0024, USE_CANDIDATE: 0x0025, FINGERPRINT: 0x8028, ICE_CONTROLLING: 0x802a };

// RFC 8489 §14.7: CRC-32 of ISO 3309 (zlib's), XORed with 0x5354554e.  zlib.crc32 exists from
// Node 20.15 / 22.2; older ones get the table form.
const CRC_TABLE = Int32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
export function tableCrc32(buffer) {
  let c = -1;
  for (let i = 0; i < buffer.length; i++) c = CRC_TABLE[(c ^ buffer[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
const crc32 = typeof zlib.crc32 === "function" ? zlib.crc32 : tableCrc32;

/** One STUN message: attributes as [type, Buffer] in order; MESSAGE-INTEGRITY (RFC 8489 §14.5,
 * HMAC-SHA1 keyed with the short-term password) and FINGERPRINT appended last, each computed over
 * the message with the header length already counting it. */
export function stunMessage(type, transactionId, attributes, key) {
  const parts = [];
  for (const [attrType, value] of attributes) {
    const head = Buffer.alloc(4);
    head.writeUInt16BE(attrType, 0);
    head.writeUInt16BE(value.length, 2);
    parts.push(head, value, Buffer.alloc((4 - (value.length % 4)) % 4));
  }
  const header = Buffer.alloc(20);
  header.writeUInt16BE(type, 0);
  header.writeUInt32BE(MAGIC_COOKIE, 4);
  transactionId.copy(header, 8);
  let body = Buffer.concat(parts);
  header.writeUInt16BE(body.length + 24, 2);
  const integrity = createHmac("sha1", key).update(header).update(body).digest();
  body = Buffer.concat([body, Buffer.from([0x00, 0x08, 0x00, 0x14]), integrity]);
  header.writeUInt16BE(body.length + 8, 2);
  const crc = (crc32(Buffer.concat([header, body])) ^ 0x5354554e) >>> 0;
  const fingerprint = Buffer.from([0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
  fingerprint.writeUInt32BE(crc, 4);
  return Buffer.concat([header, body, fingerprint]);
}

const uint32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};

/** RFC 8445 §7.1.1–7.1.2: a nominating check from the controlling agent. */
export function bindingCheck(transactionId, remoteUfrag, localUfrag, remotePwd, tieBreaker) {
  return stunMessage(
    BINDING_REQUEST,
    transactionId,
    [
      [ATTR.USERNAME, Buffer.from(`${remoteUfrag}:${localUfrag}`)],
      [ATTR.PRIORITY, uint32(1853824767)],
      [ATTR.ICE_CONTROLLING, tieBreaker],
      [ATTR.USE_CANDIDATE, Buffer.alloc(0)],
    ],
    remotePwd,
  );
}

/** RFC 8445 §7.3.1.4: the success response, XOR-MAPPED-ADDRESS (RFC 8489 §14.2) of the source. */
export function bindingSuccess(transactionId, address, port, localPwd) {
  const value = Buffer.alloc(8);
  value.writeUInt8(0x01, 1); // IPv4
  value.writeUInt16BE(port ^ (MAGIC_COOKIE >>> 16), 2);
  const [a, b, c, d] = address.split(".").map(Number);
  value.writeUInt32BE(((((a << 24) | (b << 16) | (c << 8) | d) >>> 0) ^ MAGIC_COOKIE) >>> 0, 4);
  return stunMessage(BINDING_SUCCESS, transactionId, [[ATTR.XOR_MAPPED_ADDRESS, value]], localPwd);
}

// --- one WIC ------------------------------------------------------------------------------------

const HEADER_PATTERNS = new Map();
const header = (text, long, compact) => {
  let pattern = HEADER_PATTERNS.get(long);
  if (!pattern) {
    pattern = new RegExp(`\\r\\n(?:${long}|${compact})[ \\t]*:[ \\t]*([^\\r\\n]*)`, "i");
    HEADER_PATTERNS.set(long, pattern);
  }
  const found = text.match(pattern);
  return found ? found[1].trim() : "";
};

class Wic {
  constructor(index) {
    this.user = `user${String(index).padStart(4, "0")}`;
    this.password = `secret-${String(index).padStart(4, "0")}`;
    this.host = `${hex(4)}.invalid`; // RFC 7118 §5.2
    this.instance = `<urn:uuid:${hex(4)}-0000-4000-8000-${hex(6)}>`;
    this.regCallId = hex(10);
    this.tag = hex(4);
    this.cseq = 0;
    this.ufrag = hex(4);
    this.pwd = hex(12);
    this.tieBreaker = randomBytes(8);
    this.waiter = null; // {callId, cseq, method, resolve, reject, timer}: one final response awaited
    this.checks = new Map(); // transaction id (hex) → settle(success: boolean)
    this.call = null; // the call in progress: {callId, checkedByPeer, onChecked, onBye}
    this.lastAck = null; // {callId, text}: the ACK of the last 2xx, sent again for its retransmissions
    this.closed = false;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.udp = dgram.createSocket("udp4");
      this.udp.on("message", (data, rinfo) => this.stunReceived(data, rinfo));
      this.udp.bind(0, "127.0.0.1", () => {
        this.port = this.udp.address().port;
        this.ws = new WebSocket(url, "sip", { perMessageDeflate: false });
        this.ws.on("open", resolve);
        this.ws.on("error", reject);
        this.ws.on("message", (data) => this.sipReceived(data.toString()));
        this.ws.on("close", () => {
          this.closed = true;
          this.settle(null, new CallFailed("WebSocket closed"));
        });
      });
    });
  }

  close() {
    this.ws?.terminate();
    this.udp?.close();
  }

  // --- SIP over the WebSocket ---

  send(text) {
    if (this.closed) throw new CallFailed("WebSocket closed");
    this.ws.send(text);
  }

  /** The final response to (callId, cseq, method), or CallFailed after `timeout` ms. */
  final(callId, cseq, method, step) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.settle(null, new CallFailed(`${step}: no final response`)), stepTimeout);
      this.waiter = { callId, cseq, method, resolve, reject, timer };
    });
  }

  settle(response, error) {
    const waiter = this.waiter;
    if (!waiter) return;
    this.waiter = null;
    clearTimeout(waiter.timer);
    if (error) waiter.reject(error);
    else waiter.resolve(response);
  }

  sipReceived(text) {
    if (!text.startsWith("SIP/2.0 ")) {
      this.requestReceived(text);
      return;
    }
    const status = Number(text.slice(8, 11));
    const waiter = this.waiter;
    if (status < 200) return;
    if (status < 300 && this.lastAck && header(text, "Call-ID", "i") === this.lastAck.callId && / INVITE\b/.test(header(text, "CSeq", "CSeq"))) {
      // RFC 3261 §13.2.2.4: a retransmitted 2xx (its ACK was lost on the core's UDP side) gets the ACK again.
      tally.retransmitted_2xx += 1;
      this.send(this.lastAck.text);
      return;
    }
    if (!waiter) return;
    const cseq = header(text, "CSeq", "CSeq").split(/\s+/);
    // The Call-ID too: a late answer to an earlier call of this WIC (given up on after the step
    // timeout) has the same CSeq, and taking it would fail this call as well.
    if (Number(cseq[0]) === waiter.cseq && cseq[1]?.toUpperCase() === waiter.method && header(text, "Call-ID", "i") === waiter.callId) {
      this.settle(text, null);
    }
  }

  /** RFC 3261 §8.2.6: a request from the edge (in-dialog BYE, OPTIONS…) answered 200. */
  requestReceived(text) {
    const method = text.slice(0, text.indexOf(" "));
    if (method === "ACK" || !method) return;
    const head = text.split("\r\n\r\n", 1)[0].split("\r\n");
    const copied = head.filter((line) => /^(via|v|from|f|call-id|i|cseq)[ \t]*:/i.test(line));
    let to = head.find((line) => /^(to|t)[ \t]*:/i.test(line)) ?? "To: <sip:invalid>";
    if (!/;\s*tag=/i.test(to)) to += `;tag=${uid()}`;
    this.send(["SIP/2.0 200 OK", ...copied, to, "Content-Length: 0", "", ""].join("\r\n"));
    if (method === "BYE" && this.call && header(text, "Call-ID", "i") === this.call.callId) this.call.onBye();
  }

  request(method, uri, callId, fromTag, to, cseq, routes = [], body = "") {
    const aor = `sip:${this.user}@${domain}`;
    const lines = [
      `${method} ${uri} SIP/2.0`,
      `Via: SIP/2.0/WS ${this.host};branch=z9hG4bK${uid()}`,
      "Max-Forwards: 70",
      `From: <${aor}>;tag=${fromTag}`,
      `To: ${to}`,
      `Call-ID: ${callId}`,
      `CSeq: ${cseq} ${method}`,
      ...routes.map((route) => `Route: ${route}`),
    ];
    if (method === "INVITE") lines.push(`Contact: <sip:${this.user}@${this.host};transport=ws;ob>`, "Content-Type: application/sdp");
    if (method === "REGISTER") {
      lines.push(`Contact: <sip:${this.user}@${this.host};transport=ws;ob>;reg-id=1;+sip.instance="${this.instance}";expires=600`, "Supported: path, outbound, gruu");
    }
    return [...lines, `Content-Length: ${Buffer.byteLength(body)}`, "", body].join("\r\n");
  }

  digest(challenge) {
    return digestAuthorization(challenge, this.user, this.password, domain);
  }


  /** REGISTER → (401 → REGISTER with Authorization) → 200; a 503 (RFC 3261 §21.5.4) is retried
   * after half a second, up to 20 times. */
  async register() {
    const aor = `<sip:${this.user}@${domain}>`;
    for (let busy = 0; ; busy++) {
      let authorization = null;
      for (let round = 0; round < 2; round++) {
        this.cseq += 1;
        let text = this.request("REGISTER", `sip:${domain}`, this.regCallId, this.tag, aor, this.cseq);
        if (authorization) text = text.replace("Content-Length:", `Authorization: ${authorization}\r\nContent-Length:`);
        const answer = this.final(this.regCallId, this.cseq, "REGISTER", "REGISTER");
        this.send(text);
        const response = await answer;
        const status = Number(response.slice(8, 11));
        if (status === 200) return;
        const challenge = header(response, "WWW-Authenticate", "Proxy-Authenticate");
        if ((status === 401 || status === 407) && challenge && !authorization) {
          authorization = this.digest(challenge);
          continue;
        }
        if (status === 503 && busy < 20) break;
        throw new CallFailed(`REGISTER: ${response.split("\r\n", 1)[0]}`);
      }
      await new Promise((wake) => setTimeout(wake, 500));
    }
  }

  offer() {
    return [
      "v=0", `o=- ${Math.floor(Math.random() * 1e15)} 2 IN IP4 127.0.0.1`, "s=-", "t=0 0",
      "a=group:BUNDLE 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126", "c=IN IP4 0.0.0.0",
      `a=candidate:1 1 udp 2122260223 127.0.0.1 ${this.port} typ host`,
      `a=ice-ufrag:${this.ufrag}`, `a=ice-pwd:${this.pwd}`, `a=fingerprint:${FINGERPRINT}`,
      "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
      "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000", "",
    ].join("\r\n");
  }

  /** One whole call: {setup, answered} in ms; CallFailed naming the step that went wrong. */
  async placeCall() {
    const started = performance.now();
    const callId = uid();
    const fromTag = uid();
    const call = { callId, checkedByPeer: false, onChecked: null, byeReceived: false, onBye: () => (call.byeReceived = true) };
    this.call = call;
    try {
      const to = `<${target}>`;
      const invite = this.request("INVITE", target, callId, fromTag, to, 1, [], this.offer());
      const answered = this.final(callId, 1, "INVITE", "INVITE");
      this.send(invite);
      const ok = await answered;
      if (!ok.startsWith("SIP/2.0 200")) {
        this.send(ackForFailure(invite, ok));
        throw new CallFailed(`INVITE: ${ok.split("\r\n", 1)[0]}`);
      }
      const answeredAfter = performance.now() - started;
      const [head, body] = splitMessage(ok);
      const toValue = header(head, "To", "t");
      const contact = header(head, "Contact", "m");
      const remoteTarget = contact.includes("<") ? contact.slice(contact.indexOf("<") + 1, contact.indexOf(">")) : contact;
      const recordRoute = [...head.matchAll(/\r\nRecord-Route[ \t]*:[ \t]*([^\r\n]*)/gi)].flatMap((m) => m[1].split(",").map((v) => v.trim()));
      const routes = recordRoute.reverse();
      this.lastAck = { callId, text: this.request("ACK", remoteTarget, callId, fromTag, toValue, 1, routes) };
      this.send(this.lastAck.text);
      const ufrag = body.match(/a=ice-ufrag:(\S+)/)?.[1];
      const pwd = body.match(/a=ice-pwd:(\S+)/)?.[1];
      const candidate = body.match(/a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host/i);
      if (!ufrag || !pwd || !candidate) throw new CallFailed("INVITE: no ICE credentials or host candidate in the answer");
      await this.nominate(candidate[1], Number(candidate[2]), ufrag, pwd, call);
      if (fullIce && !call.checkedByPeer) {
        await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new CallFailed("ICE: no check from the eP-CSCF")), stepTimeout);
          call.onChecked = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      const setup = performance.now() - started;
      if (hold) await new Promise((wake) => setTimeout(wake, hold));
      if (call.byeReceived) throw new CallFailed("BYE from the core side during the call");
      const byeAnswered = this.final(callId, 2, "BYE", "BYE");
      this.send(this.request("BYE", remoteTarget, callId, fromTag, toValue, 2, routes));
      const byeOk = await byeAnswered;
      if (!byeOk.startsWith("SIP/2.0 200")) throw new CallFailed(`BYE: ${byeOk.split("\r\n", 1)[0]}`);
      return { setup, answered: answeredAfter };
    } catch (error) {
      error.callId = callId; // to find the call in the edge's and sipp's logs
      throw error;
    } finally {
      this.call = null;
      this.checks.clear();
    }
  }

  // --- ICE on the UDP socket ---

  /** RFC 8445 §7.2.2 checks with USE-CANDIDATE until one succeeds: the first waits 50 ms for its
   * answer, each next one twice as long up to 500 ms (RFC 8445 §14.3, one candidate pair). */
  nominate(address, port, remoteUfrag, remotePwd, call) {
    return new Promise((resolve, reject) => {
      const deadline = performance.now() + stepTimeout;
      let wait = 50;
      let timer = null;
      let done = false;
      const finish = (error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.checks.clear();
        if (error) reject(error);
        else resolve();
      };
      const check = () => {
        if (done || this.call !== call) return;
        if (performance.now() >= deadline) return finish(new CallFailed("ICE: no success response to the nominating check"));
        const id = stunTransactionId();
        this.checks.set(id.toString("hex"), (success) => {
          if (success) finish(null);
          else {
            clearTimeout(timer); // an error response: try again at once
            check();
          }
        });
        tally[wait === 50 ? "checks_sent" : "checks_resent"] += 1;
        this.udp.send(bindingCheck(id, remoteUfrag, this.ufrag, remotePwd, this.tieBreaker), port, address);
        timer = setTimeout(() => {
          wait = Math.min(2 * wait, 500);
          check();
        }, wait);
      };
      check();
    });
  }

  stunReceived(data, rinfo) {
    if (data.length < 20 || data[0] > 3) {
      tally.dtls_ignored += 1;
      return; // DTLS ClientHello etc.: no DTLS here
    }
    if (data.readUInt32BE(4) !== MAGIC_COOKIE) return;
    const type = data.readUInt16BE(0);
    const id = data.subarray(8, 20);
    if (type === BINDING_REQUEST) {
      // RFC 8445 §7.3: answer from the source address, integrity with our password.
      tally.edge_checks_answered += 1;
      this.udp.send(bindingSuccess(Buffer.from(id), rinfo.address, rinfo.port, this.pwd), rinfo.port, rinfo.address);
      const call = this.call;
      if (call && !call.checkedByPeer) {
        call.checkedByPeer = true;
        call.onChecked?.();
      }
    } else if (type === BINDING_SUCCESS || type === BINDING_ERROR) {
      const settle = this.checks.get(id.toString("hex"));
      tally.check_responses += 1;
      if (settle) {
        this.checks.delete(id.toString("hex"));
        settle(type === BINDING_SUCCESS);
      }
    }
  }
}

function splitMessage(text) {
  const at = text.indexOf("\r\n\r\n");
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 4)];
}

/** RFC 3261 §17.1.1.3: the ACK of a non-2xx final response — the INVITE's Request-URI, top Via,
 * From, Call-ID and Route, the response's To (with its tag), CSeq with method ACK. */
function ackForFailure(invite, final) {
  const lines = splitMessage(invite)[0].split("\r\n");
  const rest = lines[0].slice(lines[0].indexOf(" ") + 1);
  const kept = lines.slice(1).filter((line) => /^(via|max-forwards|from|call-id|route)[ \t]*:/i.test(line));
  const cseq = lines.find((line) => /^cseq[ \t]*:/i.test(line)).replace("INVITE", "ACK");
  const to = splitMessage(final)[0].split("\r\n").find((line) => /^(to|t)[ \t]*:/i.test(line)) ?? "";
  return [`ACK ${rest}`, ...kept, cseq, to, "Content-Length: 0", "", ""].join("\r\n");
}

// --- the open-loop run --------------------------------------------------------------------------

const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);

/** Calls at `callRate` per second for `duration` s, each on the longest-idle WIC; waits for the
 * calls in progress at the end (they count as the timed phase's). */
async function run(idle, callRate, duration) {
  const setups = [];
  const answers = [];
  const failures = {};
  const examples = {}; // failure → the Call-IDs of its first three calls
  const failed = (text, callId) => {
    failures[text] = (failures[text] ?? 0) + 1;
    if (callId && (examples[text] ??= []).length < 3) examples[text].push(callId);
  };
  const start = performance.now();
  let lastCompleted = start;
  const place = (wic) =>
    wic
      .placeCall()
      .then(({ setup, answered }) => {
        setups.push(setup);
        answers.push(answered);
        lastCompleted = performance.now();
      })
      .catch((error) => failed(error instanceof CallFailed ? error.message : `${error.name}: ${error.message}`, error.callId));
  const { offered, skipped } = await openLoop(idle, callRate, duration, place);
  if (skipped) failures["no idle WIC (calls are piling up)"] = skipped;
  // The rate's time: the offering, and the draining of calls that completed after it; a call
  // that failed on a step timeout does not stretch it by seconds (it counts as a failure).
  const elapsed = (Math.max(lastCompleted, start + duration * 1000) - start) / 1000;
  setups.sort((a, b) => a - b);
  answers.sort((a, b) => a - b);
  return {
    offered,
    completed: setups.length,
    seconds: elapsed,
    setup_p50_ms: percentile(setups, 0.5),
    setup_p99_ms: percentile(setups, 0.99),
    answer_p50_ms: percentile(answers, 0.5),
    answer_p99_ms: percentile(answers, 0.99),
    failures,
    failure_calls: examples,
  };
}

async function main() {
  const wics = Array.from({ length: wicCount }, (_, i) => new Wic(first + i));
  for (let i = 0; i < wics.length; i += 100) await Promise.all(wics.slice(i, i + 100).map((w) => w.open()));
  for (let i = 0; i < wics.length; i += 100) await Promise.all(wics.slice(i, i + 100).map((w) => w.register()));
  const idle = [...wics];
  if (warmupSeconds > 0 && warmupRate > 0) await run(idle, Math.min(rate, warmupRate), warmupSeconds);
  process.stdout.write(JSON.stringify({ ready: wics.length }) + "\n");
  if (args.wait !== undefined) await new Promise((go) => process.stdin.once("data", go)); // the driver's "go"
  for (const key of Object.keys(tally)) tally[key] = 0;
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const cpu0 = process.cpuUsage();
  const result = await run(idle, rate, seconds);
  const cpu = process.cpuUsage(cpu0);
  lag.disable();
  const loopLag = { p50_ms: lag.percentile(50) / 1e6, p99_ms: lag.percentile(99) / 1e6, max_ms: lag.max / 1e6 };
  process.stdout.write(JSON.stringify({ ...result, cpu_s: (cpu.user + cpu.system) / 1e6, cpu_user_s: cpu.user / 1e6, tally, loop_lag: loopLag }) + "\n");
  for (const wic of wics) wic.close();
  process.exit(0); // stdin, read for the driver's "go", would keep the loop alive
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop())) {
  main().catch((error) => {
    process.stderr.write(`${error.stack}\n`);
    process.exit(1);
  });
}
