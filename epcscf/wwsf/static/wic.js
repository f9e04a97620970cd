// The demo WebRTC IMS Client (TS 24.371 WIC) that the WWSF serves: JsSIP for SIP over
// WebSocket (RFC 7118) toward the eP-CSCF, the browser's own RTCPeerConnection for media.
// Bundled with JsSIP by esbuild (bin/setup → epcscf/wwsf/built/app.js); not served as is.
//
// Page states are written to data-state attributes (and to aria-live text) so that a person
// and a test read the same thing:
//   #registration-state  unregistered | registering | registered | failed
//   #call-state          idle | calling | ringing | incoming | connecting | connected | held
//   #ice-state, #pc-state, #dtls-state   the RTCPeerConnection's own states
// window.wwsf exposes the UA, the session and stats() for tests and curious people.
import * as JsSIP from 'jssip';
import { LevelMeter } from './meter.js';
import { summariseStats } from './stats.js';

// No STUN/TURN: the eP-CSCF is an ICE peer with its own host candidates (TS 24.371 §7.3).
// ?bundle=max-bundle|balanced|max-compat (RFC 8843 policies, W3C webrtc-pc §4.2.5) and ?video=1.
const QUERY = new URLSearchParams(location.search);
const PC_CONFIG = { iceServers: [], rtcpMuxPolicy: 'require', bundlePolicy: QUERY.get('bundle') || 'balanced' };
const MEDIA_CONSTRAINTS = { audio: true, video: QUERY.get('video') === '1' };
const STATS_INTERVAL_MS = 500;
const LOG_LIMIT = 200;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const page = {
  config: null,
  ua: null,
  unregistering: false, // the user asked to unregister (not a dropped connection)
  session: null,
  resumeAfterReconnect: false, // the WebSocket dropped during a call: ICE restart once registered again
  iceRestart: null, // {started, answered} of the last ICE restart (performance.now() times)
  token: null, // the web login's token (never a SIP password)
  tokenTimer: null,
  peerConnection: null,
  statsTimer: null,
  lastStats: null,
  meter: new LevelMeter($('remote-level'), $('remote-level-text')),
};

// --- small view helpers -----------------------------------------------------------------

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  const list = $('log');
  list.append(item);
  while (list.children.length > LOG_LIMIT) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
  console.info(`[wwsf] ${text}`); // the same line where a test or a developer's console reads it
}

function showState(id, state, text = state) {
  const element = $(id);
  element.dataset.state = state;
  element.textContent = text;
}

function pageStatus(text, error = false) {
  const element = $('page-status');
  element.textContent = text;
  if (error) element.dataset.error = 'true';
  else delete element.dataset.error;
}

function setPressed(id, pressed, pressedLabel, label) {
  const button = $(id);
  button.setAttribute('aria-pressed', String(pressed));
  button.textContent = pressed ? pressedLabel : label;
}

function refreshControls() {
  const registered = Boolean(page.ua && page.ua.isRegistered());
  const session = page.session;
  const established = Boolean(session && session.isEstablished());
  const accountBusy = Boolean(page.ua);
  for (const id of ['identity', 'password', 'demo-user', 'websocket-url']) $(id).disabled = accountBusy;
  $('register').disabled = accountBusy;
  $('login').disabled = accountBusy;
  $('unregister').disabled = !page.ua;
  $('call').disabled = !registered || Boolean(session);
  $('hangup').disabled = !session;
  $('mute').disabled = !established;
  $('hold').disabled = !established;
}

// --- configuration from the WWSF ----------------------------------------------------------

function userUri(text) {
  const value = text.trim();
  if (/^sips?:/i.test(value)) return value;
  return value.includes('@') ? `sip:${value}` : `sip:${value}@${page.config.domain}`;
}

function chooseDemoUser(name) {
  const users = page.config.users;
  const user = users.find((candidate) => candidate.name === name);
  if (!user) return;
  $('demo-user').value = user.name;
  $('identity').value = user.uri;
  $('password').value = user.password;
  const other = users.find((candidate) => candidate.name !== user.name);
  if (other && !$('target').value) $('target').value = other.name;
}

