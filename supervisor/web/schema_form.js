// A form built from a JSON Schema object (the daemon's own /openapi.json), so that a form of a
// request's fields has every field, with this daemon's limits, and never drifts from the API.
// Each property becomes a control; an empty control is left out of the body, so the daemon's
// default applies. The daemon checks what is sent: the form's bounds only help the user.
import { api } from "./api.js";
import { h } from "./ui.js";

let documentPromise = null;

// The daemon's OpenAPI document, read once per page load (it is public and holds no data).
export function openapi() {
  documentPromise ??= api("/openapi.json");
  documentPromise.catch(() => { documentPromise = null; });
  return documentPromise;
}

// The schema without its `null` alternative: null and absent both mean "the default" here.
function plain(schema) {
  if (schema && Array.isArray(schema.anyOf)) {
    const rest = schema.anyOf.filter((s) => s.type !== "null");
    if (rest.length === 1) return { ...rest[0], description: schema.description ?? rest[0].description };
  }
  return schema || {};
}

const idOf = (prefix, name) => `${prefix}-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;

// One control for one property; returns { element, read } where read() gives the value to
// send, or undefined to leave the field out. `custom` builds a control of its own for a name.
function control(prefix, name, raw, custom) {
  const schema = plain(raw);
  const id = idOf(prefix, name);
  const hintId = `${id}-hint`;
  const hint = schema.description ? h("small", { class: "hint", id: hintId }, schema.description) : null;
  const described = hint ? hintId : undefined;
  const label = h("label", { for: id }, name);
  const wrap = (input) => h("div", { class: "field", dataset: { field: name } }, label, input, hint);

  if (custom) {
    const c = custom(id, described);
    return { element: wrap(c.element), read: c.read };
  }
  if (schema.type === "object" && schema.properties) {
    const inner = fields(`${id}`, schema.properties, {});
    const box = h("details", { class: "field wide", dataset: { field: name } },
      h("summary", {}, `${name}: ${schema.description || "options"}`),
      h("div", { class: "grid-form" }, inner.elements));
    return { element: box, read: () => { const v = inner.read(); return Object.keys(v).length ? v : undefined; } };
  }
  if (schema.type === "array" && schema.items && Array.isArray(schema.items.enum)) {
    const boxes = schema.items.enum.map((v) =>
      h("input", { type: "checkbox", name, value: v, id: `${id}-${v}` }));
    const set = h("fieldset", { class: "field", dataset: { field: name }, "aria-describedby": described },
      h("legend", {}, name),
      boxes.map((b) => h("label", { class: "inline", for: b.id }, b, ` ${b.value}`)), hint);
    return { element: set, read: () => {
      const picked = boxes.filter((b) => b.checked).map((b) => b.value);
      return picked.length ? picked : undefined;
    } };
  }
  if (Array.isArray(schema.enum) || schema.type === "boolean") {
    const values = schema.type === "boolean" ? ["true", "false"] : schema.enum;
    const select = h("select", { id, name, "aria-describedby": described },
      h("option", { value: "" }, "(default)"), values.map((v) => h("option", { value: String(v) }, String(v))));
    return { element: wrap(select), read: () => {
      if (!select.value) return undefined;
      return schema.type === "boolean" ? select.value === "true" : select.value;
    } };
  }
  if (schema.type === "integer" || schema.type === "number") {
    const input = h("input", { id, name, type: "number", inputmode: schema.type === "integer" ? "numeric" : "decimal",
      min: schema.minimum, max: schema.maximum, step: schema.type === "integer" ? 1 : "any",
      "aria-describedby": described });
    return { element: wrap(input), read: () => {
      const v = input.value.trim();
      return v === "" ? undefined : Number(v);
    } };
  }
  const input = h("input", { id, name, type: "text", maxlength: schema.maxLength ?? 1000, "aria-describedby": described });
  return { element: wrap(input), read: () => input.value.trim() || undefined };
}

// Controls for every property of `properties`, in the schema's order.
export function fields(prefix, properties, custom) {
  const made = Object.entries(properties).map(([name, schema]) => [name, control(prefix, name, schema, custom[name])]);
  return {
    elements: made.map(([, c]) => c.element),
    byName: Object.fromEntries(made.map(([name, c]) => [name, c.element])),
    read() {
      const body = {};
      for (const [name, c] of made) {
        const v = c.read();
        if (v !== undefined) body[name] = v;
      }
      return body;
    },
  };
}
