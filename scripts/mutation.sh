#!/usr/bin/env bash
# Mutation testing of cnnctl's core with mutmut 3: a developer's tool, not part of CI (hours on 2 cores).
#
#   scripts/mutation.sh                 # every module below, one after the other
#   scripts/mutation.sh metrics config  # only these (the names of the MODULES entries)
#
# Each module is mutated in its own scratch copy of the working tree ($MUTATION_WORK, default
# /tmp/cnnctl-mutation/NAME), with only the fast tests that cover it; mutmut 3 then runs, for each mutant, only
# the tests that call the mutated function. The summary prints killed / survived / timeout per module and lists the
# surviving mutants (`cd $MUTATION_WORK/NAME && mutmut show MUTANT` shows one as a diff).
#
# Needs: pip install 'mutmut>=3' (in the venv that runs the tests).
set -euo pipefail

# ---------------------------------------------------------------- edit here
# NAME|module file(s) to mutate (globs, comma separated)|fast tests that cover them (pytest arguments)
# The loop is engine.py (run assembly, run.py, is left out: its tests train whole runs); early stopping and the best metric live in hooks/ (the tests that train a run through the CLI are left out); the resume policy in config/resolve.py.
# The Unfreeze hook (hooks/unfreeze.py) is mutated but no selected test reaches it: its tests (test_freeze.py,
# test_features.py) train whole runs through the CLI; its mutants count as survivors.
MODULES=(
  "hooks|cnnctl/training/hooks/*.py|tests/test_hooks.py tests/test_hook_events.py tests/test_recording.py tests/test_tensorboard.py tests/test_early_stopping.py --deselect tests/test_early_stopping.py::test_early_stopping_min_mode_stops_a_flat_loss --deselect tests/test_early_stopping.py::test_patience_running_out_at_the_last_epoch_of_a_run_is_not_an_early_stop --deselect tests/test_early_stopping.py::test_restore_best_decides_which_weights_the_test_split_sees"
  "metrics|cnnctl/training/metrics.py|tests/test_metrics.py tests/test_properties.py -k 'sklearn or metrics'"
  "checkpoint|cnnctl/training/checkpoint.py|tests/test_checkpoint.py --deselect tests/test_checkpoint.py::test_a_checkpoint_with_a_bad_input_block_is_refused_naming_it"
  # mutmut's trampolines make Plan.warmup unpicklable: the two tests that torch.save a "none" schedule cannot run
  "optim|cnnctl/training/optim.py|tests/test_optim.py --deselect 'tests/test_optim.py::test_state_round_trip_continues_exactly[none]' --deselect 'tests/test_optim.py::test_replan_continues_on_the_new_plan[none-False]'"
  # The hostile configs (test_safe_yaml.py, test_names.py, most of test_overrides.py) are left out: their tests go
  # through the CLI, and every mutant of the validation code ran them all (a few mutants a minute);
  # test_config_edges.py checks the same messages directly. The resume policy runs on a checkpoint's config through
  # resolve_run, not through the CLI tests that train a run first (13 s a mutant).
  "config|cnnctl/config/*.py|tests/test_config.py tests/test_config_edges.py tests/test_fields.py tests/test_properties.py tests/test_overrides.py::test_set_value_may_hold_equals_signs tests/test_resume.py::test_resolve_run_applies_the_resume_policy_to_each_key_changed_alone tests/test_run.py::test_resolve_run_applies_name_and_out_as_validated_overrides tests/test_run.py::test_resolve_run_on_resume_keeps_the_name_and_refuses_changes_of_meaning -k 'not torch_computes'"
  "inference|cnnctl/inference/evaluate.py|tests/test_inference.py tests/test_predict.py::test_predict_topk_above_the_class_count_shows_every_class --deselect tests/test_inference.py::test_eval_on_data_of_other_classes_is_refused --deselect tests/test_inference.py::test_eval_on_data_of_the_same_classes_elsewhere_works"
  "data_split|cnnctl/data/base.py,cnnctl/data/splits.py|tests/test_data.py tests/test_batching.py tests/test_properties.py -k 'not torch_computes'"
  "engine|cnnctl/training/engine.py|tests/test_engine.py tests/test_resume.py::test_in_process_crash_mid_epoch_resumes_exactly tests/test_resume.py::test_nonfinite_loss_exits_1_and_keeps_last_good_checkpoint tests/test_run.py::test_nonfinite_loss_before_any_checkpoint_does_not_claim_one"
)
PYTHON=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
MUTMUT=${MUTMUT:-$(dirname "$PYTHON")/mutmut}
WORK=${MUTATION_WORK:-/tmp/cnnctl-mutation}
JOBS=${MUTATION_JOBS:-2}
# ----------------------------------------------------------------

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$MUTMUT" ] || { echo "mutmut not found at $MUTMUT: pip install 'mutmut>=3'" >&2; exit 2; }
wanted=("$@")
summary=()
mkdir -p "$WORK"

