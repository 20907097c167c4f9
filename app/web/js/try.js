// Try it: one clip transcribed by the base model and by the user's voice model side by side;
// the text, corrected, is saved as a recording of origin `correction`.
import { form, request, upload } from './api.js';
import { attempt, setText } from './dom.js';
import { Recorder } from './recorder.js';

const MODEL = 'whisper-1';
const byId = (id) => document.getElementById(id);

async function transcribe(clip, personalise) {
  const body = form({ file: clip, model: MODEL, personalise: String(personalise) });
  const response = await request('POST', '/v1/audio/transcriptions', { body });
  const { text } = await response.json();
  return {
    text: text.trim(),
    adapter: response.headers.get('X-Adapter-Id'),
    requestId: response.headers.get('X-Request-Id'),
  };
}

export class TryIt {
  constructor(userId) {
    this.userId = userId;
    this.recorder = new Recorder(byId('try-recorder'), 'clip', (clip) => attempt(() => this.compare(clip)));
    byId('try-file').addEventListener('change', (event) => {
      const [clip] = event.target.files;
      if (clip) attempt(() => this.compare(clip));
    });
    byId('try-save').addEventListener('click', () => attempt(() => this.save()));
  }

  async compare(clip) {
    this.clip = null;
    byId('try-save').disabled = true;
    byId('try-correction').disabled = true;
    setText('try-status', 'Transcribing your clip…');
    const [base, mine] = await Promise.all([transcribe(clip, false), transcribe(clip, true)]);
    setText('try-base', base.text || '(nothing heard)');
    setText('try-mine', mine.adapter === 'none'
      ? 'You have no voice model in use yet, so this is the base model too.'
      : mine.text || '(nothing heard)');
    this.clip = clip;
    this.requestId = mine.requestId;
    const correction = byId('try-correction');
    correction.value = mine.text;
    correction.disabled = false;
    byId('try-save').disabled = false;
    setText('try-status', 'Done. If the text is wrong, correct it below and save it.');
  }

  async save() {
    const transcript = byId('try-correction').value.trim();
    if (!transcript) throw new Error('Type what you said before saving the correction.');
    const body = form({
      file: this.clip, transcript, origin: 'correction', request_id: this.requestId,
    });
    await upload(`/v1/users/${this.userId}/recordings`, body, () => {});
    byId('try-save').disabled = true;
    setText('try-status', 'Saved as a correction: it is in your recordings, and the next ' +
      'training will learn from it.');
  }
}
