"""Inspect: one text through one checkpoint; every plot comes from one forward pass.

The page only gathers input and places figures: the trace comes from
`app.state.Selected.inspect` (cached per text and thresholds), the figures from
`app.figures`, the tables from `app.traces`.
"""

from __future__ import annotations

import functools

import streamlit as st

from analysis.sweep import thresholds_apply
from app import figures, inputs, state, traces
from dasg_moe.data import get_task

PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "dasg-moe"}}
ss = st.session_state


def pick_token_from_plot(chart: str) -> None:
    """on_select callback of the token plots: the clicked square becomes the picked token."""
    points = ss[chart]["selection"]["points"]
    if points:
        ss.token = int(points[0]["x"])
        ss.attn_group = None  # follow the token to its group


def pick_token_from_list() -> None:
    choice = ss.w_token_choice
    ss.token = None if choice == "none" else int(choice.split(":", 1)[0])
    ss.attn_group = None


def reset_thresholds(theta_s: float, theta_d: float) -> None:
    state.put("theta_s", theta_s)
    state.put("theta_d", theta_d)


st.title("Inspect routing")
state.show_url_errors()
choice, ckpt = state.require_checkpoint()
cfg = ckpt.config
st.caption(traces.checkpoint_caption(choice.name, cfg, ckpt.metrics))

try:
    pair_task = get_task(cfg.task).is_pair
except ValueError:
    pair_task = True  # unknown task: offer both boxes
left, right = st.columns(2)
left.text_area("Sentence 1" if pair_task else "Text", key=state.bind("text"),
               on_change=state.sync, args=("text",), height=90, max_chars=5000,
               help="Type or paste; press Ctrl+Enter (or click outside) to run the model.")
if pair_task:
    right.text_area(f"Sentence 2 (optional; {cfg.task} is a sentence-pair task)",
                    key=state.bind("text_pair"), on_change=state.sync, args=("text_pair",),
                    height=90, max_chars=5000)
text_pair = ss.text_pair if pair_task and ss.text_pair.strip() else None

theta_s, theta_d = state.thresholds_for(ckpt)
thresholds_matter = thresholds_apply(ckpt.model)
if thresholds_matter:
    c1, c2, c3 = st.columns([4, 4, 1], vertical_alignment="bottom")
    c1.slider("θs: scores below go to the shallow tier", 0.0, 1.0, step=0.01,
              key=state.bind("theta_s"), on_change=state.sync, args=("theta_s",))
    c2.slider("θd: scores above go to the deep tier", 0.0, 1.0, step=0.01,
              key=state.bind("theta_d"), on_change=state.sync, args=("theta_d",))
    c3.button("Reset", on_click=reset_thresholds, args=(cfg.theta_s, cfg.theta_d),
              help=f"Back to the checkpoint's own thresholds ({cfg.theta_s}, {cfg.theta_d}).")
    theta_s, theta_d = ss.theta_s, ss.theta_d
else:
    st.caption(f"Router `{cfg.router}` does not route by the evaluator's score, so θs/θd do "
               f"not apply here.")

try:
    inputs.check_text(ss.text, "Sentence 1" if pair_task else "The text")
    if thresholds_matter:
        inputs.check_thresholds(theta_s, theta_d)
    result = choice.inspect(ss.text, text_pair, theta_s, theta_d)
except ValueError as err:  # InputError, and the model's own checks on text / thresholds
    st.error(str(err))
    state.write_url()
    st.stop()

frame = result.frame
trace = result.trace
n_layers = traces.n_layers(frame)
n_tokens = len(result.encoded.tokens)
tiers = traces.has_tiers(trace)
if result.encoded.truncated:
    st.warning(f"The input has {result.encoded.n_tokens_before_truncation} tokens; the model "
               f"reads at most {cfg.max_len}, so it was truncated to {n_tokens}.")

