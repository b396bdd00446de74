// Login: paste an API token (created with `plexus token create`).
//
// The token is checked by one API call before it is kept: 401 means it is
// not valid; any other answer (a 403 for a token without channel scopes
// included) means Plexus knows it.

import { ApiError, clearToken, get, setToken } from '../api.js';
import { h, notice, replace } from '../dom.js';
import { go } from '../router.js';

export function loginPage(view, { params }) {
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    placeholder: 'plx_…', 'aria-label': 'API token',
  });
  const status = h('div', { 'aria-live': 'polite' });
  if (params.get('expired')) status.append(notice('Your session ended: the token was refused. Log in again.', 'error'));

  const form = h('form', { class: 'card login', id: 'login-form' },
    h('h1', null, 'Log in to Plexus'),
    h('p', { class: 'muted' }, 'Paste an API token. Create one on the server with ',
      h('code', null, 'plexus token create --config plexus.toml --name me --scopes all'), '.'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Log in')),
    status);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    setToken(value);
    replace(status, h('span', { class: 'muted' }, 'Checking the token…'));
    try {
      await get('/api/channels');
    } catch (e) {
      if (!(e instanceof ApiError) || e.status === 401 || e.status === 0) {
        clearToken();
        replace(status, notice(e.status === 401 ? 'Plexus refused this token.' : e.message, 'error'));
        return;
      }
      // 403 and friends: the token is valid, it only lacks a scope.
    }
    const next = params.get('next');
    go(next && next.startsWith('/') && !next.startsWith('/login') ? next : '/channels');
  });

  view.append(form);
  input.focus();
}
