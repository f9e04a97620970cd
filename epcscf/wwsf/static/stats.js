// RTCPeerConnection.getStats() → the few numbers that prove media flows
// (W3C webrtc-stats: inbound-rtp, outbound-rtp, transport, candidate-pair).

export function summariseStats(report) {
  const summary = {
    packetsReceived: 0,
    packetsSent: 0,
    bytesReceived: 0,
    bytesSent: 0,
    audioLevel: null,
    dtlsState: null,
    iceState: null,
    selectedPair: null,
  };
  const byId = new Map();
  report.forEach((entry) => byId.set(entry.id, entry));
  report.forEach((entry) => {
    if (entry.type === 'inbound-rtp' && (entry.kind || entry.mediaType) === 'audio') {
      summary.packetsReceived += entry.packetsReceived || 0;
      summary.bytesReceived += entry.bytesReceived || 0;
      if (typeof entry.audioLevel === 'number') summary.audioLevel = entry.audioLevel;
    } else if (entry.type === 'outbound-rtp' && (entry.kind || entry.mediaType) === 'audio') {
      summary.packetsSent += entry.packetsSent || 0;
      summary.bytesSent += entry.bytesSent || 0;
    } else if (entry.type === 'transport') {
      summary.dtlsState = entry.dtlsState || null;
      summary.iceState = entry.iceState || null;
      const pair = byId.get(entry.selectedCandidatePairId);
      if (pair) {
        const local = byId.get(pair.localCandidateId);
        const remote = byId.get(pair.remoteCandidateId);
        summary.selectedPair = {
          state: pair.state,
          local: local ? `${local.address || local.ip}:${local.port} ${local.candidateType}` : null,
          remote: remote ? `${remote.address || remote.ip}:${remote.port} ${remote.candidateType}` : null,
        };
      }
    }
  });
  return summary;
}
