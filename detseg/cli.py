"""The `detseg` command line: parse, load the config, call one library function, nothing else.

Exit codes: 0 success; 2 bad input or usage (one line `detseg: error: ...`, no traceback);
1 an internal error (with its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from detseg.allocator import restart_with_tuned_allocator
from detseg.errors import DetsegError
from detseg.quiet import start_backend_quietly

log = logging.getLogger("detseg")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error format and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"detseg: error: {message}\n")


# === Helpers shared by subcommands ===


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    """`--set a.b=1 --set c=x` -> {"a.b": 1, "c": "x"} (values parsed as YAML)."""
    from detseg.config import parse_override

    return dict(parse_override(p) for p in pairs or [])


def _load(args: argparse.Namespace, tensorflow: bool = False):
    """The config of `args` (cheap: no Keras), then the backend: a bad config fails at once."""
    from detseg.config import load_config

    cfg = load_config(args.config, _overrides(args.set))
    _start_backend(args, tensorflow)
    return cfg


def _start_backend(args: argparse.Namespace, tensorflow: bool = False) -> None:
    """Start Keras's backend with TensorFlow's native start-up chatter hidden (shown with -v).

    Subcommands call it once their cheap checks passed; conversion and results-file scoring
    never do, so they run without Keras. `tensorflow`: the job also uses TensorFlow under
    another backend (training, export), which is started quietly too.
    """
    if not args.verbose:
        start_backend_quietly(tensorflow)


def _add_unsafe(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="load a .keras model even if it holds Python code (Lambda layers): only for files you trust",
    )


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3 (repeatable)"
    )


# === Subcommands ===


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args, tensorflow=True)
    from detseg.engine.train import train

    run_dir = train(cfg, unsafe=args.unsafe)
    print(f"run folder: {run_dir}")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from detseg.engine import evaluate

    if args.gt or args.dt:
        if not (args.gt and args.dt):
            raise DetsegError("--gt and --dt go together (ground truth and detections files)")
        if args.model:
            raise DetsegError("give either a model/run folder or --gt/--dt files, not both")
        evaluate.evaluate_results_file(
            args.gt,
            args.dt,
            iou_type=args.iou_type or "bbox",
            protocol=args.protocol or "coco",
            iou_thr=0.5 if args.iou_thr is None else args.iou_thr,
            json_out=args.json,
        )
        return EXIT_OK
    if not args.model:
        raise DetsegError("evaluate needs a model (.keras) or run folder, or --gt and --dt files")
    scoring = [flag for flag, value in (("--iou-type", args.iou_type), ("--protocol", args.protocol), ("--iou-thr", args.iou_thr)) if value is not None]
    if scoring:
        raise DetsegError(
            f"{', '.join(scoring)} score a results file (--gt/--dt); a model's evaluation reports its task's own tables"
        )
    _start_backend(args)
    metrics = evaluate.evaluate_model(args.model, config=args.config, overrides=_overrides(args.set), split=args.split, unsafe=args.unsafe)
    if args.json:
        from detseg.data.files import write_json

        write_json(metrics, args.json, indent=2)
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    _start_backend(args)
    from detseg.engine.predict import predict

    predict(
        args.model,
        source=args.source,
        save=args.save,
        show=args.show,
        jsonl=args.jsonl,
        batch=args.batch,
        max_frames=args.max_frames,
        score_thr=args.conf,
        iou_thr=args.iou,
        config=args.config,
        overrides=_overrides(args.set),
        unsafe=args.unsafe,
    )
    return EXIT_OK


def _cmd_anchors(args: argparse.Namespace) -> int:
    from detseg.config import set_config_value
    from detseg.tasks.detect import anchor_list, describe_anchors, fit_config_anchors

    anchors = fit_config_anchors(_load(args), k=args.k)
    print(describe_anchors(anchors))
    if args.write:
        set_config_value(args.config, "model.yolo.anchors", anchor_list(anchors))
        print(f"written to {args.config} (model.yolo.anchors)")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from detseg.data import convert

    names = args.names.split(",") if args.names else None
    report = convert(
        args.src_format, args.dst_format, args.src, args.dst, images=args.images, names=names, strict=not args.lenient
    )
    print(report)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    _start_backend(args, tensorflow=True)
    from detseg.engine.export import export

    out = export(args.model, fmt=args.format, out=args.out, config=args.config, unsafe=args.unsafe, int8=args.int8)
    print(f"exported: {out}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    _start_backend(args, tensorflow=True)
    from detseg.engine.demo import run_demo

    run_demo(args.config, _overrides(args.set))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from detseg.engine.info import data_info, environment_info

    if args.config:
        print(data_info(_load(args), split=args.split, gallery=args.gallery))
    else:
        _start_backend(args)
        print(environment_info())
    return EXIT_OK


# === Parser ===


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = _Parser(prog="detseg", description="Object detection and segmentation on Keras 3.")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging and TensorFlow messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("train", _cmd_train, "train a model from a YAML config")
    p.add_argument("config", help="YAML config file")
    _add_set(p)
    _add_unsafe(p)

    p = add("evaluate", _cmd_evaluate, "evaluate a model on a split, or score a COCO results file")
    p.add_argument("model", nargs="?", help="run folder or .keras model")
    p.add_argument("--config", help="config (default: the run folder's config.yaml)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument("--gt", help="COCO ground-truth JSON (model-free scoring)")
    p.add_argument("--dt", help="COCO results JSON, or a dataset JSON whose annotations carry 'score'")
    p.add_argument("--iou-type", choices=["bbox", "segm"], help="results-file scoring (default bbox)")
    p.add_argument("--protocol", choices=["coco", "voc07", "voc12"], help="results-file scoring (default coco)")
    p.add_argument("--iou-thr", type=float, help="IoU threshold of the VOC protocols (default 0.5)")
    p.add_argument("--json", help="also write the metrics JSON here")
    _add_set(p)
    _add_unsafe(p)

    p = add("predict", _cmd_predict, "run a model on an image, folder, glob, video, stream or webcam")
    p.add_argument("model", help="run folder, .keras model or exported model")
    p.add_argument("--source", required=True, help="image, folder, glob, video file, URL or webcam index")
    p.add_argument("--save", help="output folder (images) or video file (.mp4)")
    p.add_argument("--show", action="store_true", help="show frames in a window")
    p.add_argument("--jsonl", help="write one JSON line of detections per frame")
    p.add_argument("--batch", type=int, default=1, help="frames per model call (files only)")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    p.add_argument("--conf", type=float, help="score threshold (default: the model's predict config)")
    p.add_argument("--iou", type=float, help="NMS IoU threshold (default: the model's predict config)")
    p.add_argument("--config", help="config (default: config.yaml beside the model)")
    _add_set(p)
    _add_unsafe(p)

    p = add("anchors", _cmd_anchors, "fit k-means prior boxes to a config's training boxes")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--k", type=int, help="number of anchors (default: levels x anchors_per_level)")
    p.add_argument("--write", action="store_true", help="write the anchors into the config file")
    _add_set(p)

    p = add("convert", _cmd_convert, "convert annotations between formats")
    formats = ["coco", "voc", "yolo", "via"]
    p.add_argument("--from", dest="src_format", required=True, choices=formats)
    p.add_argument("--to", dest="dst_format", required=True, choices=formats)
    p.add_argument("src", help="source annotations (file or folder)")
    p.add_argument("dst", help="destination (file or folder)")
    p.add_argument("--images", help="image folder (needed by YOLO and VIA sources for image sizes)")
    p.add_argument("--names", help="comma-separated class names (YOLO source)")
    p.add_argument(
        "--lenient", action="store_true", help="skip and count bad items instead of stopping at the first"
    )

    p = add("export", _cmd_export, "export a model with decoding and NMS inside")
    p.add_argument("model", help="run folder or .keras model")
    p.add_argument("--format", required=True, choices=["savedmodel", "tflite", "onnx"])
    p.add_argument("--out", help="output path (default: next to the model)")
    p.add_argument("--config", help="config (default: config.yaml beside the model)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="ONNX: quantize the convolutions to int8, calibrated on 32 training images (faster on CPU)",
    )
    _add_unsafe(p)

    p = add("demo", _cmd_demo, "the main job on the built-in shapes data: train, evaluate, predict on images and video")
    p.add_argument("config", nargs="?", default="configs/shapes_yolov3_tiny.yaml", help="a shapes config")
    _add_set(p)

    p = add("info", _cmd_info, "versions, backend and devices; with a config, the dataset summary")
    p.add_argument("config", nargs="?", help="YAML config: print its dataset summary")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--gallery", help="save a PNG of augmented samples with their boxes")
    _add_set(p)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """Log levels from -v/-q."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `detseg` console script; returns the exit code.

    Called without `argv` (as the console script is), it first restarts itself on a tuned
    memory allocator (`detseg.allocator`).
    """
    if argv is None:
        restart_with_tuned_allocator([sys.executable, "-m", "detseg.cli", *sys.argv[1:]])
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return args.handler(args)
    except DetsegError as exc:
        print(f"detseg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("detseg: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
