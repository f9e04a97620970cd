// The real janus.js (npm janus-gateway) in Node, driving epcscf's Janus API as a non-SIP WIC
// (TS 24.371 §7.2.1) with the SIP plugin's requests.  Node has no WebRTC: the descriptions
// are given to handle.send() as jsep, as a page does after createOffer/createAnswer.
// Prints JSON lines.
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call TARGET OFFER_FILE [HEADERS_JSON]
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call-wait TARGET OFFER_FILE   (the far end hangs up)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call-cancel TARGET OFFER_FILE (hangup while ringing)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call-hold TARGET OFFER_FILE
//     (once accepted: hold, unhold, dtmf_info 5, then hangup)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call-transfer TARGET OFFER_FILE TRANSFER_TARGET
//     (once accepted: transfer to TRANSFER_TARGET; reports the NOTIFYs, waits for the far end's BYE)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN call-update TARGET OFFER_FILE
//     (once accepted: update with an ICE-restart re-offer; once that is refused, hangup)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN answer ANSWER_FILE [HEADERS_JSON]
//     (HEADERS_JSON: the plugin's custom `headers` object, sent with call / accept)
//   node janus_sip.js JANUS_URL USER PASSWORD DOMAIN ring
//     (lets the first incoming call ring until the caller cancels, declines the second with 480)
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const { w3cwebsocket: W3CWebSocket } = require('websocket');

const [url, user, password, domain, mode, ...rest] = process.argv.slice(2);
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));
const sdpFile = (file) => fs.readFileSync(file, 'utf8').replace(/\r?\n/g, '\r\n');

// janus.js is a browser script (an ES module build whose UMD wrapper looks for window):
// give it the few globals it reads and load it as the page would.
globalThis.window = globalThis;
window.RTCPeerConnection = function RTCPeerConnection() {};
globalThis.navigator = { userAgent: 'Node', platform: 'Linux', mediaDevices: undefined };
window.addEventListener = () => {};
const source = fs.readFileSync(path.join(__dirname, '..', '..', 'node_modules', 'janus-gateway', 'npm', 'dist', 'janus.es.js'), 'utf8')
  .replace(/export\s*\{\s*Janus as default\s*\};?\s*$/, '');
vm.runInThisContext(`${source}\n;globalThis.Janus = Janus;`, { filename: 'janus.es.js' });
const Janus = globalThis.Janus;

const timeout = setTimeout(() => { say('timeout'); process.exit(3); }, 25000);
let janus = null;
const finish = (code) => {
  clearTimeout(timeout);
  if (janus) janus.destroy({ success: () => process.exit(code), error: () => process.exit(code) });
  else process.exit(code);
};

Janus.init({
  debug: false,
  dependencies: Janus.useDefaultDependencies({ WebSocket: W3CWebSocket, adapter: { browserDetails: { browser: 'chrome', version: 120 } } }),
  callback: () => {
    janus = new Janus({
      server: url,
      error: (cause) => { say('error', { cause: String(cause) }); process.exit(2); },
      success: () => janus.attach({
        plugin: 'janus.plugin.sip',
        error: (cause) => { say('error', { cause: String(cause) }); process.exit(2); },
        success: (handle) => run(handle),
        onmessage: (message, jsep) => onMessage(message, jsep),
      }),
    });
  },
});

let sip = null;
let incoming = 0;
function run(handle) {
  sip = handle;
  say('attached');
  sip.send({ message: { request: 'register', username: `sip:${user}@${domain}`, secret: password, display_name: user } });
}

// call-hold: one step after the other; a step refused with 447 (the previous re-INVITE is
// still out) is tried again a little later.
const HOLD_STEPS = [
  { request: 'hold', direction: 'sendonly' }, { request: 'unhold' }, { request: 'dtmf_info', digit: '5', duration: 120 },
  { request: 'hangup' },
];
let step = -1;
function nextStep(again = false) {
  if (!again) step += 1;
  setTimeout(() => sip.send({ message: HOLD_STEPS[step] }), 300);
}

