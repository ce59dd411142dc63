#!/usr/bin/env python
"""Build the small images in ``samples/`` that the README's main command runs on.

- ``samples/cifar10/<class>.png``: the first CIFAR-10 *test* image of each class;
- ``samples/composite_cat_dog.png``: a cat and a dog test image pasted on a plain
  128x96 background (two classes in one picture, for the class mask);
- ``samples/chelsea_cat.png``: scikit-image's bundled photograph of a cat (CC0), shrunk.

    python scripts/make_samples.py --cifar ../shared/data/cifar10-jpeg.tar.gz
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.data.cifar import load_cifar10  # noqa: E402
from gradloc.models.wrn import CIFAR10_CLASSES  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("-o", "--output", default="samples")
    args = p.parse_args()
    out = Path(args.output)
    (out / "cifar10").mkdir(parents=True, exist_ok=True)
    x, y, _ = load_cifar10(args.cifar, "test", limit_per_class=1)
    for img, label in zip(x, y):
        Image.fromarray(img).save(out / "cifar10" / f"{CIFAR10_CLASSES[label]}.png")
    cat, dog = x[list(y).index(3)], x[list(y).index(5)]
    canvas = np.full((96, 128, 3), (182, 196, 170), np.uint8)
    canvas[8:72, 4:68] = np.asarray(Image.fromarray(cat).resize((64, 64), Image.BICUBIC))
    canvas[36:84, 76:124] = np.asarray(Image.fromarray(dog).resize((48, 48), Image.BICUBIC))
    Image.fromarray(canvas).save(out / "composite_cat_dog.png")
    from skimage import data
    photo = Image.fromarray(data.chelsea())
    photo.thumbnail((200, 200))
    photo.save(out / "chelsea_cat.png")
    print(f"wrote samples to {out}")


if __name__ == "__main__":
    main()
