// Signs in (an invite link's token in the URL fragment, or a user key typed in), then shows
// one view at a time; a view's loader (if any) runs each time it is shown.
import { forgetToken, getJson, keepToken, token } from './api.js';
import { attempt, clearProblem, setText, when } from './dom.js';
import { Enrolment } from './enrol.js';
import { showOverview } from './overview.js';
import { TryIt } from './try.js';

const ADMIN_REFUSED = 'That is the admin key. This page is for speakers, so it does not ' +
  'accept it: sign in with your own user key or open your invite link. The admin key was ' +
  'not kept.';

const byId = (id) => document.getElementById(id);
const VIEWS = ['signin', 'overview', 'enrol', 'try'];
let views = {};

// The token travels in the fragment (never sent to a server); it is kept for this tab and
// taken out of the address bar.
function tokenFromLink() {
  const found = new URLSearchParams(location.hash.slice(1)).get('link');
  if (found) history.replaceState(null, '', location.pathname);
  return found;
}

function showView(name) {
  for (const view of VIEWS) byId(`view-${view}`).hidden = view !== name;
  for (const button of document.querySelectorAll('nav [data-view]')) {
    if (button.dataset.view === name) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
  const section = byId(`view-${name}`);
  section.querySelector('h1').focus();
  section.setAttribute('aria-busy', 'true');
  return attempt(() => views[name]?.()).finally(() => section.removeAttribute('aria-busy'));
}

function signedIn(me) {
  const link = me.role === 'link'
    ? ` (through your invite link, which works until ${when(me.link_expires_at)})` : '';
  setText('who', `Signed in as ${me.name}${link}`);
  byId('sign-out').hidden = false;
  byId('views').hidden = false;
  const enrolment = new Enrolment(me.user_id);
  new TryIt(me.user_id); // wires its controls; the view needs nothing loaded on entry
  views = {
    overview: () => showOverview(me.user_id),
    enrol: () => enrolment.enter(),
  };
  return showView('overview');
}

async function signIn(candidate) {
  const me = await getJson('/v1/me', { as: candidate });
  if (me.role === 'admin') {
    forgetToken();
    throw new Error(ADMIN_REFUSED);
  }
  keepToken(candidate);
  await signedIn(me);
}

function wire() {
  byId('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const field = byId('signin-key');
    const candidate = field.value.trim();
    field.value = '';
    attempt(() => signIn(candidate));
  });
  byId('sign-out').addEventListener('click', () => {
    forgetToken();
    location.reload();
  });
  for (const button of document.querySelectorAll('nav [data-view]')) {
    button.addEventListener('click', () => {
      clearProblem();
      showView(button.dataset.view);
    });
  }
}

wire();
const saved = tokenFromLink() ?? token();
if (saved) {
  attempt(async () => {
    try {
      await signIn(saved);
    } catch (error) {
      forgetToken();
      showView('signin');
      throw error;
    }
  });
} else {
  showView('signin');
}
