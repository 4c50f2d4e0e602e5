// 1. Shows what a RAR node reports after a run (the loop's round summary, the LQA's answer) in a
//    read-only text box on the node itself. The nodes send it as their "text" UI output, which the
//    frontend displays only for nodes that ask for it (as core Preview Any does).
// 2. Lists this pack's templates in the order of their numbers: the server returns a pack's
//    templates in directory order and the frontend (1.27) shows them unsorted.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const SUMMARY = "rar_summary";
const SHOWS_SUMMARY = new Set(["RARLoop", "RARIterate", "RARRestoreImage", "RARAssess"]);

function summaryWidget(node) {
  let widget = node.widgets?.find((w) => w.name === SUMMARY);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, SUMMARY, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.placeholder = "round summary (after a run)";
    widget.serialize = false; // not a node input: keeps widgets_values as the server expects
  }
  return widget;
}

app.registerExtension({
  name: "RAR.RoundSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SHOWS_SUMMARY.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      summaryWidget(this);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) summaryWidget(this).value = [].concat(message.text).join("\n");
    };
  },
});

const FIRST_TEMPLATE = "RAR 1 - ";
const getWorkflowTemplates = api.getWorkflowTemplates.bind(api);
api.getWorkflowTemplates = async function () {
  const templates = await getWorkflowTemplates();
  for (const [pack, names] of Object.entries(templates ?? {})) {
    // only this pack's list (its folder name depends on how it was installed)
    if (Array.isArray(names) && names.some((n) => n.startsWith(FIRST_TEMPLATE))) {
      templates[pack] = [...names].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    }
  }
  return templates;
};
