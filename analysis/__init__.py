"""Dataset-level diagnostics over DASG-MoE routing traces (DESIGN.md §1, §3; issue 5).

Pure Python: trace DataFrames in, DataFrames and Plotly figures out, no Streamlit. Every
command also runs as `python -m analysis <command> ... --out DIR`, writing `report.md`, CSV
tables and HTML figures to DIR.

API (what the app's Thresholds and Diagnostics pages call):

traces.py      trace_dataset(model, tokenizer, task, dataset, *, batch_size, overrides,
                             progress, cache_dir) -> (tokens, examples)
               predict_routing(...) -> per-example frame (predict() columns + over-routing)
               routing_frame_from_trace(tokens, examples, simple_below) -> the same, no pass
               tier_rows(frame), simple_mask(frame, simple_below), expert_set_key(experts)
cache.py       checkpoint_cache_dir(checkpoint, root) -> Path    (pass as cache_dir=)
tokens.py      annotate_tokens(frame) -> + word, piece, word_text, kind
               training_token_counts(tokenizer, task, data_dir) -> Series; add_frequency()
overrouting.py deep_rate_by(frame, by), overrouting_summary(frame), example_overrouting(),
               correctness_table(), bootstrap_difference(), worst_examples(),
               pair_consistency(frame, by), recommend_thresholds(sweep, task)
               figures: rate_figure, complexity_figure, consistency_figure
sweep.py       parse_grid("0.1,0.3:0.7,0.9"), sweep_thresholds(model, tokenizer, task,
               dataset, pairs, *, cache_dir, precomputed) -> table (one row per pair),
               pareto_front(table, maximise), primary_metric(task)
               figures: sweep_figure(table, metric), sweep_heatmap(table, value)
compare.py     align(a, b) -> aligned; tier_agreement(aligned),
               expert_matching(aligned, labels_a, labels_b), disagreements(aligned, by),
               metric_differences({name: examples}, task)
               figures: agreement_figure, matching_figure
load.py        expert_load(frame), load_summary(load), router_confidence(frame, epsilon),
               coactivation(frame, layer), token_specialisation(frame)
               figures: load_figure, coactivation_figure
ablations.py   discover_checkpoints(root, task), choose_reference(found),
               claims_table(results, task, reference)
fragility.py   margins(frame), near_tie_table(frame, epsilon), fragile_tokens(frame, kind),
               margin_figure(frame, kind, epsilon)
report.py      Report(out_dir, title): section/text/table/figure/write

Typical use:

    from dasg_moe import load_checkpoint
    from dasg_moe.data import load_glue
    from analysis.cache import checkpoint_cache_dir
    from analysis.traces import trace_dataset
    from analysis.overrouting import deep_rate_by, overrouting_summary
    ckpt = load_checkpoint("sample_checkpoints/mrpc-dasg-minilm")
    dataset = load_glue("mrpc", "validation", "../shared/data/glue")
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, "mrpc", dataset,
                                     cache_dir=checkpoint_cache_dir(ckpt.path))
    overrouting_summary(tokens)["overrouting_index"]   # share of deep decisions on C < 0.3
    deep_rate_by(tokens, "layer")                       # DataFrame, one row per layer
"""

from __future__ import annotations

from . import ablations, compare, fragility, load, overrouting, sweep

# Command name -> module with HELP, add_arguments(parser) and run(args) -> report path.
COMMANDS = {"overrouting": overrouting, "sweep": sweep, "compare": compare, "load": load,
            "ablations": ablations, "fragility": fragility}
