// The checkout page's script: an enhancement, never a requirement (the page works without it).
// It follows the invoice through Server-Sent Events and swaps in the server-rendered live region that each
// event carries, so the HTML is always the gateway's own; it ticks the countdown from the time the gateway
// said was left (never from the phone's clock), switches tabs without a reload, copies address and amount,
// and takes the payer back to the shop once paid.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var banner = document.getElementById("reconnecting");
  var eventsUrl = document.body.getAttribute("data-events");
  if (!live) {
    return;
  }
  var deadline = null; // performance.now() at which the countdown reaches zero
  var selected = null; // the tab the payer chose; kept when the live region is replaced
  var redirectTimer = null;
  var REDIRECT_DELAY_MS = 3000;

  function root() {
    return live.querySelector(".live");
  }

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function clockText(seconds) {
    var hours = Math.floor(seconds / 3600);
    var minutes = Math.floor((seconds % 3600) / 60);
    var rest = seconds % 60;
    return hours ? hours + ":" + pad(minutes) + ":" + pad(rest) : pad(minutes) + ":" + pad(rest);
  }

  function tick() {
    var value = live.querySelector(".countdown-value");
    if (!value || deadline === null) {
      return;
    }
    var left = Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
    value.textContent = clockText(left);
    var up = live.querySelector(".time-up");
    if (up) {
      up.hidden = left > 0;
    }
  }

  function selectTab(asset, href) {
    var tabs = live.querySelectorAll(".tab");
    var found = false;
    for (var i = 0; i < tabs.length; i++) {
      found = found || tabs[i].getAttribute("data-asset") === asset;
    }
    if (!found) {
      return;
    }
    for (var j = 0; j < tabs.length; j++) {
      tabs[j].setAttribute("aria-selected", tabs[j].getAttribute("data-asset") === asset ? "true" : "false");
    }
    var panels = live.querySelectorAll(".panel");
    for (var k = 0; k < panels.length; k++) {
      panels[k].hidden = panels[k].getAttribute("data-asset") !== asset;
    }
    selected = asset;
    if (href && window.history && history.replaceState) {
      history.replaceState(null, "", href);
    }
    keepTabInLanguageLinks(asset);
  }

  // The language links are plain links rendered with the tab the page opened on; keep them on this one.
  function keepTabInLanguageLinks(asset) {
    var links = document.querySelectorAll(".langs a");
    for (var i = 0; i < links.length; i++) {
      var url = new URL(links[i].href, window.location.href);
      url.searchParams.set("asset", asset);
      links[i].setAttribute("href", url.search);
    }
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (e) {
        ok = false;
      }
      document.body.removeChild(area);
      if (ok) {
        resolve();
      } else {
        reject(new Error("copy refused"));
      }
    });
  }

  function enhance() {
    var current = root();
    if (!current) {
      return;
    }
    var seconds = parseInt(current.getAttribute("data-seconds-left"), 10);
    deadline = isNaN(seconds) ? null : performance.now() + seconds * 1000;
    document.documentElement.setAttribute("data-phase", current.getAttribute("data-phase") || "");

    var tabs = live.querySelectorAll(".tab");
    for (var i = 0; i < tabs.length; i++) {
      tabs[i].addEventListener("click", function (event) {
        event.preventDefault();
        selectTab(this.getAttribute("data-asset"), this.getAttribute("href"));
      });
    }
    if (selected) {
      selectTab(selected, null);
    }

    var buttons = live.querySelectorAll("button.copy");
    for (var j = 0; j < buttons.length; j++) {
      buttons[j].hidden = false;
      buttons[j].addEventListener("click", function () {
        var button = this;
        var label = button.textContent;
        copyText(button.getAttribute("data-copy")).then(function () {
          button.textContent = button.getAttribute("data-copied");
          setTimeout(function () {
            button.textContent = label;
          }, 2000);
        }, function () {});
      });
    }

    var redirect = current.getAttribute("data-redirect");
    if (redirect && /^https?:\/\//i.test(redirect) && redirectTimer === null) {
      redirectTimer = setTimeout(function () {
        window.location.assign(redirect);
      }, REDIRECT_DELAY_MS);
    }
    tick();
  }

  function onStatus(event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (banner) {
      banner.hidden = true;
    }
    var current = root();
    var version = current ? parseInt(current.getAttribute("data-version"), 10) : -1;
    if (data.version !== version || !current) {
      live.innerHTML = data.html;
      enhance();
    } else {
      deadline = performance.now() + data.seconds_left * 1000; // the gateway's clock rules the countdown
      tick();
    }
    return data;
  }

  function connect() {
    if (!eventsUrl || !window.EventSource) {
      setTimeout(function () {
        window.location.reload();
      }, 10000);
      return;
    }
    var source = new EventSource(eventsUrl);
    source.addEventListener("status", function (event) {
      var data = onStatus(event);
      if (data && (data.phase === "paid" || data.phase === "cancelled")) {
        source.close(); // nothing more to wait for; the redirect (if any) is scheduled
      }
    });
    source.addEventListener("open", function () {
      if (banner) {
        banner.hidden = true;
      }
    });
    source.addEventListener("error", function () {
      if (banner && source.readyState !== EventSource.CLOSED) {
        banner.hidden = false; // the browser reconnects by itself (retry: from the server)
      }
    });
  }

  enhance();
  connect();
  setInterval(tick, 250);
})();
