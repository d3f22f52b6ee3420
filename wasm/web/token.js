// @ts-check
// The token of the demo page (/) and the node's status page (/status): from ?token= or the
// page's token field, kept for this tab in sessionStorage under one key both pages read. A token
// in the URL is taken out of the address bar, so that it stays out of the history and of links
// copied from it.

const TOKEN_KEY = 'hivesync.token';

/** The page's token (undefined when none), after taking one from ?token= if present. */
export function pageToken() {
  const params = new URLSearchParams(location.search);
  if (params.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, /** @type {string} */ (params.get('token')));
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY) || undefined;
}

/**
 * Keep `token` for this tab.
 * @param {string} token
 */
export function saveToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}
