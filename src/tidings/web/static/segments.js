// The segment rule builder.
//
// The form posts one field, `rules` (hidden): the definition as JSON. This script edits that
// JSON visually (all / any groups, NOT, conditions of every family), keeps the JSON view in
// step both ways, and shows a live count: a debounced POST to the dashboard's preview endpoint
// with the session's CSRF token. Families, operators and labels come from the server
// (#builder-config, built from segments.rules), so the builder offers what the parser accepts.
// The server validates everything; anything the visual editor cannot show (an unknown key, a
// list with commas) is edited as JSON in place instead of being dropped.
(function () {
  "use strict";

  var mount = document.getElementById("rule-builder");
  if (!mount) return;
  var config = JSON.parse(document.getElementById("builder-config").textContent);
  var field = document.getElementById("rules-field");
  var jsonView = document.getElementById("json-view");
  var jsonText = document.getElementById("rules-json");
  var jsonError = document.getElementById("json-error");
  var previewBox = document.getElementById("preview");
  var countEl = document.getElementById("preview-count");
  var previewError = document.getElementById("preview-error");
  var sampleEl = document.getElementById("preview-sample");
  var saveButton = document.getElementById("save-segment");
  var formError = document.getElementById("form-error");
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');

  var FAMILY_KEYS = config.families.map(function (f) { return f.key; });
  var OTHER = "__other__";
  var ops = config.ops;
  var labels = config.labels;

  var state = { tree: null, parseError: null };
  var otherMode = new WeakMap(); // node -> {key: true} while "Other…" is chosen in a picker
  var brokenRaw = new Set(); // raw JSON editors holding text that does not parse

  // -- small helpers -----------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = v;
      else if (k.slice(0, 2) === "on") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  function keysWithin(node, allowed) {
    return Object.keys(node).every(function (k) { return allowed.indexOf(k) >= 0; });
  }

  function groupKind(node) {
    if (!isObject(node) || Object.keys(node).length !== 1) return null;
    if (Array.isArray(node.all)) return "all";
    if (Array.isArray(node.any)) return "any";
    return null;
  }

  function isNot(node) {
    return isObject(node) && Object.keys(node).length === 1 && "not" in node;
  }

  function familyOf(node) {
    if (!isObject(node)) return null;
    for (var i = 0; i < FAMILY_KEYS.length; i++) {
      if (FAMILY_KEYS[i] in node) return FAMILY_KEYS[i];
    }
    return null;
  }

  function idFor(path, name) {
    return "rb-" + path.replace(/[^A-Za-z0-9]+/g, "-") + "-" + name;
  }

  function label(group, key) {
    return (labels[group] && labels[group][key]) || key;
  }

  function selectEl(id, ariaLabel, options, value, onchange) {
    var sel = el("select", { id: id, "aria-label": ariaLabel, onchange: onchange });
    options.forEach(function (o) {
      var opt = el("option", { value: o[0], text: o[1] });
      if (String(o[0]) === String(value)) opt.selected = true;
      sel.appendChild(opt);
    });
    return sel;
  }

  function button(text, ariaLabel, onclick, cls) {
    return el("button", {
      type: "button",
      class: "secondary small" + (cls ? " " + cls : ""),
      "aria-label": ariaLabel,
      text: text,
      onclick: onclick,
    });
  }

  function wholeNumber(text) {
    // The parser wants whole numbers of days; anything else goes as typed, for its message.
    return /^\s*\d+\s*$/.test(text) ? parseInt(text, 10) : text;
  }

  function number(text) {
    return text.trim() === "" ? null : Number(text);
  }

  // -- catalogs ----------------------------------------------------------------------------

  function traitType(key) {
    var found = config.traits.filter(function (t) { return t.key === key; })[0];
    return found ? found.type : null;
  }

  function eventProperties(name) {
    var found = config.events.filter(function (e) { return e.name === name; })[0];
    return found ? Object.keys(found.properties).sort() : [];
  }

  // A select over a catalog with an "Other…" choice that reveals a text input.
  function picker(node, key, path, ariaLabel, choices, onPicked) {
    var current = typeof node[key] === "string" ? node[key] : "";
    var modes = otherMode.get(node) || {};
    var other = modes[key] || (current !== "" && choices.indexOf(current) < 0);
    var options = [["", choices.length ? "Choose…" : "None yet: choose Other…"]];
    choices.forEach(function (c) { options.push([c, c]); });
    options.push([OTHER, "Other…"]);
    var wrap = el("span", { class: "picker" });
    wrap.appendChild(
      selectEl(idFor(path, key), ariaLabel, options, other ? OTHER : current, function (ev) {
        var v = ev.target.value;
        var m = otherMode.get(node) || {};
        if (v === OTHER) {
          m[key] = true;
          otherMode.set(node, m);
          node[key] = "";
        } else {
          delete m[key];
          node[key] = v;
        }
        if (onPicked) onPicked();
        rerender(v === OTHER ? idFor(path, key + "-other") : null);
      })
    );
    if (other) {
      wrap.appendChild(
        el("input", {
          type: "text",
          id: idFor(path, key + "-other"),
          "aria-label": ariaLabel + " (other)",
          value: current,
          placeholder: "name",
          size: 16,
          oninput: function (ev) {
            node[key] = ev.target.value;
            changed();
          },
        })
      );
    }
    return wrap;
  }

  // -- values ------------------------------------------------------------------------------

  function scalarKind(v) {
    if (typeof v === "boolean") return String(v);
    if (typeof v === "number") return "number";
    return "text";
  }

  function kindFromType(type) {
    if (type === "number") return "number";
    if (type === "boolean") return "true";
    return "text";
  }

  function convert(kind, text) {
    if (kind === "number") return number(text);
    if (kind === "true") return true;
    if (kind === "false") return false;
    return text;
  }

  // The value a node gets when its operator changes, keeping what still fits.
  function valueFor(op, old, hint) {
    if (ops.presence.indexOf(op) >= 0) return undefined;
    if (ops.relative.indexOf(op) >= 0) return typeof old === "number" && old > 0 ? old : 7;
    if (ops.number.indexOf(op) >= 0) return typeof old === "number" ? old : 0;
    if (ops.date.indexOf(op) >= 0) return typeof old === "string" && /^\d{4}-/.test(old) ? old : "";
    if (ops.text.indexOf(op) >= 0) return typeof old === "string" ? old : "";
    if (ops.list.indexOf(op) >= 0) {
      if (Array.isArray(old)) return old;
      return old === undefined || old === "" ? [] : [old];
    }
    if (typeof old === "string" || typeof old === "number" || typeof old === "boolean") return old;
    return hint === "number" ? 0 : hint === "true" ? true : "";
  }

  // Operator select and value input(s) for {op, value}; null when the shape is not editable here.
  function valueControls(node, path, opList, opLabels, hint, numbersOnly) {
    var op = node.op;
    if (opList.indexOf(op) < 0) return null;
    var out = [
      selectEl(
        idFor(path, "op"),
        "Operator",
        opList.map(function (o) { return [o, label(opLabels, o)]; }),
        op,
        function (ev) {
          node.op = ev.target.value;
          var v = valueFor(node.op, node.value, numbersOnly ? "number" : hint);
          if (v === undefined) delete node.value;
          else node.value = v;
          rerender(idFor(path, "op"));
        }
      ),
    ];
    var v = node.value;
    if (ops.presence.indexOf(op) >= 0) return "value" in node ? null : out;
    if (ops.relative.indexOf(op) >= 0) {
      out.push(
        el("input", {
          type: "number", min: 1, max: config.max_days, step: 1, id: idFor(path, "value"),
          "aria-label": "Days", value: v === undefined ? "" : String(v),
          oninput: function (ev) { node.value = wholeNumber(ev.target.value); changed(); },
        }),
        el("span", { text: "days" })
      );
      return out;
    }
    if (ops.number.indexOf(op) >= 0 || (numbersOnly && (op === "eq" || op === "ne"))) {
      if (v !== undefined && v !== null && typeof v !== "number") return null;
      out.push(numberInput(node, path, "value", "Value", v));
      return out;
    }
    if (ops.date.indexOf(op) >= 0 || ops.text.indexOf(op) >= 0) {
      if (v !== undefined && typeof v !== "string") return null;
      var date = ops.date.indexOf(op) >= 0;
      out.push(
        el("input", {
          type: "text", id: idFor(path, "value"), "aria-label": date ? "Date" : "Value",
          placeholder: date ? "YYYY-MM-DD" : "", value: v || "", size: date ? 12 : 16,
          oninput: function (ev) { node.value = ev.target.value; changed(); },
        })
      );
      return out;
    }
    if (ops.list.indexOf(op) >= 0) return listControls(node, path, out, hint);
    // eq / ne: a scalar of a chosen kind.
    if (v !== undefined && typeof v === "object") return null;
    var kind = v === undefined ? hint || "text" : scalarKind(v);
    out.push(
      selectEl(
        idFor(path, "kind"),
        "Value type",
        [["text", "text"], ["number", "number"], ["true", "true"], ["false", "false"]],
        kind,
        function (ev) {
          var text = node.value === undefined || typeof node.value === "boolean" ? "" : String(node.value);
          node.value = convert(ev.target.value, text);
          rerender(idFor(path, "kind"));
        }
      )
    );
    if (kind === "text" || kind === "number") {
      out.push(
        el("input", {
          type: kind === "number" ? "number" : "text", step: "any", id: idFor(path, "value"),
          "aria-label": "Value", value: v === undefined || v === null ? "" : String(v), size: 16,
          oninput: function (ev) { node.value = convert(kind, ev.target.value); changed(); },
        })
      );
    }
    return out;
  }

  function numberInput(node, path, key, ariaLabel, v) {
    return el("input", {
      type: "number", step: "any", id: idFor(path, key), "aria-label": ariaLabel,
      value: v === undefined || v === null ? "" : String(v),
      oninput: function (ev) { node[key] = number(ev.target.value); changed(); },
    });
  }

  function listControls(node, path, out, hint) {
    var v = node.value === undefined ? [] : node.value;
    if (!Array.isArray(v)) return null;
    var numbers = v.length ? v.every(function (x) { return typeof x === "number"; }) : hint === "number";
    var fits = v.every(function (x) {
      return numbers ? typeof x === "number" : typeof x === "string" && x.indexOf(",") < 0;
    });
    if (!fits) return null;
    var kind = numbers ? "number" : "text";
    function parse(text) {
      return text.split(",").map(function (s) { return s.trim(); })
        .filter(function (s) { return s !== ""; })
        .map(function (s) { return kind === "number" ? Number(s) : s; });
    }
    out.push(
      selectEl(idFor(path, "kind"), "Value type", [["text", "texts"], ["number", "numbers"]], kind,
        function (ev) {
          kind = ev.target.value;
          node.value = parse(v.join(", "));
          rerender(idFor(path, "kind"));
        }),
      el("input", {
        type: "text", id: idFor(path, "value"), "aria-label": "Values",
        placeholder: "a, b, c", value: v.join(", "), size: 22,
        oninput: function (ev) { node.value = parse(ev.target.value); changed(); },
      })
    );
    return out;
  }

  // -- event parts -------------------------------------------------------------------------

  function countControls(node, path) {
    var count = node.count;
    if (count !== undefined && (!isObject(count) || Object.keys(count).length !== 1)) return null;
    var key = count ? Object.keys(count)[0] : "gte";
    var n = count ? count[key] : 1;
    if (ops.count.indexOf(key) < 0) return null;
    return [
      selectEl(idFor(path, "count-op"), "How often",
        ops.count.map(function (k) { return [k, label("count", k)]; }), key,
        function (ev) {
          var c = {};
          c[ev.target.value] = n;
          node.count = c;
          rerender(idFor(path, "count-op"));
        }),
      el("input", {
        type: "number", min: 0, step: 1, id: idFor(path, "count"), "aria-label": "Times",
        value: String(n),
        oninput: function (ev) {
          var c = {};
          c[key] = wholeNumber(ev.target.value);
          node.count = c;
          changed();
        },
      }),
      el("span", { text: "times" }),
    ];
  }

  function windowControls(node, path) {
    var mode = "within_days" in node ? "within" : "between" in node ? "between" : "ever";
    if (mode === "between" && !(Array.isArray(node.between) && node.between.length === 2)) return null;
    var out = [
      selectEl(idFor(path, "window"), "When",
        [["ever", "at any time"], ["within", "in the last … days"], ["between", "between dates"]],
        mode,
        function (ev) {
          delete node.within_days;
          delete node.between;
          if (ev.target.value === "within") node.within_days = 30;
          if (ev.target.value === "between") node.between = ["", ""];
          rerender(idFor(path, "window"));
        }),
    ];
    if (mode === "within") {
      out.push(
        el("input", {
          type: "number", min: 1, max: config.max_days, step: 1, id: idFor(path, "days"),
          "aria-label": "Days", value: String(node.within_days),
          oninput: function (ev) { node.within_days = wholeNumber(ev.target.value); changed(); },
        }),
        el("span", { text: "days" })
      );
    } else if (mode === "between") {
      [0, 1].forEach(function (i) {
        out.push(
          el("input", {
            type: "text", id: idFor(path, "between-" + i), size: 12, placeholder: "YYYY-MM-DD",
            "aria-label": i ? "End date" : "Start date", value: String(node.between[i]),
            oninput: function (ev) { node.between[i] = ev.target.value; changed(); },
          })
        );
        if (!i) out.push(el("span", { text: "and" }));
      });
    }
    return out;
  }

  function recencyControls(node, path) {
    var key = "more_than_days_ago" in node ? "more_than_days_ago" : "within_days";
    return [
      selectEl(idFor(path, "recency"), "When",
        [["within_days", "within the last … days"], ["more_than_days_ago", "more than … days ago"]],
        key,
        function (ev) {
          var n = node[key];
          delete node[key];
          node[ev.target.value] = n;
          rerender(idFor(path, "recency"));
        }),
      el("input", {
        type: "number", min: 1, max: config.max_days, step: 1, id: idFor(path, "days"),
        "aria-label": "Days", value: String(node[key]),
        oninput: function (ev) { node[key] = wholeNumber(ev.target.value); changed(); },
      }),
      el("span", { text: "days" }),
    ];
  }

  // Property filters of an event or a page condition; null when one is not editable here.
  function whereControls(node, path, properties) {
    if (node.where !== undefined && !Array.isArray(node.where)) return null;
    var rows = node.where || [];
    var box = el("div", { class: "rule-where" });
    for (var i = 0; i < rows.length; i++) {
      var w = rows[i];
      var wpath = path + ".where[" + i + "]";
      if (!isObject(w) || typeof w.property !== "string" || !keysWithin(w, ["property", "op", "value"])) {
        return null;
      }
      var controls = valueControls(w, wpath, ops.property, "value", "text", false);
      if (!controls) return null;
      var row = el("div", { class: "rule-row", "data-path": wpath }, [el("span", { class: "muted", text: "where" })]);
      row.appendChild(picker(w, "property", wpath, "Property", properties, null));
      controls.forEach(function (c) { row.appendChild(c); });
      row.appendChild(button("×", "Remove property filter", removeWhere(node, i)));
      box.appendChild(row);
    }
    box.appendChild(
      button("+ Property filter", "Add a property filter", function () {
        node.where = node.where || [];
        node.where.push({ property: properties[0] || "", op: "exists" });
        rerender(idFor(path + ".where[" + (node.where.length - 1) + "]", "property"));
      })
    );
    return box;
  }

  function removeWhere(node, i) {
    return function () {
      node.where.splice(i, 1);
      if (!node.where.length) delete node.where;
      rerender();
    };
  }

  // -- families ----------------------------------------------------------------------------

  var DEFAULTS = {
    trait: function () { return { trait: config.traits.length ? config.traits[0].key : "", op: "exists" }; },
    event: function () { return { event: config.events.length ? config.events[0].name : "", op: "performed" }; },
    page: function () { return { page: "path", op: "any" }; },
    tag: function () { return { tag: config.tags[0] || "", op: "has" }; },
    revenue: function () { return { revenue: "lifetime_value", op: "gt", value: 0 }; },
    group_trait: function () { return { group_trait: "", op: "exists" }; },
    group: function () { return { group: "", op: "member" }; },
    audience: function () { return { audience: "", op: "member" }; },
    segment: function () { return { segment: config.segments.length ? config.segments[0].id : 0, op: "in" }; },
    random: function () { return { random: "sample", percent: 10 }; },
    email: function () { return { email: "opened", op: "performed", within_days: 30 }; },
  };

  function textInput(node, key, path, ariaLabel, placeholder) {
    return el("input", {
      type: "text", id: idFor(path, key), "aria-label": ariaLabel, placeholder: placeholder,
      value: typeof node[key] === "string" ? node[key] : "", size: 16,
      oninput: function (ev) { node[key] = ev.target.value; changed(); },
    });
  }

  // An operator select; `adjust` drops or adds the keys the new operator needs.
  function simpleOp(node, path, group, list, adjust) {
    if (list.indexOf(node.op) < 0) return null;
    return selectEl(idFor(path, "op"), "Operator",
      list.map(function (o) { return [o, label(group, o)]; }), node.op,
      function (ev) {
        node.op = ev.target.value;
        if (adjust) adjust();
        rerender(idFor(path, "op"));
      });
  }

  // Each returns the condition's rows (arrays of controls), or null to edit it as JSON.
  var FAMILIES = {
    email: function (node, path) {
      var allowed = ["email", "op", "count", "within_days", "between", "template", "topic"];
      if (!keysWithin(node, allowed) || config.email_kinds.indexOf(node.email) < 0) return null;
      if (node.op !== "performed" && node.op !== "not_performed") return null;
      var op = simpleOp(node, path, "event", ["performed", "not_performed"], function () {
        if (node.op === "not_performed") delete node.count;
      });
      var kind = selectEl(idFor(path, "email"), "Email event",
        config.email_kinds.map(function (k) { return [k, k.replace(/_/g, " ")]; }), node.email,
        function (ev) { node.email = ev.target.value; rerender(idFor(path, "email")); });
      var count = node.op === "performed" ? countControls(node, path) : [];
      var win = windowControls(node, path);
      if (!op || count === null || !win) return null;
      return [[op, el("span", { text: "email" }), kind], count.concat(win)];
    },
    trait: function (node, path) {
      if (!keysWithin(node, ["trait", "op", "value"]) || typeof node.trait !== "string") return null;
      var keys = config.traits.map(function (t) { return t.key; });
      var controls = valueControls(node, path, ops.value, "value", kindFromType(traitType(node.trait)), false);
      return controls && [[picker(node, "trait", path, "Trait", keys, null)].concat(controls)];
    },
    group_trait: function (node, path) {
      if (!keysWithin(node, ["group_trait", "op", "value"]) || typeof node.group_trait !== "string") return null;
      var controls = valueControls(node, path, ops.value, "value", "text", false);
      return controls && [[textInput(node, "group_trait", path, "Group trait", "plan")].concat(controls)];
    },
    event: function (node, path) {
      var allowed = ["event", "op", "count", "within_days", "between", "more_than_days_ago", "where"];
      if (!keysWithin(node, allowed) || typeof node.event !== "string") return null;
      var op = simpleOp(node, path, "event", ops.event, function () {
        // Keep only the keys the new operator takes (the parser refuses the others).
        if (node.op === "performed" || node.op === "not_performed") {
          delete node.more_than_days_ago;
          if (node.op === "not_performed") delete node.count;
        } else {
          delete node.count;
          delete node.between;
          if (!("within_days" in node) && !("more_than_days_ago" in node)) node.within_days = 30;
        }
      });
      if (!op) return null;
      var names = config.events.map(function (e) { return e.name; });
      var first = [op, picker(node, "event", path, "Event", names, null)];
      var when;
      if (node.op === "performed" || node.op === "not_performed") {
        if ("more_than_days_ago" in node) return null;
        var count = node.op === "performed" ? countControls(node, path) : [];
        if (count === null || (node.op === "not_performed" && "count" in node)) return null;
        var win = windowControls(node, path);
        if (!win) return null;
        when = count.concat(win);
      } else {
        if ("count" in node || "between" in node) return null;
        if (("within_days" in node) === ("more_than_days_ago" in node)) return null;
        when = recencyControls(node, path);
      }
      var where = whereControls(node, path, eventProperties(node.event));
      return where && [first, when, [where]];
    },
    page: function (node, path) {
      var allowed = ["page", "op", "value", "count", "within_days", "between", "where"];
      if (!keysWithin(node, allowed) || ops.page.indexOf(node.op) < 0) return null;
      var fieldSel = selectEl(idFor(path, "page"), "Page field",
        ops.page_fields.map(function (f) { return [f, f]; }), node.page,
        function (ev) { node.page = ev.target.value; rerender(idFor(path, "page")); });
      if (ops.page_fields.indexOf(node.page) < 0) return null;
      var op = simpleOp(node, path, "page", ops.page, function () {
        if (node.op === "any") delete node.value;
        else if (typeof node.value !== "string") node.value = "";
      });
      var first = [el("span", { text: "Visited a page whose" }), fieldSel, op];
      if (node.op !== "any") {
        if (node.value !== undefined && typeof node.value !== "string") return null;
        first.push(textInput(node, "value", path, "Value", "/pricing"));
      } else if ("value" in node) return null;
      var count = countControls(node, path);
      var win = windowControls(node, path);
      var where = whereControls(node, path, config.page_properties);
      if (!count || !win || !where) return null;
      return [first, count.concat(win), [where]];
    },
    tag: function (node, path) {
      if (!keysWithin(node, ["tag", "op"]) || typeof node.tag !== "string") return null;
      var op = simpleOp(node, path, "tag", ops.tag);
      return op && [[op, picker(node, "tag", path, "Tag", config.tags, null)]];
    },
    revenue: function (node, path) {
      if (!keysWithin(node, ["revenue", "op", "value"]) || !(node.revenue in ops.revenue)) return null;
      var metric = selectEl(idFor(path, "revenue"), "Metric",
        Object.keys(ops.revenue).map(function (m) { return [m, label("revenue", m)]; }), node.revenue,
        function (ev) {
          node.revenue = ev.target.value;
          var list = ops.revenue[node.revenue];
          if (list.indexOf(node.op) < 0) node.op = list.indexOf("gt") >= 0 ? "gt" : "within_last_days";
          var v = valueFor(node.op, node.value, "number");
          if (v === undefined) delete node.value;
          else node.value = v;
          rerender(idFor(path, "revenue"));
        });
      var controls = valueControls(node, path, ops.revenue[node.revenue], "value", "number", true);
      return controls && [[metric].concat(controls)];
    },
    group: function (node, path) {
      if (!keysWithin(node, ["group", "op"]) || typeof node.group !== "string") return null;
      var op = simpleOp(node, path, "member", ops.member);
      return op && [[op, el("span", { text: "group" }), textInput(node, "group", path, "Group id", "groupId")]];
    },
    audience: function (node, path) {
      if (!keysWithin(node, ["audience", "op"]) || typeof node.audience !== "string") return null;
      var op = simpleOp(node, path, "member", ops.member);
      return op && [[op, el("span", { text: "audience" }), textInput(node, "audience", path, "Audience", "audience_key")]];
    },
    segment: function (node, path) {
      if (!keysWithin(node, ["segment", "op"]) || typeof node.segment !== "number") return null;
      var op = simpleOp(node, path, "segment", ops.segment);
      var options = config.segments.map(function (s) { return [s.id, s.name]; });
      if (!config.segments.some(function (s) { return s.id === node.segment; })) {
        options.unshift([node.segment, config.segments.length ? "Choose…" : "No other segment yet"]);
      }
      var sel = selectEl(idFor(path, "segment"), "Segment", options, node.segment, function (ev) {
        node.segment = parseInt(ev.target.value, 10);
        rerender(idFor(path, "segment"));
      });
      return op && [[op, sel]];
    },
    random: function (node, path) {
      if (!keysWithin(node, ["random", "percent"]) || typeof node.random !== "string") return null;
      if (typeof node.percent !== "number" && node.percent !== null) return null;
      var pct = numberInput(node, path, "percent", "Percent", node.percent);
      pct.min = 0;
      pct.max = 100;
      return [[el("span", { text: "A stable random" }), pct, el("span", { text: "% of customers, draw" }),
        textInput(node, "random", path, "Draw name", "holdout")]];
    },
  };

  // -- tree --------------------------------------------------------------------------------

  function renderNode(node, path, slot) {
    var kind = groupKind(node);
    if (kind) return renderGroup(node, kind, path, slot);
    if (isNot(node)) return renderNot(node, path, slot);
    return renderCondition(node, path, slot);
  }

  function itemActions(node, path, slot, what) {
    var out = [el("span", { class: "rule-spacer" })];
    out.push(button("NOT", "Negate this " + what, function () {
      slot.replace({ not: node });
      rerender(idFor(path + ".not", "negated"));
    }));
    if (slot.remove) {
      out.push(button("Remove", "Remove " + what, function () { slot.remove(); rerender(); }));
    }
    return out;
  }

  function renderGroup(node, kind, path, slot) {
    var box = el("div", { class: "rule-group " + kind, "data-path": path, role: "group", "aria-label": kind === "all" ? "All of" : "Any of" });
    var head = el("div", { class: "rule-head" }, [
      selectEl(idFor(path, "match"), "Match", [["all", "All of these (and)"], ["any", "Any of these (or)"]], kind,
        function (ev) {
          var kids = node[kind];
          delete node[kind];
          node[ev.target.value] = kids;
          rerender(idFor(path, "match"));
        }),
    ].concat(slot.root ? [] : itemActions(node, path, slot, "group")));
    box.appendChild(head);
    var list = el("ol", { class: "rule-children" });
    node[kind].forEach(function (child, i) {
      var cpath = path + "." + kind + "[" + i + "]";
      list.appendChild(el("li", {}, [renderNode(child, cpath, {
        replace: function (n) { node[kind][i] = n; },
        remove: function () { node[kind].splice(i, 1); },
      })]));
    });
    if (!node[kind].length) {
      list.appendChild(el("li", { class: "muted", text: kind === "all"
        ? "No conditions yet: every customer matches."
        : "No conditions yet: no customer matches." }));
    }
    box.appendChild(list);
    box.appendChild(el("div", { class: "rule-actions" }, [
      button("+ Condition", "Add a condition", function () {
        node[kind].push(DEFAULTS.trait());
        rerender(idFor(path + "." + kind + "[" + (node[kind].length - 1) + "]", "family"));
      }),
      button("+ Group", "Add a group", function () {
        node[kind].push({ any: [DEFAULTS.trait()] });
        rerender(idFor(path + "." + kind + "[" + (node[kind].length - 1) + "]", "match"));
      }),
    ]));
    return box;
  }

  function renderNot(node, path, slot) {
    var box = el("div", { class: "rule-not", "data-path": path });
    box.appendChild(el("div", { class: "rule-head" }, [
      el("span", { id: idFor(path + ".not", "negated"), tabindex: "-1", text: "NOT: customers who do not match" }),
      el("span", { class: "rule-spacer" }),
      button("Remove NOT", "Remove NOT", function () { slot.replace(node.not); rerender(); }),
    ]));
    box.appendChild(renderNode(node.not, path + ".not", {
      replace: function (n) { node.not = n; },
      remove: slot.remove,
    }));
    return box;
  }

  function renderCondition(node, path, slot) {
    var family = familyOf(node);
    var box = el("div", { class: "rule-condition", "data-path": path, role: "group", "aria-label": "Condition" });
    var rows = family && isObject(node) ? FAMILIES[family](node, path) : null;
    var familySelect = selectEl(idFor(path, "family"), "Condition type",
      config.families.map(function (f) { return [f.key, f.label]; }).concat(family ? [] : [["", "JSON"]]),
      family || "",
      function (ev) {
        slot.replace(DEFAULTS[ev.target.value]());
        rerender(idFor(path, "family"));
      });
    var head = el("div", { class: "rule-row" }, [familySelect]);
    if (rows) {
      rows[0].forEach(function (c) { head.appendChild(c); });
      itemActions(node, path, slot, "condition").forEach(function (c) { head.appendChild(c); });
      box.appendChild(head);
      rows.slice(1).forEach(function (r) {
        if (r.length) box.appendChild(el("div", { class: "rule-row" }, r));
      });
      return box;
    }
    itemActions(node, path, slot, "condition").forEach(function (c) { head.appendChild(c); });
    box.appendChild(head);
    box.appendChild(rawEditor(node, path, slot));
    return box;
  }

  function rawEditor(node, path, slot) {
    var error = el("p", { class: "flash error", hidden: true });
    var area = el("textarea", {
      id: idFor(path, "json"), rows: 4, spellcheck: "false", "aria-label": "Condition as JSON",
      oninput: function (ev) {
        try {
          var parsed = JSON.parse(ev.target.value);
          brokenRaw.delete(area);
          error.hidden = true;
          slot.replace(parsed);
          changed();
        } catch (e) {
          brokenRaw.add(area);
          error.textContent = "Not valid JSON: " + e.message;
          error.hidden = false;
          updateSave();
        }
      },
      onchange: function () { if (!brokenRaw.has(area)) rerender(); },
    });
    area.value = JSON.stringify(node, null, 2);
    return el("div", { class: "rule-raw" }, [
      el("p", { class: "muted", text: "Shown as JSON: the visual editor does not cover this condition." }),
      area,
      error,
    ]);
  }

  function renderRoot() {
    var tree = state.tree;
    if (groupKind(tree)) {
      return renderGroup(tree, groupKind(tree), "rules", {
        root: true,
        replace: function (n) { state.tree = n; },
        remove: null,
      });
    }
    // A bare condition or NOT at the top: show it in a group that appears once it is needed.
    var box = el("div", { class: "rule-group all" });
    box.appendChild(renderNode(tree, "rules", {
      replace: function (n) { state.tree = n; },
      remove: function () { state.tree = { all: [] }; },
    }));
    box.appendChild(el("div", { class: "rule-actions" }, [
      button("+ Condition", "Add a condition", function () {
        state.tree = { all: [state.tree, DEFAULTS.trait()] };
        rerender(idFor("rules.all[1]", "family"));
      }),
    ]));
    return box;
  }

  // -- syncing -----------------------------------------------------------------------------

  function render() {
    brokenRaw.clear();
    mount.textContent = "";
    if (state.parseError) {
      mount.appendChild(el("p", { class: "flash error", text:
        "The JSON view holds text that is not valid JSON; fix it there to use the builder again." }));
      return;
    }
    mount.appendChild(renderRoot());
  }

  function rerender(focusId) {
    var active = document.activeElement && document.activeElement.id;
    render();
    changed();
    var target = document.getElementById(focusId || active || "");
    if (target && mount.contains(target)) target.focus();
  }

  // The builder changed the tree: write the field and the JSON view, count again.
  function changed() {
    field.value = JSON.stringify(state.tree);
    if (document.activeElement !== jsonText) jsonText.value = JSON.stringify(state.tree, null, 2);
    jsonError.hidden = true;
    updateSave();
    schedulePreview();
  }

  function updateSave() {
    if (saveButton) saveButton.disabled = brokenRaw.size > 0;
  }

  jsonText.addEventListener("input", function () {
    field.value = jsonText.value;
    try {
      state.tree = JSON.parse(jsonText.value);
      state.parseError = null;
      jsonError.hidden = true;
    } catch (e) {
      state.parseError = e.message;
      jsonError.textContent = "The JSON is not valid: " + e.message;
      jsonError.hidden = false;
    }
    render();
    updateSave();
    schedulePreview();
  });

  // -- live count --------------------------------------------------------------------------

  var timer = null;
  var sequence = 0;

  function schedulePreview() {
    clearTimeout(timer);
    previewBox.classList.add("loading");
    timer = setTimeout(runPreview, 350);
  }

  function showCount(body) {
    previewError.hidden = true;
    countEl.textContent = body.count.toLocaleString("en") + (body.count === 1 ? " customer matches" : " customers match");
    sampleEl.textContent = "";
    body.sample.forEach(function (c) {
      sampleEl.appendChild(el("li", {}, [
        el("a", { href: config.customers_url + "/" + c.id, text: c.name || c.email || c.user_id || "Anonymous #" + c.id }),
      ]));
    });
  }

  function showProblem(message) {
    countEl.textContent = "No count";
    sampleEl.textContent = "";
    previewError.textContent = message;
    previewError.hidden = false;
    highlight(message);
  }

  // Outline the condition an error message names ("rules.all[1].any[0]: ...").
  function highlight(message) {
    Array.prototype.forEach.call(mount.querySelectorAll(".invalid"), function (n) {
      n.classList.remove("invalid");
    });
    var m = /^(rules[^\s:]*):/.exec(message || "");
    if (!m) return;
    var best = null;
    Array.prototype.forEach.call(mount.querySelectorAll("[data-path]"), function (n) {
      var p = n.getAttribute("data-path");
      var fits = m[1] === p || m[1].indexOf(p + ".") === 0;
      if (fits && (!best || p.length > best.getAttribute("data-path").length)) best = n;
    });
    if (best) best.classList.add("invalid");
  }

  function runPreview() {
    var mine = ++sequence;
    var rules;
    try {
      rules = JSON.parse(field.value);
    } catch (e) {
      previewBox.classList.remove("loading");
      showProblem("Fix the JSON to see how many customers match.");
      return;
    }
    fetch(config.preview_url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRF-Token": csrfMeta ? csrfMeta.content : "",
      },
      body: JSON.stringify({ rules: rules }),
    })
      .then(function (r) {
        var json = (r.headers.get("content-type") || "").indexOf("application/json") >= 0;
        return (json ? r.json() : Promise.resolve(null)).then(function (body) {
          return { status: r.status, body: body };
        });
      })
      .then(function (answer) {
        if (mine !== sequence) return;
        previewBox.classList.remove("loading");
        if (answer.status === 200 && answer.body && answer.body.valid) {
          highlight("");
          showCount(answer.body);
        } else if (answer.body && answer.body.message) {
          showProblem(answer.body.message);
        } else {
          showProblem("Could not count (HTTP " + answer.status + "). Reload the page and try again.");
        }
      })
      .catch(function () {
        if (mine !== sequence) return;
        previewBox.classList.remove("loading");
        showProblem("Could not reach Tidings to count.");
      });
  }

  // -- start -------------------------------------------------------------------------------

  jsonText.value = field.value;
  try {
    state.tree = JSON.parse(field.value);
  } catch (e) {
    state.parseError = e.message;
    jsonError.textContent = "The JSON is not valid: " + e.message;
    jsonError.hidden = false;
    jsonView.open = true;
  }
  mount.hidden = false;
  jsonView.hidden = false;
  previewBox.hidden = false;
  render();
  if (formError) highlight(formError.textContent.trim());
  runPreview();
})();
