// @ts-check
/// <reference lib="webworker" />
/**
 * tidesync demo service worker (classic script).
 *
 * * Install: fetch `manifest.json` (its `version` names the cache, `tidesync-demo-<version>`)
 *   and precache the app shell, `js/*`, Pyodide and the wheel named in the manifest.
 * * Activate: delete every other `tidesync-demo-*` cache, take control of open pages.
 * * Fetch: network-first for pages and `manifest.json` (fresh when online, cached when
 *   not); cache-first for `pyodide/` and `wheels/` (pinned, large); cache-first with a
 *   network fallback for the rest of the shell (the cache is per version, so it is never
 *   stale within one). `/api/` (the sync WebSocket, health) is never intercepted.
 */
/** @type {ServiceWorkerGlobalScope} */
const sw = /** @type {any} */ (self);

const PREFIX = "tidesync-demo-";
const META = "tidesync-demo-meta";
const META_KEY = "active-cache";

const SHELL = [
  "./", "index.html", "style.css", "manifest.webmanifest",
  "app.mjs", "dom.mjs", "statusbar.mjs", "inspector.mjs", "tasklist.mjs", "projects.mjs", "pwa.mjs",
  "icons/icon.svg", "icons/icon-192.png", "icons/icon-512.png", "icons/maskable-512.png",
  "js/tidesync.mjs", "js/boot.mjs", "js/opfs_fs.mjs", "js/changes.worker.mjs", "js/sync.worker.mjs",
];
const PYODIDE = [
  "pyodide/pyodide.mjs", "pyodide/pyodide.asm.mjs", "pyodide/pyodide.asm.wasm",
  "pyodide/python_stdlib.zip", "pyodide/pyodide-lock.json",
];
/** Files the app cannot start without: a failed fetch of one of these fails the install. */
const REQUIRED = new Set(["./", "app.mjs", "js/tidesync.mjs", ...PYODIDE]);

/** @type {string|null} */
let cacheName = null;

/** @param {string} path */
const abs = (path) => new URL(path, sw.registration.scope).href;

/** The cache this worker serves from (survives the worker being stopped and restarted). */
async function currentCache() {
  if (cacheName) return cacheName;
  const meta = await caches.open(META);
  const stored = await meta.match(META_KEY);
  cacheName = stored ? await stored.text() : null;
  return cacheName;
}

sw.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const response = await fetch(abs("manifest.json"), { cache: "no-store" });
    if (!response.ok) throw new Error(`manifest.json: HTTP ${response.status}`);
    const manifest = await response.clone().json();
    const name = `${PREFIX}${manifest.version}`;
    const cache = await caches.open(name);
    await cache.put(abs("manifest.json"), response);
    // The build lists every shell file; SHELL is the fallback for an older manifest.
    const listed = Array.isArray(manifest.files) ? manifest.files : [];
    const files = [...new Set(["./", ...SHELL, ...listed, ...PYODIDE, manifest.wheel])];
    await Promise.all(files.map(async (file) => {
      // Pyodide is pinned and served immutable: the HTTP cache may answer. The rest must be fresh.
      const init = file.startsWith("pyodide/") ? {} : { cache: /** @type {RequestCache} */ ("reload") };
      try {
        const r = await fetch(abs(file), init);
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        await cache.put(abs(file), r);
      } catch (err) {
        if (REQUIRED.has(file) || file === manifest.wheel) throw new Error(`precache ${file}: ${err}`);
        console.warn("tidesync sw: optional file not cached", file, err);
      }
    }));
    cacheName = name;
    await sw.skipWaiting();
  })());
});

sw.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    const name = cacheName ?? (await currentCache());
    if (name) {
      const meta = await caches.open(META);
      await meta.put(META_KEY, new Response(name));
      for (const key of await caches.keys()) {
        if (key.startsWith(PREFIX) && key !== name && key !== META) await caches.delete(key);
      }
    }
    await sw.clients.claim();
  })());
});

sw.addEventListener("message", (event) => {
  if (event.data?.type === "status") {
    event.waitUntil((async () => {
      const name = await currentCache();
      const cache = name ? await caches.open(name) : null;
      const entries = cache ? (await cache.keys()).length : 0;
      event.source?.postMessage({ type: "sw-status", cache: name, entries });
    })());
  }
});

sw.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== location.origin) return;
  const scope = new URL(sw.registration.scope);
  if (!url.pathname.startsWith(scope.pathname)) return;
  const path = url.pathname.slice(scope.pathname.length);
  if (path.startsWith("api/") || path === "sw.js") return; // never the sync socket or the server API

  if (request.mode === "navigate" || path === "" || path.endsWith(".html") || path === "manifest.json") {
    event.respondWith(networkFirst(request, request.mode === "navigate"));
  } else if (path.startsWith("pyodide/") || path.startsWith("wheels/")) {
    event.respondWith(cacheFirst(request, true));
  } else {
    event.respondWith(cacheFirst(request, false));
  }
});

/** @param {Request} request @param {boolean} isPage */
async function networkFirst(request, isPage) {
  const name = await currentCache();
  try {
    const response = await fetch(request);
    if (response.ok && name) {
      const cache = await caches.open(name);
      // Pages are cached under their path without the query (?big=1 shares the shell).
      const key = isPage ? stripSearch(request.url) : request.url;
      await cache.put(key, response.clone());
    }
    return response;
  } catch (err) {
    const cache = name ? await caches.open(name) : null;
    const hit = cache && ((await cache.match(request, { ignoreSearch: true }))
      ?? (isPage ? (await cache.match(abs("./"))) ?? (await cache.match(abs("index.html"))) : undefined));
    if (hit) return hit;
    const anywhere = await caches.match(request, { ignoreSearch: true });
    if (anywhere) return anywhere;
    throw err;
  }
}

/** @param {Request} request @param {boolean} store */
async function cacheFirst(request, store) {
  const name = await currentCache();
  const cache = name ? await caches.open(name) : null;
  const hit = cache ? await cache.match(request, { ignoreVary: true }) : await caches.match(request);
  if (hit) return hit;
  const response = await fetch(request);
  if (response.ok && cache && (store || response.type === "basic")) await cache.put(request, response.clone());
  return response;
}

/** @param {string} href */
function stripSearch(href) {
  const u = new URL(href);
  u.search = "";
  u.hash = "";
  return u.href;
}
