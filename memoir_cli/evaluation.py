"""`memoir eval` and `memoir calibrate`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="sequential editing evaluation on an edit file (ZsRE, CounterFact, ...)")
    p.add_argument("--data", required=True, help="JSON edit file, e.g. data/zsre/zsre_edit_dev_500.json")
    p.add_argument("--limit", type=int, default=None, help="first N records (T)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--extend", default=None, help="a second file whose records continue the stream")
    p.add_argument("--extend-limit", type=int, default=None)
    p.add_argument("--checkpoints", type=int, default=10,
                   help="score the edits so far this many times along the stream")
    p.add_argument("--checkpoint-sample", type=int, default=None, metavar="N",
                   help="score N edits spread over the stream so far at each checkpoint instead of all of them "
                        "(the final point scores all); makes --checkpoints 20 affordable on a long stream")
    p.add_argument("--final-sample", type=int, default=None, metavar="N",
                   help="score N edits spread over the whole stream at the end instead of all of them (a 10,000-edit "
                        "stream's greedy and chat checks of every edit take longer than its edits)")
    p.add_argument("--greedy-checkpoints", action="store_true", help="greedy accuracy at every checkpoint too (slower)")
    p.add_argument("--out", default=None, help="JSON report: settings, metrics, the curve (no records of the data); "
                   "rewritten at each checkpoint with \"partial\": true until the run ends")
    p.add_argument("--edit-stats", action="store_true",
                   help="also each edit's steps, loss and time in the report (one row per record)")
    p.add_argument("--plot", default=None, help="PNG of the metrics along the stream")
    p.add_argument("--subjects", choices=("given", "inferred"), default="given",
                   help="edit with the data set's subjects, or without them, as an operator who sends none (the "
                        "temporal set's subjects are fragments such as 'TikTok is': use inferred)")
    add_model_args(p)
    p.set_defaults(func=run_eval)


def add_model_args(p) -> None:
    p.add_argument("--model", default=None, help="Hugging Face id or folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--config", default=None, help="JSON file of MemoirConfig fields (what `memoir calibrate` writes)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one config field")


def build_config(args):
    """The --config file's fields and --set's over them, through memoir_core.config's one check."""
    from memoir_core.config import MemoirConfig, checked, read_file

    data = read_file(args.config) if args.config else {}
    return MemoirConfig.from_dict({**data, **checked(parse_sets(args.set), "--set")})


def parse_sets(items: list[str]) -> dict:
    """`--set FIELD=VALUE` items -> {field: value}, each value JSON or else a bare word (pool=norm)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_memoir(args):
    from memoir_core import models
    from memoir_core.memoir import Memoir

    config = build_config(args)  # a bad file fails before the slow load
    model, tokenizer = models.load(args.model, device=args.device, dtype=args.dtype)
    return Memoir(model, tokenizer, config)


def run_eval(args) -> int:
    build_config(args)  # a bad file or --set fails here, before torch is imported (seconds)
    from memoir_core.datasets import load_cases
    from memoir_core.errors import InvalidRequestError
    from memoir_core.evaluate import run_stream

    cases = load_cases(args.data, args.limit, args.offset)
    if args.extend:
        cases += load_cases(args.extend, args.extend_limit)
    t0 = time.time()
    memoir = build_memoir(args)
    bar = tqdm(total=len(cases), desc="editing", unit="edit", file=sys.stderr)

    stats: list[dict] = []  # every edit's steps, loss and time, saved with each partial report

    def progress(done: int, stat: dict) -> None:
        stats.append(stat)
        bar.update(1)
        bar.set_postfix(steps=stat["steps"], loss=f"{stat['loss']:.3f}", s=f"{stat['seconds']:.2f}")

    def report_of(metrics: dict, curve: list[dict]) -> dict:
        return {
            "data": args.data, "extend": args.extend, "edits": len(cases), "model": args.model or "default",
            "subjects": args.subjects,
            "config": memoir.config.to_dict(), "train_dtype": memoir.train_dtype, "metrics": metrics, "checkpoints": curve,
            "wall_seconds": time.time() - t0,
        }

    def checkpoint(curve: list[dict]) -> None:
        # a run of hours shows where it stands, and what it measured survives an interruption
        point = curve[-1]
        bar.write(f"{point['edits']} edits: " + " ".join(
            f"{k}={point[k]:.3f}" for k in ("reliability", "generalization", "locality", "target_perplexity",
                                            "false_activation_rate") if k in point and point[k] == point[k])
                  + f" unlearnt={point['unlearnt']}")
        if args.out:
            partial = {**report_of({}, curve), "partial": True}
            if args.edit_stats:
                partial["edit_stats"] = stats
            Path(args.out).write_text(json.dumps(partial, indent=2))

    try:  # run_stream checks every case against the memory's limits before the first edit
        result = run_stream(memoir, cases, checkpoints=args.checkpoints, greedy_checkpoints=args.greedy_checkpoints,
                            checkpoint_sample=args.checkpoint_sample, final_sample=args.final_sample, infer_subjects=args.subjects == "inferred",
                            progress=progress, on_checkpoint=checkpoint)
    except InvalidRequestError as e:
        bar.close()
        print(f"memoir eval: {e}", file=sys.stderr)
        return 2
    bar.close()
    m = result.metrics
    report = report_of(m, result.checkpoints)
    if args.edit_stats:
        report["edit_stats"] = result.edits
    keys = ("reliability", "generalization", "locality", "greedy_reliability", "greedy_generalization",
            "chat_reliability", "chat_generalization", "routing_accuracy", "routing_accuracy_subject",
            "routing_accuracy_unique", "false_activation_rate", "edit_seconds_median",
            "edit_seconds_p90", "steps_median")
    print(" ".join(f"{k}={m[k]:.3f}" for k in keys if k in m) + f" unlearnt={m['unlearnt']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.plot:
        from .plots import plot_curve

        plot_curve(result.checkpoints, args.plot, title=f"{Path(args.data).name}, T={len(cases)}")
    return 0
