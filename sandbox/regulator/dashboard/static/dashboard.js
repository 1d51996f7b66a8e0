// The regulator dashboard's only script. The page is a shell; this reads the regulator API with the token
// the regulator pastes in (kept in sessionStorage: this tab only, gone on "Log out" or when the tab closes),
// fills the tiles, draws every chart as inline SVG (no chart library), keeps the held queue and decides
// holds. It polls every data-refresh-seconds; money arrives as integer tiyn and is formatted here as text,
// never rounded through floating point arithmetic beyond what JSON numbers already are.
(function () {
  "use strict";

  const body = document.body;
  const API = body.getAttribute("data-api") || "/sandbox/v1";
  const REFRESH_MS = Math.max(1, parseInt(body.getAttribute("data-refresh-seconds"), 10) || 5) * 1000;
  const DECIMALS = parseDecimals(body.getAttribute("data-asset-decimals") || "");
  const TOKEN_KEY = "cryptocity.regulator-token";
  // An XML namespace name, not a location: nothing is ever fetched from it.
  const SVG_NS = "http://www.w3.org/2000/svg";
  const NO_DATA = "No data for this period";
  const NBSP = "\u00a0";
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const MAX_FILLED_DAYS = 92; // up to a quarter, days without volume are drawn as empty slots

  const REASONS = {
    unregistered_payer: "Unregistered payer",
    several_payers: "Several payers",
    merchant_suspended: "Merchant suspended",
    asset_not_allowed: "Asset not allowed",
    resident_suspended: "Resident suspended",
    over_operation_limit: "Over the per-operation limit",
    over_monthly_limit: "Over the monthly limit",
    travel_rule_data_missing: "Travel-rule data missing",
    policy_error: "Policy error",
  };
  const CATEGORIES = {
    grocery: "Grocery",
    cafe: "Café",
    transport: "Transport",
    pharmacy: "Pharmacy",
    utilities: "Utilities",
    other: "Other",
  };
  const STATUSES = ["new", "processing", "settled", "expired", "cancelled", "reversed"];
  const STATUS_NAMES = {
    new: "New",
    processing: "Processing",
    settled: "Settled",
    expired: "Expired",
    cancelled: "Cancelled",
    reversed: "Reversed",
  };

  const $ = function (id) {
    return document.getElementById(id);
  };
  const ui = {
    login: $("login"),
    loginForm: $("login-form"),
    token: $("token"),
    loginSubmit: $("login-submit"),
    loginError: $("login-error"),
    session: $("session"),
    updated: $("updated"),
    logout: $("logout"),
    dashboard: $("dashboard"),
    periodForm: $("period-form"),
    periodFrom: $("period-from"),
    periodTo: $("period-to"),
    periodMonth: $("period-month"),
    periodLabel: $("period-label"),
    periodError: $("period-error"),
    refreshError: $("refresh-error"),
    holdsBody: $("holds-table").tBodies[0],
    holdsEmpty: $("holds-empty"),
    holdMessage: $("hold-message"),
    exposureBody: $("exposure-table").tBodies[0],
  };

  const state = {
    token: null,
    period: null, // null: the API's default (this month); else {from, to} as YYYY-MM-DD, both days included
    timer: null,
    generation: 0, // each refresh takes a number; an answer to an older one is dropped
    summary: null, // the last summary drawn, to draw the charts again at a new width
    editingPeriod: false, // the regulator is choosing days: a refresh must not overwrite them
  };

  // -- formatting -------------------------------------------------------------------------------------

  function parseDecimals(text) {
    const out = {};
    text.split(/\s+/).forEach(function (pair) {
      const [asset, places] = pair.split(":");
      if (asset && places) {
        out[asset] = parseInt(places, 10);
      }
    });
    return out;
  }

  function pad2(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function group(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // 1250000 tiyn -> "12,500.00 ₸" (the checkout's English form)
  function kzt(tiyn) {
    const n = Number(tiyn);
    const abs = Math.abs(n);
    const cents = abs % 100;
    return (n < 0 ? "-" : "") + group(String((abs - cents) / 100)) + "." + pad2(cents) + NBSP + "₸";
  }

  function signedKzt(tiyn) {
    return Number(tiyn) > 0 ? "+" + kzt(tiyn) : kzt(tiyn);
  }

  // axis ticks: whole tenge
  function kztShort(tiyn) {
    return group(String(Math.round(Number(tiyn) / 100))) + NBSP + "₸";
  }

  // minor units (a decimal string, as the API sends them) -> "0.00010939"
  function units(minor, decimals) {
    const digits = String(minor);
    if (!/^\d+$/.test(digits) || !decimals) {
      return digits;
    }
    const padded = digits.padStart(decimals + 1, "0");
    const whole = padded.slice(0, padded.length - decimals);
    const fraction = padded.slice(padded.length - decimals).replace(/0+$/, "");
    return fraction ? whole + "." + fraction : whole;
  }

  // the API's rates have four decimals: 0.3333 -> "33.33 %"
  function percent(rate) {
    const basisPoints = Math.round(Number(rate) * 10000);
    return (basisPoints / 100).toFixed(2) + NBSP + "%";
  }

  function count(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) {
      return "—";
    }
    if (seconds < 10) {
      return Math.round(seconds * 10) / 10 + NBSP + "s";
    }
    const total = Math.round(seconds);
    if (total < 60) {
      return total + NBSP + "s";
    }
    if (total < 3600) {
      return Math.floor(total / 60) + NBSP + "min " + pad2(total % 60) + NBSP + "s";
    }
    return Math.floor(total / 3600) + NBSP + "h " + pad2(Math.floor((total % 3600) / 60)) + NBSP + "min";
  }

  // -- days and times in the pilot's zone -------------------------------------------------------------

  const ZONE = (function (asked) {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: asked });
      return asked;
    } catch (e) {
      return "UTC";
    }
  })(body.getAttribute("data-timezone") || "UTC");
  const partsFormat = new Intl.DateTimeFormat("en-US", {
    timeZone: ZONE,
    hourCycle: "h23",
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
  const clockFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: ZONE,
    hourCycle: "h23",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });

  function zoneParts(ms) {
    const out = {};
    partsFormat.formatToParts(new Date(ms)).forEach(function (part) {
      if (part.type !== "literal") {
        out[part.type] = parseInt(part.value, 10);
      }
    });
    out.hour = out.hour % 24;
    return out;
  }

  function zoneOffsetMs(ms) {
    const p = zoneParts(ms);
    return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - Math.floor(ms / 1000) * 1000;
  }

  function zoneDay(ms) {
    const p = zoneParts(ms);
    return String(p.year).padStart(4, "0") + "-" + pad2(p.month) + "-" + pad2(p.day);
  }

  // the instant a calendar day begins in the pilot's zone (twice, for days a zone's offset changes on)
  function zoneMidnight(day) {
    const [y, m, d] = day.split("-").map(Number);
    const guess = Date.UTC(y, m - 1, d);
    return guess - zoneOffsetMs(guess - zoneOffsetMs(guess));
  }

  function addDays(day, n) {
    const [y, m, d] = day.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
  }

  function dayLabel(day, withYear) {
    const [y, m, d] = day.split("-").map(Number);
    return d + NBSP + MONTHS[m - 1] + (withYear ? " " + y : "");
  }

  function moment(iso) {
    const ms = Date.parse(iso);
    return isNaN(ms) ? String(iso) : dayLabel(zoneDay(ms), false) + " " + clockFormat.format(new Date(ms));
  }

  // -- the API ----------------------------------------------------------------------------------------

  function ApiError(status, title, detail) {
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.message = detail ? title + ": " + detail : title;
  }

  async function call(token, method, path, payload) {
    const init = {
      method: method,
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, "Network error", "the gateway could not be reached");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const problem = data || {};
      throw new ApiError(response.status, problem.title || "HTTP " + response.status, problem.detail || "");
    }
    return data;
  }

  function periodQuery() {
    if (!state.period) {
      return "";
    }
    const from = new Date(zoneMidnight(state.period.from)).toISOString();
    const to = new Date(zoneMidnight(addDays(state.period.to, 1))).toISOString();
    return "?from=" + encodeURIComponent(from) + "&to=" + encodeURIComponent(to);
  }

  // -- SVG charts -------------------------------------------------------------------------------------

  function el(tag, attrs, parent, text) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs).forEach(function (name) {
      node.setAttribute(name, String(attrs[name]));
    });
    if (text !== undefined) {
      node.textContent = text;
    }
    if (parent) {
      parent.appendChild(node);
    }
    return node;
  }

  function caption(figure) {
    return figure.querySelector("figcaption").firstChild.textContent.trim();
  }

  // The drawing's width in CSS pixels, so its text is drawn at the size the stylesheet says (a viewBox
  // of another width would scale the labels with the chart); redrawn when the window is resized.
  function widthOf(figure) {
    const width = Math.floor(figure.querySelector(".plot").clientWidth);
    return width > 0 ? Math.max(260, width) : 600;
  }

  // Draw only when the data (or the width) changed, so polling does not redraw an unchanged chart.
  function unchanged(figure, width, entries) {
    const key = width + " " + JSON.stringify(entries);
    if (figure.dataset.drawn === key) {
      return true;
    }
    figure.dataset.drawn = key;
    return false;
  }

  function frame(figure, width, height, points) {
    const root = el("svg", {
      viewBox: "0 0 " + width + " " + height,
      width: width,
      height: height,
      class: "chart-svg",
      role: "img",
      "aria-label": caption(figure),
      "data-points": points,
    });
    figure.querySelector(".plot").replaceChildren(root);
    figure.setAttribute("data-points", points);
    figure.classList.toggle("is-empty", points === 0);
    return root;
  }

  function drawEmpty(figure, width) {
    const root = frame(figure, width, 120, 0);
    el("text", { x: width / 2, y: 64, "text-anchor": "middle", class: "empty" }, root, NO_DATA);
  }

  function pointsOf(entries) {
    return entries.filter(function (e) {
      return e.value > 0 || e.present;
    }).length;
  }

  function niceMax(value) {
    if (!(value > 0)) {
      return 1;
    }
    const scale = Math.pow(10, Math.floor(Math.log10(value)));
    const f = value / scale;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * scale;
  }

  // Vertical columns, one per entry, with a value axis. entries: [{label, value, title?, cls?, present?}]
  function columns(figure, entries, opts) {
    const W = widthOf(figure);
    if (unchanged(figure, W, entries)) {
      return;
    }
    const points = pointsOf(entries);
    if (!points) {
      drawEmpty(figure, W);
      return;
    }
    const H = opts.height || 220;
    const left = opts.axisWidth || 84;
    const right = 8;
    const top = 10;
    const bottom = 28;
    const plotW = W - left - right;
    const plotH = H - top - bottom;
    const max = niceMax(Math.max.apply(null, entries.map((e) => e.value)));
    const root = frame(figure, W, H, points);
    const ticks = opts.integer && max % 2 ? [0, 1] : [0, 0.5, 1];
    ticks.forEach(function (f) {
      const y = top + plotH * (1 - f);
      el("line", { x1: left, x2: W - right, y1: y, y2: y, class: f ? "grid" : "axis" }, root);
      el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, root, opts.axis(max * f));
    });
    const slot = plotW / entries.length;
    const barW = Math.max(1, Math.min(56, slot * 0.72));
    const labelEvery = Math.max(1, Math.ceil((entries.length * (opts.labelSpacing || 60)) / plotW));
    entries.forEach(function (e, i) {
      const x = left + slot * i + (slot - barW) / 2;
      if (e.value > 0 || e.present) {
        const h = Math.max(2, (plotH * e.value) / max);
        const bar = el(
          "rect",
          {
            x: x.toFixed(2),
            y: (top + plotH - h).toFixed(2),
            width: barW.toFixed(2),
            height: h.toFixed(2),
            class: "bar " + (e.cls || "series-0"),
            "data-label": e.label,
            "data-value": e.value,
          },
          root
        );
        el("title", {}, bar, (e.title || e.label) + ": " + opts.format(e.value));
      }
      if (i % labelEvery === 0) {
        el("text", { x: (x + barW / 2).toFixed(2), y: H - bottom + 18, "text-anchor": "middle", class: "label" }, root, e.label);
      }
    });
  }

  // Horizontal bars with their label and value, for a handful of categories.
  function bars(figure, entries, opts) {
    const W = widthOf(figure);
    if (unchanged(figure, W, entries)) {
      return;
    }
    const points = pointsOf(entries);
    if (!points) {
      drawEmpty(figure, W);
      return;
    }
    const rowH = 30;
    const pad = 6;
    const valueW = Math.round(Math.min(120, W * 0.25));
    const H = pad * 2 + rowH * entries.length;
    const max = Math.max.apply(null, entries.map((e) => e.value)) || 1;
    const root = frame(figure, W, H, points);
    // the label column is as wide as its longest label (measured once drawn), up to half the chart
    const labels = entries.map((e, i) => el("text", { y: pad + rowH * i + rowH / 2 + 4, "text-anchor": "end", class: "label" }, root, e.label));
    const longest = Math.max.apply(null, labels.map((node) => node.getComputedTextLength()));
    const labelW = Math.round(Math.min(W * 0.5, longest + 14));
    labels.forEach((node) => node.setAttribute("x", String(labelW - 8)));
    entries.forEach(function (e, i) {
      const y = pad + rowH * i;
      const w = e.value > 0 ? Math.max(2, ((W - labelW - valueW) * e.value) / max) : 0;
      if (w) {
        const bar = el(
          "rect",
          {
            x: labelW,
            y: y + 5,
            width: w.toFixed(2),
            height: rowH - 10,
            rx: 3,
            class: "bar " + (e.cls || "series-" + (i % 8)),
            "data-label": e.label,
            "data-value": e.value,
          },
          root
        );
        el("title", {}, bar, e.label + ": " + opts.format(e.value));
      }
      el("text", { x: (labelW + w + 6).toFixed(2), y: y + rowH / 2 + 4, class: "value" }, root, opts.format(e.value));
    });
  }

  function arcPoint(cx, cy, r, angle) {
    return (cx + r * Math.cos(angle)).toFixed(3) + " " + (cy + r * Math.sin(angle)).toFixed(3);
  }

  // A ring segment from angle a0 to a1; a whole ring is two halves (one arc cannot end where it starts).
  function ringPath(cx, cy, inner, outer, a0, a1) {
    if (a1 - a0 >= 2 * Math.PI - 1e-9) {
      const half = a0 + Math.PI;
      return ringPath(cx, cy, inner, outer, a0, half) + " " + ringPath(cx, cy, inner, outer, half, a0 + 2 * Math.PI);
    }
    const large = a1 - a0 > Math.PI ? 1 : 0;
    return (
      "M " + arcPoint(cx, cy, outer, a0) +
      " A " + outer + " " + outer + " 0 " + large + " 1 " + arcPoint(cx, cy, outer, a1) +
      " L " + arcPoint(cx, cy, inner, a1) +
      " A " + inner + " " + inner + " 0 " + large + " 0 " + arcPoint(cx, cy, inner, a0) + " Z"
    );
  }

  // Shares of a whole: a ring with a legend (label, value, share) beside it, or below it when narrow.
  function donut(figure, entries, opts) {
    const W = widthOf(figure);
    if (unchanged(figure, W, entries)) {
      return;
    }
    const shown = entries.filter((e) => e.value > 0);
    if (!shown.length) {
      drawEmpty(figure, W);
      return;
    }
    const outer = 84;
    const inner = 57;
    const lineH = 24;
    const beside = W >= 440;
    const ring = 2 * outer + 16;
    const legendH = shown.length * lineH;
    const H = beside ? Math.max(ring, legendH + 16) : ring + legendH + 8;
    const cx = beside ? outer + 8 : W / 2;
    const cy = beside ? H / 2 : outer + 8;
    const legendX = beside ? ring + 16 : 8;
    const legendY = beside ? H / 2 - legendH / 2 : ring + 4;
    const total = shown.reduce((sum, e) => sum + e.value, 0);
    const root = frame(figure, W, H, shown.length);
    let angle = -Math.PI / 2;
    shown.forEach(function (e, i) {
      const sweep = (2 * Math.PI * e.value) / total;
      const cls = e.cls || "series-" + (i % 8);
      const slice = el(
        "path",
        { d: ringPath(cx, cy, inner, outer, angle, angle + sweep), class: "slice " + cls, "data-label": e.label, "data-value": e.value },
        root
      );
      el("title", {}, slice, e.label + ": " + opts.format(e.value));
      angle += sweep;
      const y = legendY + i * lineH + lineH / 2;
      el("rect", { x: legendX, y: y - 7, width: 14, height: 14, rx: 3, class: "swatch " + cls }, root);
      const share = (Math.round((1000 * e.value) / total) / 10).toFixed(1);
      const legend = el("text", { x: legendX + 22, y: y + 4, class: "legend" }, root, e.label + " ");
      el("tspan", { class: "value" }, legend, opts.format(e.value) + " (" + share + NBSP + "%)");
    });
    el("text", { x: cx, y: cy + 5, "text-anchor": "middle", class: "total" }, root, opts.total(total));
  }

  // -- tiles and charts from the API's answers --------------------------------------------------------

  function tile(id, value, sub, raw) {
    const node = $(id);
    node.querySelector(".value").textContent = value;
    if (sub !== undefined && node.querySelector(".sub")) {
      node.querySelector(".sub").textContent = sub;
    }
    if (raw !== undefined) {
      node.setAttribute("data-value", raw === null ? "" : String(raw));
    }
  }

  function daysOf(summary) {
    const byDay = summary.volume.by_day;
    const first = zoneDay(Date.parse(summary.period.from));
    const last = zoneDay(Date.parse(summary.period.to) - 1);
    const days = [];
    const span = Math.round((Date.parse(last) - Date.parse(first)) / 86400000) + 1;
    if (span > 0 && span <= MAX_FILLED_DAYS) {
      for (let day = first; day <= last; day = addDays(day, 1)) {
        days.push(day);
      }
    } else {
      days.push.apply(days, Object.keys(byDay).sort());
    }
    return days.map(function (day) {
      return { label: dayLabel(day, false), title: dayLabel(day, true), value: byDay[day] || 0 };
    });
  }

  function renderSummary(summary) {
    const volume = summary.volume;
    const payments = summary.payments;
    const invoices = summary.invoices;
    const settlement = summary.settlement_seconds;
    const payers = summary.unique_payers;
    const accepted = payments.judged - payments.held;

    tile("tile-volume", kzt(volume.total_tiyn), undefined, volume.total_tiyn);
    tile("tile-payments", String(payments.judged), accepted + " accepted · " + payments.held + " held", payments.judged);
    tile("tile-held", String(payments.held), percent(payments.held_rate) + " of judged payments", payments.held);
    tile(
      "tile-payers",
      String(payers.residents),
      count(payers.residents, "resident", "residents") + " and " +
        count(payers.unregistered_wallets, "unregistered wallet", "unregistered wallets"),
      payers.residents
    );
    tile("tile-invoices", String(invoices.created), (invoices.by_status.settled || 0) + " settled", invoices.created);
    const of = "of " + count(settlement.count, "settled invoice", "settled invoices");
    tile("tile-settlement-p50", duration(settlement.p50), of, settlement.p50);
    tile("tile-settlement-p90", duration(settlement.p90), of, settlement.p90);
    $("rate-held").textContent = percent(payments.held_rate);
    ["underpaid", "overpaid", "paid_late"].forEach(function (flag) {
      $("rate-" + flag).textContent = percent(invoices.rates[flag]);
    });

    renderPeriod(summary);
    state.summary = summary;
    renderCharts(summary);
  }

  function renderCharts(summary) {
    const volume = summary.volume;
    const payments = summary.payments;
    const invoices = summary.invoices;
    const settlement = summary.settlement_seconds;
    const money = { format: kzt, axis: kztShort, total: kzt };
    const plain = { format: String, axis: (v) => String(Math.round(v)), integer: true };
    columns($("chart-volume-day"), daysOf(summary), money);
    donut(
      $("chart-volume-asset"),
      Object.keys(volume.by_asset).map((asset) => ({ label: asset, value: volume.by_asset[asset], cls: "asset-" + asset })),
      money
    );
    bars(
      $("chart-volume-category"),
      Object.keys(volume.by_category)
        .map((c) => ({ label: CATEGORIES[c] || c, value: volume.by_category[c] }))
        .sort((a, b) => b.value - a.value),
      money
    );
    const statuses = STATUSES.concat(Object.keys(invoices.by_status).filter((s) => STATUSES.indexOf(s) < 0));
    bars(
      $("chart-invoice-status"),
      statuses
        .filter((s) => invoices.by_status[s])
        .map((s) => ({ label: STATUS_NAMES[s] || s, value: invoices.by_status[s], cls: "status-" + s })),
      plain
    );
    bars(
      $("chart-held-reason"),
      Object.keys(payments.held_by_reason)
        .map((r) => ({ label: REASONS[r] || r, value: payments.held_by_reason[r], cls: "series-3" }))
        .sort((a, b) => b.value - a.value),
      plain
    );
    const util = summary.limit_utilisation;
    columns(
      $("chart-utilisation"),
      Object.keys(util.buckets_percent).map((band, i) => ({
        label: band.replace("-", "–"),
        title: band.replace("-", "–") + NBSP + "% of the monthly limit",
        value: util.buckets_percent[band],
        cls: "band-" + i,
      })),
      { format: (n) => count(n, "resident", "residents"), axis: (v) => String(Math.round(v)), integer: true, axisWidth: 40, labelSpacing: 36 }
    );
    const medians = Object.keys(util.median_percent_by_tier).map(
      (tier) => tier + " median " + Math.round(util.median_percent_by_tier[tier]) + NBSP + "%"
    );
    $("utilisation-note").textContent = "(" + [util.month, count(util.residents, "resident", "residents")].concat(medians).join(" · ") + ")";
    const percentiles = settlement.count
      ? ["p50", "p90", "p99", "max"].map((name) => ({ label: name, value: settlement[name], present: true }))
      : [];
    columns($("chart-settlement"), percentiles, { format: duration, axis: duration, axisWidth: 84 });
  }

  function renderPeriod(summary) {
    const first = zoneDay(Date.parse(summary.period.from));
    const last = zoneDay(Date.parse(summary.period.to) - 1);
    ui.periodLabel.textContent = dayLabel(first, true) + " – " + dayLabel(last, true);
    if (!state.period && !state.editingPeriod) {
      ui.periodFrom.value = first;
      ui.periodTo.value = last;
    }
  }

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) {
      td.className = cls;
    }
    return td;
  }

  function renderExposure(exposure) {
    const totals = exposure.totals;
    tile("tile-exposure", kzt(totals.current_value_tiyn), undefined, totals.current_value_tiyn);
    $("exposure-booked").textContent = kzt(totals.locked_value_tiyn) + " at locked rates · " + kzt(totals.booked_tiyn) + " booked";
    const fx = $("exposure-fx");
    fx.textContent = "FX result " + signedKzt(totals.unrealised_fx_tiyn);
    fx.setAttribute("data-value", String(totals.unrealised_fx_tiyn));
    fx.classList.toggle("gain", totals.unrealised_fx_tiyn > 0);
    fx.classList.toggle("loss", totals.unrealised_fx_tiyn < 0);
    $("exposure-as-of").textContent = "(valued " + moment(exposure.as_of) + ")";
    $("exposure-note").textContent = exposure.spends_tracked
      ? "Payments received on invoice addresses and not dropped, less what the watchers saw leave them."
      : "Payments received on invoice addresses and not dropped; what the merchants' wallets sweep is not followed yet.";
    ui.exposureBody.replaceChildren();
    Object.keys(exposure.assets).forEach(function (asset) {
      const a = exposure.assets[asset];
      const row = ui.exposureBody.insertRow();
      row.setAttribute("data-asset", asset);
      const head = document.createElement("th");
      head.scope = "row";
      head.textContent = asset;
      row.appendChild(head);
      const amount = (minor) => (minor === undefined || minor === null ? "—" : units(minor, a.decimals) + " " + asset);
      cell(row, amount(a.received_minor), "num");
      cell(row, amount(a.spent_minor), "num");
      cell(row, amount(a.on_addresses_minor), "num");
      cell(row, kzt(a.locked_value_tiyn), "num");
      cell(row, kzt(a.booked_tiyn), "num");
      cell(row, a.current_value_tiyn === null ? "no rate" : kzt(a.current_value_tiyn), "num");
      cell(row, a.unrealised_fx_tiyn === null ? "—" : signedKzt(a.unrealised_fx_tiyn), "num");
    });
  }

  // -- the held queue ---------------------------------------------------------------------------------

  function holdKey(hold) {
    return hold.chain + "/" + hold.payment_key;
  }

  function rowOf(key) {
    return Array.from(ui.holdsBody.rows).find((row) => row.getAttribute("data-key") === key) || null;
  }

  function message(text, kind) {
    ui.holdMessage.textContent = text;
    ui.holdMessage.setAttribute("data-kind", kind);
    ui.holdMessage.hidden = false;
  }

  function code(text) {
    const node = document.createElement("code");
    node.textContent = text;
    return node;
  }

  function button(text, cls, type) {
    const node = document.createElement("button");
    node.type = type || "button";
    node.className = cls;
    node.textContent = text;
    return node;
  }

  function field(labelText, name, placeholder) {
    const label = document.createElement("label");
    label.textContent = labelText + " ";
    const input = document.createElement("input");
    input.name = name;
    input.type = "text";
    input.maxLength = name === "note" ? 1000 : 200;
    input.placeholder = placeholder;
    input.spellcheck = false;
    input.autocomplete = "off";
    label.appendChild(input);
    return label;
  }

  function holdRow(hold) {
    const row = document.createElement("tr");
    row.setAttribute("data-key", holdKey(hold));
    row.setAttribute("data-invoice", hold.invoice_id);
    const who = row.insertCell();
    if (hold.resident_id) {
      who.appendChild(code(hold.resident_id));
    } else {
      who.textContent = "unregistered wallet";
      who.className = "muted";
    }
    cell(row, hold.asset);
    cell(row, units(hold.amount_minor, DECIMALS[hold.asset]) + " " + hold.asset, "num amount");
    cell(row, kzt(hold.value_tiyn), "num value");
    cell(row, REASONS[hold.reason] || hold.reason || "unknown", "reason").title = hold.reason || "";
    row.insertCell().appendChild(code(hold.invoice_id));
    cell(row, moment(hold.decided_at));

    const actions = row.insertCell();
    actions.className = "actions";
    const release = button("Release", "release");
    const refund = button("Refund…", "refund secondary");
    const form = document.createElement("form");
    form.className = "refund-form";
    form.hidden = true;
    form.noValidate = true;
    form.appendChild(field("Refund to", "refund_address", "the paying wallet if empty"));
    form.appendChild(field("Note", "note", "optional"));
    const confirm = button("Confirm refund", "confirm-refund", "submit");
    const cancel = button("Cancel", "cancel secondary");
    form.appendChild(confirm);
    form.appendChild(cancel);
    actions.append(release, refund, form);

    release.addEventListener("click", function () {
      decide(row, hold, "release", {});
    });
    refund.addEventListener("click", function () {
      form.hidden = false;
      refund.hidden = true;
      form.elements.namedItem("refund_address").focus();
    });
    cancel.addEventListener("click", function () {
      form.hidden = true;
      refund.hidden = false;
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const payload = {};
      const address = form.elements.namedItem("refund_address").value.trim();
      const note = form.elements.namedItem("note").value.trim();
      if (address) {
        payload.refund_address = address;
      }
      if (note) {
        payload.note = note;
      }
      decide(row, hold, "refund", payload);
    });
    return row;
  }

  function renderHolds(list) {
    const keys = new Set(list.map(holdKey));
    Array.from(ui.holdsBody.rows).forEach(function (row) {
      if (!keys.has(row.getAttribute("data-key")) && !row.classList.contains("deciding")) {
        row.remove();
      }
    });
    // Rows already shown stay as they are (a refund address being typed survives the poll); new holds
    // are the newest, so they go at the end, as the API orders the queue.
    list.forEach(function (hold) {
      if (!rowOf(holdKey(hold))) {
        ui.holdsBody.appendChild(holdRow(hold));
      }
    });
    ui.holdsEmpty.hidden = list.length > 0;
    tile("tile-queue", String(list.length), undefined, list.length);
  }

  async function decide(row, hold, action, payload) {
    const path = "/holds/" + encodeURIComponent(hold.chain) + "/" + encodeURIComponent(hold.payment_key) + "/" + action;
    row.classList.add("deciding");
    row.querySelectorAll("button, input").forEach((node) => (node.disabled = true));
    try {
      const result = await call(state.token, "POST", path, payload);
      row.remove();
      if (result.resolution === "released") {
        message(
          "Released " + kzt(result.value_tiyn) + " on invoice " + result.invoice_id +
            ": the payment counts now and the invoice proceeds.",
          "ok"
        );
      } else {
        message(
          "Refund of " + kzt(result.value_tiyn) + " on invoice " + result.invoice_id + " ordered to " +
            (result.refund_address || "the paying wallet") + "; the merchant's wallet pays it.",
          "ok"
        );
      }
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        logout(err.message);
        return;
      }
      row.classList.remove("deciding");
      row.querySelectorAll("button, input").forEach((node) => (node.disabled = false));
      message("Could not " + action + " the payment on invoice " + hold.invoice_id + ". " + err.message, "error");
    }
    refresh();
  }

  // -- refreshing, signing in and out -----------------------------------------------------------------

  function showError(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  async function refresh() {
    if (!state.token) {
      return;
    }
    clearTimeout(state.timer);
    const generation = ++state.generation;
    const token = state.token;
    try {
      const [summary, holds, exposure] = await Promise.all([
        call(token, "GET", "/summary" + periodQuery()),
        call(token, "GET", "/holds"),
        call(token, "GET", "/exposure"),
      ]);
      if (generation !== state.generation || token !== state.token) {
        return;
      }
      renderSummary(summary);
      renderExposure(exposure);
      renderHolds(holds.data);
      showError(ui.refreshError, "");
      showError(ui.periodError, "");
      const now = new Date();
      ui.updated.textContent = "Updated " + clockFormat.format(now);
      ui.updated.setAttribute("data-updated-at", now.toISOString());
      ui.dashboard.setAttribute("data-loaded", "true");
    } catch (err) {
      if (generation !== state.generation || token !== state.token) {
        return;
      }
      if (err.status === 401 || err.status === 403) {
        logout(err.message);
        return;
      }
      if (err.status === 400 && state.period) {
        showError(ui.periodError, err.message);
      } else {
        showError(ui.refreshError, "Could not refresh (" + err.message + "); showing the last figures.");
      }
    }
    if (generation === state.generation && token === state.token) {
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function showDashboard() {
    ui.login.hidden = true;
    ui.dashboard.hidden = false;
    ui.session.hidden = false;
  }

  function clearDashboard() {
    document.querySelectorAll(".tile .value").forEach((node) => (node.textContent = "—"));
    document.querySelectorAll(".tile").forEach((node) => node.removeAttribute("data-value"));
    document.querySelectorAll(".chart").forEach(function (figure) {
      figure.querySelector(".plot").replaceChildren();
      figure.removeAttribute("data-points");
      delete figure.dataset.drawn;
    });
    state.summary = null;
    state.period = null;
    state.editingPeriod = false;
    ui.holdsBody.replaceChildren();
    ui.exposureBody.replaceChildren();
    ui.holdMessage.hidden = true;
    ui.updated.textContent = "";
    ui.dashboard.removeAttribute("data-loaded");
    showError(ui.refreshError, "");
    showError(ui.periodError, "");
  }

  function logout(reason) {
    state.token = null;
    state.generation++;
    clearTimeout(state.timer);
    sessionStorage.removeItem(TOKEN_KEY);
    clearDashboard();
    ui.dashboard.hidden = true;
    ui.session.hidden = true;
    ui.login.hidden = false;
    showError(ui.loginError, reason || "");
    ui.token.focus();
  }

  ui.loginForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    const candidate = ui.token.value.trim();
    if (!candidate) {
      showError(ui.loginError, "Paste your regulator token (crt_…).");
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(candidate)) {
      showError(ui.loginError, "A regulator token has letters, digits and '_' only (crt_…).");
      return;
    }
    ui.loginSubmit.disabled = true;
    try {
      await call(candidate, "GET", "/summary");
      state.token = candidate;
      sessionStorage.setItem(TOKEN_KEY, candidate);
      ui.token.value = "";
      showError(ui.loginError, "");
      showDashboard();
      refresh();
    } catch (err) {
      showError(ui.loginError, err.message);
    } finally {
      ui.loginSubmit.disabled = false;
    }
  });

  ui.logout.addEventListener("click", function () {
    logout("");
  });

  ui.periodForm.addEventListener("submit", function (event) {
    event.preventDefault();
    const from = ui.periodFrom.value;
    const to = ui.periodTo.value;
    if (!from || !to) {
      showError(ui.periodError, "Choose the first and the last day.");
      return;
    }
    if (to < from) {
      showError(ui.periodError, "The last day is before the first.");
      return;
    }
    showError(ui.periodError, "");
    state.period = { from: from, to: to };
    state.editingPeriod = false;
    refresh();
  });

  [ui.periodFrom, ui.periodTo].forEach(function (input) {
    input.addEventListener("input", function () {
      state.editingPeriod = true;
    });
  });

  let resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      if (state.token && state.summary) {
        renderCharts(state.summary);
      }
    }, 150);
  });

  ui.periodMonth.addEventListener("click", function () {
    state.period = null;
    state.editingPeriod = false;
    showError(ui.periodError, "");
    refresh();
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    state.token = saved;
    showDashboard();
    refresh();
  } else {
    ui.token.focus();
  }
})();
