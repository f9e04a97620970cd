// JsSIP in Node as a WIC driven step by step: JSON commands on stdin, JSON-line events on stdout.
// The SDP it sends is the one the test gives it (the test's own ICE agent and DTLS endpoint make
// it and carry the media), through a stand-in RTCPeerConnection (stand_in_peer_connection.js).
//   node jssip_wic.js WS_URL USER DOMAIN REGISTER_EXPIRES
// Commands: {"do":"register"} {"do":"unregister"} {"do":"call","target":URI,"sdp":OFFER}
//           {"do":"answer","sdp":ANSWER} {"do":"terminate"} {"do":"message","target":URI,"body":TEXT}
//           {"do":"stop"}
// Events: registering (each REGISTER sent), registered, unregistered, registrationFailed, sending, progress, accepted, confirmed,
//         remote-description, incoming, failed, ended (times in ms since the INVITE was sent),
//         message-sent, message-failed, message-received.
const readline = require('readline');
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');
const { installStandInPeerConnection, NO_MEDIA } = require('./stand_in_peer_connection');

const [url, user, domain, expires] = process.argv.slice(2);
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));
let localSdp = null; // the SDP the next createOffer/createAnswer returns (from the test)
let session = null;
let invitedAt = null;
const since = () => (invitedAt === null ? null : Number(process.hrtime.bigint() - invitedAt) / 1e6);

installStandInPeerConnection({
  localSdp: () => localSdp,
  onRemoteDescription: (description) => say('remote-description', { type: description.type, sdp: description.sdp }),
});

JsSIP.debug.disable('JsSIP:*');
const ua = new JsSIP.UA({
  sockets: [new NodeWebSocket(url)], uri: `sip:${user}@${domain}`, register: false,
  register_expires: Number(expires), session_timers: false,
});
ua.on('registered', (e) => say('registered', {
  status: e.response.status_code, cseq: e.response.cseq,
  service_route: e.response.getHeaders('Service-Route'),
}));
ua.on('unregistered', (e) => say('unregistered', { status: e.response ? e.response.status_code : null }));
ua.on('registrationFailed', (e) => say('registrationFailed', { cause: e.cause, status: e.response ? e.response.status_code : null }));
ua.on('newMessage', (e) => {
  if (e.originator === 'remote') say('message-received', { length: e.request.body.length });
});
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote') return;
  watch(e.session);
  say('incoming', { sdp: e.request.body, from: e.request.from.uri.toString() });
});

function watch(s) {
  session = s;
  s.on('sending', () => { invitedAt = process.hrtime.bigint(); say('sending'); });
  s.on('progress', (e) => say('progress', { status: e.response ? e.response.status_code : null, ms: since() }));
  s.on('accepted', (e) => say('accepted', { status: e.response ? e.response.status_code : null, ms: since() }));
  s.on('confirmed', () => say('confirmed'));
  s.on('failed', (e) => say('failed', { cause: e.cause, originator: e.originator, status: e.message ? e.message.status_code : null }));
  s.on('ended', (e) => say('ended', { cause: e.cause, originator: e.originator }));
}

const commands = {
  register: () => ua.register(),
  unregister: () => ua.unregister(),
  call: (c) => {
    localSdp = c.sdp;
    invitedAt = null;
    watch(ua.call(c.target, { mediaStream: NO_MEDIA, pcConfig: { iceServers: [] } }));
  },
  answer: (c) => { localSdp = c.sdp; session.answer({ mediaStream: NO_MEDIA, pcConfig: { iceServers: [] } }); },
  terminate: () => session.terminate(),
  message: (c) => ua.sendMessage(c.target, c.body, { eventHandlers: {
    succeeded: (e) => say('message-sent', { status: e.response.status_code }),
    failed: (e) => say('message-failed', { cause: e.cause, status: e.response ? e.response.status_code : null }),
  } }),
  stop: () => { ua.stop(); setTimeout(() => process.exit(0), 500); },
};
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  try {
    commands[command.do](command);
  } catch (error) {
    say('error', { command: command.do, message: String(error && error.stack || error) });
  }
});
// JsSIP says 'registered' once; every REGISTER it sends (refreshes included) is announced here.
const registrator = ua.registrator();
const sendRegister = registrator.register.bind(registrator);
registrator.register = () => { say('registering'); sendRegister(); };
ua.on('connected', () => say('connected'));
ua.start();
