// Enrol: the user's prompts one at a time, each recording saved as soon as it is kept, then a
// training job on everything kept, followed until the gate has decided.
import { form, getJson, request, upload } from './api.js';
import { attempt, setText } from './dom.js';
import { Recorder } from './recorder.js';
import { FINISHED, etaWords, outcomeWords, reasonWords, statusWords } from './words.js';

const PROMPTS = 30;
const POLL_MS = 2000;

// The same sentences on every visit: /v1/prompts is seeded from the user id (FNV-1a).
function seedFor(userId) {
  let hash = 0x811c9dc5;
  for (const char of userId) hash = Math.imul(hash ^ char.charCodeAt(0), 0x01000193);
  return hash >>> 0;
}

const byId = (id) => document.getElementById(id);

export class Enrolment {
  constructor(userId) {
    this.userId = userId;
    this.recorder = new Recorder(byId('enrol-recorder'), 'sentence-1', (file) => {
      this.recording = file;
      byId('enrol-keep').disabled = false;
    });
    byId('enrol-keep').addEventListener('click', () => attempt(() => this.keep()));
    byId('enrol-skip').addEventListener('click', () => this.move('Skipped.'));
    byId('train').addEventListener('click', () => attempt(() => this.train()));
  }

  async enter() {
    const base = `/v1/users/${this.userId}`;
    const [prompts, recordings, jobs] = await Promise.all([
      this.prompts ?? getJson(`/v1/prompts?n=${PROMPTS}&seed=${seedFor(this.userId)}`),
      getJson(`${base}/recordings`),
      getJson(`${base}/enrolments`),
    ]);
    this.prompts = prompts;
    const kept = recordings.data.filter((recording) => recording.origin === 'enrolment');
    this.kept = new Set(kept.map((recording) => recording.transcript));
    this.index = this.nextIndex(-1);
    this.show();
    const latest = jobs.data[0];
    if (latest && !FINISHED.has(latest.status)) this.follow(latest.id);
  }

  nextIndex(from) {
    const sentences = this.prompts.data;
    for (let step = 1; step <= sentences.length; step += 1) {
      const index = (from + step) % sentences.length;
      if (!this.kept.has(sentences[index])) return index;
    }
    return -1;
  }

  show() {
    const sentences = this.prompts.data;
    const done = this.index < 0;
    setText('enrol-position', done
      ? `You have read all ${sentences.length} sentences.`
      : `Sentence ${this.index + 1} of ${sentences.length}`);
    setText('prompt', done ? 'Thank you.' : sentences[this.index]);
    const count = sentences.filter((sentence) => this.kept.has(sentence)).length;
    setText('enrol-saved', `You have kept ${count} of ${sentences.length} sentences.`);
    this.recording = null;
    this.recorder.reset(`sentence-${this.index + 1}`);
    byId('enrol-keep').disabled = true;
    this.recorder.part('record').disabled = done;
    byId('enrol-skip').disabled = done;
  }

  move(status) {
    this.index = this.nextIndex(this.index);
    this.show();
    setText('enrol-status', `${status} ${byId('enrol-position').textContent}.`);
    this.recorder.part('record').focus();
  }

  async keep() {
    const sentence = this.prompts.data[this.index];
    const progress = byId('enrol-upload-progress');
    progress.value = 0;
    byId('enrol-upload').hidden = false;
    byId('enrol-keep').disabled = true;
    try {
      const body = form({ file: this.recording, transcript: sentence, origin: 'enrolment' });
      await upload(`/v1/users/${this.userId}/recordings`, body, (done) => {
        progress.value = done;
      });
    } catch (error) {
      byId('enrol-keep').disabled = false;
      throw error;
    } finally {
      byId('enrol-upload').hidden = true;
    }
    this.kept.add(sentence);
    this.move('Saved.');
  }

  async train() {
    byId('train').disabled = true;
    try {
      const response = await request('POST', `/v1/users/${this.userId}/enrolments`, {
        body: form({}),
      });
      this.follow((await response.json()).id);
    } finally {
      byId('train').disabled = false;
    }
  }

  follow(jobId) {
    clearTimeout(this.poll);
    byId('job').hidden = false;
    byId('job-outcome').hidden = true;
    const check = () => attempt(async () => {
      const job = await getJson(`/v1/enrolments/${jobId}`);
      this.showJob(job);
      if (!FINISHED.has(job.status)) this.poll = setTimeout(check, POLL_MS);
    });
    check();
  }

  showJob(job) {
    byId('job-progress').value = job.progress;
    const parts = [statusWords(job.status), `${Math.round(job.progress * 100)}%`];
    if (!FINISHED.has(job.status)) parts.push(job.message, etaWords(job.eta_seconds));
    setText('job-status', parts.filter(Boolean).join(' — '));
    byId('train').disabled = !FINISHED.has(job.status);
    if (!FINISHED.has(job.status)) return;
    setText('job-outcome-summary', outcomeWords(job));
    setText('job-outcome-reason', reasonWords(job));
    byId('job-outcome').hidden = false;
  }
}
