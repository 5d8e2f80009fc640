"""Commands layer: `convlint fix MODEL -o OUT`: its options, the checks of the command line
before any work, the pipeline run (``convlint.rewrite.pipeline.fix``) and its exit code."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from convlint.commands.common import resolve_settings
from convlint.errors import ModelError, UsageError
from convlint.output import emit, refuse_overwriting_inputs
from convlint.rewrite.options import (
    DEFAULT_METHOD,
    DEFAULT_OBJECTIVE,
    DEFAULT_PROVIDER,
    DEFAULT_SAMPLES,
    DEFAULT_TIMEOUT,
    DEFAULT_TOLERANCE,
    INPUT_SAMPLES,
    METHODS,
    MIN_SAVING,
    OBJECTIVES,
)

if TYPE_CHECKING:
    from convlint.registry import Registry
    from convlint.rewrite.options import FixOptions


def add_fix_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `convlint fix` beyond the common ones."""
    parser.add_argument("-o", "--output-model", metavar="OUT", help="where to write the model")
    parser.add_argument("--in-place", action="store_true", help="allow OUT to be MODEL")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help=f"bound on every output's relative L2 error (default {DEFAULT_TOLERANCE:g}; none "
        "when --min-top1 is given alone)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="how to rewrite a lossy finding: data-aware factorization, channel pruning "
        "(prune), both with the best per layer (auto), or weight SVD (weight) "
        f"(default {DEFAULT_METHOD})",
    )
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--rank", type=int, metavar="N", help="factorize at rank N")
    ranks.add_argument("--ratio", type=float, metavar="F", help="keep a fraction F of channels")
    parser.add_argument(
        "--inputs",
        metavar="PATH",
        help="samples to fit and verify on: an .npz (one array per input), an .npy (one input) "
        "or a folder of images (with --preprocess)",
    )
    parser.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="how images become the input: a preset (imagenet, caffe, inception, unit, raw) "
        "and/or keys resize=,crop=,scale=,mean=,std=,layout=,order= (default unit)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help=f"samples to use: seeded random ones without --inputs (default {DEFAULT_SAMPLES}), "
        f"the first N of --inputs (default {INPUT_SAMPLES})",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="keep a rewrite when it is faster with 95%% confidence (latency), or when it "
        f"lowers MACs and is not measurably slower (macs; default {DEFAULT_OBJECTIVE})",
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="do not time the models (latency is then null, the objective macs)",
    )
    parser.add_argument(
        "--latency-threads",
        type=int,
        metavar="N",
        help="intra-op threads when timing (default: the CPUs available)",
    )
    parser.add_argument(
        "--latency-batch",
        type=int,
        metavar="N",
        help="time on a batch of N (the first verification sample, repeated; default: the "
        "sample's own batch)",
    )
    parser.add_argument(
        "--provider",
        default=DEFAULT_PROVIDER,
        metavar="NAME",
        help="onnxruntime execution provider to time on",
    )
    parser.add_argument(
        "--min-top1",
        type=float,
        metavar="P",
        help="bound on the top-1 agreement of class-score outputs on the held-out samples, 0 to 1",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="time limit of each onnxruntime run of one sample, and of each timing (default 300)",
    )
    parser.add_argument(
        "--unsafe-fixes", action="store_true", help="also apply rewrites that change the function"
    )
    parser.add_argument(
        "--min-saving",
        type=float,
        default=MIN_SAVING,
        metavar="F",
        help="the least share of a layer's MACs a lossy rewrite must save (default 0.1)",
    )
    parser.add_argument(
        "--rank-step",
        type=int,
        metavar="N",
        help="ranks and kept channels the budget chooses are multiples of N (default: the "
        "channel block of the target: 16 on the CPU provider with AVX-512, else 8)",
    )
    parser.add_argument(
        "--allow-noise",
        action="store_true",
        help="without --inputs, still apply approximate rewrites, fitted and verified on "
        "generated noise (demos and tests; the result says nothing of real data)",
    )


