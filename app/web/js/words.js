// What the API's states and decisions mean, in words a speaker reads.

const STATUS = {
  queued: 'Waiting to start',
  running: 'Training',
  succeeded: 'Finished',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

export const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

const METHODS = { lora: 'LoRA', saml: 'SAML' };

export const methodWords = (method) => METHODS[method] ?? method;

export const statusWords = (status) => STATUS[status] ?? status;

export function outcomeWords(job) {
  if (job.status === 'succeeded' && job.activated) {
    return 'Your new voice model is now in use.';
  }
  if (job.status === 'succeeded') {
    return 'Your voice model was trained, but it is not in use: the check found no sure ' +
      'improvement over what you use now.';
  }
  if (job.status === 'failed') return `Training failed: ${job.error ?? 'no reason was given.'}`;
  if (job.status === 'cancelled') return 'Training was cancelled.';
  return '';
}

// The gate's own sentence, e.g. "activated: on 12 recordings, ...".
export function reasonWords(job) {
  return job.activation_reason ? `How it was decided: ${job.activation_reason}.` : '';
}

export function etaWords(seconds) {
  if (seconds === null || seconds === undefined) return '';
  if (seconds < 60) return 'less than a minute left';
  const minutes = Math.round(seconds / 60);
  return `about ${minutes} minute${minutes === 1 ? '' : 's'} left`;
}

export function adapterWords(adapter) {
  if (!adapter) return 'In use now: the base model. You have no voice model in use yet.';
  return `In use now: your voice model, version ${adapter.version} ` +
    `(${methodWords(adapter.method)}, ${adapter.id.slice(0, 8)}).`;
}
