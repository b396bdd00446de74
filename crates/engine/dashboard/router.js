// Hash routes: '#/messages/abc?x=1' <-> ['messages', 'abc'] + URLSearchParams.

/** Splits a location hash into path parts and search parameters. */
export function parseHash(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const cut = raw.indexOf('?');
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const search = cut < 0 ? '' : raw.slice(cut + 1);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

/** The hash for a path and parameters (empty values left out). */
export function hashFor(path, params) {
  const search = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== '' && v != null));
  const s = search.toString();
  return `#${path}${s ? `?${s}` : ''}`;
}

/** Navigates to a route, e.g. go('/messages', {control_id: 'X'}); re-renders if already there. */
export function go(path, params) {
  const hash = hashFor(path, params);
  if (window.location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else window.location.hash = hash;
}
