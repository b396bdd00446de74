// The dashboard shell: a small hash router and the top bar.
//
// Routes (the part after '#'):
//   /login                the token form
//   /channels             channel list with counts and health, start/stop
//   /messages?filters     the message browser
//   /messages/<id>        one message
//   /sync                 patient sync
// Each page is a function (view, params) that fills `view` and may return a
// clean-up function (stop polling) that runs when the user leaves the page.

import { clearToken, onUnauthorized, token } from './api.js';
import { notice, replace } from './dom.js';
import { go, parseHash } from './router.js';
import { loginPage } from './pages/login.js';
import { channelsPage } from './pages/channels.js';
import { messagesPage } from './pages/messages.js';
import { messagePage } from './pages/message.js';
import { syncPage } from './pages/sync.js';

const view = document.getElementById('view');
const nav = document.getElementById('nav');
const logout = document.getElementById('logout');
let cleanup = null;
let generation = 0;

function route(parts) {
  switch (parts[0]) {
    case 'login': return ['login', loginPage];
    case 'channels': return ['channels', channelsPage];
    case 'messages': return parts[1] ? ['messages', messagePage] : ['messages', messagesPage];
    case 'sync': return ['sync', syncPage];
    default: return null;
  }
}

async function render() {
  if (cleanup) {
    try { cleanup(); } catch { /* a page's clean-up must not stop navigation */ }
    cleanup = null;
  }
  const mine = ++generation;
  const { parts, params } = parseHash(window.location.hash);
  if (!token() && parts[0] !== 'login') {
    go('/login', parts.length ? { next: `/${parts.map(encodeURIComponent).join('/')}` } : undefined);
    return;
  }
  const found = route(parts);
  if (!found) {
    go(token() ? '/channels' : '/login');
    return;
  }
  const [name, page] = found;
  const loggedIn = Boolean(token());
  nav.hidden = !loggedIn;
  logout.hidden = !loggedIn;
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.page === name);
  document.body.dataset.page = name;
  replace(view);
  let result;
  try {
    result = await page(view, { parts, params, isCurrent: () => mine === generation });
  } catch (e) {
    if (mine === generation) replace(view, notice(e.message || String(e), 'error'));
  }
  if (mine === generation && typeof result === 'function') cleanup = result;
  else if (typeof result === 'function') result();
}

onUnauthorized(() => {
  clearToken();
  const { parts } = parseHash(window.location.hash);
  if (parts[0] !== 'login') go('/login', { expired: '1' });
});

logout.addEventListener('click', () => {
  clearToken();
  go('/login');
});

window.addEventListener('hashchange', render);
render();
