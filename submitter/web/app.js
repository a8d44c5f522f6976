// peergrid dashboard: draws the state of a job store from /api/state, then from every "state"
// server-sent event of /api/events. Plain DOM and inline SVG; no library, no build step.
// Text from the store (job names, reasons) only ever goes in through textContent.
// Hooks for tests: `data-job` is on job cards only (`#jobs > [data-job]`); other items name
// their job with `data-of-job`.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // In the SVG's own units; it scales to the card's width, so on a phone about 1:1.
  const CHART = { width: 400, height: 150, left: 40, right: 6, top: 10, bottom: 24 };

  let last = null; // the last state drawn
  let receivedAt = 0; // when it came (browser clock), to move "now" on between events

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function short(key) {
    return key && key.length > 12 ? key.slice(0, 12) + "…" : key || "";
  }

  function keyCode(key) {
    return el("code", { class: "key", title: key }, short(key));
  }

  function when(ms) {
    if (!ms) return "";
    const date = new Date(ms);
    const today = new Date();
    return date.toDateString() === today.toDateString()
      ? date.toLocaleTimeString()
      : date.toLocaleString();
  }

  function count(n) {
    return Number(n || 0).toLocaleString();
  }

  // "1 liar proven", "2 liars proven".
  function plural(n, one, many) {
    return `${count(n)} ${Number(n) === 1 ? one : many}`;
  }

  // The server's clock now, from the last state's time and how long ago it came.
  function serverNow() {
    if (!last) return Date.now();
    return (last.as_of_unix_ms || Date.now()) + (Date.now() - receivedAt);
  }

  function chart(job, now) {
    const points = (job.history && job.history.points) || [];
    const { width, height, left, right, top, bottom } = CHART;
    const plotWidth = width - left - right;
    const plotHeight = height - top - bottom;
    const lastPoint = points[points.length - 1];
    const start = points.length ? points[0][0] : now;
    let end = job.finished && job.finished_unix_ms ? job.finished_unix_ms : now;
    if (lastPoint) end = Math.max(end, lastPoint[0]);
    const span = Math.max(end - start, 1);
    const yMax = Math.max(job.tasks || 0, 1);
    const x = (t) => left + ((t - start) / span) * plotWidth;
    const y = (v) => top + plotHeight - (v / yMax) * plotHeight;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      class: "chart",
      role: "img",
      "data-chart": job.job,
      "data-points": points.length,
      "aria-label": `accepted tasks of ${job.name} over time: ${job.accepted} of ${job.tasks} now`,
    });
    for (const [value, label] of [[0, "0"], [yMax, count(yMax)]]) {
      root.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
      const text = svg("text", { x: left - 4, y: y(value) + 4, class: "axis", "text-anchor": "end" });
      text.textContent = label;
      root.append(text);
    }
    const from = svg("text", { x: left, y: height - 6, class: "axis" });
    from.textContent = when(start);
    const to = svg("text", { x: width - right, y: height - 6, class: "axis", "text-anchor": "end" });
    to.textContent = job.finished ? when(end) : "now";
    root.append(from, to);
    const sampledSince = job.history && job.history.history_until_unix_ms;
    if (sampledSince && sampledSince > start && sampledSince < end) {
      // Left of this line: from the store's settle times; right of it: sampled live.
      const mark = svg("line", { x1: x(sampledSince), x2: x(sampledSince), y1: top, y2: top + plotHeight, class: "since" });
      const title = svg("title", {});
      title.textContent = "the dashboard started here: before, from the store's settle times; after, sampled live";
      mark.append(title);
      root.append(mark);
    }
    if (points.length) {
      const coords = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      coords.push(`${x(end).toFixed(1)},${y(lastPoint[1]).toFixed(1)}`);
      root.append(svg("polyline", { points: coords.join(" "), class: "line" }));
    }
    return root;
  }

  function jobCard(job, now) {
    const state = job.finished ? "finished" : "unfinished";
    const card = el("article", {
      class: "card job",
      "data-job": job.job,
      "data-accepted": job.accepted,
      "data-tasks": job.tasks,
      "data-inconclusive": job.inconclusive,
      "data-pending": job.pending,
      "data-finished": job.finished,
      "data-excluded": job.excluded_total,
      "data-reopened": job.reopened_total,
    });
    card.append(
      el("h3", {}, job.name, " ", el("span", { class: "muted id" }, job.job)),
      el("progress", { max: Math.max(job.tasks, 1), value: job.accepted, "aria-label": "accepted" }),
      el("p", { class: "counts" },
        el("strong", { "data-field": "accepted" }, count(job.accepted)), ` of ${count(job.tasks)} accepted · `,
        `${count(job.inconclusive)} inconclusive · ${count(job.pending)} pending · `,
        el("span", { class: `state ${state}` }, state),
        ` · ${job.sessions} session${job.sessions === 1 ? "" : "s"}`),
      chart(job, now),
      el("p", { class: "muted" },
        `quorum ${job.quorum} of ${job.replication} (up to ${job.max_replicas}) · audit rate ${job.audit_rate} · `,
        `${count(job.copies.receipts)} receipts, ${count(job.copies.disputed)} disputed, `,
        `${count(job.copies.lost)} lost, ${count(job.copies.bad_receipts)} bad · `,
        `started ${when(job.created_unix_ms)}`,
        job.finished ? ` · finished ${when(job.finished_unix_ms)}` : ""),
    );
    if (job.excluded.length) {
      const list = el("ul", { class: "excluded", "data-excluded-of": job.job });
      for (const item of job.excluded) {
        list.append(el("li", { "data-excluded": item.worker, "data-liar": item.liar ? item.worker : null },
          keyCode(item.worker), item.liar ? " proven liar: " : " excluded: ", item.reason));
      }
      const more = job.excluded_total > job.excluded.length
        ? ` (showing ${job.excluded.length} of ${count(job.excluded_total)})` : "";
      card.append(el("h4", {}, `Excluded workers${more}`), list);
    }
    return card;
  }

  function auditsOf(job) {
    const audits = job.audits;
    const block = el("div", { class: "card", "data-audits": job.job });
    block.append(
      el("h3", {}, job.name, " ", el("span", { class: "muted id" }, job.job)),
      el("p", {},
        el("span", { "data-audits-passed": audits.passed }, `${count(audits.passed)} passed`), " · ",
        el("span", { "data-audits-pending": audits.pending }, `${count(audits.pending)} pending`), " · ",
        `${count(audits.unavailable)} proved nothing · `,
        el("span", { "data-liars-proven": audits.liars_proven }, plural(audits.liars_proven, "liar proven", "liars proven")),
        ` · ${count(job.reopened_total)} reopened`),
    );
    if (job.reopened.length) {
      const list = el("ul", { class: "reopened" });
      for (const item of job.reopened) {
        const now = item.now.state === "accepted"
          ? `now accepted with output ${item.now.output}`
          : `now ${item.now.state}`;
        const signers = el("span", {}, " signed by ");
        item.signed_by.forEach((key, i) => signers.append(i ? ", " : "", keyCode(key)));
        list.append(el("li", { "data-reopened": item.task, "data-of-job": job.job, "data-now": item.now.state },
          el("strong", {}, `task ${item.task}`), `: was ${item.was || "?"}`, signers,
          ` · ${item.reason} · ${when(item.at_unix_ms)} · `, el("em", {}, now)));
      }
      const more = job.reopened_total > job.reopened.length
        ? ` (the latest ${job.reopened.length} of ${count(job.reopened_total)})` : "";
      block.append(el("h4", {}, `Reopened results${more}`), list);
    }
    if (job.bad_receipts.length) {
      const list = el("ul", { class: "bad" });
      for (const item of job.bad_receipts) {
        list.append(el("li", { "data-bad-receipt": item.task, "data-worker": item.worker },
          el("strong", {}, `task ${item.task}`), " from ", keyCode(item.worker),
          ` at ${item.addr}: ${item.reason || "no reason recorded"}`));
      }
      const more = job.copies.bad_receipts > job.bad_receipts.length
        ? ` (the first ${job.bad_receipts.length} of ${count(job.copies.bad_receipts)})` : "";
      block.append(el("h4", {}, `Bad receipts${more}`), list);
    }
    return block;
  }

  function liarItem(liar) {
    const item = el("li", { class: "card liar", "data-liar": liar.worker, "data-of-job": liar.job },
      el("code", { class: "key full" }, liar.worker),
      el("p", {}, `proven ${when(liar.at_unix_ms)} in job ${liar.job}, task ${liar.task}: ${liar.reason}`));
    if (liar.reopened.length) {
      const tasks = liar.reopened.map((r) => `${r.task} (${r.job})`).join(", ");
      item.append(el("p", { "data-reopened-count": liar.reopened.length }, `reopened: ${tasks}`));
    }
    return item;
  }

  function workerRow(worker) {
    return el("tr", {
      "data-worker": worker.worker,
      "data-standing": worker.standing,
      "data-agreements": worker.agreements,
      "data-disagreements": worker.disagreements,
    },
      el("td", {}, keyCode(worker.worker)),
      el("td", {}, el("span", { class: `standing ${worker.standing}` }, worker.standing)),
      el("td", { class: "num" }, count(worker.agreements)),
      el("td", { class: "num" }, count(worker.disagreements)),
      el("td", { class: "num" }, count(worker.verified)),
      el("td", { class: "num" }, count(worker.lost)),
      el("td", { class: "num" }, count(worker.bad_receipts)));
  }

  function more(id, shown, total, what) {
    const node = document.getElementById(id);
    node.hidden = total <= shown;
    node.textContent = `showing ${shown} of ${count(total)} ${what}`;
  }

  function fill(id, nodes) {
    const parent = document.getElementById(id);
    parent.replaceChildren(...nodes);
    parent.dataset.count = nodes.length;
  }

  function render(state) {
    const now = serverNow();
    document.body.dataset.seq = state.seq;
    const source = document.getElementById("source");
    source.textContent = `${state.state_dir} · as of ${when(state.as_of_unix_ms)}`;
    const notice = document.getElementById("notice");
    if (state.store === "error") {
      notice.hidden = false;
      notice.textContent = state.error;
    } else if (state.store === "absent") {
      notice.hidden = false;
      notice.textContent = `No job store in ${state.state_dir} yet: it appears when \`peergrid submit --state ${state.state_dir}\` starts.`;
    } else {
      notice.hidden = true;
    }
    fill("jobs", state.jobs.map((job) => jobCard(job, now)));
    more("jobs-more", state.jobs.length, state.jobs_total, "jobs, the newest");
    const audited = state.jobs.filter((job) =>
      job.audits.passed || job.audits.pending || job.audits.unavailable || job.audits.liars_proven ||
      job.reopened.length || job.bad_receipts.length);
    fill("audits", audited.length ? audited.map(auditsOf) : [el("p", { class: "muted" }, "No audits yet.")]);
    fill("liars", state.liars.map(liarItem));
    more("liars-more", state.liars.length, state.liars_total, "liars, the latest");
    fill("workers", state.workers.map(workerRow));
    more("workers-more", state.workers.length, state.workers_total, "workers, the most telling first");
  }

  function show(text) {
    let state;
    try {
      state = JSON.parse(text);
    } catch (error) {
      return;
    }
    if (last && state.seq < last.seq) return; // an older answer than what is drawn
    last = state;
    receivedAt = Date.now();
    render(state);
  }

  function live(mode, text) {
    const node = document.getElementById("live");
    node.dataset.live = mode;
    node.textContent = text;
  }

  fetch("api/state", { cache: "no-store" })
    .then((response) => response.text())
    .then(show)
    .catch(() => live("lost", "cannot reach the dashboard"));

  const events = new EventSource("api/events");
  events.addEventListener("open", () => live("live", "live"));
  events.addEventListener("state", (event) => {
    live("live", "live");
    show(event.data);
  });
  events.addEventListener("error", () => live("lost", "reconnecting…"));

  // Between events, "now" moves on: unfinished jobs' charts are drawn up to it.
  setInterval(() => {
    if (last && last.jobs.some((job) => !job.finished)) render(last);
  }, 10000);
})();
