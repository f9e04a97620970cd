// window.janusWic: register, call, hang up and read the stats of a janus.js SIP handle.
import Janus from './janus.es.js';

const wic = { state: 'loading', events: [], handle: null };
window.janusWic = wic;
const setState = (state) => { wic.state = state; document.getElementById('state').textContent = state; };

wic.register = (server, user, password, domain) => new Promise((resolve, reject) => {
  Janus.init({
    debug: false,
    callback: () => {
      const janus = new Janus({
        server,
        error: (cause) => reject(new Error(String(cause))),
        success: () => janus.attach({
          plugin: 'janus.plugin.sip',
          error: (cause) => reject(new Error(String(cause))),
          success: (handle) => {
            wic.handle = handle;
            handle.send({ message: { request: 'register', username: `sip:${user}@${domain}`, secret: password } });
          },
          onmessage: (message, jsep) => {
            const result = message.result || {};
            wic.events.push(result.event || `error ${message.error_code} ${message.error}`);
            if (result.event === 'registered') { setState('registered'); resolve(); }
            if (result.event === 'registration_failed') reject(new Error(`registration failed ${result.code}`));
            if (result.event === 'accepted') setState('accepted');
            if (result.event === 'hangup') setState('ended');
            if (jsep) wic.handle.handleRemoteJsep({ jsep, error: (e) => wic.events.push(`remote jsep error ${e}`) });
          },
          onremotetrack: (track, mid, on) => {
            if (!on || track.kind !== 'audio') return;
            const audio = new Audio();
            audio.srcObject = new MediaStream([track]);
            audio.play().catch(() => {});
          },
        }),
      });
    },
  });
});

wic.call = (target) => wic.handle.createOffer({
  tracks: [{ type: 'audio', capture: true, recv: true }],
  success: (jsep) => { setState('calling'); wic.handle.send({ message: { request: 'call', uri: target }, jsep }); },
  error: (cause) => wic.events.push(`offer error ${cause}`),
});

wic.hangup = () => { wic.handle.send({ message: { request: 'hangup' } }); wic.handle.hangup(); };

wic.stats = async () => {
  const pc = wic.handle && wic.handle.webrtcStuff.pc;
  if (!pc) return null;
  const stats = { packetsReceived: 0, packetsSent: 0, connectionState: pc.connectionState };
  (await pc.getStats()).forEach((entry) => {
    if (entry.type === 'inbound-rtp' && entry.kind === 'audio') stats.packetsReceived += entry.packetsReceived;
    if (entry.type === 'outbound-rtp' && entry.kind === 'audio') stats.packetsSent += entry.packetsSent;
  });
  return stats;
};
setState('ready');
