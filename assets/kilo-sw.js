// kilo_web's service worker: shows Web Push notifications and keeps the app
// badge at the absolute number each push carries.
//
// Payloads are JSON: {"title", "body", "badge", "data"}. A count-only push
// (data.type === "badge") has no title and only updates the badge.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function readPayload(event) {
  if (!event.data) return {};
  try {
    return event.data.json();
  } catch (error) {
    return {title: "kilo_web", body: event.data.text()};
  }
}

function updateBadge(badge) {
  if (typeof badge !== "number" || !self.navigator.setAppBadge) return Promise.resolve();
  return badge > 0 ? self.navigator.setAppBadge(badge) : self.navigator.clearAppBadge();
}

self.addEventListener("push", (event) => {
  const payload = readPayload(event);
  const tasks = [updateBadge(payload.badge)];
  if (payload.title) {
    const data = payload.data || {};
    tasks.push(self.registration.showNotification(payload.title, {
      body: payload.body || "",
      tag: data.messageId ? `message-${data.messageId}` : undefined,
      data,
    }));
  }
  event.waitUntil(Promise.all(tasks));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.matchAll({type: "window"}).then((windows) => {
    const open = windows.find((client) => "focus" in client);
    return open ? open.focus() : self.clients.openWindow("/");
  }));
});
