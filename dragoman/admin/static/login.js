/* Sign-in through the admin API (the plain form post works too, without JavaScript). */
(function () {
  'use strict';
  document.addEventListener('DOMContentLoaded', () => {
    const form = document.getElementById('login-form');
    const error = document.getElementById('login-error');
    const token = document.querySelector('meta[name="csrf-token"]').getAttribute('content');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      error.textContent = '';
      try {
        const res = await fetch('/admin/api/session', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'content-type': 'application/json', 'x-csrf-token': token },
          body: JSON.stringify({ password: form.elements.password.value }),
        });
        if (res.ok) {
          const next = form.dataset.next || '/admin/';
          window.location.assign(next.startsWith('/admin') && !next.startsWith('//') ? next : '/admin/');
          return;
        }
        let message = 'Sign-in failed (' + res.status + ')';
        try {
          const body = await res.json();
          if (body && body.error && body.error.message) message = body.error.message;
        } catch (e) { /* not JSON */ }
        const wait = res.headers.get('retry-after');
        if (res.status === 429 && wait) message += ' (in ' + wait + ' s)';
        error.textContent = message;
        form.elements.password.select();
      } catch (e) {
        error.textContent = 'dragoman did not answer: ' + e.message;
      } finally {
        button.disabled = false;
      }
    });
  });
})();
