# examples/train_gpt2.c resumes bit-identically: N steps straight through, and N/2 steps, save,
# resume, N/2 steps, must write byte-identical weights (.model) and optimizer checkpoints
# (.grass). The selection refreshes every 3 steps, so the resumed half refreshes too. Then a
# resume with another model shape or optimizer is refused (exit 2) and overwrites nothing.
#
#   cmake -DTRAINER=<grass_train_gpt2> -DOPTIMIZER=grass|adamw -DTEXT=<file> -DWORK_DIR=<dir>
#         [-DEXTRA="--residual;--row-warmup;3"] -P train_gpt2_resume.cmake
# EXTRA: more trainer flags (--residual: the full-rank residual, whose signs must resume
# exactly too; --row-warmup: the ramp, which reads the checkpointed step counts).
cmake_policy(SET CMP0057 NEW)  # if(... IN_LIST ...) in script mode
foreach(var TRAINER OPTIMIZER TEXT WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "train_gpt2_resume.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

set(common ${TEXT} --optimizer ${OPTIMIZER} --layers 2 --channels 32 --heads 2 --seq-len 32
           --batch 4 --steps 8 --warmup 2 --refresh-every 3 --val-every 4 --val-batches 2
           ${EXTRA})

function(run expect_rc name)
  execute_process(COMMAND ${TRAINER} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  message("-- ${name} (exit ${rc}):\n${out}${err}")
  if(NOT rc EQUAL expect_rc)
    message(FATAL_ERROR "${name}: exit ${rc}, expected ${expect_rc}")
  endif()
  set(last_output "${out}${err}" PARENT_SCOPE)
endfunction()

run(0 "straight" ${common} --save ${WORK_DIR}/straight)
if("--residual" IN_LIST EXTRA AND NOT last_output MATCHES "full-rank residual: .* scale 0.1")
  message(FATAL_ERROR "the run with --residual does not say it uses the residual")
endif()
if("--row-warmup" IN_LIST EXTRA AND NOT last_output MATCHES "row warm-up: .* over 3 steps")
  message(FATAL_ERROR "the run with --row-warmup 3 does not say it uses the warm-up")
endif()
run(0 "first half" ${common} --stop-at 4 --save ${WORK_DIR}/half)
run(0 "resumed half" ${common} --resume ${WORK_DIR}/half --save ${WORK_DIR}/resumed)
if(NOT last_output MATCHES "resumed from .* at step 4")
  message(FATAL_ERROR "the resumed run does not say it resumed at step 4")
endif()
foreach(ext model grass)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK_DIR}/straight.${ext}
                          ${WORK_DIR}/resumed.${ext} RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "straight.${ext} and resumed.${ext} differ: the resume is not exact")
  endif()
  file(SIZE ${WORK_DIR}/straight.${ext} bytes)
  message("-- straight.${ext} == resumed.${ext} (${bytes} bytes)")
endforeach()

# Refused resumes: exit 2, one line naming the problem, nothing saved.
if(OPTIMIZER STREQUAL "grass")
  set(other adamw)
else()
  set(other grass)
endif()
string(REPLACE "--channels;32" "--channels;64" wider "${common}")
run(2 "resume into another shape" ${wider} --resume ${WORK_DIR}/half --save ${WORK_DIR}/bad1)
if(NOT last_output MATCHES "holds a model with .*C=32.*C=64")
  message(FATAL_ERROR "the shape mismatch is not named")
endif()
string(REPLACE "--optimizer;${OPTIMIZER}" "--optimizer;${other}" switched "${common}")
list(REMOVE_ITEM switched --residual)
run(2 "resume with the other optimizer" ${switched} --resume ${WORK_DIR}/half
    --save ${WORK_DIR}/bad2)
if(NOT last_output MATCHES "was trained with --optimizer ${OPTIMIZER}")
  message(FATAL_ERROR "the optimizer mismatch is not named")
endif()
# Truncated files: the weights file is refused by the trainer, the optimizer file by
# grass_checkpoint_load; either way the run stops before training and saves nothing.
foreach(ext model grass)
  file(SIZE ${WORK_DIR}/half.${ext} bytes)
  math(EXPR keep "${bytes} - 5")
  file(COPY_FILE ${WORK_DIR}/half.model ${WORK_DIR}/cut_${ext}.model)
  file(COPY_FILE ${WORK_DIR}/half.grass ${WORK_DIR}/cut_${ext}.grass)
  execute_process(COMMAND head -c ${keep} ${WORK_DIR}/half.${ext}
                  OUTPUT_FILE ${WORK_DIR}/cut_${ext}.${ext} RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "head -c failed")
  endif()
  run(2 "resume from a truncated .${ext}" ${common} --resume ${WORK_DIR}/cut_${ext}
      --save ${WORK_DIR}/bad_${ext})
endforeach()
foreach(bad bad1 bad2 bad_model bad_grass)
  if(EXISTS ${WORK_DIR}/${bad}.model OR EXISTS ${WORK_DIR}/${bad}.grass)
    message(FATAL_ERROR "a refused run wrote ${bad}.*")
  endif()
endforeach()
