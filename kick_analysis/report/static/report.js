/* kick report page: renders the data inlined in <script id="kick-data"> (see kick_analysis/report/html_page.py).
   Plain JS, no network, no dependencies; every text from the data is set with textContent (never parsed as HTML).
   Nothing here names a task or a metric: columns, filters and tasks all come from the data. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("kick-data").textContent);
  var app = document.getElementById("app");
  var PAGE = 100; // items per page of the per-item view

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), attrs[k]);
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function uniq(list) {
    var seen = {}, out = [];
    list.forEach(function (v) { if (!Object.prototype.hasOwnProperty.call(seen, v)) { seen[v] = 1; out.push(v); } });
    return out;
  }

  // Sort value of a cell: the number the report gave it, else a number the text starts with ("x1.23", "(4.5%)").
  var LEADING_NUMBER = /^\s*[x(]?\s*(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)/i;
  function cellNumber(cell) {
    if (typeof cell[1] === "number") return cell[1];
    var m = LEADING_NUMBER.exec(cell[0]);
    return m ? parseFloat(m[1]) : null;
  }

  // ------------------------------------------------------------------ warnings (missing baselines)
  DATA.warnings.forEach(function (w) { app.appendChild(el("div", {cls: "warning", "data-kind": "missing-baseline", text: w})); });

  // ------------------------------------------------------------------ leaderboard
  var configs = DATA.configs, columns = DATA.columns;
  var FILTER_NAMES = {method: "method", model: "model", sparsity: "sparsity", bits: "bits"};
  var filterKeys = Object.keys(FILTER_NAMES).filter(function (k) {
    return uniq(configs.map(function (c) { return c.filters[k]; })).length > 1 || k === "method";
  });
  var state = {sortCol: null, sortDir: 1, text: "", off: {}, tasksOff: {}};
  filterKeys.forEach(function (k) { state.off[k] = {}; });

  app.appendChild(el("h2", {text: "Leaderboard"}));
  var controls = el("div", {cls: "controls", id: "filters"});
  app.appendChild(controls);

  function chipGroup(name, key, values, offSet, onChange) {
    var group = el("div", {cls: "fgroup", "data-filter": key}, [el("b", {text: name + ":"})]);
    var boxes = [];
    values.forEach(function (v) {
      var box = el("input", {type: "checkbox", value: v});
      box.checked = true;
      var chip = el("label", {cls: "chip"}, [box, String(v)]);
      box.addEventListener("change", function () {
        if (box.checked) delete offSet[v]; else offSet[v] = 1;
        chip.classList.toggle("off", !box.checked);
        onChange();
      });
      boxes.push([box, chip]);
      group.appendChild(chip);
    });
    function setAll(on) {
      boxes.forEach(function (bc) {
        bc[0].checked = on; bc[1].classList.toggle("off", !on);
        if (on) delete offSet[bc[0].value]; else offSet[bc[0].value] = 1;
      });
      onChange();
    }
    group.appendChild(el("button", {cls: "linkbtn", type: "button", text: "all", onclick: function () { setAll(true); }}));
    group.appendChild(el("button", {cls: "linkbtn", type: "button", text: "none", onclick: function () { setAll(false); }}));
    return group;
  }

  filterKeys.forEach(function (k) {
    var values = uniq(configs.map(function (c) { return c.filters[k]; }));
    controls.appendChild(chipGroup(FILTER_NAMES[k], k, values, state.off[k], applyLeaderboard));
  });
  if (DATA.tasks.length > 1) {
    controls.appendChild(chipGroup("tasks", "task", DATA.tasks, state.tasksOff, function () { applyLeaderboard(); applyPlots(); }));
  }
  var configSearch = el("input", {type: "search", id: "config-search", placeholder: "config contains\u2026"});
  configSearch.addEventListener("input", function () { state.text = configSearch.value.toLowerCase(); applyLeaderboard(); });
  controls.appendChild(configSearch);

  var lbCount = el("div", {cls: "count", id: "leaderboard-count"});
  var table = el("table", {id: "leaderboard"});
  var headRow = el("tr");
  var ths = columns.map(function (col, i) {
    var th = el("th", {"data-col": String(i), title: "sort by " + col.name, text: col.name});
    if (col.task) th.setAttribute("data-task", col.task);
    th.addEventListener("click", function () { sortBy(i); });
    headRow.appendChild(th);
    return th;
  });
  table.appendChild(el("thead", {}, [headRow]));
  var tbody = el("tbody");
  table.appendChild(tbody);
  var rowNodes = configs.map(function (c, r) {
    var tr = el("tr", {"data-config": c.label, "data-index": String(r)});
    if (c.is_dense) tr.className = "dense";
    c.cells.forEach(function (cell, i) {
      var td = el("td", {text: cell[0]});
      if (i === 0 && !c.is_dense) {
        td.appendChild(el("button", {cls: "linkbtn", type: "button", title: "items lost / gained vs dense",
                                     text: "items", onclick: function () { showItemsFor(c.label); }}));
      }
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    return tr;
  });
  app.appendChild(lbCount);
  app.appendChild(el("div", {cls: "scroll"}, [table]));
  app.appendChild(el("p", {cls: "note", text: DATA.legend}));

  function sortBy(i) {
    state.sortDir = state.sortCol === i ? -state.sortDir : 1;
    state.sortCol = i;
    ths.forEach(function (th, j) {
      if (j === i) th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    var numeric = configs.some(function (c) { return cellNumber(c.cells[i]) !== null; });
    var order = configs.map(function (c, r) { return r; });
    order.sort(function (a, b) {
      var x, y;
      if (numeric) {
        x = cellNumber(configs[a].cells[i]); y = cellNumber(configs[b].cells[i]);
        if (x === null || y === null) return x === y ? a - b : (x === null ? 1 : -1); // blanks last
        if (x !== y) return state.sortDir * (x - y);
        return a - b;
      }
      x = configs[a].cells[i][0]; y = configs[b].cells[i][0];
      var cmp = x.localeCompare(y, undefined, {numeric: true});
      return cmp ? state.sortDir * cmp : a - b;
    });
    var frag = document.createDocumentFragment();
    order.forEach(function (r) { frag.appendChild(rowNodes[r]); });
    tbody.appendChild(frag);
  }

  function applyLeaderboard() {
    var shown = 0;
    configs.forEach(function (c, r) {
      var ok = filterKeys.every(function (k) { return !state.off[k][c.filters[k]]; }) &&
               (!state.text || c.label.toLowerCase().indexOf(state.text) >= 0);
      rowNodes[r].hidden = !ok;
      if (ok) shown++;
    });
    columns.forEach(function (col, i) {
      var hide = !!(col.task && state.tasksOff[col.task]);
      ths[i].hidden = hide;
      rowNodes.forEach(function (tr) { tr.children[i].hidden = hide; });
    });
    lbCount.textContent = shown + " of " + configs.length + " configs shown";
  }
  applyLeaderboard();

  // ------------------------------------------------------------------ plots
  var plotNodes = [];
  if (DATA.plots.length) {
    app.appendChild(el("h2", {text: "Plots"}));
    var grid = el("div", {cls: "plots", id: "plots"});
    DATA.plots.forEach(function (p) {
      var fig = el("figure", {"data-plot": p.name}, [el("img", {src: p.src, alt: p.name, loading: "lazy"}),
                                                     el("figcaption", {text: p.name})]);
      if (p.task) fig.setAttribute("data-task", p.task);
      plotNodes.push([fig, p.task]);
      grid.appendChild(fig);
    });
    app.appendChild(grid);
  }
  function applyPlots() {
    plotNodes.forEach(function (pt) { pt[0].hidden = !!(pt[1] && state.tasksOff[pt[1]]); });
  }

  // ------------------------------------------------------------------ per-item view
  var compressed = configs.filter(function (c) { return !c.is_dense; });
  var items = DATA.items; // [task, doc_id, question, references, dense output]
  var itemSection = el("section", {id: "items"});
  app.appendChild(el("h2", {text: "Per item: what a compressed config lost and gained against its dense baseline"}));
  app.appendChild(itemSection);
  var iv = {config: null, change: "lost", task: "", text: "", page: 0, hay: null};

  var cfgSelect = el("select", {id: "items-config"});
  compressed.forEach(function (c) {
    cfgSelect.appendChild(el("option", {value: c.label, text: c.label + (c.dense ? "  (vs " + c.dense + ")" : "  (no dense baseline)")}));
  });
  var changeSelect = el("select", {id: "items-change"}, [
    el("option", {value: "lost", text: "lost: dense right, compressed wrong"}),
    el("option", {value: "gained", text: "gained: dense wrong, compressed right"}),
    el("option", {value: "both", text: "both"})]);
  var taskSelect = el("select", {id: "items-task"});
  var textInput = el("input", {type: "search", id: "items-search", placeholder: "question, answer or output contains\u2026"});
  var info = el("div", {id: "items-info", cls: "note"});
  var notes = el("div", {id: "items-notes"});
  var count = el("div", {cls: "count", id: "items-count"});
  var prev = el("button", {type: "button", id: "items-prev", text: "\u2190 previous"});
  var next = el("button", {type: "button", id: "items-next", text: "next \u2192"});
  var itemTable = el("table", {id: "items-table"});
  var colgroup = el("colgroup", {}, [el("col", {cls: "narrow"}), el("col", {cls: "tiny"}), el("col", {cls: "change"}),
    el("col"), el("col"), el("col"), el("col")]);
  itemTable.appendChild(colgroup);
  itemTable.appendChild(el("thead", {}, [el("tr", {}, ["task", "doc", "change", "question", "reference answers",
    "dense output", "compressed output"].map(function (h) { return el("th", {text: h}); }))]));
  var itemBody = el("tbody");
  itemTable.appendChild(itemBody);

  if (!compressed.length) {
    itemSection.appendChild(el("p", {cls: "note", text: "No compressed config in this report: nothing to compare."}));
  } else {
    itemSection.appendChild(el("div", {cls: "controls"}, [el("label", {}, ["config ", cfgSelect]), changeSelect,
      el("label", {}, ["task ", taskSelect]), textInput]));
    itemSection.appendChild(info);
    itemSection.appendChild(notes);
    itemSection.appendChild(count);
    itemSection.appendChild(el("div", {cls: "scroll"}, [itemTable]));
    itemSection.appendChild(el("div", {cls: "pager"}, [prev, next]));
  }

  function configByLabel(label) {
    for (var i = 0; i < compressed.length; i++) if (compressed[i].label === label) return compressed[i];
    return null;
  }

  function selectConfig(label) {
    var c = configByLabel(label);
    if (!c) return;
    iv.config = c; iv.page = 0; iv.hay = null;
    cfgSelect.value = label;
    var tasks = uniq(c.flips.map(function (f) { return items[f[0]][0]; }));
    var keep = tasks.indexOf(iv.task) >= 0 ? iv.task : "";
    taskSelect.textContent = "";
    taskSelect.appendChild(el("option", {value: "", text: "all tasks"}));
    tasks.forEach(function (t) { taskSelect.appendChild(el("option", {value: t, text: t})); });
    taskSelect.value = keep; iv.task = keep;
    info.textContent = "";
    var tasksPaired = Object.keys(c.paired), total = {n: 0, lost: 0, gained: 0};
    var parts = tasksPaired.map(function (t) {
      var p = c.paired[t];
      if (p.kind !== "binary") return t + " (" + p.metric + "): scored per item on a continuous scale, no lost/gained items";
      total.n += p.n_matched; total.lost += p.lost; total.gained += p.gained;
      return t + " (" + p.metric + "): " + p.n_matched + " paired items, lost " + p.lost + ", gained " + p.gained;
    });
    var head = c.dense ? "Dense baseline: " + c.dense + ". " : "";
    if (parts.length <= 4) {
      info.textContent = head + parts.join("; ");
    } else { // e.g. the 57 subjects of an MMLU group: the totals, with each task one click away
      info.appendChild(document.createTextNode(head + tasksPaired.length + " tasks: " + total.n + " paired items, lost " +
                                               total.lost + ", gained " + total.gained + ". "));
      info.appendChild(el("details", {}, [el("summary", {text: "per task"}),
        el("ul", {}, parts.map(function (t) { return el("li", {text: t}); }))]));
    }
    notes.textContent = "";
    c.notes.forEach(function (n) { notes.appendChild(el("div", {cls: "warning", text: n})); });
    renderItems();
  }

  function haystack(c) {
    if (!iv.hay) {
      iv.hay = c.flips.map(function (f) {
        var it = items[f[0]];
        return [it[2], it[3].join("\n"), it[4], f[2]].join("\n").toLowerCase();
      });
    }
    return iv.hay;
  }

  function matching() {
    var c = iv.config, hay = iv.text ? haystack(c) : null, out = [];
    for (var i = 0; i < c.flips.length; i++) {
      var f = c.flips[i];
      if (iv.change !== "both" && f[1] !== iv.change) continue;
      if (iv.task && items[f[0]][0] !== iv.task) continue;
      if (hay && hay[i].indexOf(iv.text) < 0) continue;
      out.push(f);
    }
    return out;
  }

  function renderItems() {
    var c = iv.config;
    if (!c) return;
    var found = matching();
    var pages = Math.max(1, Math.ceil(found.length / PAGE));
    iv.page = Math.min(iv.page, pages - 1);
    var start = iv.page * PAGE, shown = found.slice(start, start + PAGE);
    var frag = document.createDocumentFragment();
    shown.forEach(function (f) {
      var it = items[f[0]];
      var refs = el("ul", {cls: "refs"}, it[3].map(function (r) { return el("li", {text: r}); }));
      frag.appendChild(el("tr", {"data-task": it[0], "data-doc": String(it[1]), "data-change": f[1]}, [
        el("td", {text: it[0]}), el("td", {text: String(it[1])}), el("td", {cls: f[1], text: f[1]}),
        el("td", {text: it[2]}), el("td", {}, [refs]), el("td", {text: it[4]}), el("td", {text: f[2]})]));
    });
    itemBody.textContent = "";
    itemBody.appendChild(frag);
    var what = iv.change === "both" ? "lost or gained" : iv.change;
    if (!c.flips.length) {
      count.textContent = c.notes.length ? "No per-item comparison for this config (see above)." :
        "No " + what + " items: on every paired item the two models are both right or both wrong.";
    } else {
      count.textContent = found.length ? "Showing " + (start + 1) + "\u2013" + (start + shown.length) + " of " +
        found.length + " " + what + " items" : "No " + what + " items match.";
    }
    prev.disabled = iv.page === 0;
    next.disabled = iv.page >= pages - 1;
  }

  var timer = null;
  cfgSelect.addEventListener("change", function () { selectConfig(cfgSelect.value); });
  changeSelect.addEventListener("change", function () { iv.change = changeSelect.value; iv.page = 0; renderItems(); });
  taskSelect.addEventListener("change", function () { iv.task = taskSelect.value; iv.page = 0; renderItems(); });
  textInput.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { iv.text = textInput.value.toLowerCase(); iv.page = 0; renderItems(); }, 120);
  });
  prev.addEventListener("click", function () { iv.page--; renderItems(); });
  next.addEventListener("click", function () { iv.page++; renderItems(); });

  function showItemsFor(label) {
    selectConfig(label);
    itemSection.scrollIntoView();
  }
  if (compressed.length) {
    var first = compressed.filter(function (c) { return c.flips.length; })[0] || compressed[0];
    selectConfig(first.label);
  }

  // ------------------------------------------------------------------ data provenance
  if (DATA.data_lines.length) {
    app.appendChild(el("h2", {text: "Data"}));
    app.appendChild(el("ul", {id: "data-lines"}, DATA.data_lines.map(function (l) { return el("li", {text: l}); })));
  }
  document.body.setAttribute("data-ready", "1");
})();
