"""Plant known faults, one at a time, in a temporary copy of the project and check that the named tests catch them.

A test is worth what it would catch. Each fault below is a small, plausible wrong implementation (a
replacement of a few lines in one function); for each, this script copies the working tree, applies the
fault, runs only the named tests there (``pytest -x -n 0``) and reports *caught* (a test failed) or
*NOT CAUGHT*. It first runs every named test on the unchanged copy, so a failure means the fault.

    python scripts/check_faults.py                    # all faults; exit 1 if any is not caught
    python scripts/check_faults.py --only flip slide  # the faults whose name contains a word
    python scripts/check_faults.py --write docs/faults.md

Needs the project installed with its extras (as the README's test command installs it) and the
real-data folder (``../shared`` or ``DEEPLAB_SHARED``) for the faults whose tests need it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    name: str  # what is wrong, in words
    path: str  # file, relative to the repository
    where: str  # the function (or class.method) the patch changes
    old: str  # text replaced (must occur exactly once in the file)
    new: str
    tests: tuple[str, ...]  # pytest node ids or files; at least one must fail


KA = "tests/test_known_answers.py"
RO = "tests/test_recipe_options.py"
OD = "tests/test_own_data.py"
PS = "tests/test_predict_safety.py"
FAULTS: tuple[Fault, ...] = (
    # --- issue 22's list -----------------------------------------------------------------------------------
    Fault("training never updates the weights (no optimizer step)", "deeplab_cli/engine/train/loop.py", "train_step",
          "    if finite:\n        scaler.step(optimizer)", "    if finite:\n        pass",
          (f"{KA}::test_train_step_descends_the_hand_written_weighted_and_mined_loss",)),
    Fault("eval.flip ignored", "deeplab_cli/engine/eval/inference.py", "predict_probabilities",
          "for mirrored in (False, True) if flip else (False,):", "for mirrored in (False,):",
          (f"{KA}::test_flip_scales_and_windows_equal_the_hand_computation",)),
    Fault("sliding windows ignored (whole image always)", "deeplab_cli/engine/eval/inference.py", "_logits",
          "if slide is None or slide.covers(", "if True or slide.covers(",
          (f"{KA}::test_flip_scales_and_windows_equal_the_hand_computation",)),
    Fault("test-time scales replaced by the single scale 1.0", "deeplab_cli/engine/eval/inference.py",
          "predict_probabilities", "    for scale in scales:", "    for scale in (1.0,):",
          (f"{KA}::test_flip_scales_and_windows_equal_the_hand_computation",)),
    Fault("eval.flip not passed from the config to the pipeline", "deeplab_cli/config/evaluation.py", "eval_settings",
          "flip=options.flip,", "flip=False,",
          (f"{KA}::test_eval_options_reach_the_evaluation_and_metrics_match_numpy_on_the_saved_pngs",)),
    Fault("OHEM's pixel selection ignored (every labelled pixel kept)", "deeplab_cli/engine/train/losses.py",
          "segmentation_loss", "    kept = ohem_mask(logits, labels, spec.ohem_thresh, spec.ohem_min_kept)",
          "    kept = labels != IGNORE_INDEX",
          (f"{KA}::test_train_step_descends_the_hand_written_weighted_and_mined_loss",)),
    Fault("class weights dropped from the loss", "deeplab_cli/engine/train/losses.py", "segmentation_loss",
          "        weight = torch.tensor(spec.class_weights, dtype=torch.float32, device=logits.device)",
          "        weight = None", (f"{KA}::test_train_step_descends_the_hand_written_weighted_and_mined_loss",)),
    Fault("loss settings not passed from the config to train_step", "deeplab_cli/config/training.py", "step_settings",
          "        loss=loss,", "        loss=None,",
          (f"{KA}::test_loss_settings_reach_train_step_from_the_config",)),
    Fault("DDP gradients summed over ranks instead of averaged", "deeplab_cli/engine/runtime/distributed.py", "wrap",
          "    return ddp(model, device_ids=ids, **options)",
          "    wrapped = ddp(model, device_ids=ids, **options)\n"
          "    def _sum(state, bucket):\n"
          "        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])\n"
          "    wrapped.register_comm_hook(None, _sum)\n"
          "    return wrapped",
          ("tests/test_distributed.py::test_ddp_averages_gradients_with_sgd_and_an_empty_rank_skips_the_step_on_every_rank",)),
    Fault("resume restarts from iteration 0", "deeplab_cli/cli/train.py", "_resume",
          '    start, best = int(state["iteration"]), float(state["best_miou"])',
          '    start, best = 0, float(state["best_miou"])',
          (f"{KA}::test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one",)),
    Fault("checkpoint round trip drops the optimizer state (SGD momentum)", "deeplab_cli/cli/train.py", "_resume",
          '    optimizer.load_state_dict(state["optimizer"])', "    pass",
          (f"{KA}::test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one",)),
    Fault("DenseCRF bilateral sxy and srgb swapped", "deeplab_cli/postprocess/crf.py", "dense_crf",
          "crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,",
          "crf.addPairwiseBilateral(sxy=params.bi_rgb_std, srgb=params.bi_xy_std,",
          (f"{KA}::test_dense_crf_passes_each_parameter_where_pydensecrf_documents_it",)),
    Fault("trimap band one pixel narrower (< instead of <=)", "deeplab_cli/engine/eval/trimap.py", "TrimapMeter.update",
          "            band = (dist <= w) & valid", "            band = (dist < w) & valid",
          ("tests/test_trimap.py::test_hand_computed_bands_and_iou",)),
    Fault("metrics count the ignored (255) pixels", "deeplab_cli/engine/eval/metrics.py", "ConfusionMatrix.update",
          "        keep = target != IGNORE_INDEX\n", "        keep = target == target\n        target = target.clamp_max(self.num_classes - 1)\n",
          ("tests/test_metrics.py::test_void_pixels_are_ignored",)),
    Fault("label resizing bilinear instead of nearest (scale augmentation)", "deeplab_cli/data/transforms.py",
          "RandomScale.transform",
          "return F.resize(inpt, params[\"size\"], interpolation=InterpolationMode.NEAREST_EXACT)",
          "return F.resize(inpt, params[\"size\"], interpolation=InterpolationMode.BILINEAR)",
          ("tests/test_data.py::test_random_scale_resizes_mask_like_pil_nearest_and_keeps_alignment",)),
    Fault("label resizing bilinear instead of nearest (v1/v2 loss policy)", "deeplab_cli/engine/train/losses.py",
          "resize_labels", 'size=size, mode="nearest-exact")', 'size=size, mode="bilinear")',
          ("tests/test_data.py::test_resize_labels_matches_pil_nearest",)),
    Fault("poly learning rate replaced by a constant", "deeplab_cli/engine/train/optim.py", "poly_scheduler",
          "lambda it: max(0.0, 1.0 - it / max_iters) ** power", "lambda it: 1.0",
          ("tests/test_models.py::test_poly_scheduler_follows_power_0_9",)),
    Fault("the synthetic generator writes into a folder that is not its own", "deeplab_cli/data/synthetic.py",
          "ensure_synthetic_voc", "    voc = check_generator_root(root)", '    voc = Path(root) / "VOC2012"',
          ("tests/test_dataset_readonly.py::test_generator_refuses_a_folder_of_photos",
           "tests/test_dataset_readonly.py::test_generator_refuses_someone_elses_data_and_writes_nothing")),
    Fault("eval takes the preprocessing of model= instead of the checkpoint's", "deeplab_cli/config/checkpoints.py",
          "merge_overrides",
          "                merged[node] = cfg[node]\n            merged.model.preprocess = weights_preprocess\n"
          "        else:\n            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)\n"
          "            explicit |= key.startswith(_PREPROCESS_KEY)\n    if not explicit:\n"
          "        merged.model.preprocess = weights_preprocess\n",
          "                merged[node] = cfg[node]\n"
          "        else:\n            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)\n"
          "            explicit |= key.startswith(_PREPROCESS_KEY)\n    if False:\n"
          "        pass\n",
          ("tests/test_preprocess.py::test_group_overrides_keep_the_checkpoints_preprocessing",)),
    Fault("Xception-65: a unit made dense takes the new dilation", "deeplab_cli/models/backbones/xception.py",
          "unit_strides_and_dilations", "            plan.append((1, dilation))\n            dilation *= stride",
          "            dilation *= stride\n            plan.append((1, dilation))",
          ("tests/test_xception.py::test_same_features_as_timms_xception65_given_the_same_weights",)),
    Fault("multiply-adds reported as FLOPs (not halved)", "deeplab_cli/tools/flops.py", "measure",
          '        "gmacs": total / 2e9,', '        "gmacs": total / 1e9,',
          ("tests/test_summary.py::test_multiply_adds_equal_the_per_layer_formula",)),
    Fault("nested modules counted twice in the backbone/head split", "deeplab_cli/tools/flops.py", "_flops_of",
          "    outer = [p for p in paths if not any(p.startswith(q + \".\") for q in paths if q != p)]", "    outer = paths",
          ("tests/test_summary.py::test_multiply_adds_equal_the_per_layer_formula",)),
    # --- issue 22's six defects, re-planted ----------------------------------------------------------------
    Fault("label_map's entry for raw 255 turned into ignore", "deeplab_cli/data/labels.py", "LabelMapping.__post_init__",
          "        if IGNORE_INDEX not in mapped:", "        if True:",
          ("tests/test_dataset_families.py::test_binary_0_255_masks_keep_their_foreground_with_an_explicit_label_map",)),
    Fault("a rank without samples calls a different collective", "deeplab_cli/engine/train/loop.py", "train_step",
          "    if distributed.any_rank(not batches):", "    if not batches and False:",
          ("tests/test_distributed.py::test_a_step_without_samples_is_empty_not_a_zero_loss",)),
    Fault("model.preprocess.* dropped when model= follows it", "deeplab_cli/config/checkpoints.py", "merge_overrides",
          '    parsed.sort(key=lambda o: "." in o.key_or_group)', "    pass",
          ("tests/test_preprocess.py::test_explicit_preprocess_override_survives_a_later_group_override",)),
    Fault("ADE20K's test split is the validation split again", "deeplab_cli/config/migrate.py", "migrate_stored_config",
          '        dataset["test_split"] = "testing"', "        pass",
          ("tests/test_dataset_families.py::test_ade20k_export_predicts_the_test_images_not_the_validation_ones",)),
    # --- pretrained weights (issue 21) ---------------------------------------------------------------------
    Fault("a download is kept whatever its sha256", "deeplab_cli/models/weights/verify.py", "download_verified",
          "        if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):\n"
          "            raise WeightsHashError(\n                f\"the file downloaded",
          "        if False:\n            raise WeightsHashError(\n                f\"the file downloaded",
          ("tests/test_weights_catalogue.py::test_download_with_another_hash_is_refused_and_nothing_is_kept",)),
    Fault("cached or installed weight files are not hashed", "deeplab_cli/models/weights/verify.py", "check_file",
          "    digest = sha256_file(path)\n    if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):",
          "    digest = sha256_file(path)\n    if False:", ("tests/test_models.py::test_hub_cache_file_with_another_hash_is_refused",)),
    Fault("the EfficientNet-Lite converter maps a block's _bn2 to bn1", "deeplab_cli/models/weights/efficientnet_lite.py",
          "convert_lite_to_timm", '"_project_conv": "conv_pwl", "_bn2": "bn3",', '"_project_conv": "conv_pwl", "_bn2": "bn1",',
          ("tests/test_efficientnet_lite.py::test_converted_weights_match_the_package_model_without_images",)),
    Fault("resume records this process's weights instead of the checkpoint's", "deeplab_cli/cli/train.py", "run_train",
          "        start, best, provenance = _resume(", "        start, best, _ = _resume(",
          ("tests/test_provenance.py::test_resume_keeps_the_runs_record",)),
    Fault("optim.backbone_lr_mult ignored", "deeplab_cli/engine/train/optim.py", "param_groups",
          "        mult *= backbone_lr_mult if is_encoder else 1.0", "        mult *= 1.0",
          ("tests/test_models.py::test_backbone_lr_mult_scales_the_encoders_step_alone",)),
    # --- issue 23: the registry and the test-time config --------------------------------------------------
    Fault("a head's declared inputs not checked against the backbone", "deeplab_cli/models/builder.py", "_build_head",
          "    missing = [name for name in entry.needs if name not in backbone.feature_info]", "    missing = []",
          ("tests/test_registry.py::test_the_v3plus_decoder_declares_its_stride_4_input",)),
    Fault("head args dropped on the way to the registered builder", "deeplab_cli/models/builder.py", "_build_head",
          "    return entry.build(inputs, **spec.head_args)",
          "    return entry.build(inputs, **{k: v for k, v in spec.head_args.items() if k not in ('width', 'channels')})",
          ("tests/test_registry.py::test_a_toy_head_trains_and_evaluates_through_the_cli",)),
    Fault("entry-point plugins never imported", "deeplab_cli/models/registry.py", "load_builtin",
          "    for plugin in entry_points(group=PLUGIN_GROUP):", "    for plugin in []:",
          ("tests/test_registry.py::test_a_plugin_package_registers_through_its_entry_point",)),
    Fault("deeplab-eval silently accepts training keys again", "deeplab_cli/config/schema.py", "EvalConfig",
          "class EvalConfig(NetworkConfig):", "class EvalConfig(TrainConfig):",
          ("tests/test_config_matrix.py::test_impossible_combinations_fail_in_one_line",)),
    # --- issue 24: the published recipes' options and the train.log lines ----------------------------------
    Fault("cat_max_ratio ignored (the first crop always kept)", "deeplab_cli/data/transforms.py", "PadCrop.make_params",
          "        if self.cat_max_ratio < 1 and masks:", "        if False:",
          (f"{RO}::test_cat_max_ratio_redraws_crops_that_one_class_dominates",)),
    Fault("cat_max_ratio counts the ignored pixels", "deeplab_cli/data/transforms.py", "PadCrop._dominated",
          "        counts = torch.bincount(window[window != IGNORE_INDEX].flatten().long())",
          "        counts = torch.bincount(window.flatten().long())",
          (f"{RO}::test_cat_max_ratio_ignores_255_and_keeps_the_11th_draw",)),
    Fault("photometric distortion never applied", "deeplab_cli/data/transforms.py", "train_transforms",
          "    if photometric:\n        ops.append(PhotoMetricDistortion())", "    if False:\n        pass",
          (f"{RO}::test_train_transforms_distort_the_image_only_when_asked",)),
    Fault("saturation blended with grey (ColorJitter) instead of HSV", "deeplab_cli/data/photometric.py",
          "PhotoMetricDistortion.transform", "            x = scale_saturation(x, params[\"saturation\"])",
          "            x = F.adjust_saturation(x, params[\"saturation\"])",
          (f"{RO}::test_contrast_position_depends_on_the_mode",)),
    Fault("contrast always last", "deeplab_cli/data/photometric.py", "PhotoMetricDistortion.transform",
          "        if params[\"contrast_first\"] and \"contrast\" in params:", "        if False:",
          (f"{RO}::test_contrast_position_depends_on_the_mode",)),
    Fault("fit_size ignored at evaluation", "deeplab_cli/engine/eval/inference.py", "predict_probabilities",
          "    base = fit_factor((int(size[0]), int(size[1])), fit) if fit is not None else 1.0", "    base = 1.0",
          (f"{RO}::test_evaluation_runs_at_the_fitted_size_and_answers_at_the_stored_one",)),
    Fault("fit_size ignored in training", "deeplab_cli/data/transforms.py", "RandomScale.make_params",
          "            s *= fit_factor((h, w), self.fit)", "            s *= 1.0",
          (f"{RO}::test_ade20k_fit_rule_on_wide_and_tall_images",)),
    Fault("scale_step ignored (continuous scales)", "deeplab_cli/data/transforms.py", "RandomScale.__init__",
          "        self.choices = scale_choices(low, high, step) if step is not None else None",
          "        self.choices = None", (f"{RO}::test_stepped_scales_take_only_the_seven_tf_values",)),
    Fault("poly's floor ignored (decays to 0)", "deeplab_cli/engine/train/optim.py", "poly_scheduler",
          "    if min_lr == 0.0:", "    if True:", (f"{RO}::test_poly_floor_matches_mmengines_recursive_polylr",)),
    Fault("auxiliary loss not weighted", "deeplab_cli/engine/train/losses.py", "loss_terms",
          "        weight = (spec or LossSpec()).aux_head_weight", "        weight = 1.0",
          (f"{RO}::test_aux_head_loss_is_weighted_and_absent_at_inference",)),
    Fault("auxiliary head also run at inference", "deeplab_cli/models/segmenter.py", "DeepLab.forward",
          "        if aux is not None and self.training:", "        if aux is not None:",
          (f"{RO}::test_aux_head_loss_is_weighted_and_absent_at_inference",)),
    Fault("auxiliary head's weights kept in the export", "deeplab_cli/deploy/wrapper.py", "DeployModel.__init__",
          "        self.model = inference_model(model)", "        self.model = model",
          (f"{RO}::test_aux_head_is_not_in_the_export",)),
    Fault("deep stem's last BN mapped from the wrong timm key", "deeplab_cli/models/pretrained.py", "_TIMM_DEEP_STEM",
          '"bn1.": "stem.7."', '"bn1.": "stem.4."', (f"{RO}::test_deep_stem_shapes_and_timm_resnet50c_features",)),
    Fault("mmseg head's projection back to 1x1", "deeplab_cli/models/heads/aspp_v3.py", "ASPP.__init__",
          "nn.Conv2d(len(convs) * out_channels, out_channels, project_kernel, padding=project_kernel // 2, bias=False)",
          "nn.Conv2d(len(convs) * out_channels, out_channels, 1, bias=False)",
          (f"{RO}::test_mmseg_head_parameter_count_by_hand",)),
    Fault("the ADE20K recipe without the distortion", "configs/experiment/deeplabv3plus_resnet101_ade20k.yaml",
          "dataset", "  photometric: true\n", "  photometric: false\n",
          ("tests/test_recipes_match_sources.py::test_recipe_values_are_the_sources",)),
    Fault("deeplab-eval ignores dataset.fit_size", "deeplab_cli/cli/evaluate.py", "run_eval",
          "fit=evaluation.fit_for(train_cfg.dataset, settings.batch_size),", "fit=None,",
          ("tests/test_recipes_run.py::test_every_recipe_trains_two_iterations_with_all_its_options",)),
    Fault("no progress lines in train.log", "deeplab_cli/engine/train/trainer.py", "Trainer._log_progress",
          "            log.info(meter.line(", "            log.debug(meter.line(",
          ("tests/test_recipes_run.py::test_train_log_starts_with_the_header_and_has_a_line_every_log_interval",)),
    # --- issue 29: own data without surprises -------------------------------------------------------------
    Fault("a flat folder validates on its training files (no holdout)", "deeplab_cli/config/datasets.py",
          "dataset_layout", "    if layout.is_flat and dataset.get(\"holdout\") is not None",
          "    if False and layout.is_flat and dataset.get(\"holdout\") is not None",
          (f"{OD}::test_flat_folder_gets_a_disjoint_deterministic_stratified_holdout",)),
    Fault("overlapping splits not checked", "deeplab_cli/data/preflight.py", "overlap_problems",
          "        if not shared:\n            continue", "        if True:\n            continue",
          (f"{OD}::test_train_equal_to_val_is_refused_with_the_count_and_examples",
           f"{OD}::test_overlapping_split_lists_are_refused")),
    Fault("absent classes not refused (0/255 masks give mIoU 100)", "deeplab_cli/data/preflight.py",
          "absent_class_problems", "    if not absent or not stats.masks:", "    if True:",
          (f"{OD}::test_binary_255_masks_are_refused_with_the_label_map_line",)),
    Fault("holdout not stratified (the first images held out)", "deeplab_cli/data/holdout.py", "split_holdout",
          "    val = fold == 0\n", "    val = np.arange(len(stems)) < len(stems) // k\n",
          (f"{OD}::test_flat_folder_gets_a_disjoint_deterministic_stratified_holdout",)),
    Fault("JPEG masks read as values", "deeplab_cli/data/segmentation.py", "read_raw_mask",
          "            if img.format in LOSSY_FORMATS:", "            if False:",
          (f"{OD}::test_jpeg_masks_are_named_as_such",)),
    Fault("EXIF orientation ignored", "deeplab_cli/data/segmentation.py", "load_image",
          "np.array(ImageOps.exif_transpose(img).convert(\"RGB\"))", "np.array(img.convert(\"RGB\"))",
          (f"{OD}::test_exif_rotated_photos_are_read_as_shown_and_checked_so",)),
    Fault("skipped share never checked", "deeplab_cli/config/preflight.py", "_check_share",
          "    if count and bad / count > limit:", "    if False:",
          (f"{OD}::test_a_split_mostly_skipped_fails_before_training",)),
    Fault("predict writes into its input folder", "deeplab_cli/engine/runtime/outputs.py", "check_output_folder",
          "    if overwrite:\n        return\n    target", "    if True:\n        return\n    target",
          (f"{PS}::test_output_into_the_input_folder_is_refused_and_nothing_changes",
           f"{PS}::test_output_folder_rules_in_process")),
    Fault("predict replaces files it did not write", "deeplab_cli/engine/runtime/outputs.py", "OutputFolder.claim",
          "        if self.overwrite:\n            return\n        foreign",
          "        if True:\n            return\n        foreign",
          (f"{PS}::test_output_folder_rules_in_process",)),
    Fault("overlay without a legend", "deeplab_cli/cli/predict.py", "_Outputs.__call__",
          "        picture = with_legend(mixed, shown, names, palette)", "        picture = mixed",
          (f"{PS}::test_its_own_outputs_are_replaced_on_a_second_run_and_have_a_legend_and_palette",)),
    Fault("class 0 black in generated palettes", "deeplab_cli/config/datasets.py", "palette",
          "    table = voc_colormap() if d.get(\"family\", \"voc\") == \"voc\" else distinct_colormap()",
          "    table = voc_colormap()",
          (f"{OD}::test_generic_datasets_get_distinct_colours_with_class_0_not_black",)),
)  # fmt: skip


def _copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored): committed or not, what is here."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest(tree: Path, tests: tuple[str, ...], env: dict[str, str], workers: str = "0") -> tuple[bool, str, float]:
    """(passed, pytest's last line, seconds) of the named tests in ``tree``."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", workers, "-p", "no:cacheprovider", *tests]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    return done.returncode == 0, (lines[-1].strip("= ") if lines else done.stderr[-300:]), time.perf_counter() - start


def _apply(tree: Path, fault: Fault) -> str:
    path = tree / fault.path
    text = path.read_text()
    if text.count(fault.old) != 1:
        raise SystemExit(f"fault {fault.name!r}: the text to replace occurs {text.count(fault.old)} times in "
                         f"{fault.path} (expected once); update scripts/check_faults.py")  # fmt: skip
    path.write_text(text.replace(fault.old, fault.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="faults whose name contains one of these words")
    parser.add_argument("--write", type=Path, default=None, help="write the Markdown table to this file")
    args = parser.parse_args(argv)
    faults = [f for f in FAULTS if not args.only or any(w.lower() in f.name.lower() for w in args.only)]
    shared = Path(os.environ.get("DEEPLAB_SHARED") or REPO.parent / "shared").resolve()
    started = time.perf_counter()
    rows, missed = [], []
    with tempfile.TemporaryDirectory(prefix="deeplab-faults-") as tmp:
        tree = Path(tmp) / "tree"
        _copy_tree(tree)
        # the copy's package and configs, also in the console scripts the tests start
        env = {**os.environ, "PYTHONPATH": str(tree), "DEEPLAB_SHARED": str(shared), "HYDRA_FULL_ERROR": "0"}
        named = tuple(dict.fromkeys(t for f in faults for t in f.tests))
        ok, last, seconds = _pytest(tree, named, env, workers="auto")
        print(
            f"baseline: the {len(named)} named test targets on the unchanged copy: {last} ({seconds:.0f} s)", flush=True
        )
        if not ok:
            print("the named tests fail without any fault; fix them first", file=sys.stderr)
            return 2
        for fault in faults:
            original = _apply(tree, fault)
            try:
                passed, last, seconds = _pytest(tree, fault.tests, env)
            finally:
                (tree / fault.path).write_text(original)
            verdict = "NOT CAUGHT" if passed else "caught"
            if passed:
                missed.append(fault.name)
            tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in fault.tests)
            rows.append(f"| {fault.name} | `{fault.path}` `{fault.where}` | {tests} | {verdict}: {last} |")
            print(f"{verdict:>10}  {fault.name}  ({seconds:.0f} s: {last})", flush=True)
    minutes = (time.perf_counter() - started) / 60
    summary = f"{len(faults) - len(missed)} of {len(faults)} faults caught in {minutes:.1f} min"
    print(summary)
    if args.write:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None  # fmt: skip
        cpu = cpu or platform.processor() or platform.machine()
        args.write.write_text(_document(rows, summary, cpu))
        print(f"wrote {args.write}")
    return 1 if missed else 0


def _document(rows: list[str], summary: str, cpu: str) -> str:
    return "\n".join(
        [
            "# Planted faults and the tests that catch them",
            "",
            "Each row is a plausible wrong implementation planted on purpose in a temporary copy of the project:",
            "the file and function it changes, the tests run against it (`pytest -x -n 0`), and the result",
            "(pytest's last line). *caught* means a named test failed; the same tests pass on the unchanged copy",
            "first. The patches are in `scripts/check_faults.py`; `python scripts/check_faults.py` plants them again",
            "(it needs the project installed with its extras, and `../shared` or `DEEPLAB_SHARED` for the tests",
            "that read real data) and exits 1 if any fault is not caught.",
            "",
            f"Last run: **{summary}** ({cpu}, {os.cpu_count()} cores). It is not part of CI (CI is near its",
            "time budget); run it before each release and after changing a function listed here.",
            "",
            "| fault | file and function | tests run | result |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
