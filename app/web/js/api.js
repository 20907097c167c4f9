// The service's API as the page uses it: the key or invite token from this tab's session
// storage, and every failure turned into an ApiError whose message a person can read.

const TOKEN_KEY = 'pqm.token';

const LEADS = {
  400: 'That was not accepted',
  401: 'You are not signed in, or your sign-in has ended',
  403: 'That is not allowed here',
  404: 'That could not be found',
  409: 'That cannot be done right now',
  413: 'That is too large',
  422: 'The service did not understand the request',
  503: 'The service is busy right now; please try again in a moment',
};

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = () => sessionStorage.getItem(TOKEN_KEY);
export const keepToken = (value) => sessionStorage.setItem(TOKEN_KEY, value);
export const forgetToken = () => sessionStorage.removeItem(TOKEN_KEY);

const UNREACHABLE = new ApiError(
  0, 'The service could not be reached. Check your connection, then try again.');

function plainError(status, body) {
  const detail = body?.error?.message ?? '';
  const lead = LEADS[status] ?? 'Something went wrong on the service';
  return new ApiError(status, detail ? `${lead}: ${detail}` : `${lead}.`, body?.error?.code);
}

async function errorOf(response) {
  const body = await response.json().catch(() => null);
  return plainError(response.status, body);
}

export async function request(method, path, { body, as = token() } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, headers: { Authorization: `Bearer ${as}` } });
  } catch {
    throw UNREACHABLE;
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path, options) {
  return (await request('GET', path, options)).json();
}

export function form(fields) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== null && value !== undefined) data.append(name, value);
  }
  return data;
}

// fetch reports no upload progress; XMLHttpRequest does.
export function upload(path, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.setRequestHeader('Authorization', `Bearer ${token()}`);
    xhr.responseType = 'json';
    xhr.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener('load', () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(plainError(xhr.status, xhr.response));
    });
    xhr.addEventListener('error', () => reject(UNREACHABLE));
    xhr.send(body);
  });
}
