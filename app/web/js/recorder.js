// Records from the microphone (MediaRecorder, webm/opus) with a loudness meter and play-back.
// The controls are the `data-part` children of one element; `onRecorded(file, seconds)` is told
// of each finished recording.

const MIME = 'audio/webm;codecs=opus';
const TICK_MS = 100;
const FLOOR_DB = -60;

function loudness(analyser, samples) {
  analyser.getFloatTimeDomainData(samples);
  const power = samples.reduce((sum, x) => sum + x * x, 0) / samples.length;
  const db = 10 * Math.log10(power || 1e-12);
  return Math.min(1, Math.max(0, (db - FLOOR_DB) / -FLOOR_DB));
}

export class Recorder {
  constructor(root, name, onRecorded) {
    this.part = (key) => root.querySelector(`[data-part="${key}"]`);
    this.name = name;
    this.onRecorded = onRecorded;
    this.part('record').addEventListener('click', () => this.start().catch((e) => this.fail(e)));
    this.part('stop').addEventListener('click', () => this.recorder?.stop());
  }

  async start() {
    if (!window.MediaRecorder || !MediaRecorder.isTypeSupported(MIME)) {
      throw new Error('This browser cannot record webm/opus audio. Try a recent Chrome, ' +
        'Edge or Firefox, or choose an audio file instead.');
    }
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    this.recorder = new MediaRecorder(this.stream, { mimeType: MIME });
    this.recorder.addEventListener('dataavailable', (event) => chunks.push(event.data));
    this.recorder.addEventListener('stop', () => this.finish(chunks));
    this.recorder.start();
    this.startedAt = performance.now();
    this.watch();
    this.setRecording(true);
    this.part('stop').focus();
  }

  watch() {
    this.context = new AudioContext();
    const analyser = this.context.createAnalyser();
    this.context.createMediaStreamSource(this.stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.timer = setInterval(() => {
      this.part('level').value = loudness(analyser, samples);
      this.part('elapsed').textContent = `Recording: ${this.elapsed().toFixed(1)} s`;
    }, TICK_MS);
  }

  elapsed() {
    return (performance.now() - this.startedAt) / 1000;
  }

  finish(chunks) {
    const seconds = this.elapsed();
    this.release();
    const file = new File(chunks, `${this.name}.webm`, { type: MIME });
    const playback = this.part('playback');
    URL.revokeObjectURL(playback.src);
    playback.src = URL.createObjectURL(file);
    playback.hidden = false;
    this.part('elapsed').textContent = `Recorded ${seconds.toFixed(1)} s. Play it back, ` +
      'or press Record to record it again.';
    this.setRecording(false);
    this.part('record').textContent = 'Record again';
    this.part('record').focus();
    this.onRecorded(file, seconds);
  }

  fail(error) {
    this.release();
    this.setRecording(false);
    const denied = error.name === 'NotAllowedError';
    this.part('elapsed').textContent = denied
      ? 'The microphone is blocked. Allow it in your browser, then press Record again.'
      : `Recording did not start: ${error.message}`;
  }

  release() {
    clearInterval(this.timer);
    this.stream?.getTracks().forEach((track) => track.stop());
    this.context?.close();
    this.part('level').value = 0;
  }

  setRecording(on) {
    this.part('record').disabled = on;
    this.part('stop').disabled = !on;
  }

  reset(name) {
    this.name = name;
    const playback = this.part('playback');
    URL.revokeObjectURL(playback.src);
    playback.removeAttribute('src');
    playback.hidden = true;
    this.part('record').textContent = 'Record';
    this.part('elapsed').textContent = 'Not recording';
  }
}
