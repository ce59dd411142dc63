#!/usr/bin/env python
"""Throughput side by side, in one run, on the same images: gradloc against the network's limit
and against what a user would write with Captum or pytorch-grad-cam.

Measured (images per second, peak resident memory), each in a fresh subprocess, repeated
``--repeats`` times, median reported:

1. limit: the network's forward plus input-gradient backward alone, on ready-made normalised
   tensors at the same batch size (no decoding, no post-processing), in fp32 and in bf16
   autocast; the machine's limit is the faster of the two;
2. gradloc: ``localize`` end to end (decode, resize, gradients, threshold, morphology,
   components, boxes, JSON lines and predictions.json written);
   "gradloc --rescore off --no-flip" the same with one threshold, no rescoring and no mirror
   (the work the Captum pipeline below does; the default rescores each distinct candidate box
   with two forward passes and adds the mirror image's map);
3. captum: a Captum pipeline as a user writes it (PIL + torchvision transforms in a DataLoader,
   a forward for the predicted class, ``captum.attr.Saliency`` on the softmax output, max |g|
   over channels), then gradloc's same threshold and proposal functions and JSON output;
4. grad-cam: pytorch-grad-cam's ``GradCAM`` on the last block plus the CAM-paper box
   (threshold at 20% of the maximum, largest connected component), JSON output.

Images: the dev benchmark's photographs when ../shared is there, generated JPEGs otherwise.
Weights don't change the cost; the shipped ones are used when present.

    pip install -e ".[bench]"
    python scripts/bench_throughput.py --n 1000 --write BENCHMARKS.md
    python scripts/bench_throughput.py --scaling 1000,10000 --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a "baseline" worker imports gradloc from another checkout (--baseline); every other process from this one
sys.path.insert(0, os.environ.get("GRADLOC_BENCH_BASELINE") or str(ROOT))
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024  # ru_maxrss is in KiB on Linux


def load_model(weights: str):
    from gradloc.models.wrn import default_weights_path, wide_resnet
    if weights == "default" and not default_weights_path().is_file():
        weights = None  # cost does not depend on the values
    return wide_resnet(weights=weights)


def image_list(folder: Path, n: int) -> list[Path]:
    """The first ``n`` images of ``folder``, sorted; a folder with fewer is cycled through (each
    image then appears under several names), which costs the same per image."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [files[i % len(files)] for i in range(n)]


# -- the four workloads, each run in its own process -----------------------------------------

def run_limit(args, bf16: bool = False) -> int:
    import torch
    model = load_model(args.weights).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    done = 0
    while done < args.n:
        b = min(args.batch_size, args.n - done)
        xb = x[:b].detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(xb)
        p = out.float().softmax(1)
        torch.autograd.grad(p.gather(1, p.argmax(1, keepdim=True)).sum(), xb)
        done += b
    return done


STAGE_SECONDS: dict[str, float] = {}  # the worker's split of a gradloc run (photographs: the pyramid, rescoring)


def timed(name: str, fn):
    """``fn`` with its seconds added to :data:`STAGE_SECONDS` under ``name``."""
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            STAGE_SECONDS[name] = STAGE_SECONDS.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def run_gradloc(args, files, classes=None, gen=None, **options) -> int:
    """``localize`` end to end on ``files``, by a generator of ``options`` (or ``gen()``)."""
    from gradloc import ProposalGenerator
    from gradloc.localize import localize
    t0 = time.perf_counter()
    gen = gen() if gen else ProposalGenerator(load_model(args.weights), device="cpu", batch_size=args.batch_size,
                                              **options)
    STAGE_SECONDS["setup"] = time.perf_counter() - t0  # once per run: weights read, int8 copies made
    # the stages a photograph's time goes to, timed where the pipeline calls them
    gen.pyramid.windows = timed("pyramid", gen.pyramid.windows)
    gen.rescore = timed("rescoring", gen.rescore)
    with tempfile.TemporaryDirectory() as out:
        listing = Path(out) / "in"
        listing.mkdir()
        for i, f in enumerate(files):  # a folder holding exactly these images
            os.symlink(f.resolve(), listing / f"{i:06d}{f.suffix}")
        summary = localize(gen, [str(listing)], Path(out) / "run", classes=classes, workers=args.workers, vis_limit=0)
    return summary["images"]


