// A stand-in RTCPeerConnection for JsSIP in Node, which has no WebRTC: it hands JsSIP the SDP
// the test supplies (createOffer/createAnswer) and reports every remote SDP JsSIP applies. On the
// network this is what a browser's SDP exchange looks like; the media is the test's business.
//   installStandInPeerConnection({ localSdp(type) -> string, onRemoteDescription(description) })
// sets global.RTCPeerConnection and global.RTCSessionDescription for JsSIP.
function installStandInPeerConnection({ localSdp, onRemoteDescription }) {
  class StandInPeerConnection extends EventTarget {
    constructor() {
      super();
      this.iceGatheringState = 'complete';
      this.iceConnectionState = 'new';
      this.connectionState = 'new';
      this.signalingState = 'stable';
      this.localDescription = null;
      this.remoteDescription = null;
    }
    async createOffer() { return { type: 'offer', sdp: localSdp('offer') }; }
    async createAnswer() { return { type: 'answer', sdp: localSdp('answer') }; }
    async setLocalDescription(description) {
      this.localDescription = description;
      this.signalingState = description.type === 'offer' ? 'have-local-offer' : 'stable';
    }
    async setRemoteDescription(description) {
      this.remoteDescription = description;
      this.signalingState = description.type === 'offer' ? 'have-remote-offer' : 'stable';
      onRemoteDescription(description);
    }
    addTrack() {}
    getSenders() { return []; }
    getReceivers() { return []; }
    getTransceivers() { return []; }
    getLocalStreams() { return []; }
    getRemoteStreams() { return []; }
    close() { this.signalingState = 'closed'; }
  }
  global.window = global;
  global.RTCPeerConnection = StandInPeerConnection;
  global.RTCSessionDescription = class { constructor(init) { Object.assign(this, init); } };
}

// What JsSIP is given as the local media: no tracks (the test's own agent carries the media).
const NO_MEDIA = { getTracks: () => [], getAudioTracks: () => [], getVideoTracks: () => [] };

module.exports = { installStandInPeerConnection, NO_MEDIA };
