// "Your things": the adapter in use, the user's adapters, training jobs and recordings (the
// API lists jobs and recordings newest first).
import { getJson } from './api.js';
import { fillTable, seconds, setText, when } from './dom.js';
import { adapterWords, methodWords, outcomeWords, reasonWords, statusWords } from './words.js';

const ORIGIN = { enrolment: 'Enrolment', correction: 'Correction' };

export async function showOverview(userId) {
  const base = `/v1/users/${userId}`;
  const [adapters, jobs, recordings] = await Promise.all([
    getJson(`${base}/adapters`),
    getJson(`${base}/enrolments`),
    getJson(`${base}/recordings`),
  ]);
  setText('serving', adapterWords(adapters.data.find((adapter) => adapter.active)));
  fillTable('adapters', adapters.data.map((adapter) => [
    `Version ${adapter.version}`,
    methodWords(adapter.method),
    when(adapter.created_at),
    adapter.active ? 'Yes' : 'No',
  ]));
  fillTable('jobs', jobs.data.map((job) => [
    when(job.created_at),
    statusWords(job.status),
    [outcomeWords(job), reasonWords(job)].filter(Boolean).join(' '),
  ]));
  fillTable('recordings', recordings.data.map((recording) => [
    when(recording.created_at),
    ORIGIN[recording.origin] ?? recording.origin,
    seconds(recording.duration_seconds),
    recording.transcript,
  ]));
}
