// JsSIP in Node places a call with a hand-written Chrome-style WebRTC offer.
// Node has no WebRTC: a stand-in RTCPeerConnection hands JsSIP the offer and records
// the answer it is given, which is exactly what a browser's SDP exchange looks like
// from the network. Prints JSON lines.
//   node jssip_call.js WS_URL USER PASSWORD DOMAIN TARGET OFFER_FILE
const fs = require('fs');
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');
const { installStandInPeerConnection, NO_MEDIA } = require('./stand_in_peer_connection');

const [url, user, password, domain, target, offerFile] = process.argv.slice(2);
const OFFER = fs.readFileSync(offerFile, 'utf8').replace(/\r?\n/g, '\r\n');
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));

installStandInPeerConnection({
  localSdp: (type) => { if (type !== 'offer') throw new Error('this peer only offers'); return OFFER; },
  onRemoteDescription: (description) => say('remote-description', { type: description.type, sdp: description.sdp }),
});

JsSIP.debug.disable('JsSIP:*');
const ua = new JsSIP.UA({
  sockets: [new NodeWebSocket(url)], uri: `sip:${user}@${domain}`, password, register: true, session_timers: false,
});
const timeout = setTimeout(() => { say('timeout'); process.exit(3); }, 25000);
ua.on('registrationFailed', (e) => { say('registrationFailed', { cause: e.cause }); process.exit(2); });
ua.on('registered', () => {
  say('registered');
  const session = ua.call(target, {
    mediaStream: NO_MEDIA,
    pcConfig: { iceServers: [] },
  });
  session.on('progress', (e) => say('progress', { status: e.response ? e.response.status_code : null }));
  session.on('accepted', (e) => say('accepted', { status: e.response.status_code }));
  session.on('confirmed', () => {
    say('confirmed');
    setTimeout(() => session.terminate(), 300);
  });
  session.on('failed', (e) => { say('failed', { cause: e.cause, status: e.message ? e.message.status_code : null }); finish(1); });
  session.on('ended', (e) => { say('ended', { cause: e.cause, originator: e.originator }); finish(0); });
});
function finish(code) {
  clearTimeout(timeout);
  setTimeout(() => { ua.stop(); setTimeout(() => process.exit(code), 300); }, 200);
}
ua.start();
