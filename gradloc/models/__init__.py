"""The classifier: the shipped WRN, the description any classifier needs (:class:`ClassifierSpec`),
the class requests it answers, the runtime it runs under and its batched passes. Knows nothing of boxes."""
