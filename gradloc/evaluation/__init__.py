"""Scoring against annotated images: metrics, COCO via pycocotools, baselines as published, reports."""
