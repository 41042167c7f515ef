// @ts-check
/**
 * Installable PWA: register `sw.js` so a second visit starts from cache and the
 * app opens with the server down or the network off.
 *
 * The service worker is registered as `sw.js?v=<manifest.json version>`: the
 * build's version hashes Pyodide, the wheel, the shim and this demo, so any new
 * build changes the script URL, which makes the browser install the new worker
 * (and its freshly versioned cache) even when `sw.js` itself did not change.
 */

/** @typedef {"unsupported"|"installing"|"offline-ready"|"error"} SwState */

/** The build's version, from the network when it answers, else from the service worker's cache. */
export async function siteVersion() {
  try {
    const response = await fetch("manifest.json", { cache: "no-cache" });
    if (!response.ok) return null;
    return String((await response.json()).version ?? "") || null;
  } catch {
    return null;
  }
}

/**
 * @param {(state: SwState, detail?: string) => void} onState
 * @param {() => void} onUpdate a newer version took over this page (reload to use it)
 */
export async function registerServiceWorker(onState, onUpdate) {
  if (!("serviceWorker" in navigator)) {
    onState("unsupported");
    return;
  }
  const hadController = Boolean(navigator.serviceWorker.controller);
  try {
    const version = await siteVersion();
    const url = version ? `sw.js?v=${encodeURIComponent(version)}` : "sw.js";
    if (!hadController) onState("installing");
    navigator.serviceWorker.addEventListener("controllerchange", () => {
      if (hadController) onUpdate();
      onState("offline-ready");
    });
    const registration = await navigator.serviceWorker.register(url, { scope: "./", updateViaCache: "none" });
    await navigator.serviceWorker.ready;
    if (navigator.serviceWorker.controller) onState("offline-ready", registration.active?.scriptURL);
  } catch (err) {
    onState("error", String(/** @type {Error} */ (err).message));
  }
}
