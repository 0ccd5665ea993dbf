/* shop-events browser tracking: product views and identify, posted to /shop-events/track.
 *
 *   <script src="/shop-events/static/shop-events.js" defer></script>
 *
 * Product pages: an element with the product as JSON is reported once the page has loaded,
 *   <div data-shop-events-product='{"name": "Hair styler", "price": "341", "url": "…"}'></div>
 * or call shopEvents.productViewed({name: "…", price: "…", url: "…", imageurl: "…"}).
 * After a sign-in: shopEvents.identify("ann@example.com") (or identify on the server).
 * Calls made before the script loaded can be queued: window.shopEvents = [["identify", email]].
 *
 * The server keeps the visitor id in a first-party HttpOnly cookie (se_vid); this script never
 * reads it. Each call returns a Promise resolving to true (recorded) or false (refused; the
 * reason is logged to the console). No dependencies, no globals besides window.shopEvents.
 */
(function (window, document) {
  "use strict";

  var script = document.currentScript;
  var endpoint = (script && script.getAttribute("data-endpoint")) ||
    (script && script.src ? new URL("../track", script.src).href : "/shop-events/track");

  function send(payload) {
    if (!window.fetch) {
      return Promise.resolve(false);
    }
    return window.fetch(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
      credentials: "include",
      keepalive: true
    }).then(function (response) {
      if (response.ok) {
        return true;
      }
      return response.json().then(function (reply) {
        console.warn("shop-events: " + payload.type + " refused (" + response.status + "): " +
          (reply && reply.error));
        return false;
      }, function () {
        console.warn("shop-events: " + payload.type + " refused (" + response.status + ")");
        return false;
      });
    }, function (error) {
      console.warn("shop-events: " + payload.type + " not sent: " + error);
      return false;
    });
  }

  var api = {
    productViewed: function (item) {
      return send({ type: "product_view", item: item });
    },
    identify: function (email) {
      return send({ type: "identify", email: email });
    }
  };

  function reportProducts() {
    var nodes = document.querySelectorAll("[data-shop-events-product]");
    for (var i = 0; i < nodes.length; i++) {
      var item;
      try {
        item = JSON.parse(nodes[i].getAttribute("data-shop-events-product"));
      } catch (error) {
        console.warn("shop-events: data-shop-events-product is not JSON: " + error);
        continue;
      }
      api.productViewed(item);
    }
  }

  var queued = window.shopEvents;
  window.shopEvents = api;
  if (queued && queued.length) {
    for (var i = 0; i < queued.length; i++) {
      var call = queued[i];
      if (call && api[call[0]]) {
        api[call[0]].apply(api, call.slice(1));
      }
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", reportProducts);
  } else {
    reportProducts();
  }
})(window, document);
