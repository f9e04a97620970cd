// A real WIC's signalling: JsSIP in Node registers through epcscf, then follows a
// small script of steps given on the command line. Prints one JSON line per event.
//   node jssip_register.js WS_URL USER PASSWORD DOMAIN STEPS
// STEPS: comma-separated: register, reregister, unregister, drop (close the socket),
//        reconnect, wait:<ms>
const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');

const [url, user, password, domain, stepsText] = process.argv.slice(2);
const steps = (stepsText || 'register,unregister').split(',');
const say = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));

JsSIP.debug.disable('JsSIP:*');
const socket = new NodeWebSocket(url, { requestOptions: {} });
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: `sip:${user}@${domain}`,
  password,
  register: false,
  register_expires: 600,
  session_timers: false,
  connection_recovery_min_interval: 1,
  connection_recovery_max_interval: 2,
});

let waiter = null;
const next = (name) => new Promise((resolve, reject) => {
  waiter = { name, resolve, reject };
});
const fire = (name, payload) => {
  say(name, payload);
  if (waiter && waiter.name === name) { const w = waiter; waiter = null; w.resolve(payload); }
};
// JsSIP emits 'registered' only on the first 2xx; a refresh is seen on the wire.
ua.on('connected', () => {
  const deliver = socket.ondata;
  socket.ondata = (data) => {
    const text = typeof data === 'string' ? data : Buffer.from(data).toString();
    const status = /^SIP\/2\.0 (\d{3})/.exec(text);
    if (status && /\r\nCSeq:\s*\d+ REGISTER\r\n/i.test(text)) fire('register-response', { status: Number(status[1]) });
    deliver(data);
  };
  fire('connected');
});
ua.on('disconnected', () => fire('disconnected'));
ua.on('registered', (e) => fire('registered', { status: e.response.status_code, contact: e.response.getHeader('Contact'), service_route: e.response.getHeader('Service-Route'), associated: e.response.getHeader('P-Associated-URI') }));
ua.on('unregistered', (e) => fire('unregistered', { status: e && e.response ? e.response.status_code : null }));
ua.on('registrationFailed', (e) => fire('registrationFailed', { cause: e.cause, status: e.response ? e.response.status_code : null }));
ua.on('newMessage', (e) => { if (e.originator === 'remote') fire('message', { body: e.request.body, from: e.request.from.uri.toString() }); });

const timeout = setTimeout(() => { say('timeout'); process.exit(3); }, 20000);

(async () => {
  ua.start();
  await next('connected');
  for (const step of steps) {
    if (step === 'register') { ua.register(); await next('registered'); }
    else if (step === 'reregister') {
      ua.register();
      let response;
      do { response = await next('register-response'); } while (response.status === 401 || response.status === 407);
      if (response.status !== 200) throw new Error(`re-REGISTER got ${response.status}`);
    }
    else if (step === 'unregister') { ua.unregister(); await next('unregistered'); }
    else if (step === 'drop') { socket._ws.close(); await next('disconnected'); }
    else if (step === 'reconnect') { await next('connected'); ua.register(); await next('registered'); }
    else if (step === 'await-message') { await next('message'); }
    else if (step.startsWith('wait:')) { await new Promise((r) => setTimeout(r, Number(step.slice(5)))); }
    say('step-done', { step });
  }
  clearTimeout(timeout);
  ua.stop();
  setTimeout(() => process.exit(0), 300);
})().catch((error) => { say('error', { message: String(error) }); process.exit(2); });
