// A live level meter of a MediaStream (the remote party's audio): WebAudio AnalyserNode,
// peak of the time-domain samples, sampled ten times a second.  Nothing is routed to the
// speakers from here: the page's <audio> element plays the stream (Chromium only feeds a
// remote WebRTC stream into WebAudio while a media element also consumes it).

const SAMPLE_INTERVAL_MS = 100;
const DECAY = 0.6; // how much of the previous value a falling meter keeps per sample

export class LevelMeter {
  constructor(meterElement, textElement) {
    this.meterElement = meterElement;
    this.textElement = textElement;
    this.context = null;
    this.source = null;
    this.analyser = null;
    this.samples = null;
    this.timer = null;
    /** the displayed level, 0..1 */
    this.level = 0;
    /** levels shown since attach(), newest last (bounded): lets a test see the meter move */
    this.history = [];
  }

  /** Create or resume the AudioContext; call from a user gesture (autoplay policy). */
  unlock() {
    if (!this.context) this.context = new AudioContext();
    if (this.context.state === 'suspended') this.context.resume().catch(() => {});
  }

  attach(stream) {
    this.detach();
    this.unlock();
    this.source = this.context.createMediaStreamSource(stream);
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 2048;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
    this.history = [];
    this.timer = setInterval(() => this.sample(), SAMPLE_INTERVAL_MS);
  }

  sample() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let peak = 0;
    for (const value of this.samples) peak = Math.max(peak, Math.abs(value));
    this.show(Math.max(Math.min(peak, 1), this.level * DECAY));
  }

  show(level) {
    this.level = level;
    this.history.push(level);
    if (this.history.length > 600) this.history.shift();
    this.meterElement.value = level;
    this.meterElement.textContent = level.toFixed(2);
    this.textElement.textContent = level.toFixed(2);
  }

  detach() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.source) this.source.disconnect();
    this.source = null;
    this.analyser = null;
    this.level = 0;
    this.meterElement.value = 0;
    this.meterElement.textContent = '0.00';
    this.textElement.textContent = '0.00';
  }
}
