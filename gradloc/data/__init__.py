"""What comes in and goes out as files: decoding, folders, batches, annotations (COCO, VOC), labels,
synthetic sets, atomic writers."""
