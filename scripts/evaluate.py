"""Score generated images as the papers do: ``python scripts/evaluate.py GENERATED [REFERENCE]``.

GENERATED and REFERENCE are image folders, ``.npz`` files of samples (``arr_0``, uint8 NHWC, as
``sample_diffusion.py`` writes them) or ``.npz`` Inception statistics (``mu``, ``sigma``, from
``--save-stats``; FID only). Metrics (``--metrics``, default: all the inputs allow):

  fid     Frechet Inception distance (pytorch-fid's network, preprocessing and estimator)
  kid     kernel Inception distance, 100 subsets of 1000 (torch-fidelity's estimator)
  is      Inception Score of GENERATED, 10 splits
  pr      improved precision and recall, k = 3 (Kynkaanniemi et al. 2019)
  clip    CLIP score of GENERATED against --prompts (needs --clip; torchmetrics' definition)
  shapes  shapes-world colour/shape/position accuracy of GENERATED against --prompts (the detector)

The Inception metrics need pytorch-fid's weights file pt_inception-2015-12-05-6726825d.pth
(--inception; see README.md "Evaluate"). Results are printed as a table; --json writes them too.
"""
import argparse
import json
import os

from ldm.inference.cli import check_positive, run_script

DEFAULT_INCEPTION = "checkpoints/pt_inception-2015-12-05-6726825d.pth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generated", help="generated images: folder, samples .npz or statistics .npz")
    parser.add_argument("reference", nargs="?", default=None,
                        help="reference images for FID/KID/precision-recall: folder, samples .npz or statistics .npz")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated subset of fid,kid,is,pr,clip,shapes (default: all the inputs allow; "
                             "clip when --clip is given)")
    parser.add_argument("--inception", default=DEFAULT_INCEPTION,
                        help="pytorch-fid's Inception weights, pt_inception-2015-12-05-6726825d.pth "
                             "(default: %(default)s)")
    parser.add_argument("--clip", default=None,
                        help="folder of a transformers CLIPModel with its image processor and tokenizer (or the "
                             "shipped CLIP vocabulary when it has none) (save_pretrained of e.g. "
                             "openai/clip-vit-large-patch14), for the CLIP score")
    parser.add_argument("--prompts", default=None,
                        help="text file with one prompt per image of GENERATED, in its order (clip, shapes)")
    parser.add_argument("--save-stats", default=None, metavar="FILE.npz",
                        help="write the Inception mu/sigma of REFERENCE (of GENERATED when it is the only "
                             "input) to this new file, to pass as an input later")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default: 50)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID: number of subsets (default: 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000,
                        help="KID: images per subset, at most the smaller set's size (default: 1000)")
    parser.add_argument("--splits", type=int, default=10, help="Inception Score: number of splits (default: 10)")
    parser.add_argument("--k", type=int, default=3, help="precision/recall: k-th nearest neighbour (default: 3)")
    parser.add_argument("--json", default=None, help="also write the results to this new JSON file")
    return parser


def _checked(opt: argparse.Namespace):
    """Inputs opened and the metric list, or UsageError before any work."""
    from ldm.evaluation import suite
    from ldm.evaluation.fidelity import GaussianStats
    from ldm.evaluation.image_sets import open_input
    from ldm.inference.errors import UsageError

    check_positive(opt, "batch_size", "kid_subsets", "kid_subset_size", "splits", "k")
    for flag, path in (("--json", opt.json), ("--save-stats", opt.save_stats)):
        if path and os.path.exists(path):
            raise UsageError(f"{flag} {path} exists; choose a new file name (existing files are never replaced)")
    generated = open_input(opt.generated)
    reference = open_input(opt.reference) if opt.reference else None
    if opt.metrics is None:
        only_stats = opt.save_stats and reference is None
        metrics = [] if only_stats else suite.default_metrics(generated, reference, clip=bool(opt.clip))
    else:
        metrics = [m.strip() for m in opt.metrics.split(",") if m.strip()]
    suite.check_metrics(metrics, generated, reference)
    if "clip" in metrics and not (opt.clip and opt.prompts):
        raise UsageError("the CLIP score needs --clip DIR (a CLIPModel folder) and --prompts FILE")
    if "shapes" in metrics and not opt.prompts:
        raise UsageError("shapes scores need --prompts FILE (one shapes-world caption per image)")
    stats_target = reference if reference is not None else generated
    if opt.save_stats and isinstance(stats_target, GaussianStats):
        raise UsageError("--save-stats needs images; the input is already a statistics file")
    return generated, reference, metrics


