"""Box geometry in one place: pad, scale, clip, crop, blank, place (float xyxy)."""