# Prediction and totals --------------------------------------------------------------------
totals = traces.flops_summary(frame, trace.flops_reference, tiers)
c1, c2 = st.columns([1, 2])
with c1:
    st.metric("Prediction", result.prediction,
              help="The label with the highest probability, from the same forward pass as "
                   "every plot below.")
    m1, m2 = st.columns(2)
    if tiers:
        moe = frame[frame["moe"]]
        m1.metric("Deep-tier rate", f"{(moe['tier'] == 'deep').mean():.0%}",
                  help="Share of (token, MoE layer) decisions sent to the deep tier.")
    m2.metric("FFN FLOPs / token", traces.si(totals["actual"]),
              delta=f"{totals['actual'] / totals['dense'] - 1:+.0%} vs dense", delta_color="off",
              help="FLOPs the dispatcher executed, summed over layers, per token.")
with c2:  # native bars: one Plotly figure fewer for the browser to draw per sentence
    st.markdown("**Label probabilities**")
    best = max(range(len(result.probabilities)), key=result.probabilities.__getitem__)
    for i, (name, p) in enumerate(zip(result.label_names, result.probabilities, strict=True)):
        st.progress(p, text=f"{'**' if i == best else ''}{name}: {p:.3f}"
                            f"{'**' if i == best else ''}")

# Layer / token / near-tie controls ---------------------------------------------------------
routed = traces.moe_layers(frame)
if ss.layer is None or ss.layer >= n_layers:
    ss.layer = routed[0] if routed else 0
if ss.token is not None and ss.token >= n_tokens:
    ss.token = None
token_choices = ["none", *traces.token_choices(frame)]
ss.w_token_choice = token_choices[ss.token + 1] if ss.token is not None else "none"
c1, c2, c3 = st.columns([3, 3, 2])
c1.radio("Layer", list(range(n_layers)), key=state.bind("layer"), on_change=state.sync,
         args=("layer",), horizontal=True,
         format_func=lambda i: f"layer {i}" + ("" if i in routed else " (dense)"))
c2.selectbox("Picked token (or click one in a plot)", token_choices, key="w_token_choice",
             on_change=pick_token_from_list,
             help="The picked token is highlighted in every plot.")
eps = c3.number_input("Near-tie margin ε", 0.0, 0.5, value=traces.NEAR_TIE_EPS, step=0.01,
                      key="eps", help="Decisions whose margin is below ε are marked as near "
                                      "ties (red outline): a small change would flip them.")
layer, token = ss.layer, ss.token
rows = traces.layer_rows(frame, layer)

overview_metrics = ["score", "importance", "complexity", "p_deep"] \
    if frame["score"].notna().any() else ["importance"]
maps = trace.attention[layer]
group_names = traces.group_labels(result.encoded.tokens, maps.group_len, maps.n_groups)
heads = ["mean over heads", *[f"head {h}" for h in range(maps.local.shape[2])]]


# Figure builders (the page and the HTML export share them) ---------------------------------
def fig_routing():
    return figures.routing_figure(frame, layer, trace.router, highlight=token, eps=eps)


def fig_overview(metric: str):
    return figures.overview_figure(frame, metric, highlight=token)


def fig_experts():
    return figures.expert_figure(traces.expert_grid(trace, layer), result.encoded.tokens,
                                 trace.expert_labels, layer, highlight=token)


def fig_attention(group: int, head: int | None):
    start = group * maps.group_len
    return figures.attention_figure(trace.attention_map(layer, 0, group, head),
                                    result.encoded.tokens[start:], start, layer=layer,
                                    group=group, head=head, window=maps.window,
                                    highlight=token)


def fig_summary(head: int | None):
    summary = trace.summary_attention(layer, 0, head)
    if summary is None or summary.shape[0] < 2:
        return None
    return figures.summary_attention_figure(summary, group_names, layer=layer, head=head)


def fig_flops():
    return figures.flops_figure(frame, trace.flops_reference, tiers=tiers, highlight=token)


def fig_fragility():
    return figures.fragility_figure(rows, layer, eps=eps, highlight=token)


