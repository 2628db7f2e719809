"""The admin console in the browser, served by the api under /ui (docs/console.md).

Static files (HTML, CSS, JS; no build step, no CDN) live in `static/`; the pages call the
admin API (which accepts a console admin session) and the JSON endpoints of `data`.
"""