function onMessage(message, jsep) {
  if (message.error_code) {
    say('plugin-error', { code: message.error_code, reason: message.error });
    if (mode === 'call-hold' && message.error_code === 447 && step >= 0) nextStep(true);
    return;
  }
  const result = message.result || {};
  const event = result.event;
  say('sip-event', { name: event, code: result.code, call_id: message.call_id, jsep: jsep || null });
  if (event === 'registration_failed') { say('error', { cause: `registration failed ${result.code}` }); process.exit(2); }
  if (event === 'registered') {
    say('registered');
    if (mode.startsWith('call')) {
      const [target, offerFile] = rest;
      const headers = mode === 'call' ? rest[2] : undefined;  // call-transfer's third argument is its target
      const call = { request: 'call', uri: target, ...(headers ? { headers: JSON.parse(headers) } : {}) };
      sip.send({ message: call, jsep: { type: 'offer', sdp: sdpFile(offerFile) } });
    } else {
      say('waiting');
    }
  } else if (event === 'ringing' && mode === 'call-cancel') {
    sip.send({ message: { request: 'hangup' } });
  } else if (event === 'accepted' && mode === 'call-wait') {
    say('accepted', { sdp: jsep ? jsep.sdp : null });
  } else if (event === 'accepted' && mode === 'call') {
    say('accepted', { sdp: jsep ? jsep.sdp : null });
    setTimeout(() => sip.send({ message: { request: 'hangup' } }), 300);
  } else if (event === 'accepted' && mode === 'call-transfer') {
    say('accepted', { sdp: jsep ? jsep.sdp : null });
    sip.send({ message: { request: 'transfer', uri: rest[2] } });
  } else if (event === 'notify') {
    say('notify', { notify: result.notify, substate: result.substate, content_type: result['content-type'], content: result.content });
  } else if (event === 'accepted' && mode === 'call-update') {
    say('accepted', { sdp: jsep ? jsep.sdp : null });
    // What a page's createOffer({ iceRestart: true }) gives: o= version up, new ufrag and pwd
    const reoffer = sdpFile(rest[1]).replace(/^(o=\S+ \S+ )(\d+)/m, (_, head, version) => `${head}${Number(version) + 1}`)
      .replace(/^a=ice-ufrag:.*$/gm, 'a=ice-ufrag:Rs7X').replace(/^a=ice-pwd:.*$/gm, 'a=ice-pwd:Qw8mm2CdPKN4YcJTao1CmejO');
    sip.send({ message: { request: 'update' }, jsep: { type: 'offer', sdp: reoffer } });
  } else if (event === 'updatefailed') {
    // A page rolls its PeerConnection back here: pc.setLocalDescription({ type: 'rollback' })
    say('updatefailed', { code: result.code, reason: result.reason, call_id: message.call_id });
    setTimeout(() => sip.send({ message: { request: 'hangup' } }), 300);
  } else if (mode === 'call-hold' && ['accepted', 'holding', 'resuming', 'dtmfsent'].includes(event)) {
    nextStep();
  } else if (event === 'incomingcall') {
    incoming += 1;
    say('incomingcall', { sdp: jsep.sdp, username: result.username, callee: result.callee });
    const accept = { request: 'accept', ...(rest[1] ? { headers: JSON.parse(rest[1]) } : {}) };
    if (mode === 'answer') sip.send({ message: accept, jsep: { type: 'answer', sdp: sdpFile(rest[0]) } });
    else if (incoming === 2) sip.send({ message: { request: 'decline', code: 480 } });
  } else if (event === 'hangup') {
    say('ended', { code: result.code, reason: result.reason });
    if (mode !== 'ring' || incoming === 2) sip.send({ message: { request: 'unregister' } });
  } else if (event === 'unregistered') {
    finish(0);
  }
}
