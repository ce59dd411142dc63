"""Saliency methods: one base class, one batched backward per call, a registry (:func:`make_method`)."""
