"""From saliency maps to boxes: config (one declaration per option), window plans, candidates,
threshold, proposals, rescoring, results, and the pipeline that composes them."""