def fix_options(args: argparse.Namespace) -> FixOptions:
    """The parsed command line as the pipeline's options."""
    from convlint.rewrite.options import FixOptions

    return FixOptions(
        output=Path(args.output_model) if args.output_model else None,
        in_place=args.in_place,
        tolerance=args.tolerance,
        method=args.method,
        rank=args.rank,
        ratio=args.ratio,
        inputs=Path(args.inputs) if args.inputs else None,
        samples=args.samples,
        objective=args.objective,
        latency=not args.no_latency,
        latency_threads=args.latency_threads,
        latency_batch=args.latency_batch,
        provider=args.provider,
        min_top1=args.min_top1,
        preprocess=args.preprocess,
        timeout=args.timeout,
        unsafe_fixes=args.unsafe_fixes,
        allow_noise=args.allow_noise,
        min_saving=args.min_saving,
        rank_step=args.rank_step,
    )


def cmd_fix(args: argparse.Namespace, registry: Registry) -> int:
    """`convlint fix`: 0 written and verified, 1 verification failed, 2 bad input."""
    from convlint.atomic import write_target
    from convlint.findings import ModelReport
    from convlint.rewrite.options import reported_tolerance
    from convlint.rewrite.pipeline import FixResult, fix, named_after
    from convlint.rewrite.report import render_json, render_text
    from convlint.rewrite.verify import RuntimeFailure

    if args.output_model is None and not args.in_place:
        report = f"; --output {args.output} names the report, not the model" if args.output else ""
        raise UsageError(f"fix needs -o OUT, the model to write (or --in-place){report}")
    if args.preprocess:
        from convlint.rewrite.calibration import parse_preprocess

        parse_preprocess(args.preprocess)  # a bad spec is named first
    if args.preprocess and (not args.inputs or Path(args.inputs).suffix in (".npz", ".npy")):
        raise UsageError(
            "--preprocess says how images become the input: it needs --inputs FOLDER (a folder "
            "of images; .npz and .npy samples are used as they are)"
        )

    settings, _ = resolve_settings(args, registry)
    if args.format not in ("text", "json"):
        raise UsageError(f"fix supports --format text or json, not {args.format}")
    if args.output and not Path(args.output).parent.is_dir():  # before OUT is written
        raise UsageError(
            f"--output {args.output}: no such folder {str(Path(args.output).parent)!r}"
        )
    model = Path(args.model)
    options = fix_options(args)
    out = options.output or (model if args.in_place else None)
    refuse_overwriting_inputs(
        [("--output", args.output)],
        [
            (f"the model {model}", model),
            (f"OUT (-o {out})", out),
            (f"--config {args.config}", args.config),
            (f"--inputs {args.inputs}", args.inputs),
        ],
        [model],
    )
    if (
        args.output
        and out is not None
        and named_after(write_target(args.output), write_target(out))
    ):
        raise UsageError(
            f"--output {args.output} is a name fix gives OUT's external data; "
            "refusing to write the report there"
        )
    try:
        try:
            result = fix(model, registry, settings, options, verbose=args.verbose)
        except MemoryError:
            raise ModelError(
                model,
                "too large to rewrite and verify here: out of memory (bind smaller symbolic "
                "dims with --input-shape, or use fewer --samples)",
            ) from None
    except (ModelError, RuntimeFailure) as exc:
        # As `check --format json`: a document with the model's `error`, then the stderr line.
        problem = exc.problem if isinstance(exc, ModelError) else str(exc)
        if args.format == "json":
            failed = FixResult(
                ModelReport(path=str(model), error=problem),
                str(options.output or model),
                reported_tolerance(options),
                options.method,
            )
            emit(render_json(failed), args.output)
        raise ModelError(model, problem) from None  # names the model, as every bad-input line
    if args.format == "json":
        text = render_json(result)
    else:
        text = render_text(result, verbose=args.verbose, quiet=args.quiet, timings=True)
    emit(text, args.output)
    if result.verification is not None and not result.written:
        errors = result.verification
        bound = math.inf if result.tolerance is None else result.tolerance
        problem = errors.problem or f"rewritten model breaks --tolerance {bound:g}"
        if not errors.problem and errors.rel_l2_error <= bound:
            problem = f"rewritten model's top-1 agreement is below --min-top1 {args.min_top1:g}"
        print(f"convlint: error: {model}: {problem}; {result.output} not written", file=sys.stderr)
        return 1
    return 0