def _device(name: str):
    from ldm.inference.errors import UsageError
    from ldm.util import pick_device

    try:
        return pick_device(name)
    except RuntimeError as err:
        raise UsageError(str(err)) from err


def _inception(path: str, device):
    from ldm.evaluation.inception import load_fid_inception
    from ldm.inference.errors import UsageError
    from ldm.util.paths import in_cwd_or_repository

    try:
        return load_fid_inception(in_cwd_or_repository(path), device)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err


def _clip_scorer(directory: str, device):
    from ldm.evaluation.clip_score import ClipScorer
    from ldm.inference.errors import UsageError
    from ldm.modules.encoders.clip_model import ClipDirectoryError

    try:
        return ClipScorer(directory, device)
    except ClipDirectoryError as err:
        raise UsageError(f"--clip {directory}: {err.reason}") from None


def evaluate(opt: argparse.Namespace) -> dict:
    from ldm.evaluation import suite
    from ldm.evaluation.clip_score import clip_score
    from ldm.evaluation.image_sets import save_stats

    generated, reference, metrics = _checked(opt)
    device = _device(opt.device)
    # What can fail on the user's input is read before the long work: the prompts and the CLIP model.
    prompts = suite.read_prompts(opt.prompts, len(generated)) if "clip" in metrics or "shapes" in metrics else None
    scorer = _clip_scorer(opt.clip, device) if "clip" in metrics else None
    results = {}
    inception_metrics = [m for m in metrics if m in suite.INCEPTION_METRICS]
    if inception_metrics or opt.save_stats:
        model = _inception(opt.inception, device)
        need_generated = bool(inception_metrics) or reference is None
        need_reference = reference is not None and (opt.save_stats or any(m in suite.PAIR_METRICS for m in metrics))
        generated_out = suite.inception_outputs_of(model, generated, opt.batch_size, device, "generated") \
            if need_generated else None
        reference_out = suite.inception_outputs_of(model, reference, opt.batch_size, device, "reference") \
            if need_reference else None
        if opt.save_stats:
            save_stats(opt.save_stats, (reference_out or generated_out).stats)
            print(f"Inception statistics written to {opt.save_stats}")
        results.update(suite.inception_metrics(inception_metrics, generated_out, reference_out, opt.kid_subsets,
                                               opt.kid_subset_size, opt.splits, opt.k))
    if scorer is not None:
        results["clip_score"] = clip_score(scorer.image_scores(generated.batches(opt.batch_size), prompts,
                                                               len(generated)))
    if "shapes" in metrics:
        results.update(suite.shapes_metrics(generated, prompts, opt.batch_size))
    return results


def main_with_options(opt: argparse.Namespace) -> None:
    from ldm.evaluation.suite import format_table

    results = evaluate(opt)
    if results:
        print(f"generated: {opt.generated}" + (f"\nreference: {opt.reference}" if opt.reference else ""))
        print(format_table(results))
    if opt.json:
        report = {"generated": opt.generated, "reference": opt.reference, "metrics": results,
                  "settings": {"batch_size": opt.batch_size, "kid_subsets": opt.kid_subsets,
                               "kid_subset_size": opt.kid_subset_size, "splits": opt.splits, "k": opt.k,
                               "inception": opt.inception, "clip": opt.clip}}
        with open(opt.json, "x", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


def main(argv=None) -> None:
    run_script(build_parser(), main_with_options, argv)


if __name__ == "__main__":
    main()
