// JsSIP in Node places a call with a hand-written Chrome-style WebRTC offer.
// Node has no WebRTC: a stand-in RTCPeerConnection hands JsSIP the offer and records
// the answer it is given, which is exactly what a browser's SDP exchange looks like
// from the network. Prints JSON lines.
//   node jssip_call.js WS_URL USER PASSWORD DOMAIN TARGET OFFER_FILE [in-dialog]
// With "in-dialog", once confirmed it sends a re-INVITE, an UPDATE, a trickle INFO (RFC 8840),
// a DTMF INFO and a MESSAGE inside the dialog, one after the other, before its BYE.
const fs = require('fs');
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');
const { installStandInPeerConnection, NO_MEDIA } = require('./stand_in_peer_connection');

const [url, user, password, domain, target, offerFile, mode] = process.argv.slice(2);
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
  session.on('confirmed', async () => {
    say('confirmed');
    if (mode === 'in-dialog') {
      try {
        await inDialog(session);
      } catch (error) {
        say('in-dialog-failed', { error: String(error) });
      }
    }
    setTimeout(() => session.terminate(), 300);
  });
  session.on('failed', (e) => { say('failed', { cause: e.cause, status: e.message ? e.message.status_code : null }); finish(1); });
  session.on('ended', (e) => { say('ended', { cause: e.cause, originator: e.originator }); finish(0); });
});
// Each step resolves on its 2xx; any other outcome rejects with what happened.
function renegotiate(session, options) {
  return new Promise((resolve, reject) => {
    session.once('ended', () => reject(new Error(`session ended during ${options.useUpdate ? 'UPDATE' : 're-INVITE'}`)));
    if (!session.renegotiate(options, resolve)) reject(new Error('renegotiate() refused'));
  });
}
function info(session, contentType, body) {
  return new Promise((resolve, reject) => {
    session.once('newInfo', (e) => {
      e.info.on('succeeded', resolve);
      e.info.on('failed', (f) => reject(new Error(`INFO ${contentType} failed: ${f.response ? f.response.status_code : f.cause}`)));
    });
    session.sendInfo(contentType, body);
  });
}
function message(session, body) {
  return new Promise((resolve, reject) => {
    const failed = (what) => () => reject(new Error(`MESSAGE: ${what}`));
    session.sendRequest(JsSIP.C.MESSAGE, {
      body, extraHeaders: ['Content-Type: text/plain'],
      eventHandlers: {
        onSuccessResponse: resolve,
        onErrorResponse: (response) => reject(new Error(`MESSAGE: ${response.status_code} ${response.reason_phrase}`)),
        onRequestTimeout: failed('timeout'), onTransportError: failed('transport error'), onDialogError: failed('dialog error'),
      },
    });
  });
}
async function inDialog(session) {
  await renegotiate(session, {});
  say('reinvite-ok');
  await renegotiate(session, { useUpdate: true });
  say('update-ok');
  await info(session, 'application/trickle-ice-sdpfrag', 'a=end-of-candidates\r\n');
  say('trickle-info-ok');
  await info(session, 'application/dtmf-relay', 'Signal=5\r\nDuration=160\r\n');
  say('info-ok');
  await message(session, 'hello inside the dialog');
  say('message-ok');
}
function finish(code) {
  clearTimeout(timeout);
  setTimeout(() => { ua.stop(); setTimeout(() => process.exit(code), 300); }, 200);
}
ua.start();