def export_figures() -> dict:
    """Every figure of the page for the current layer and token (built on download)."""
    out = {"Label probabilities": figures.probability_figure(result.label_names,
                                                             result.probabilities),
           "Routing": fig_routing(), "All layers": fig_overview(overview_metrics[0]),
           "Attention": fig_attention(0, None), "Compute": fig_flops()}
    if layer in routed:
        out.update({"Experts": fig_experts(), "Fragility": fig_fragility()})
    summary = fig_summary(None)
    if summary is not None:
        out["Group summary attention"] = summary
    return out


def show(fig, key: str, select: bool = False) -> None:
    if select:
        st.plotly_chart(fig, key=key, config=PLOT_CONFIG, selection_mode="points",
                        on_select=functools.partial(pick_token_from_plot, key))
    else:
        st.plotly_chart(fig, key=key, config=PLOT_CONFIG)


# Detail views (only the chosen one runs) ---------------------------------------------------
def overview_view() -> None:
    metric = st.radio("Show", overview_metrics, horizontal=True, key="overview_metric")
    show(fig_overview(metric), "overview")


def experts_view() -> None:
    if layer not in routed:
        st.info(f"Layer {layer} has a dense FFN (no routing); pick another layer.")
    else:
        show(fig_experts(), "experts")


def attention_view() -> None:
    if ss.get("attn_group") not in group_names:
        ss.attn_group = group_names[min((token or 0) // maps.group_len, len(group_names) - 1)]
    a1, a2 = st.columns(2)
    group_name = a1.selectbox("Group", group_names, key="attn_group",
                              help=f"{len(group_names)} groups of {maps.group_len} tokens "
                                   f"for this input (fewer groups for short inputs).")
    head_name = a2.selectbox("Head", heads, key="attn_head")
    head = None if head_name == heads[0] else heads.index(head_name) - 1
    show(fig_attention(group_names.index(group_name), head), "attention")
    summary = fig_summary(head)
    if summary is not None:
        show(summary, "summary_attention")
    else:
        st.caption("No cross-group attention: one group only, or aggregation is off.")


def compute_view() -> None:
    show(fig_flops(), "flops")


def fragility_view() -> None:
    if layer in routed:
        show(fig_fragility(), "fragility")
    else:
        st.info(f"Layer {layer} has a dense FFN: no routing decisions, so no margins.")
    ties = traces.near_ties(frame, eps)
    st.markdown(f"**{len(ties)} near ties** (margin < {eps}) over all layers")
    st.dataframe(ties, hide_index=True, width="stretch")


def table_view() -> None:
    st.dataframe(frame, hide_index=True, width="stretch", height=360)


VIEWS = {"All layers": overview_view, "Experts": experts_view, "Attention": attention_view,
         "Compute": compute_view, "Fragility": fragility_view, "Trace table": table_view}

show(fig_routing(), "routing", select=True)
# One detail view at a time, none until asked for: a new sentence then redraws one figure
# only, which keeps the page within its latency budget (each Plotly figure with a token
# axis costs the browser about 0.3 s on two CPU cores).
if ss.view not in VIEWS:
    ss.view = None
st.segmented_control("More about this text", list(VIEWS), key=state.bind("view"),
                     on_change=state.sync, args=("view",))
ss.view = ss.w_view
if ss.view is not None:
    VIEWS[ss.view]()

# Downloads --------------------------------------------------------------------------------
d1, d2, d3 = st.columns(3)
d1.download_button("Trace (CSV)", lambda: traces.trace_csv(frame), "dasg_trace.csv",
                   "text/csv", on_click="ignore", key="dl_csv")
d2.download_button("Trace (JSON)", lambda: traces.trace_json(result), "dasg_trace.json",
                   "application/json", on_click="ignore", key="dl_json")
d3.download_button("Figures (HTML)",
                   lambda: figures.figures_html(export_figures(),
                                                f"{choice.name}: {ss.text[:60]}"),
                   "dasg_figures.html", "text/html", on_click="ignore", key="dl_html",
                   help="Every figure of this page, interactive, in one offline HTML file. "
                        "For PNG, use the camera button on a plot.")
state.write_url(layer=layer, view=ss.view)
