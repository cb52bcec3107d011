// Small DOM builders the console's modules share: elements made with textContent and attributes,
// never markup parsing, so no text from HQ or another agent is ever read as HTML.

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

export function field(id, label, control, hint) {
  control.id = id;
  const wrapper = element("div", { className: "field" }, element("label", { for: id, text: label }), control);
  if (hint) {
    control.setAttribute("aria-describedby", `${id}-hint`);
    wrapper.append(element("p", { className: "hint", id: `${id}-hint`, text: hint }));
  }
  return wrapper;
}