class _PilFolder:
    """What a Captum user writes: PIL decode + torchvision transforms per image."""

    def __init__(self, files):
        from torchvision import transforms as T
        from gradloc.models.wrn import CIFAR10_MEAN, CIFAR10_STD
        self.files = files
        self.tf = T.Compose([T.Resize((32, 32), antialias=True), T.ToTensor(),
                             T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            w, h = im.size
            return self.tf(im.convert("RGB")), h, w, i


def run_limit_pyramid(args, files) -> int:
    """The network's bare forward+backward (input gradient, batch 1, ``--precision auto``) at the
    sizes the pyramid gives each photograph: its 32x32 view and its longer side at each input
    size up to its own, aspect kept (decoding and resizing not timed)."""
    import torch
    from gradloc.data.preprocess import prepare
    from gradloc.discovery.config import PlanConfig
    from gradloc.discovery.windows import resize_longer_side
    from gradloc.models.classifier import CIFAR10
    from gradloc.models.wrn import resolve_precision
    model = load_model(args.weights).to(memory_format=torch.channels_last)
    bf16 = resolve_precision("auto", "cpu") == "bf16"
    seconds = 0.0
    for f in files:
        view, _, work = prepare(f, keep_work=True)
        inputs = [view] + [resize_longer_side(work, s) for s in PlanConfig().pyramid_sizes() if s <= max(work.shape[-2:])]
        for x in inputs:
            xb = CIFAR10.normalize(x[None]).contiguous(memory_format=torch.channels_last).requires_grad_(True)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(xb)
            p = out.float().softmax(1)
            torch.autograd.grad(p.max(1).values.sum(), xb)
            seconds += time.perf_counter() - t0
    STAGE_SECONDS["network"] = seconds
    return len(files)


def _write_records(f, files, idx, boxes_scores, hs, ws, labels):
    from gradloc.models.wrn import CIFAR10_CLASSES
    for (boxes, scores), i, h, w, c in zip(boxes_scores, idx, hs, ws, labels):
        f.write(json.dumps({"file": str(files[i]), "width": w, "height": h, "proposals": [
            {"box": [round(v, 2) for v in b], "score": round(s, 5), "label": CIFAR10_CLASSES[c]}
            for b, s in zip(boxes.tolist(), scores.tolist())]}) + "\n")


def run_captum(args, files) -> int:
    import torch
    from captum.attr import Saliency
    from torch.utils.data import DataLoader

    from gradloc.ops.boxes import scale_boxes
    from gradloc.discovery.proposals import propose
    from gradloc.discovery.threshold import top_n
    model = load_model(args.weights).requires_grad_(True)  # as a user's model comes
    sal = Saliency(lambda x: model(x).softmax(1))
    loader = DataLoader(_PilFolder(files), batch_size=args.batch_size, num_workers=args.workers)
    n = 0
    with tempfile.TemporaryDirectory() as out, open(Path(out) / "captum.jsonl", "w") as f:
        for x, hs, ws, idx in loader:
            with torch.no_grad():
                pred = model(x).argmax(1)
            grads = sal.attribute(x, target=pred, abs=True)
            maps = grads.amax(1)
            masks = top_n(maps, 100)
            results = []
            for m, k, h, w in zip(maps, masks, hs.tolist(), ws.tolist()):
                boxes, scores = propose(m.numpy(), k.numpy())
                results.append((scale_boxes(boxes, (32, 32), (h, w)), scores))
            _write_records(f, files, idx.tolist(), results, hs.tolist(), ws.tolist(), pred.tolist())
            n += len(x)
    return n


def run_gradcam(args, files) -> int:
    import cv2
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM
    from torch.utils.data import DataLoader
    model = load_model(args.weights).requires_grad_(True)  # as a user's model comes
    cam = GradCAM(model=model, target_layers=[model.block3])
    loader = DataLoader(_PilFolder(files), batch_size=args.batch_size, num_workers=args.workers)
    n = 0
    with tempfile.TemporaryDirectory() as out, open(Path(out) / "gradcam.jsonl", "w") as f:
        for x, hs, ws, idx in loader:
            with torch.no_grad():
                pred = model(x).argmax(1)
            maps = cam(input_tensor=x, targets=None)  # [B, 32, 32]; None: the predicted class
            results = []
            for m, h, w in zip(maps, hs.tolist(), ws.tolist()):
                mask = (m >= 0.2 * m.max()).astype(np.uint8)
                k, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                if k > 1:
                    j = 1 + int(np.argmax(stats[1:, 4]))  # the largest component
                    x0, y0, bw, bh = stats[j, :4]
                    box = torch.tensor([[x0 * w / 32, y0 * h / 32, (x0 + bw) * w / 32, (y0 + bh) * h / 32]])
                    results.append((box, torch.ones(1)))
                else:
                    results.append((torch.zeros(0, 4), torch.zeros(0)))
            _write_records(f, files, idx.tolist(), results, hs.tolist(), ws.tolist(), pred.tolist())
            n += len(x)
    return n


def amp_agreement(args, n: int) -> dict:
    """Share of fp32's top-N pixels that bf16 autocast also keeps, and both speeds."""
    import torch
    from gradloc import ProposalGenerator
    from gradloc.data.preprocess import prepare
    files = image_list(Path(args.images), n)
    x = torch.stack([prepare(f)[0] for f in files])  # 64x64 dev photos: single window
    out = {}
    for amp in (False, True):
        gen = ProposalGenerator(load_model(args.weights), device="cpu", batch_size=args.batch_size,
                                precision="bf16" if amp else "fp32",
                                threshold="top-n", rescore="off")  # the maps' top 100 pixels, compared
        t0 = time.perf_counter()
        masks = []
        for xb in x.split(args.batch_size):
            masks += [res["masks"] for res in gen.run_batch(xb, [(32, 32)] * len(xb))]
        masks = torch.cat(masks)
        out["bf16" if amp else "fp32"] = (masks, n / (time.perf_counter() - t0))
    m32, mbf = out["fp32"][0], out["bf16"][0]
    agree = ((m32 & mbf).flatten(1).sum(1).float() / m32.flatten(1).sum(1).clamp(min=1)).mean().item()
    return {"agreement": agree, "fp32_img_per_s": out["fp32"][1], "bf16_img_per_s": out["bf16"][1]}


WORKLOADS = {"limit fp32": run_limit, "limit bf16": lambda args: run_limit(args, bf16=True),
             # the defaults: --precision auto (bf16 where the CPU has it natively)
             "gradloc": run_gradloc,
             "gradloc --precision fp32": lambda args, files: run_gradloc(args, files, precision="fp32"),
             # boxes judged by the classifier itself (the defaults before the extent judge)
             "gradloc --judge classifier": lambda args, files: run_gradloc(args, files, judge="classifier"),
             # every candidate rescored, near-duplicates too (the defaults before --merge-iou 0.85)
             "gradloc --merge-iou 1.01": lambda args, files: run_gradloc(args, files, merge_iou=1.01),
             # no mirror image's map: one forward+backward per image instead of two
             "gradloc --no-flip": lambda args, files: run_gradloc(args, files, flip=False),
             # photographs: no rescoring at all, and the 32x32 view alone (no input-size pyramid)
             "gradloc --rescore off": lambda args, files: run_gradloc(args, files, rescore="off"),
             "gradloc --scales off": lambda args, files: run_gradloc(args, files, scales="off"),
             # issue #49's two savings of work off, or int8 off (what each buys, measured apart)
             "gradloc --blanked-views all --fine-inputs all": lambda args, files: run_gradloc(
                 args, files, blanked_views="all", fine_inputs="all"),
             # three classes per image: one pyramid pass per photograph and size, shared by them
             "gradloc --classes top3": lambda args, files: run_gradloc(args, files, classes="top3"),
             # the cheaper rescoring: crop probabilities only, no deletion views
             "gradloc --rescore crop": lambda args, files: run_gradloc(args, files, rescore="crop"),
             # the default post-processing but one threshold, boxes ranked by their share of the map:
             # the Captum pipeline's work (fp32, as Captum runs), so the two compare like for like
             "gradloc --rescore off --no-flip --precision fp32": lambda args, files: run_gradloc(
                 args, files, rescore="off", flip=False, precision="fp32"),
             "captum": run_captum, "grad-cam": run_gradcam,
             # photographs: the network's forward+backward alone at the pyramid's input sizes
             "limit pyramid": run_limit_pyramid,
             # the defaults of another checkout (--baseline), in the precision its auto picks on this CPU
             "baseline": lambda args, files: run_gradloc(args, files, gen=lambda: baseline_generator(args))}


def baseline_generator(args):
    """The baseline checkout's defaults through its public API (its modules may lie elsewhere)."""
    import gradloc
    return gradloc.ProposalGenerator.pretrained(device="cpu", batch_size=args.batch_size, **baseline_precision())


def baseline_precision() -> dict:
    """An older checkout's auto does not know the ISA cap of ``--isa avx2`` and would pick the
    emulated bf16; an AVX2-only CPU has no bf16 flag, where its auto runs fp32."""
    return {"precision": "fp32"} if os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else {}


def worker_main(args) -> None:
    import torch
    torch.manual_seed(0)
    files = image_list(Path(args.images), args.n) if args.workload not in ("limit fp32", "limit bf16") else None
    t0 = time.perf_counter()
    n = WORKLOADS[args.workload](args) if files is None else WORKLOADS[args.workload](args, files)
    secs = time.perf_counter() - t0
    print(json.dumps({"images": n, "seconds": secs, "peak_rss_mb": peak_rss_mb(), "stages": STAGE_SECONDS}))


# -- the driver --------------------------------------------------------------------------------

def measure(workload: str, args, n: int) -> dict:
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--worker", workload, "--images", str(args.images), "--n", str(n),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--weights", args.weights]
        env = {**os.environ, **isa_env(args.isa)}
        if workload == "baseline":
            env["GRADLOC_BENCH_BASELINE"] = str(Path(args.baseline).resolve())
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{workload} failed:\n{proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ips = [r["images"] / r["seconds"] for r in runs]
    stages = {k: statistics.median(r["stages"].get(k, 0.0) / r["images"] for r in runs) for k in runs[0]["stages"]}
    return {"img_per_s": statistics.median(ips), "runs_img_per_s": [round(v, 1) for v in ips],
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs), "images": runs[0]["images"],
            "stage_s_per_image": stages}


def isa_env(isa: str) -> dict:
    """The workers' environment for ``--isa``: ``avx2`` caps oneDNN's, ATen's, fbgemm's and MKL's
    kernels at AVX2, so this CPU runs as an AVX2-only one does (no native bf16: ``--precision
    auto`` is int8 for the shipped weights)."""
    return {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"} if isa == "avx2" else {}


def stage_table(results: dict) -> list[str]:
    """Seconds per photograph of each gradloc run, split into the pyramid, rescoring and the
    rest, beside the network's bare forward+backward at the pyramid's sizes."""
    if not any("pyramid" in r["stage_s_per_image"] for r in results.values()):
        return []
    runs = {w: r for w, r in results.items() if w.startswith("gradloc") or w == "baseline"}
    lines = ["", "Seconds per photograph as `localize` reports them (the one-off setup apart: weights read, "
             "int8 copies made, in seconds per run):", "",
             "| run | seconds per photograph | pyramid | rescoring | the rest | setup (s per run) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    own = {}
    for w, r in runs.items():
        st = r["stage_s_per_image"]
        own[w] = 1 / r["img_per_s"] - st.get("setup", 0.0)
        pyr, res = st.get("pyramid", 0.0), st.get("rescoring", 0.0)
        lines.append(f"| {w} | {own[w]:.3f} | {pyr:.3f} | {res:.3f} | {own[w] - pyr - res:.3f} | "
                     f"{st.get('setup', 0.0) * r['images']:.2f} |")
    if "baseline" in own and "gradloc" in own:
        lines += ["", f"The defaults take **{own['gradloc'] / own['baseline']:.2f}x** the baseline checkout's seconds "
                  "per photograph."]
    if "limit pyramid" in results:
        net = results["limit pyramid"]["stage_s_per_image"]["network"]
        lines += ["", f"The network's bare forward+backward at the pyramid's input sizes (the 32x32 view and each "
                  f"size up to the photograph's longer side, batch 1): **{net:.3f} s per photograph**."]
        if "gradloc" in runs:
            lines[-1] += f" The defaults' pyramid takes {runs['gradloc']['stage_s_per_image']['pyramid'] / net:.2f}x that."
    return lines


def prepare_images(args) -> Path:
    shared = ROOT.parent / "shared" / "data" / "tinyimagenet-cifar8-dev.tar.gz"
    cache = Path.home() / ".cache" / "gradloc-bench"
    dev = cache / "tinyimagenet-cifar8-dev" / "images"
    if dev.is_dir() or shared.is_file():
        if not dev.is_dir():
            cache.mkdir(parents=True, exist_ok=True)
            with tarfile.open(shared) as tar:
                tar.extractall(cache, filter="data")
        return dev
    gen_dir = cache / "generated"
    need = max([args.n] + [int(v) for v in (args.scaling or "0").split(",")])
    if len(list(gen_dir.glob("*.jpg"))) < need:
        import numpy as np
        from PIL import Image
        gen_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(need):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(gen_dir / f"{i:06d}.jpg")
    return gen_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", default=None, help="folder of images (default: dev benchmark or generated)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers for the pipelines (default: as gradloc localize picks them)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--weights", default="default")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads (default: all)")
    p.add_argument("--scaling", default=None, help="e.g. 1000,10000: gradloc time and memory at these sizes")
    p.add_argument("--amp-images", type=int, default=0,
                   help="measure bf16-autocast top-N agreement with fp32 on this many images (0: skip)")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: the workers run with oneDNN and ATen capped at AVX2, as on an AVX2-only CPU "
                   "(no native bf16, so --precision auto is int8 for the shipped weights); default: this CPU as it is")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="another commit's checkout (git worktree add DIR COMMIT): its defaults run as the workload "
                        "'baseline', beside this checkout's in the same run")
    p.add_argument("--write", type=Path, default=None, help="BENCHMARKS.md to update")
    args = p.parse_args()
    if args.only and "baseline" in args.only.split(",") and not args.baseline:
        p.error("the workload 'baseline' needs --baseline CHECKOUT")
    if args.worker:
        args.workload = args.worker
        worker_main(args)
        return 0
    from gradloc.data.io import decoding_workers
    args.workers = decoding_workers(args.workers)
    args.images = Path(args.images) if args.images else prepare_images(args)
    import torch
    from gradloc.models.wrn import cpu_flags, cpu_has_native_bf16, resolve_precision
    os.environ.update(isa_env(args.isa))  # what the workers run under, so that auto resolves here as there
    native_bf16 = cpu_has_native_bf16()
    if args.only is None:
        args.only = ",".join(WORKLOADS)
    flags = cpu_flags()
    lines = [BEGIN, "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
             f"(CPU flags: {', '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}), "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU only. The defaults' "
             f"`--precision auto` resolves to **{resolve_precision('auto', 'cpu')}** here (native bf16: "
             f"{'yes' if native_bf16 else 'no'})"
             + (", **emulating an AVX2-only CPU**: oneDNN and ATen capped at AVX2 (`--isa avx2`)" if args.isa == "avx2"
                else "") + ". Images: "
             f"`{args.images}` ({args.n} per run), batch size {args.batch_size}, {args.workers} decoding "
             f"worker(s); median of {args.repeats} runs, each in a fresh process. Regenerate: "
             f"`python scripts/bench_throughput.py --n {args.n}"
             + (f" --scaling {args.scaling}" if args.scaling else "")
             + (f" --amp-images {args.amp_images}" if args.amp_images else "")
             + (f" --isa {args.isa}" if args.isa != "native" else "") + " --write BENCHMARKS.md`.", ""]
    results = {}
    for w in args.only.split(","):
        results[w] = measure(w, args, args.n)
        print(w, results[w], file=sys.stderr)
    limits = [results[k]["img_per_s"] for k in ("limit fp32", "limit bf16") if k in results]
    if limits:
        lim = max(limits)
        lines += ["| pipeline | images/s | × limit | runs (images/s) | peak memory (MB) |",
                  "| --- | ---: | ---: | --- | ---: |"]
        for w, r in results.items():
            lines.append(f"| {w} | {r['img_per_s']:.1f} | {r['img_per_s'] / lim:.2f} | "
                         f"{', '.join(map(str, r['runs_img_per_s']))} | {r['peak_rss_mb']:.0f} |")
        if "gradloc" in results:
            lines += ["", f"gradloc defaults / the machine's limit (the faster of fp32 and bf16 forward+backward): "
                      f"**{results['gradloc']['img_per_s'] / lim:.2f}x**."]
        off = "gradloc --rescore off --no-flip --precision fp32"
        if off in results and "captum" in results:
            ratio = results[off]["img_per_s"] / results["captum"]["img_per_s"]
            lines += ["", f"gradloc `--rescore off` / Captum pipeline (the same work, both fp32): **{ratio:.2f}x**. "
                      "The defaults add rescoring (two forward passes of 32x32 views per distinct candidate "
                      "box) and the mirror image's map (one more forward+backward)."]
    lines += stage_table(results)
    if args.scaling:
        lines += ["", "Scaling of `gradloc localize` (one run each; a folder with fewer images than a run needs "
                  "is cycled through):", "",
                  "| images | seconds | ms / image | peak memory (MB) | × the first row's memory |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        saved = args.repeats
        args.repeats = 1
        first = None
        for n in [int(v) for v in args.scaling.split(",")]:
            r = measure("gradloc", args, n)
            first = first or r["peak_rss_mb"]
            lines.append(f"| {n} | {n / r['img_per_s']:.1f} | {1000 / r['img_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['peak_rss_mb'] / first:.2f} |")
            print("scaling", n, r, file=sys.stderr)
        args.repeats = saved
    if args.amp_images:
        a = amp_agreement(args, args.amp_images)
        lines += ["", f"bf16 autocast on this CPU ({args.amp_images} images): {100 * a['agreement']:.1f}% of fp32's "
                  f"top-100 pixels kept; {a['bf16_img_per_s']:.1f} vs {a['fp32_img_per_s']:.1f} images/s for fp32 "
                  f"(saliency and threshold only; bf16 / fp32 = {a['bf16_img_per_s'] / a['fp32_img_per_s']:.2f}x). "
                  "`--precision auto` uses it where the CPU has native bf16."]
        print("amp", a, file=sys.stderr)
    lines += ["", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from gradloc.evaluation.report import replace_marked_block
        replace_marked_block(args.write, BEGIN, END, text, "## Throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
