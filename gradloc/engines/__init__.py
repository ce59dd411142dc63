"""The one batch loop over image files: local (:mod:`.local`) and on Ray actors (:mod:`.ray_actors`),
the same batches and the same records."""