for entry in "${MODULES[@]}"; do
  IFS='|' read -r name files tests <<<"$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then continue; fi
  dir="$WORK/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  # The working tree as it is (tracked and untracked files, not ignored ones): uncommitted edits are tested too.
  # Files deleted but not yet committed are still listed by git; they are skipped (the loop ends true, so xargs and
  # pipefail do not stop the script on the last one).
  (cd "$ROOT" && git ls-files -co --exclude-standard -z \
     | xargs -0 sh -c 'for f; do [ ! -e "$f" ] || printf "%s\0" "$f"; done' sh \
     | tar --null -cf - -T -) | tar -xf - -C "$dir"
  existing=()
  IFS=',' read -ra globs <<<"$files"
  for g in "${globs[@]}"; do compgen -G "$dir/$g" >/dev/null && existing+=("$g"); done  # a glob: any match
  if [ ${#existing[@]} -eq 0 ]; then echo "== $name: none of $files exists; skipped"; continue; fi
  eval "args=($tests)"  # shell words, so a -k expression can be quoted
  {
    echo "[mutmut]"
    echo "source_paths=cnnctl"
    echo "only_mutate="; for f in "${existing[@]}"; do echo "    $f"; done
    echo "pytest_add_cli_args_test_selection="; for a in "${args[@]}"; do echo "    $a"; done
    echo "pytest_add_cli_args="; echo "    -p"; echo "    no:cacheprovider"; echo "    -q"
    # the bundled configs, which config's tests read ("did you mean"), and pyproject.toml, by which config.bundled_dir
    # tells a source checkout
    echo "also_copy="; echo "    configs"; echo "    pyproject.toml"
    echo "process_isolation=forkserver"  # torch is not fork-safe once threads exist
    # A mutant whose tests run past this many times their normal duration counts as a timeout (a detection). At 5
    # mutants of a message string "timed out" when their tests shared a module fixture that trains: only a real
    # hang should count.
    echo "timeout_multiplier=${MUTATION_TIMEOUT_MULTIPLIER:-30}"
  } >"$dir/setup.cfg"
  echo "== $name: mutating ${existing[*]} with: pytest ${args[*]}"
  (cd "$dir" && env -u PYTHONPATH OMP_NUM_THREADS=1 "$MUTMUT" run --max-children "$JOBS" >mutmut-run.log 2>&1) \
    || echo "   mutmut run failed; see $dir/mutmut-run.log"
  (cd "$dir" && env -u PYTHONPATH "$MUTMUT" export-cicd-stats >/dev/null 2>&1 || true)
  stats="$dir/mutants/mutmut-cicd-stats.json"
  if [ -f "$stats" ]; then
    line=$("$PYTHON" - "$stats" "$name" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
# A timeout or a crash is a detected mutant; one no test reaches counts as a survivor.
scored = s["killed"] + s["survived"] + s["no_tests"] + s["timeout"] + s["suspicious"] + s["segfault"]
pct = 100 * (s["killed"] + s["timeout"] + s["segfault"]) / max(scored, 1)
print(f"{sys.argv[2]:<11} killed {s['killed']:4d}  survived {s['survived']:4d}  timeout {s['timeout']:3d}  "
      f"no tests {s['no_tests']:3d}  total {s['total']:4d}  detected: {pct:5.1f}%")
EOF
)
    summary+=("$line")
    echo "   $line"
    echo "   surviving mutants:"
    (cd "$dir" && env -u PYTHONPATH "$MUTMUT" results 2>/dev/null | grep -E "survived|no tests|suspicious" | sed 's/^ */     /') || true
  fi
done

echo
echo "== mutation testing summary (mutmut $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("mutmut"))'))"
printf '%s\n' "${summary[@]}"