async function loadConfig() {
  const response = await fetch('config.json', { cache: 'no-store' });
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  page.config = await response.json();
  if (!page.config.websocket_url) {
    // The WWSF found no [ws] listener this page may use (an https page needs a wss one).
    throw new Error(`no eP-CSCF WebSocket listener is usable from ${location.protocol}// pages`);
  }
  $('websocket-url').value = page.config.websocket_url;
  $('login').hidden = !page.config.login;
  const select = $('demo-user');
  for (const user of page.config.users) {
    const option = document.createElement('option');
    option.value = user.name;
    option.textContent = `${user.name} (${user.uri})`;
    select.append(option);
  }
  select.addEventListener('change', () => chooseDemoUser(select.value));
  const wanted = params.get('user') || (page.config.users[0] && page.config.users[0].name);
  if (wanted) chooseDemoUser(wanted);
  if (params.get('target')) $('target').value = params.get('target');
}

// --- registration ---------------------------------------------------------------------------

// Web login (TS 24.371 §5, RFC 8898): the page trades the user's web password for a short-lived
// token at the WWSF (/login), registers with "Authorization: Bearer <token>" and keeps no SIP
// password; before the token expires it trades it for a fresh one (/token) for the next REGISTER.
async function tokenFrom(path, init) {
  const response = await fetch(path, { method: 'POST', cache: 'no-store', ...init });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${body.error || 'refused'} (HTTP ${response.status})`);
  return body;
}

function useToken(grant) {
  page.token = grant.token;
  if (page.ua) page.ua.registrator().setExtraHeaders([`Authorization: Bearer ${grant.token}`]);
  clearTimeout(page.tokenTimer);
  page.tokenTimer = setTimeout(refreshToken, Math.max(5, grant.expires_in / 2) * 1000);
}

async function refreshToken() {
  try {
    useToken(await tokenFrom('token', { headers: { Authorization: `Bearer ${page.token}` } }));
    log('token refreshed');
  } catch (error) {
    log(`token not refreshed: ${error.message}`);
  }
}

async function login() {
  page.meter.unlock();
  const parsed = JsSIP.URI.parse(userUri($('identity').value));
  if (!parsed) {
    showState('registration-state', 'failed', 'failed: the identity is not a SIP URI');
    return;
  }
  showState('registration-state', 'registering', `logging in as ${parsed.user}…`);
  let grant;
  try {
    grant = await tokenFrom('login', {
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user: parsed.user, password: $('password').value }),
    });
  } catch (error) {
    showState('registration-state', 'failed', `failed: login ${error.message}`);
    log(`login failed: ${error.message}`);
    return;
  }
  log(`logged in: token for ${grant.identity}, valid ${grant.expires_in} s`);
  $('password').value = ''; // the SIP side never sees it
  register(grant);
}

// A logged-in page's WebSocket carries the token at the opening handshake as
// ?access_token= (RFC 6750 §2.3; a browser's WebSocket API can set no header), so that an
// eP-CSCF with [auth] handshake = required admits it.  JsSIP reconnects with its socket's
// URL: the URL is made at each connect from the page's current token, not the first one.
class TokenWebSocket extends JsSIP.WebSocketInterface {
  constructor(url) {
    super(url);
    this.baseUrl = url;
  }

  connect() {
    if (!this.isConnected() && !this.isConnecting()) this._url = withToken(this.baseUrl, page.token);
    super.connect();
  }
}

function withToken(url, token) {
  const parsed = new URL(url);
  if (token) parsed.searchParams.set('access_token', token);
  return parsed.toString();
}

function register(grant = null) {
  page.meter.unlock(); // a user gesture: the AudioContext may start now (autoplay policy)
  const uri = grant ? grant.identity : userUri($('identity').value);
  let parsed;
  try {
    parsed = JsSIP.URI.parse(uri);
    if (!parsed) throw new Error('not a SIP URI');
  } catch (error) {
    showState('registration-state', 'failed', `failed: ${uri} is not a SIP URI`);
    return;
  }
  let socket;
  let ua;
  try {
    const url = $('websocket-url').value.trim();
    socket = grant ? new TokenWebSocket(url) : new JsSIP.WebSocketInterface(url);
    const credentials = grant ? {} : { authorization_user: parsed.user, password: $('password').value };
    ua = new JsSIP.UA({
      sockets: [socket],
      uri,
      ...credentials,
      register: true,
      register_expires: 600,
      session_timers: false,
      user_agent: `epcscf-wwsf JsSIP/${JsSIP.version}`,
    });
  } catch (error) {
    // JsSIP checks the settings here (a bad WebSocket URL, an empty password…).
    showState('registration-state', 'failed', `failed: ${error.message}`);
    log(`cannot register: ${error.message}`);
    return;
  }
  page.ua = ua;
  if (grant) useToken(grant);
  showState('registration-state', 'registering', `registering ${uri}…`);
  // the base URL: a token in the page log would be one more place to leak it
  ua.on('connecting', () => log(`connecting to ${socket.baseUrl || socket.url}`));
  ua.on('connected', () => log('WebSocket connected'));
  ua.on('disconnected', (e) => {
    log(`WebSocket disconnected${e && e.code ? ` (code ${e.code})` : ''}`);
    // The call outlives the WebSocket in the eP-CSCF ([calls] reconnect_grace): keep it.
    if (page.ua === ua && page.session && page.session.isEstablished()) page.resumeAfterReconnect = true;
    if (page.ua === ua && !ua.isRegistered()) refreshControls();
  });
  ua.on('registered', (e) => {
    showState('registration-state', 'registered', `registered as ${uri}`);
    log(`registered (${e.response.status_code}); Service-Route: ${e.response.getHeader('Service-Route') || 'none'}`);
    refreshControls();
    if (page.resumeAfterReconnect) {
      page.resumeAfterReconnect = false;
      restartIce();
    }
  });
  ua.on('unregistered', () => {
    log('unregistered');
    if (page.ua !== ua) return;
    if (page.unregistering) {
      stopUa();
    } else {
      // The WebSocket dropped (an eP-CSCF restart, a network change): JsSIP reconnects with
      // back-off and registers again on the new flow (RFC 5626 §4.4.1); keep the UA running.
      showState('registration-state', 'registering', 'connection lost: reconnecting…');
      refreshControls();
    }
  });
  ua.on('registrationFailed', (e) => {
    const status = e.response ? ` ${e.response.status_code}` : '';
    showState('registration-state', 'failed', `failed: ${e.cause}${status}`);
    log(`registration failed: ${e.cause}${status}`);
    if (page.ua === ua) stopUa(false);
  });
  ua.on('newRTCSession', (e) => newSession(e.session, e.originator));
  ua.start();
  refreshControls();
}

function unregister() {
  if (!page.ua) return;
  page.unregistering = true;
  if (page.ua.isRegistered()) page.ua.unregister();
  else stopUa();
}

function stopUa(showUnregistered = true) {
  const ua = page.ua;
  page.ua = null;
  page.unregistering = false;
  clearTimeout(page.tokenTimer);
  page.token = null;
  if (page.session) page.session.terminate();
  if (ua) ua.stop();
  if (showUnregistered) showState('registration-state', 'unregistered');
  refreshControls();
}

// --- calls ------------------------------------------------------------------------------------

function call() {
  const target = $('target').value.trim();
  if (!page.ua || !target || page.session) return;
  page.meter.unlock();
  log(`calling ${target}`);
  try {
    page.ua.call(target, { mediaConstraints: MEDIA_CONSTRAINTS, pcConfig: PC_CONFIG });
  } catch (error) {
    // JsSIP refuses a target it cannot turn into a SIP URI before any session exists.
    log(`cannot call ${target}: ${error.message}`);
    $('peer').textContent = `(cannot call ${target}: ${error.message})`;
  }
}

function newSession(session, originator) {
  if (page.session) {
    // One call at a time: RFC 3261 §21.4.7 486 Busy Here.
    if (originator === 'remote') session.terminate({ status_code: 486, reason_phrase: 'Busy Here' });
    return;
  }
  page.session = session;
  const peer = session.remote_identity.uri.toString();
  $('peer').textContent = originator === 'remote' ? `from ${peer}` : `to ${peer}`;
  if (originator === 'remote') {
    showState('call-state', 'incoming', 'incoming call');
    $('incoming-text').textContent = `Incoming call from ${session.remote_identity.display_name || peer}`;
    $('incoming').hidden = false;
    $('answer').focus(); // keyboard and screen-reader users land on the choice to make
    log(`incoming call from ${peer}`);
  } else {
    showState('call-state', 'calling', 'calling…');
  }
  session.on('peerconnection', (e) => watchPeerConnection(e.peerconnection));
  if (session.connection) watchPeerConnection(session.connection);
  session.on('progress', (e) => {
    if (session.direction === 'outgoing') {
      showState('call-state', 'ringing', 'ringing…');
      if (e.response) log(`${e.response.status_code} ${e.response.reason_phrase}`);
    }
  });
  session.on('accepted', () => {
    showState('call-state', 'connecting', 'connecting…');
    $('incoming').hidden = true;
  });
  session.on('confirmed', () => {
    showState('call-state', 'connected');
    log('call connected');
    refreshControls();
  });
  session.on('hold', (e) => showHold(e.originator));
  session.on('unhold', (e) => showHold(e.originator));
  session.on('muted', () => setPressed('mute', true, 'Unmute', 'Mute'));
  session.on('unmuted', () => setPressed('mute', false, 'Unmute', 'Mute'));
  session.on('ended', (e) => endSession(`ended: ${e.cause} (${e.originator})`));
  session.on('failed', (e) => endSession(`failed: ${e.cause} (${e.originator})`));
  refreshControls();
}

function showHold(originator) {
  const hold = page.session.isOnHold();
  setPressed('hold', hold.local, 'Resume', 'Hold');
  if (hold.local || hold.remote) {
    showState('call-state', 'held', hold.local ? 'on hold' : 'held by the other party');
  } else {
    showState('call-state', 'connected');
  }
  log(`${hold.local || hold.remote ? 'hold' : 'resume'} (${originator})`);
}

function answer() {
  if (!page.session) return;
  page.meter.unlock();
  $('incoming').hidden = true;
  showState('call-state', 'connecting', 'answering…');
  page.session.answer({ mediaConstraints: MEDIA_CONSTRAINTS, pcConfig: PC_CONFIG });
}

function reject() {
  // RFC 3261 §21.6.2 603 Decline: the user does not want this call.
  if (page.session) page.session.terminate({ status_code: 603, reason_phrase: 'Decline' });
}

function hangup() {
  if (page.session) page.session.terminate();
}

function toggleMute() {
  const session = page.session;
  if (!session) return;
  if (session.isMuted().audio) session.unmute({ audio: true });
  else session.mute({ audio: true });
}

function toggleHold() {
  const session = page.session;
  if (!session) return;
  if (session.isOnHold().local) session.unhold();
  else session.hold();
}

// Registered again on a new WebSocket with the same +sip.instance and reg-id (RFC 5626 §4.4.1):
// the eP-CSCF moved the call to it.  The network path may have changed too, so re-INVITE with an
// ICE restart (RFC 8445 §9) on the same RTCPeerConnection (same DTLS certificate and association).
function restartIce() {
  const session = page.session;
  if (!session || !session.isEstablished()) return;
  const restart = { started: performance.now(), answered: null };
  page.iceRestart = restart;
  const sent = session.renegotiate({ rtcOfferConstraints: { iceRestart: true } }, () => {
    restart.answered = performance.now();
    log('call resumed on the new connection (ICE restarted)');
  });
  log(sent ? 're-INVITE with an ICE restart after the reconnection' : 'ICE restart not sent: a renegotiation is in progress');
}

// A new RTCPeerConnection for the call in progress, as a page does that lost its own (closed
// with the page's WebSocket, a crashed media process): same SIP dialog, same microphone track.
// The next offer (restartIce, once registered again) carries the new connection's certificate
// (a new a=fingerprint) and ICE credentials: the eP-CSCF starts a new DTLS association with new
// SRTP keys (RFC 8842 §5.5) and the call goes on.  JsSIP has no public call for this: its own
// _createRTCConnection makes the new connection (and emits 'peerconnection' for this page).
function replacePeerConnection() {
  const session = page.session;
  if (!session || !session.isEstablished() || !session.connection) return false;
  const old = session.connection;
  const tracks = old.getSenders().map((sender) => sender.track).filter(Boolean);
  session._createRTCConnection(PC_CONFIG, {});
  const local = new MediaStream(tracks);
  for (const track of tracks) session.connection.addTrack(track, local);
  old.close();
  log('RTCPeerConnection replaced: a new certificate and ICE credentials at the next offer');
  return true;
}

function endSession(reason) {
  log(`call ${reason}`);
  $('incoming').hidden = true;
  $('peer').textContent = `(last call ${reason})`;
  page.session = null;
  page.resumeAfterReconnect = false;
  page.peerConnection = null;
  if (page.statsTimer !== null) clearInterval(page.statsTimer);
  page.statsTimer = null;
  page.meter.detach();
  $('remote-audio').srcObject = null;
  setPressed('mute', false, 'Unmute', 'Mute');
  setPressed('hold', false, 'Resume', 'Hold');
  showState('call-state', 'idle');
  refreshControls();
}

// --- media: the RTCPeerConnection's states, stats and the remote audio ---------------------

function watchPeerConnection(pc) {
  if (page.peerConnection === pc) return;
  page.peerConnection = pc;
  const showPcStates = () => {
    if (page.peerConnection !== pc) return;
    showState('ice-state', pc.iceConnectionState);
    showState('pc-state', pc.connectionState);
  };
  pc.addEventListener('iceconnectionstatechange', () => {
    showPcStates();
    log(`ICE ${pc.iceConnectionState}`);
  });
  pc.addEventListener('connectionstatechange', showPcStates);
  pc.addEventListener('track', (e) => {
    if (e.track.kind !== 'audio') return;
    const stream = e.streams[0] || new MediaStream([e.track]);
    $('remote-audio').srcObject = stream;
    page.meter.attach(stream);
  });
  showPcStates();
  showState('dtls-state', 'new');
  if (page.statsTimer !== null) clearInterval(page.statsTimer);
  page.statsTimer = setInterval(() => updateStats(pc), STATS_INTERVAL_MS);
}

async function updateStats(pc) {
  if (page.peerConnection !== pc) return;
  const stats = summariseStats(await pc.getStats());
  page.lastStats = stats;
  $('packets-received').textContent = String(stats.packetsReceived);
  $('packets-sent').textContent = String(stats.packetsSent);
  if (stats.dtlsState && $('dtls-state').dataset.state !== stats.dtlsState) {
    showState('dtls-state', stats.dtlsState);
    log(`DTLS ${stats.dtlsState}`);
  }
}

// --- start ------------------------------------------------------------------------------------

window.wwsf = {
  get ua() { return page.ua; },
  get session() { return page.session; },
  get peerConnection() { return page.peerConnection; },
  get config() { return page.config; },
  /** the last ICE restart after a reconnection: {started, answered} (performance.now()), or null */
  get iceRestart() { return page.iceRestart; },
  /** the remote level meter: {level, history} */
  get meter() { return { level: page.meter.level, history: page.meter.history.slice() }; },
  /** drop the call's RTCPeerConnection for a new one (see replacePeerConnection); false: no call */
  replacePeerConnection,
  /** a fresh getStats() summary of the current call, or null */
  async stats() {
    return page.peerConnection ? summariseStats(await page.peerConnection.getStats()) : null;
  },
  JsSIP,
};

function bind() {
  $('account-form').addEventListener('submit', (e) => { e.preventDefault(); register(); });
  $('unregister').addEventListener('click', unregister);
  $('login').addEventListener('click', login);
  $('dial-form').addEventListener('submit', (e) => { e.preventDefault(); call(); });
  $('hangup').addEventListener('click', hangup);
  $('mute').addEventListener('click', toggleMute);
  $('hold').addEventListener('click', toggleHold);
  $('answer').addEventListener('click', answer);
  $('reject').addEventListener('click', reject);
  window.addEventListener('beforeunload', () => { if (page.ua) page.ua.stop(); });
}

async function start() {
  if (params.get('debug')) JsSIP.debug.enable('JsSIP:*');
  else JsSIP.debug.disable('JsSIP:*');
  bind();
  refreshControls();
  try {
    await loadConfig();
  } catch (error) {
    pageStatus(`Cannot load the WWSF configuration: ${error.message}`, true);
    return;
  }
  document.body.dataset.ready = 'true';
  pageStatus(`Ready. Domain ${page.config.domain}; eP-CSCF at ${page.config.websocket_url}.`);
}

start();
